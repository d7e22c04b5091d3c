"""Reading and writing weight files safely.

- Reading (`read_weights`): the file is opened once and everything is read from that one
  descriptor into memory — never memory-mapped, so a file truncated or rewritten while it
  loads cannot kill the process with SIGBUS, and a file renamed over (an atomic replace)
  does not affect a load under way. Its size and modification time are compared before
  and after: a file that changed while it was read gives one `FileChangedError` ("try
  again"), never a mix of two files. `.safetensors` is parsed here (header validated, then
  tensor by tensor into its own memory: one copy of the weights); every other extension
  goes through ``torch.load(weights_only=True)`` — a file that needs pickled code is
  refused, never executed. Truncated/corrupt files, and files that are no checkpoint at
  all (a text or JSON file, an HTML error page, random bytes), give one clear error naming
  the file; an error never quotes the file's content (a model folder may hold a symlink to
  any file of the machine). `check_finite` refuses weights holding NaN / Inf, or stored in
  a non-floating dtype, naming the tensor.
- Writing: our single-file safetensors format (component-prefixed keys + metadata),
  written atomically (temp file in the same folder, then ``os.replace``), with the
  permissions of an ordinary new file (0o666 & ~umask), and never over an existing file
  unless asked. `check_output_dir` says up front when an output folder cannot be written;
  a disk that fills up during a write gives an `OSError` (ENOSPC) naming the file
  (`write_failure`), and no partial file is left behind.
"""
from __future__ import annotations

import errno
import io
import json
import os
import pickle
import pickletools
import re
import stat
import struct
import sys
import tempfile
import time
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
    """The checks `read_weights` starts with (the file exists and is a regular file, its
    extension is one we read), for a caller that wants them before doing any work;
    ``what`` (e.g. an option name) prefixes the message."""
    path = Path(path)
    lead = f"{what}: " if what else ""
    if not path.is_file():
        if path.is_dir():
            raise WeightsError(f"{lead}{path} is a folder, not a weight file; choose a file")
        if path.exists():
            raise WeightsError(f"{lead}{path} is not a regular file (a device, pipe or socket); choose a "
                               "weight file")
        if path.is_symlink():
            raise WeightsError(f"{lead}{path} is a symbolic link to a file that does not exist")
        raise WeightsError(f"{lead}weight file not found: {path}")
    ext = path.suffix.lower()
    if ext not in SUPPORTED_EXT:
        raise WeightsError(f"{lead}{path.name}: unsupported extension {ext!r}; expected one of "
                           f"{', '.join(SUPPORTED_EXT)}")
    return path


class FileChangedError(WeightsError):
    """A weight file that changed (was written, truncated or replaced in place) while it
    was being read: nothing is wrong with the request, try again."""


# A file modified this recently that fails to parse is probably still being written.
_RECENT_S = 60.0


def read_weights(path: str | os.PathLike, *, dtype: torch.dtype | None = None) -> tuple[dict, dict[str, str]]:
    """Read a weight file → (object, metadata).

    For safetensors the object is the flat tensor dict and metadata its header metadata;
    for torch files it is whatever dict was saved (e.g. a Lightning checkpoint) and
    metadata is empty. The file is opened once and read into memory (see the module
    docstring); a file that changes meanwhile raises `FileChangedError`.

    dtype: cast a safetensors file's floating tensors as each is read, so the stored
    copy of only one tensor exists at a time (loading an fp16 file as fp32 then needs the
    fp32 weights plus one tensor, not both copies of everything). Torch files are
    returned as stored.
    """
    path = check_weights_file(path)
    try:  # O_NONBLOCK: a pipe swapped in after the check above must not block the open
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise WeightsError(f"{path.name}: cannot open it ({e.strerror or type(e).__name__})") from e
    with os.fdopen(fd, "rb") as f:
        before = os.fstat(fd)
        if not stat.S_ISREG(before.st_mode):
            raise WeightsError(f"{path.name}: is not a regular file; choose a weight file")
        try:
            if path.suffix.lower() in SAFETENSORS_EXT:
                result = _read_safetensors(f, before.st_size, path.name, dtype)
            else:
                result = _read_torch(f, path.name), {}
        except MemoryError:
            raise
        except Exception as e:
            if _changed(fd, before):
                raise _changed_error(path.name) from e
            if isinstance(e, WeightsError) and not isinstance(e, PickledCodeError):
                age = time.time() - before.st_mtime
                if 0 <= age < _RECENT_S:
                    when = "moments ago" if age < 1 else f"{age:.0f} s ago"
                    raise WeightsError(f"{e} — the file was modified {when}: if it is still being written or "
                                       "copied, try again once that has finished") from e
            raise
        if _changed(fd, before):
            raise _changed_error(path.name)
    obj, metadata = result
    if not isinstance(obj, Mapping):
        raise WeightsError(f"{path.name}: expected a dict of tensors, found {type(obj).__name__}")
    return dict(obj), metadata


def _changed(fd: int, before: os.stat_result) -> bool:
    # Size and modification time of the open file: a truncation or write changes them; a
    # rename over the path does not touch the inode this descriptor reads.
    now = os.fstat(fd)
    return (now.st_size, now.st_mtime_ns) != (before.st_size, before.st_mtime_ns)


def _changed_error(name: str) -> FileChangedError:
    return FileChangedError(f"{name}: the file changed while it was being loaded (it is being written, copied or "
                            "replaced); try again once that has finished")


# safetensors dtype names → torch dtypes (those this torch has).
_SAFETENSORS_DTYPES = {name: getattr(torch, attr) for name, attr in (
    ("F64", "float64"), ("F32", "float32"), ("F16", "float16"), ("BF16", "bfloat16"),
    ("F8_E4M3", "float8_e4m3fn"), ("F8_E5M2", "float8_e5m2"), ("I64", "int64"), ("I32", "int32"),
    ("I16", "int16"), ("I8", "int8"), ("U64", "uint64"), ("U32", "uint32"), ("U16", "uint16"),
    ("U8", "uint8"), ("BOOL", "bool")) if hasattr(torch, attr)}
_SAFETENSORS_MAX_HEADER = 100 * 2**20  # the safetensors library's own limit
_READ_CHUNK = 2**30  # one read() call of a large tensor (Linux reads at most ~2 GiB at once)


def _not_safetensors(name: str, why: str) -> WeightsError:
    return WeightsError(f"{name}: not a readable safetensors file (truncated or corrupt?): {why}")


def _read_safetensors_header(f, size: int, name: str) -> tuple[int, dict, dict[str, str]]:
    """(data start, tensor entries, metadata) of the safetensors file ``f`` (``size``
    bytes), validated: every entry has a known dtype, a shape and data offsets that hold
    exactly that many bytes, and the entries tile the data area (what the safetensors
    library checks). Messages describe the structure, never quote the bytes."""
    f.seek(0)
    head = f.read(8)
    if len(head) < 8:
        raise _not_safetensors(name, f"{size} bytes, no header")
    (n,) = struct.unpack("<Q", head)
    if n > size - 8 or n > _SAFETENSORS_MAX_HEADER:  # (n is not shown: it is 8 bytes of whatever the file holds)
        raise _not_safetensors(name, f"it does not start with a safetensors header (a {size}-byte file whose first "
                                     "8 bytes announce a longer header); expected a .safetensors file")
    raw = f.read(n)
    if len(raw) < n:
        raise _not_safetensors(name, "the header is cut short")
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise _not_safetensors(name, "the header is not valid JSON") from None
    if not isinstance(header, dict):
        raise _not_safetensors(name, "the header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                 for k, v in metadata.items()):
        raise _not_safetensors(name, "its __metadata__ is not a map of strings")
    data_start, data_size = 8 + n, size - 8 - n
    spans = []
    for key, info in header.items():
        where = f"tensor {key[:80]!r}"
        if not isinstance(info, dict) or set(info) - {"dtype", "shape", "data_offsets"}:
            raise _not_safetensors(name, f"{where}: expected {{dtype, shape, data_offsets}}")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if dtype not in _SAFETENSORS_DTYPES:
            raise _not_safetensors(name, f"{where}: unsupported dtype (expected one of "
                                         f"{', '.join(_SAFETENSORS_DTYPES)})")
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            raise _not_safetensors(name, f"{where}: the shape is not a list of sizes")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)
                and 0 <= offsets[0] <= offsets[1] <= data_size):
            raise _not_safetensors(name, f"{where}: its data offsets lie outside the file's {data_size} data bytes")
        numel = 1
        for d in shape:
            numel *= d
        if offsets[1] - offsets[0] != numel * _SAFETENSORS_DTYPES[dtype].itemsize:
            raise _not_safetensors(name, f"{where}: its data offsets do not hold a {dtype} tensor of shape {shape}")
        spans.append((offsets[0], offsets[1], key))
    spans.sort()
    end = 0
    for begin, stop, key in spans:
        if begin != end:
            raise _not_safetensors(name, f"tensor {key[:80]!r}: its data overlaps another or leaves a gap")
        end = stop
    if end != data_size:
        raise _not_safetensors(name, f"the tensors hold {end} of its {data_size} data bytes")
    return data_start, header, metadata


def _read_safetensors(f, size: int, name: str,
                      dtype: torch.dtype | None = None) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and metadata of a safetensors file, read from ``f`` tensor by tensor,
    each straight into its own memory (the weights exist once); floating tensors cast to
    ``dtype`` (if given) one at a time, each read buffer freed before the next read."""
    if sys.byteorder != "little":  # safetensors stores little-endian data
        raise WeightsError(f"{name}: reading safetensors files needs a little-endian machine")
    data_start, header, metadata = _read_safetensors_header(f, size, name)
    tensors = {}
    for key, info in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
        begin, stop = info["data_offsets"]
        buf = torch.empty(stop - begin, dtype=torch.uint8)
        view = memoryview(buf.numpy())
        f.seek(data_start + begin)
        done = 0
        while done < len(view):
            got = f.readinto(view[done:done + _READ_CHUNK])
            if not got:
                raise _not_safetensors(name, f"the file ends inside tensor {key[:80]!r}")
            done += got
        stored = _SAFETENSORS_DTYPES[info["dtype"]]
        t = (buf.view(stored) if len(buf) else torch.empty(0, dtype=stored)).reshape(info["shape"])
        if dtype is not None and t.is_floating_point() and stored != dtype:
            t = t.to(dtype)
        tensors[key] = t
        del buf, view
    return tensors, dict(metadata)


def safetensors_shapes(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """Tensor name → shape of a safetensors file, from its validated header only (no
    memory map, nothing else read); a `WeightsError` for a damaged header."""
    path = Path(path)
    with open(path, "rb") as f:
        _, header, _ = _read_safetensors_header(f, os.fstat(f.fileno()).st_size, path.name)
    return {k: tuple(v["shape"]) for k, v in header.items()}


def _read_torch(f, name: str):
    """``torch.load(weights_only=True)`` of the open file ``f`` (no memory map: the
    storages are read into memory through this one descriptor)."""
    f.seek(0)
    try:
        return torch.load(f, map_location="cpu", weights_only=True)
    except MemoryError:
        raise
    except Exception as e:  # torch.load fails on foreign bytes with any error type (KeyError: 101, ...)
        raise _torch_load_error(f, name, e) from e


# The first bytes of a legacy (non-zip) torch.save file: its pickled magic number.
_LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"
# Opcodes that import a name (and so may run code when the pickle is loaded).
_IMPORT_OPS = {"GLOBAL", "STACK_GLOBAL", "INST"}
_SCAN_BYTES = 16 * 2**20  # pickles scanned for imports: this much of the file at most


class PickledCodeError(WeightsError):
    """A torch file refused because loading it could execute pickled code."""


def _torch_load_error(f, name: str, e: Exception) -> WeightsError:
    """The `WeightsError` for the open file ``f`` that ``torch.load(weights_only=True)``
    failed on: pickled code (refused), a damaged torch file, or something that is no
    checkpoint at all. The message describes the file; it never quotes its bytes."""
    imports = _pickled_imports(f)
    foreign = _disallowed(imports) if isinstance(e, pickle.UnpicklingError) else []
    if foreign:
        names = [n if _PY_NAME.fullmatch(n) else "(an unreadable name)" for n in foreign]
        shown = ", ".join(names[:3]) + (f" (+{len(names) - 3} more)" if len(names) > 3 else "")
        return PickledCodeError(
            f"{name}: refused — the file contains pickled Python objects beyond plain tensors ({shown}), "
            "and loading it could execute code. Only weights_only files are accepted; convert it in "
            "a trusted environment (e.g. save its state_dict with safetensors)")
    if _looks_like_torch(f):
        if isinstance(e, (RuntimeError, EOFError, zipfile.BadZipFile, OSError)) and str(e).strip():
            detail = re.split(r"(?<=[a-z])\. ", str(e).strip().splitlines()[0])[0][:200]  # its first sentence
        elif isinstance(e, pickle.UnpicklingError):
            detail = "its pickled structure is damaged or holds objects weights_only loading does not allow"
        else:
            detail = type(e).__name__
        return WeightsError(f"{name}: cannot read this checkpoint (truncated or corrupt download?): {detail}")
    return WeightsError(f"{name}: not a checkpoint (unreadable): {_describe_bytes(f, imports)}. Expected a "
                        "PyTorch checkpoint (torch.save) or a .safetensors file: check the path, or download "
                        "the file again")


# What a pickled import looks like ("module.sub.name"); anything else is not shown.
_PY_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*){0,8}")


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


def _looks_like_torch(f) -> bool:
    """A torch.save file, possibly cut short: a zip archive (or the start of one), or the
    legacy format's magic number."""
    try:
        if zipfile.is_zipfile(f):
            return True
        f.seek(0)
        head = f.read(len(_LEGACY_TORCH_MAGIC))
        return head.startswith(b"PK\x03\x04") or head == _LEGACY_TORCH_MAGIC
    except OSError:
        return False


def _pickled_imports(f) -> list[str] | None:
    """The names the pickles of the open file ``f`` import ("module.name"), read with
    `pickletools` (which parses, never executes); None when the file does not start with
    a complete pickle. Looks at ``data.pkl`` of a torch zip, else at the pickles the file
    starts with."""
    try:
        if zipfile.is_zipfile(f):
            f.seek(0)
            with zipfile.ZipFile(f) as z:
                member = next((n for n in z.namelist() if n == "data.pkl" or n.endswith("/data.pkl")), None)
                if member is None:
                    return None
                with z.open(member) as m:
                    data = m.read(_SCAN_BYTES)
        else:
            f.seek(0)
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


def _describe_bytes(f, imports: list[str] | None) -> str:
    """What the open file ``f``, which is no checkpoint, looks like, in a few words — its
    kind and size, never its content (it may be any file of the machine, e.g. through a
    symbolic link in a model folder)."""
    try:
        size = os.fstat(f.fileno()).st_size
        f.seek(0)
        head = f.read(4096)
    except OSError as e:
        return f"cannot read it ({e.strerror or type(e).__name__})"
    if size == 0:
        return "the file is empty (0 bytes)"
    if size < 16:
        return f"only {size} bytes"
    if imports is not None:
        return "a Python pickle, not a torch.save checkpoint"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as e:  # a character cut at the 4096-byte boundary is still text
        text = head[:e.start].decode("utf-8") if e.start >= len(head) - 3 and e.start else None
    if text is not None and all(c.isprintable() or c in "\r\n\t" for c in text):
        stripped = text.lstrip()
        if stripped[:1] in ("{", "[") and size <= 2**20:
            try:
                f.seek(0)
                json.loads(f.read(2**20).decode("utf-8"))
                return "a JSON file"
            except (ValueError, OSError):
                pass
        if stripped[:1] == "<":
            return (f"a text file of {size} bytes that looks like HTML/XML (an error page saved in place of the "
                    "download?)")
        return f"a text file of {size} bytes"
    return f"unrecognised binary data ({size} bytes)"


def _all_finite(t: torch.Tensor) -> bool:
    if t.dtype in (torch.float16, torch.bfloat16) and t.device.type == "cpu":
        # torch.isfinite on half-precision CPU tensors is several times slower than on float32:
        # check float32 copies of bounded chunks instead.
        flat = t.reshape(-1)
        return all(bool(torch.isfinite(flat[i:i + 2**22].float()).all()) for i in range(0, flat.numel(), 2**22))
    return bool(torch.isfinite(t).all())


# Integer tensors a checkpoint may hold besides its weights: index buffers (CLIP's
# position_ids, BatchNorm's counter, an EMA's update count), never used as weights.
_INDEX_TENSORS = ("position_ids", "num_batches_tracked", "num_updates")


def check_finite(tensors: Mapping, what: str, *, prefix: str = "") -> None:
    """Raise a `WeightsError` naming the first tensor of ``tensors`` (nested dicts
    included, their keys joined with '.') that cannot be a weight: a floating-point one
    holding NaN or Inf (a damaged file or a diverged training run, which would otherwise
    load silently and give black or noise images), or one stored in a non-floating dtype
    (uint8 weights would be converted to garbage floats without a word); integer index
    buffers (`_INDEX_TENSORS`) are allowed. One ``torch.isfinite(t).all()`` per tensor,
    on the tensors already read."""
    for key, value in tensors.items():
        name = f"{prefix}{key}"
        if isinstance(value, torch.Tensor):
            if not (value.is_floating_point() or str(key).rsplit(".", 1)[-1] in _INDEX_TENSORS):
                raise WeightsError(f"{what}: tensor {name!r} is stored as {str(value.dtype).replace('torch.', '')}; "
                                   "weights must be floating point (fp32, fp16 or bf16) — the file is damaged or "
                                   "was edited; refusing to load it")
            if value.is_floating_point() and value.numel() and not value.is_meta and not _all_finite(value):
                kinds = [k for k, bad in (("NaN", torch.isnan(value).any()), ("Inf", torch.isinf(value).any()))
                         if bool(bad)]
                raise WeightsError(f"{what}: tensor {name!r} holds {' and '.join(kinds)} values; the file is "
                                   "damaged or comes from a diverged training run — refusing to load it")
        elif isinstance(value, Mapping):
            check_finite(value, what, prefix=f"{name}.")


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
        try:
            yield tmp
        except Exception as e:
            failure = write_failure(e, path)
            if failure is None or failure is e:
                raise
            raise failure from e
        os.chmod(tmp, new_file_mode())  # a writer may create it private (safetensors' save_file: 0o600)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


# A folder whose file system has less than this left is full, as far as a writer that
# failed without saying why is concerned (torch.save's zip writer reports no errno).
_FULL_BELOW = 16 * 2**20


def write_failure(exc: BaseException, path: str | os.PathLike, note: str = "") -> OSError | None:
    """The `OSError` (errno, strerror, ``path``) to report when writing ``path`` failed with
    ``exc``; None when ``exc`` is no I/O failure (a bug: keep it as it is).

    An `OSError` carrying an errno is returned as is when it names its file, else with
    ``path`` added; the I/O errors writer libraries report their own way are translated:
    safetensors' ``SafetensorError("... (os error 28)")``, and torch.save's zip-writer
    `RuntimeError` (no errno: read as "no space left" when ``path``'s file system has less
    than 16 MiB free). ``note`` is appended to the reason (e.g. what was kept)."""
    code = None
    if isinstance(exc, OSError):
        if exc.errno is None:
            return None
        if exc.filename is not None and not note:
            return exc
        code = exc.errno
    elif type(exc).__name__ == "SafetensorError":
        found = re.search(r"os error (\d+)", str(exc))
        code = int(found.group(1)) if found else None
    elif isinstance(exc, RuntimeError) and any(s in str(exc) for s in ("PytorchStreamWriter", "inline_container",
                                                                      "file write failed")):
        code = errno.ENOSPC if _free_bytes(Path(path).parent) < _FULL_BELOW else errno.EIO
    if code is None:
        return None
    reason = os.strerror(code) + (" (the disk is full)" if code in (errno.ENOSPC, errno.EDQUOT) else "")
    return OSError(code, reason + (f"; {note}" if note else ""), str(path))


def _free_bytes(folder: Path) -> int:
    """Bytes a new file in ``folder`` may still take (root may use the reserved blocks)."""
    while not folder.exists() and folder.parent != folder:
        folder = folder.parent
    try:
        st = os.statvfs(folder)
    except (OSError, AttributeError):
        return _FULL_BELOW  # unknown: not "full"
    blocks = st.f_bfree if hasattr(os, "geteuid") and os.geteuid() == 0 else st.f_bavail
    return blocks * st.f_frsize


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
        try:
            save_file(tensors, tmp, metadata=metadata)
        except Exception as e:  # safetensors reports a full disk as its own error type
            failure = write_failure(e, path, "nothing was written")
            if failure is None:
                raise
            raise failure from e
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
