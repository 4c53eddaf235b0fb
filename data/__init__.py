"""Conversation store, privacy scrubbing, seed data, dataset builds and scoring for the Farense bot.

It imports nothing of ours but common/ (not the bot, training or inference) and never mlx, so
the bot, the trainer and a plain shell (`python -m data`) can all use it without loading a model.
"""
