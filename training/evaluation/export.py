"""`python -m training export OUT`: the production adapter (or `--version V`) fused into the base
model as a Hugging Face-layout folder `mlx_lm.load` reads; `--gguf` adds a GGUF of it (mlx-lm's
exporter, for llama.cpp and Ollama), `--peft` the adapter alone as a PEFT folder (OUT/peft) for
transformers users. inference/export.py does the work; this picks and verifies the version.

OUT is written beside itself first and renamed into place when complete, and never replaced.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from common.files import fsync_tree
from inference.export import DTYPES, fuse, write_gguf, write_peft
from inference.modelstore import DEFAULT_MODEL_UPSTREAM
from inference.settings import InferenceSettings

from ..errors import EXIT_OK, EXIT_USAGE, guarded, parse, report
from ..lifecycle.commands import open_registry
from ..lifecycle.registry import RegistryError

PEFT_FOLDER = "peft"


def export(out: Path, version: str | None, dtype: str, gguf: bool, peft: bool) -> list[str]:
    """Write the export into `out` (a new folder); what was written, one line each."""
    registry = open_registry()
    entry = registry.get(version) if version else registry.production()
    if entry is None:
        raise RegistryError("no adapter in production: name one with --version")
    adapter = registry.verify(entry.version)  # checksums, the base model's Q/K layout, tensors that fit
    layout = registry.base_layout()
    model_folder = registry.model_folder()
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        fuse(model_folder, adapter, layout, staging, dtype)
        written = [f"{out}: {layout.model} with {entry.version} fused in, {dtype} (mlx_lm.load reads it)"]
        if gguf:
            gguf_file = staging / f"{out.name}.gguf"
            write_gguf(staging, gguf_file)
            written.append(f"{out / gguf_file.name}: the same model as GGUF")
        if peft:
            serving = InferenceSettings.load()
            base = DEFAULT_MODEL_UPSTREAM if not serving.model_path else serving.model_path
            write_peft(adapter, layout, staging / PEFT_FOLDER, base)
            written.append(f"{out / PEFT_FOLDER}: {entry.version} as a PEFT LoRA adapter for {base}")
        fsync_tree(staging)
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return written


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training export",
        description="fuse an adapter into the base model: a Hugging Face-layout folder, and a GGUF or "
        "a PEFT adapter if asked",
    )
    parser.add_argument("out", type=Path, help="the folder to write (must not exist)")
    parser.add_argument("--version", help="the registered version (default: production)")
    parser.add_argument("--dtype", choices=DTYPES, default="float16", help="weights of the fused model")
    parser.add_argument("--gguf", action="store_true", help="also write OUT/OUT.gguf (llama.cpp, Ollama)")
    parser.add_argument("--peft", action="store_true", help="also write the adapter alone as OUT/peft (PEFT)")
    args = parse(parser, argv)
    return args if isinstance(args, int) else _export(args)


@guarded
def _export(args: argparse.Namespace) -> int:
    out = args.out.expanduser().absolute()
    if out.exists():
        report(f"{out} exists: export into a new folder")
        return EXIT_USAGE
    if not out.parent.is_dir():
        report(f"{out.parent} is not a folder")
        return EXIT_USAGE
    print("\n".join(export(out, args.version, args.dtype, args.gguf, args.peft)))
    return EXIT_OK
