"""Conversation store, privacy scrubbing, seed data, dataset builds and scoring for the Farense bot.

It imports nothing from the bot, training or inference packages and never mlx, so the bot, the
trainer and a plain shell (`python -m data`) can all use it without loading a model.
"""
