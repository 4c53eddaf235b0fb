"""The adapter lifecycle: registry, retraining pipeline, gate reports and their commands.

No MLX, not even through other modules of ours: the bot imports this package, and MLX must stay in
the Engine's thread and in the training children the pipeline starts.
"""
