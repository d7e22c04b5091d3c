"""Reading and writing weight files safely.

- Reading: `.safetensors` through safetensors; every other extension through
  ``torch.load(weights_only=True)`` — a file that needs pickled code is refused, never
  executed. Truncated/corrupt files, and files that are no checkpoint at all (a text or
  JSON file, an HTML error page, random bytes), give one clear error naming the file.
  `check_finite` refuses weights holding NaN / Inf, naming the tensor.
- Writing: our single-file safetensors format (component-prefixed keys + metadata),
  written atomically (temp file in the same folder, then ``os.replace``), with the
  permissions of an ordinary new file (0o666 & ~umask), and never over an existing file
  unless asked. `check_output_dir` says up front when an output folder cannot be written.
"""
from __future__ import annotations

import io
import json
import os
import pickle
import pickletools
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


def check_weights_file(path: str | os.PathLike, what: str | None = None) -> Path:
    """The checks `read_weights` starts with (the file exists, its extension is one we
    read), for a caller that wants them before doing any work; ``what`` (e.g. an option
    name) prefixes the message."""
    path = Path(path)
    lead = f"{what}: " if what else ""
    if not path.is_file():
        raise WeightsError(f"{lead}weight file not found: {path}"
                           + (" (it is a folder)" if path.is_dir() else ""))
    ext = path.suffix.lower()
    if ext not in SUPPORTED_EXT:
        raise WeightsError(f"{lead}{path.name}: unsupported extension {ext!r}; expected one of "
                           f"{', '.join(SUPPORTED_EXT)}")
    return path


def read_weights(path: str | os.PathLike) -> tuple[dict, dict[str, str]]:
    """Read a weight file → (object, metadata).

    For safetensors the object is the flat tensor dict and metadata its header metadata;
    for torch files it is whatever dict was saved (e.g. a Lightning checkpoint) and
    metadata is empty.
    """
    path = check_weights_file(path)
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
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=_can_mmap(path))
    except MemoryError:
        raise
    except Exception as e:  # torch.load fails on foreign bytes with any error type (KeyError: 101, ...)
        raise _torch_load_error(path, e) from e
    if not isinstance(obj, Mapping):
        raise WeightsError(f"{path.name}: expected a dict of tensors, found {type(obj).__name__}")
    return dict(obj), {}


# The first bytes of a legacy (non-zip) torch.save file: its pickled magic number.
_LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"
# Opcodes that import a name (and so may run code when the pickle is loaded).
_IMPORT_OPS = {"GLOBAL", "STACK_GLOBAL", "INST"}
_SCAN_BYTES = 16 * 2**20  # pickles scanned for imports: this much of the file at most


def _torch_load_error(path: Path, e: Exception) -> WeightsError:
    """The `WeightsError` for a file ``torch.load(weights_only=True)`` failed on: pickled
    code (refused), a damaged torch file, or something that is no checkpoint at all."""
    name = path.name
    imports = _pickled_imports(path)
    foreign = _disallowed(imports) if isinstance(e, pickle.UnpicklingError) else []
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" (+{len(foreign) - 3} more)" if len(foreign) > 3 else "")
        return WeightsError(
            f"{name}: refused — the file contains pickled Python objects beyond plain tensors ({shown}), "
            "and loading it could execute code. Only weights_only files are accepted; convert it in "
            "a trusted environment (e.g. save its state_dict with safetensors)")
    if _looks_like_torch(path):
        detail = str(e) if isinstance(e, (RuntimeError, EOFError, zipfile.BadZipFile, OSError,
                                          pickle.UnpicklingError)) else f"{type(e).__name__}: {e}"
        return WeightsError(f"{name}: cannot read this checkpoint (truncated or corrupt download?): "
                            f"{detail.splitlines()[0] if detail else type(e).__name__}")
    return WeightsError(f"{name}: not a checkpoint (unreadable): {_describe_bytes(path, imports)}. Expected a "
                        "PyTorch checkpoint (torch.save) or a .safetensors file: check the path, or download "
                        "the file again")


def _disallowed(imports: list[str] | None) -> list[str]:
    """The imported names torch's weights_only loader does not allow (each once, in order):
    pickled code. Every name when that allow-list (a private torch helper) is unavailable."""
    names = list(dict.fromkeys(imports or []))
    try:
        from torch._weights_only_unpickler import _get_allowed_globals
        allowed = set(_get_allowed_globals())
    except Exception:
        return names
    return [n for n in names if n not in allowed]


def _looks_like_torch(path: Path) -> bool:
    """A torch.save file, possibly cut short: a zip archive (or the start of one), or the
    legacy format's magic number."""
    try:
        if zipfile.is_zipfile(path):
            return True
        with open(path, "rb") as f:
            head = f.read(len(_LEGACY_TORCH_MAGIC))
        return head.startswith(b"PK\x03\x04") or head == _LEGACY_TORCH_MAGIC
    except OSError:
        return False


def _pickled_imports(path: Path) -> list[str] | None:
    """The names the file's pickles import ("module.name"), read with `pickletools` (which
    parses, never executes); None when the file does not start with a complete pickle.
    Looks at ``data.pkl`` of a torch zip, else at the pickles the file starts with."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                member = next((n for n in z.namelist() if n == "data.pkl" or n.endswith("/data.pkl")), None)
                if member is None:
                    return None
                with z.open(member) as f:
                    data = f.read(_SCAN_BYTES)
        else:
            with open(path, "rb") as f:
                data = f.read(_SCAN_BYTES)
    except Exception:  # a damaged zip: no pickle to look at
        return None
    stream = io.BytesIO(data)
    imports: list[str] = []
    complete = False
    for _ in range(6):  # a legacy torch file is several pickles in a row, then raw storage bytes
        if stream.tell() >= len(data):
            break
        memo: dict[int, object] = {}
        strings: list[str] = []
        last = None
        try:
            for op, arg, _pos in pickletools.genops(stream):
                if op.name in _IMPORT_OPS:
                    imports.append(".".join(strings[-2:]) if op.name == "STACK_GLOBAL"
                                   else str(arg).replace(" ", "."))
                elif op.name == "MEMOIZE":
                    memo[len(memo)] = last
                elif op.name in ("PUT", "BINPUT", "LONG_BINPUT"):
                    memo[arg] = last
                elif op.name in ("GET", "BINGET", "LONG_BINGET"):
                    last = memo.get(arg)
                    if isinstance(last, str):
                        strings.append(last)
                elif isinstance(arg, str):
                    last = arg
                    strings.append(arg)
        except Exception:  # not (or no more) pickle opcodes
            if complete or (imports and stream.tell() >= _SCAN_BYTES):
                break
            return None
        complete = True
    return imports if complete else None


def _describe_bytes(path: Path, imports: list[str] | None) -> str:
    """What a file that is no checkpoint looks like, in a few words."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError as e:
        return f"cannot read it ({e.strerror or e})"
    if size == 0:
        return "the file is empty (0 bytes)"
    if size < 16:
        return f"only {size} bytes ({head!r})"
    if imports is not None:
        return "a Python pickle, not a torch.save checkpoint"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as e:  # a character cut at the 4096-byte boundary is still text
        text = head[:e.start].decode("utf-8") if e.start >= len(head) - 3 and e.start else None
    if text is not None and all(c.isprintable() or c in "\r\n\t" for c in text):
        stripped = text.lstrip()
        if stripped[:1] in ("{", "["):
            try:
                if size <= 2**20:
                    json.loads(path.read_text(encoding="utf-8"))
                    return "a JSON file"
            except (ValueError, OSError):
                pass
        if stripped[:1] == "<":
            return f"a text file, HTML/XML (starts {stripped[:40]!r}; an error page saved in place of the download?)"
        return f"a text file (starts {stripped[:40]!r})"
    return f"unrecognised binary data (first bytes {head[:8].hex(' ')})"


def check_finite(tensors: Mapping, what: str, *, prefix: str = "") -> None:
    """Raise a `WeightsError` naming the first floating-point tensor of ``tensors`` (nested
    dicts included, their keys joined with '.') that holds NaN or Inf: a damaged file or a
    diverged training run, which would otherwise load silently and give black or noise
    images. One ``torch.isfinite(t).all()`` per tensor, on the tensors already read."""
    for key, value in tensors.items():
        name = f"{prefix}{key}"
        if isinstance(value, torch.Tensor):
            if (value.is_floating_point() and value.numel() and not value.is_meta
                    and not bool(torch.isfinite(value).all())):
                kinds = [k for k, bad in (("NaN", torch.isnan(value).any()), ("Inf", torch.isinf(value).any()))
                         if bool(bad)]
                raise WeightsError(f"{what}: tensor {name!r} holds {' and '.join(kinds)} values; the file is "
                                   "damaged or comes from a diverged training run — refusing to load it")
        elif isinstance(value, Mapping):
            check_finite(value, what, prefix=f"{name}.")


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
    write leaves the old one intact. The file is published with the permissions of an
    ordinary new file (`new_file_mode`). The temporary file is removed in every case."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.chmod(tmp, new_file_mode())  # a writer may create it private (safetensors' save_file: 0o600)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def new_file_mode() -> int:
    """The permissions an ordinary new file gets here: 0o666 minus the process umask
    (`tempfile.mkstemp` creates its files 0o600, private to the owner)."""
    try:  # Linux ≥ 4.7 shows the umask without changing it
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


class OutputPathError(ValueError):
    """An output path that cannot be written (a file where a folder is needed, or a folder
    without write permission); the message names it and what to do."""


def check_output_dir(folder: str | os.PathLike, what: str = "output folder") -> Path:
    """Raise `OutputPathError` unless ``folder`` is, or can be created as, a writable
    folder: checked before a command does any work, so a read-only or mistyped output path
    fails at once with one line naming it. ``what`` names it (e.g. "--out")."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputPathError(f"{what} {folder}: is a file, not a folder; choose a folder")
    probe = folder
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise OutputPathError(f"{what} {folder}: {probe} is a file, not a folder; choose another path")
    if probe.is_dir() and not os.access(probe, os.W_OK | os.X_OK):
        where = f"{what} {folder}" + (f": {probe}" if probe != folder else "")
        raise OutputPathError(f"{where} is not writable (permission denied); choose another folder or "
                              "change its permissions")
    return folder


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
        os.chmod(tmp, new_file_mode())  # mkstemp's (and save_file's) 0o600 would make the file private
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
