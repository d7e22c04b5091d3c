"""Reading and writing weight files safely.

- Reading: `.safetensors` through safetensors; every other extension through
  ``torch.load(weights_only=True)`` — a file that needs pickled code is refused, never
  executed. Truncated/corrupt files give one clear error naming the file.
- Writing: our single-file safetensors format (component-prefixed keys + metadata),
  written atomically (temp file in the same folder, then ``os.replace``) and never over
  an existing file unless asked.
"""
from __future__ import annotations

import json
import os
import pickle
import tempfile
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Mapping

import torch

FORMAT_NAME = "interact-custom"
FORMAT_VERSION = "1"
SAFETENSORS_EXT = (".safetensors", ".sft")
TORCH_EXT = (".ckpt", ".pth", ".pt", ".bin")
SUPPORTED_EXT = SAFETENSORS_EXT + TORCH_EXT

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class WeightsError(ValueError):
    """A weight file that cannot be used, with a message saying why and what to do."""


def read_weights(path: str | os.PathLike) -> tuple[dict, dict[str, str]]:
    """Read a weight file → (object, metadata).

    For safetensors the object is the flat tensor dict and metadata its header metadata;
    for torch files it is whatever dict was saved (e.g. a Lightning checkpoint) and
    metadata is empty.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weight file not found: {path}")
    ext = path.suffix.lower()
    if ext in SAFETENSORS_EXT:
        from safetensors import safe_open
        from safetensors.torch import load_file

        try:
            with safe_open(str(path), framework="pt") as f:
                metadata = dict(f.metadata() or {})
            return load_file(str(path)), metadata
        except Exception as e:  # safetensors raises several error types for a bad header
            raise WeightsError(f"{path.name}: not a readable safetensors file (truncated or corrupt?): {e}") from e
    if ext not in TORCH_EXT:
        raise WeightsError(f"{path.name}: unsupported extension {ext!r}; expected one of {', '.join(SUPPORTED_EXT)}")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=_can_mmap(path))
    except pickle.UnpicklingError as e:
        raise WeightsError(
            f"{path.name}: refused — the file contains pickled Python objects beyond plain tensors, "
            "and loading it could execute code. Only weights_only files are accepted; convert it in "
            f"a trusted environment (e.g. save its state_dict with safetensors). Details: {str(e).splitlines()[0]}"
        ) from e
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as e:
        raise WeightsError(f"{path.name}: cannot read this checkpoint (truncated or corrupt download?): {e}") from e
    if not isinstance(obj, Mapping):
        raise WeightsError(f"{path.name}: expected a dict of tensors, found {type(obj).__name__}")
    return dict(obj), {}


def _can_mmap(path: Path) -> bool:
    # mmap avoids a second copy of multi-GB checkpoints; it needs the zip format.
    try:
        return zipfile.is_zipfile(path)
    except OSError:
        return False


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside ``path``; when the block succeeds it replaces ``path``
    in one ``os.replace``, so readers never see a half-written file and an interrupted
    write leaves the old one intact. The temporary file is removed in every case."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """``path.write_text(text)`` through :func:`atomic_path`."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def is_native(metadata: Mapping[str, str]) -> bool:
    """True for a file written by :func:`save_native`."""
    return metadata.get("format") == FORMAT_NAME


def save_native(path: str | os.PathLike, state_dict: Mapping[str, torch.Tensor], *, model: str,
                preset: str, dtype: str = "fp16", config: Mapping | None = None,
                extra: Mapping[str, str] | None = None, overwrite: bool = False) -> Path:
    """Write our single-file safetensors format atomically.

    Keys keep their component prefixes (``unet.``, ``controlnet.``, ``id_encoder.``,
    ``vae.`` …). Metadata: format, format_version, model (mgig/iamg), preset, dtype and
    the config as JSON (a cross-check only: loaders detect the architecture from shapes).
    """
    from safetensors.torch import save_file

    path = Path(path)
    if dtype not in DTYPES:
        raise WeightsError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; refusing to overwrite it (pass overwrite=True / --overwrite)")
    target = DTYPES[dtype]
    tensors = {k: (v.to(target) if v.is_floating_point() else v).contiguous() for k, v in state_dict.items()}
    metadata = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "model": model,
                "preset": preset, "dtype": dtype}
    if config is not None:
        metadata["config"] = json.dumps(config, sort_keys=True)
    metadata.update(extra or {})
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        if path.exists() and not overwrite:  # created meanwhile by someone else
            raise FileExistsError(f"{path} appeared while writing; refusing to overwrite it")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def strip_prefix(state_dict: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries under ``prefix`` with the prefix removed."""
    return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}


def state_dict_mismatch(expected: Mapping[str, torch.Tensor], state_dict: Mapping[str, torch.Tensor],
                        what: str) -> str | None:
    """None if ``state_dict`` has exactly the names and shapes of ``expected`` (a module's
    state dict, possibly on the meta device); otherwise a message listing missing and
    unexpected keys and shape mismatches (first few of each), naming ``what``."""
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = sorted(k for k in set(expected) & set(state_dict)
                        if tuple(expected[k].shape) != tuple(state_dict[k].shape))
    if not (missing or unexpected or mismatched):
        return None

    def head(keys):
        return ", ".join(keys[:8]) + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "")

    lines = [f"{what}: the weights do not match the model; refusing to continue with a partly loaded model"]
    if missing:
        lines.append(f"  missing keys ({len(missing)}): {head(missing)}")
    if unexpected:
        lines.append(f"  unexpected keys ({len(unexpected)}): {head(unexpected)}")
    if mismatched:
        lines.append("  shape mismatches: " + head(
            [f"{k} {tuple(state_dict[k].shape)} vs {tuple(expected[k].shape)}" for k in mismatched]))
    return "\n".join(lines)


def load_strict(module: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], what: str) -> None:
    """``load_state_dict(strict=True)`` that first reports every missing / unexpected /
    mis-shaped tensor by name (:func:`state_dict_mismatch`) as a :class:`WeightsError`."""
    problem = state_dict_mismatch(module.state_dict(), state_dict, what)
    if problem:
        raise WeightsError(problem)
    module.load_state_dict(state_dict, strict=True)
