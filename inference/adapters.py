"""LoRA adapters in mlx-lm's format, verified before they touch a model, and the production pointer.

An adapter folder holds `adapters.safetensors` + `adapter_config.json`. Everything is checked
(JSON, safetensors header, tensor names and shapes against the model) before any weight is loaded,
so a truncated or mismatched file is reported and never served.

A registered version's folder also holds `version.json`, written by the training registry, with
the sha256 of each adapter file: an adapter whose bytes no longer match is refused before it is
read (inference never imports training; the folder carries its own checksums).

The production pointer `$FARENSE_HOME/adapters/production.json` names the adapter the bot serves.
The training registry writes it (atomically); the engine only reads it.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

from common.files import sha256_file
from common.home import Home

WEIGHTS_FILE = "adapters.safetensors"
CONFIG_FILE = "adapter_config.json"
VERSION_FILE = "version.json"  # a registered version's record, with its files' sha256 ("files")
_MAX_HEADER = 100 * 1024 * 1024


class AdapterError(ValueError):
    """The adapter is missing, corrupt or does not fit the base model."""


@dataclass(frozen=True)
class LoraSpec:
    num_layers: int
    rank: int
    scale: float
    dropout: float
    keys: tuple[str, ...] | None


@dataclass(frozen=True)
class Adapter:
    path: Path
    version: str  # registry version ("v3") or the folder name for ad-hoc adapters
    spec: LoraSpec
    shapes: dict[str, tuple[int, ...]]  # from the safetensors header
    base_model: str | None = None  # the model folder (or hub id) it was trained on, as recorded
    qk_layout: str | None = None  # the Q/K layout it was trained for, checked by inference/layout.py


def read_adapter(path: Path, version: str | None = None) -> Adapter:
    """Validate an adapter folder's config and safetensors header without loading tensors."""
    path = Path(path)
    if not path.is_dir():
        raise AdapterError(f"adapter not found: {path} (expected a folder with {WEIGHTS_FILE})")
    verify_checksums(path)
    try:
        config = json.loads((path / CONFIG_FILE).read_text())
    except FileNotFoundError:
        raise AdapterError(f"adapter {path}: {CONFIG_FILE} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise AdapterError(f"adapter {path}: {CONFIG_FILE} is not valid JSON ({error})") from None
    except OSError as error:
        raise AdapterError(f"adapter {path}: {CONFIG_FILE} cannot be read ({error})") from None
    if not isinstance(config, dict):
        raise AdapterError(f"adapter {path}: {CONFIG_FILE} is not a JSON object")
    if config.get("fine_tune_type", "lora") != "lora":
        raise AdapterError(f"adapter {path}: fine_tune_type {config.get('fine_tune_type')!r} is not supported")
    try:
        params = config["lora_parameters"]
        spec = LoraSpec(
            int(config["num_layers"]),
            int(params["rank"]),
            float(params["scale"]),
            float(params.get("dropout", 0.0)),
            tuple(params["keys"]) if params.get("keys") else None,
        )
    except (KeyError, TypeError, ValueError, OverflowError) as error:
        raise AdapterError(f"adapter {path}: {CONFIG_FILE} lacks a valid {error}") from None
    if spec.num_layers < 1 or spec.rank < 1:
        raise AdapterError(f"adapter {path}: {CONFIG_FILE} needs num_layers and rank of at least 1")
    shapes = _safetensors_shapes(path / WEIGHTS_FILE)
    if not shapes or not all(n.endswith((".lora_a", ".lora_b")) for n in shapes):
        raise AdapterError(f"adapter {path}: {WEIGHTS_FILE} holds no LoRA tensors")
    base_model, qk_layout = config.get("base_model"), config.get("qk_layout")
    return Adapter(path, version or path.name, spec, shapes, str(base_model) if base_model else None, qk_layout or None)


def verify_checksums(path: Path) -> None:
    """A registered adapter's files are the bytes whose sha256 its version.json records; a folder
    without version.json (a run's output, ADAPTER_PATH) has nothing to check against."""
    record_file = Path(path) / VERSION_FILE
    try:
        record = json.loads(record_file.read_text())
    except FileNotFoundError:
        return
    except (OSError, ValueError) as error:
        raise AdapterError(f"{path.name}: {VERSION_FILE} is unreadable ({error})") from None
    files = record.get("files") if isinstance(record, dict) else None
    if not isinstance(files, dict) or not files:
        raise AdapterError(f"{path.name}: {VERSION_FILE} records no file checksums")
    for name, digest in files.items():
        file = Path(path) / str(name)
        if Path(str(name)).name != name or not file.is_file():
            raise AdapterError(f"{path.name}: {name} is missing")
        if sha256_file(file) != digest:
            raise AdapterError(f"{path.name}: {name} changed since it was registered (truncated or overwritten?)")


def _safetensors_shapes(file: Path) -> dict[str, tuple[int, ...]]:
    """Parse the header and check that every tensor's byte range lies inside the file."""
    try:
        size = file.stat().st_size
        with open(file, "rb") as handle:
            (header_len,) = struct.unpack("<Q", handle.read(8))
            if header_len > min(size - 8, _MAX_HEADER):
                raise AdapterError(f"{file}: corrupt safetensors header (length {header_len})")
            header = json.loads(handle.read(header_len))
    except FileNotFoundError:
        raise AdapterError(f"{file} is missing") from None
    except OSError as error:
        raise AdapterError(f"{file} cannot be read ({error})") from None
    except (struct.error, json.JSONDecodeError, UnicodeDecodeError, RecursionError) as error:
        raise AdapterError(f"{file}: not a safetensors file ({error})") from None
    if not isinstance(header, dict):
        raise AdapterError(f"{file}: not a safetensors file (the header is not a JSON object)")
    data_size = size - 8 - header_len
    shapes = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            start, end = entry["data_offsets"]
            shape = tuple(int(d) for d in entry["shape"])
            if not all(type(offset) is int for offset in (start, end)):
                raise TypeError("offsets are not integers")
        except (KeyError, TypeError, ValueError, OverflowError):
            raise AdapterError(f"{file}: corrupt entry for tensor {name!r}") from None
        if not 0 <= start <= end <= data_size:
            raise AdapterError(f"{file}: tensor {name!r} lies outside the file (truncated?)")
        shapes[name] = shape
    return shapes


def check_fits(adapter: Adapter, expected: dict[str, tuple[int, ...]]) -> None:
    """Compare the adapter's tensors with the LoRA parameters its config creates on the model."""
    missing = sorted(set(expected) - set(adapter.shapes))
    extra = sorted(set(adapter.shapes) - set(expected))
    wrong = [
        f"{n}: {adapter.shapes[n]} vs model {expected[n]}"
        for n in sorted(set(expected) & set(adapter.shapes))
        if adapter.shapes[n] != expected[n]
    ]
    if missing or extra or wrong:
        detail = "; ".join(
            filter(
                None,
                [
                    f"missing {missing[:3]}" if missing else "",
                    f"unexpected {extra[:3]}" if extra else "",
                    f"shape mismatch {wrong[:3]}" if wrong else "",
                ],
            )
        )
        raise AdapterError(f"adapter {adapter.path} does not fit the base model: {detail}")


def read_production(farense_home: Path) -> tuple[str, Path] | None:
    """(version, folder) of the adapter in production, or None when the bare base model serves."""
    pointer = Home(farense_home).production_pointer
    try:
        record = json.loads(pointer.read_text())
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise AdapterError(f"{pointer} is corrupt ({error})") from None
    if not isinstance(record, dict):
        raise AdapterError(f"{pointer} is corrupt (not a JSON object)")
    if not record.get("version"):
        return None
    if not isinstance(record.get("path"), str) or not record["path"]:
        raise AdapterError(f"{pointer} is corrupt (version {record['version']!r} without a path)")
    return str(record["version"]), Path(record["path"])
