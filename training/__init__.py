"""LoRA training of the Farense bot's model: `python -m training run|status`.

What other packages call (the gate, the pipeline):
    frozen_valid_batches(tokenizer, valid_path, system_prompt, batch_size, max_seq_length, max_batches)
    validation_loss(model, batches) -> float
    run_valid_batches(run_dir, tokenizer)  — the exact validation batches a run used
"""

from .batching import frozen_valid_batches
from .job import run_valid_batches
from .loop import validation_loss

__all__ = ["frozen_valid_batches", "run_valid_batches", "validation_loss"]
