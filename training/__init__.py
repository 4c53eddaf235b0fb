"""LoRA training of the Farense bot's model and the life of its adapters (`python -m training COMMAND`).

Three parts with different runtimes, imported one way (tests/test_import_contract.py checks it):
    trainer/     MLX; runs only in `python -m training run` processes
    lifecycle/   no MLX; registry, pipeline, reports: the only part the bot imports
    evaluation/  MLX; gate, evaluate, ground (children of the pipeline, or commands)
plus MLX-free modules both use: cli (the command table), errors (exit codes), runs, settings.
"""
