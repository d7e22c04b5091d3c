"""The run folder (``output_dir``): its layout, the atomic (fsynced) checkpoint
bookkeeping (`RunDir`: publishing, choosing the checkpoint to resume from past damaged
ones, removing temp leftovers of interrupted writes), the log (a torn last line
tolerated), and the safetensors files of trained tensors a checkpoint holds.
The layout and the checkpoint protocol are described in `cli.research.training`.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import struct
import sys
import time
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Mapping

import torch

from ....pipelines.files import new_file_mode, write_text_atomic
from .config import MODEL_KINDS, ConfigError, TrainConfig

CHECKPOINTS = "checkpoints"
LATEST = "latest"
TMP_PREFIX = ".tmp_"
STATE_FILE = "train_state.json"        # written last: a checkpoint folder without it is incomplete
TRAINABLE_FILE = "trainable.safetensors"
EMA_FILE = "ema.safetensors"
FINAL_FILE = "final.safetensors"
FINAL_NOEMA_FILE = "final_noema.safetensors"
CHECKPOINT_FORMAT = 1
LOG_FILE = "log.jsonl"
CONFIG_FILE = "config.json"
# Held (flock) by the one process that trains in the folder, for as long as it runs
# (`RunDir.locked`); the system releases it when the process dies.
LOCK_FILE = ".train.lock"
# Temp names of interrupted writes, removed on the next start / resume (`RunDir.remove_temp_leftovers`):
# `files.atomic_path` / `save_native` write `.<name>.<pid or random>.tmp` beside <name>.
_TEMP_FILE = re.compile(r"\.(?P<name>.+)\.[A-Za-z0-9_]+\.tmp")
_TEMP_CHECKPOINT = re.compile(re.escape(TMP_PREFIX) + r"(old_)?step_\d+")


def fsync_file(path: str | os.PathLike) -> None:
    """Flush a written file's data to the disk."""
    fd = os.open(path, os.O_RDWR if os.name == "nt" else os.O_RDONLY)  # Windows commits writable handles only
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | os.PathLike) -> None:
    """Flush a folder's entries (creations, renames) to the disk; a no-op where folders
    cannot be opened (Windows)."""
    if os.name == "nt":
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on a folder
        pass
    finally:
        os.close(fd)


def fsync_tree(folder: Path) -> None:
    """fsync every file under ``folder``, then each folder (deepest first)."""
    for here, dirs, files in os.walk(folder, topdown=False):
        for name in files:
            fsync_file(os.path.join(here, name))
        fsync_dir(here)


def write_text_durable(path: Path, text: str) -> None:
    """Write ``text`` to a temp file beside ``path``, fsync it, rename it over ``path``,
    then fsync the folder: after a crash ``path`` holds the old or the new text."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    fsync_dir(path.parent)


def safetensors_problem(path: Path) -> str | None:
    """Why ``path`` is not a whole safetensors file (None if its header and size agree);
    reads the header only."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return f"{path.name} is truncated or corrupt ({size} bytes, no header)"
            (n,) = struct.unpack("<Q", head)
            if n > size - 8:
                return f"{path.name} is truncated or corrupt (header of {n} bytes in a {size}-byte file)"
            header = json.loads(f.read(n))
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError) as e:
        return f"{path.name} is truncated or corrupt (unreadable header: {e})"
    if 8 + n + end != size:
        return f"{path.name} is truncated or corrupt ({size} of {8 + n + end} bytes)"
    return None


def torch_file_problem(path: Path) -> str | None:
    """Why ``path`` (a `torch.save` zip file of Accelerate's state) is not whole; reads
    the zip directory at its end, which a truncated file lacks. Files in the legacy
    (non-zip) format are not checked."""
    try:
        with open(path, "rb") as f:
            if f.read(4) != b"PK\x03\x04":
                return None if path.stat().st_size else f"{path.name} is empty"
        with zipfile.ZipFile(path) as z:
            z.infolist()
    except (OSError, zipfile.BadZipFile, ValueError) as e:
        return f"{path.name} is truncated or corrupt ({e})"
    return None


def step_name(step: int) -> str:
    """The folder / image name of a step: step_000042."""
    return f"step_{step:06d}"


class RunDir:
    """Paths of a run folder and its checkpoint bookkeeping (layout and protocol: `cli.research.training`)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.checkpoints = self.root / CHECKPOINTS
        self.samples = self.root / "samples"
        self.log = self.root / LOG_FILE
        self.config = self.root / CONFIG_FILE
        self.final = self.root / FINAL_FILE

    @staticmethod
    def is_complete(folder: Path) -> bool:
        return folder.is_dir() and (folder / STATE_FILE).is_file()

    def latest_checkpoint(self) -> Path | None:
        """The checkpoint ``latest`` names, else the newest complete ``step_*`` folder;
        temp folders of interrupted saves are never considered."""
        candidates = self.checkpoint_candidates()
        return candidates[0] if candidates else None

    def checkpoint_candidates(self) -> list[Path]:
        """The complete checkpoints, the one ``latest`` names first, then newest first."""
        if not self.checkpoints.is_dir():
            return []
        done = sorted((d for d in self.checkpoints.iterdir()
                       if re.fullmatch(r"step_\d+", d.name) and self.is_complete(d)), reverse=True)
        pointer = self.checkpoints / LATEST
        if pointer.is_file():
            try:
                named = self.checkpoints / pointer.read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError):
                named = None
            if named in done:
                done.remove(named)
                done.insert(0, named)
        return done

    @staticmethod
    def checkpoint_problem(folder: Path) -> str | None:
        """Why a complete-looking checkpoint cannot be resumed from (a truncated or corrupt
        file), None if every file is whole. Checks headers and sizes, not every byte."""
        try:
            state = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
            int(state["step"])
            state["scheduler"]
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
            return f"{STATE_FILE} is truncated or corrupt ({type(e).__name__}: {e})"
        if not (folder / TRAINABLE_FILE).is_file():
            return f"{TRAINABLE_FILE} is missing"
        for path in sorted(folder.rglob("*")):
            if not path.is_file() or path.name == STATE_FILE:
                continue
            if path.suffix == ".safetensors":
                problem = safetensors_problem(path)
            elif path.suffix in (".bin", ".pkl", ".pt", ".pth"):
                problem = torch_file_problem(path)
            else:
                continue
            if problem:
                return problem if path.parent == folder else f"{path.parent.relative_to(folder)}/{problem}"
        return None

    def resumable_checkpoint(self, *, quiet: bool = False) -> Path | None:
        """The checkpoint ``--resume`` continues from: the newest complete one whose files
        are whole (`checkpoint_problem`), saying on stderr (unless ``quiet``) which were
        skipped and why; None when there is none at all; a `ConfigError` when every one
        is damaged."""
        problems = []
        for folder in self.checkpoint_candidates():
            problem = self.checkpoint_problem(folder)
            if problem is None:
                if problems and not quiet:
                    print(f"--resume: checkpoint {problems[0][0]} is unusable: {problems[0][1]}; "
                          + "".join(f"so is {n}: {p}; " for n, p in problems[1:])
                          + f"resuming from {folder.name} (step {int(folder.name[5:])}) instead",
                          file=sys.stderr)
                return folder
            problems.append((folder.name, problem))
        if problems:
            raise ConfigError(f"--resume: no usable checkpoint in {self.checkpoints}: "
                              + "; ".join(f"{n}: {p}" for n, p in problems)
                              + ". Restore them from a backup, or delete the step_* folders to start again "
                              "from step 0")
        return None

    def has_run(self) -> bool:
        return self.latest_checkpoint() is not None or self.final.exists()

    def is_run_folder(self) -> bool:
        """Whether the folder was made by `train`: it holds ``checkpoints/`` (created with
        config.json when a run starts) and a config.json, if any, that is a training config."""
        if not self.checkpoints.is_dir():
            return False
        if not self.config.exists():
            return True
        try:
            stored = json.loads(self.config.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        return isinstance(stored, dict) and stored.get("model") in MODEL_KINDS and "output_dir" in stored

    def foreign_files(self) -> list[str]:
        """The names in a non-empty folder that is not a run folder (`is_run_folder`): files
        of the user's that a run would overwrite (config.json) or append to (log.jsonl), or
        mix its files with. Empty for a missing, empty or run folder."""
        if not self.root.is_dir() or self.is_run_folder():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.name != LOCK_FILE)

    @contextmanager
    def locked(self):
        """Hold the folder's lock (created with the folder) while the block runs: a second
        `train` in the same folder — a fresh run or ``--resume`` — gets a `ConfigError` naming
        the process that holds it, instead of both writing checkpoints and log lines. The
        lock is the system's (flock), so a killed process leaves no stale lock behind."""
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / LOCK_FILE
        fd = _acquire_lock(path, self.root)
        try:
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                     "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode())
            yield
        finally:
            try:
                path.unlink()  # before the unlock: a process waiting for this file retries (`_acquire_lock`)
            except OSError:
                pass
            _unlock(fd)
            os.close(fd)

    def publish(self, tmp: Path, name: str) -> Path:
        """Move a completely written checkpoint into place, then point ``latest`` at it.
        Its files and folder are fsynced first, so neither rename can reach the disk
        before the data it publishes."""
        fsync_tree(tmp)
        final = self.checkpoints / name
        if final.exists():  # re-saving a step (a resumed run passing a step saved before)
            old = self.checkpoints / f"{TMP_PREFIX}old_{name}"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            fsync_dir(self.checkpoints)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
            fsync_dir(self.checkpoints)
        write_text_durable(self.checkpoints / LATEST, name + "\n")
        return final

    def remove_temp_leftovers(self) -> list[Path]:
        """Delete what interrupted writes left in the run folder — ``.<name>.<id>.tmp``
        files of our own file names, ``checkpoints/.tmp_step_*`` folders — and return
        them; every other file stays."""
        removed = []
        ours = {LOG_FILE, CONFIG_FILE, FINAL_FILE, FINAL_NOEMA_FILE}
        places = [(self.root, lambda n: n in ours), (self.checkpoints, lambda n: n == LATEST),
                  (self.samples, lambda n: re.fullmatch(r"step_\d+\.png", n) is not None)]
        for folder, is_ours in places:
            if not folder.is_dir():
                continue
            for path in sorted(folder.iterdir()):
                m = _TEMP_FILE.fullmatch(path.name)
                if m and is_ours(m["name"]) and path.is_file() and not path.is_symlink():
                    path.unlink()
                    removed.append(path)
                elif (folder == self.checkpoints and _TEMP_CHECKPOINT.fullmatch(path.name)
                      and path.is_dir() and not path.is_symlink()):
                    shutil.rmtree(path)
                    removed.append(path)
        return removed

    def prune(self, keep: int | None) -> None:
        if not keep:
            return
        done = sorted(d for d in self.checkpoints.iterdir() if re.fullmatch(r"step_\d+", d.name))
        for d in done[:-keep]:
            shutil.rmtree(d, ignore_errors=True)

    def read_log(self, *, quiet: bool = False) -> list[dict]:
        """The records of ``log.jsonl``. A torn last line (a kill while it was written) is
        dropped, saying so on stderr unless ``quiet``; any other line that is not a JSON
        object is a `ConfigError` naming the file and the line."""
        return [record for _, record in self._log_lines(quiet=quiet)]

    def _log_lines(self, *, quiet: bool) -> list[tuple[str, dict]]:
        if not self.log.is_file():
            return []
        lines = self.log.read_bytes().split(b"\n")
        last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
        out = []
        for i, raw in enumerate(lines[:last + 1]):
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8")
                record = json.loads(text)
                if not isinstance(record, dict):
                    raise ValueError(f"expected a JSON object, found {type(record).__name__}")
            except ValueError as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
                if i == last:
                    if not quiet:
                        print(f"{self.log}: dropped its torn last line {i + 1} (cut off by an interrupted "
                              f"write): {raw[:60].decode('utf-8', 'replace')!r}", file=sys.stderr)
                    break
                raise ConfigError(f"{self.log} line {i + 1} is not valid JSON ({e}); fix or delete that line, "
                                  "then run again") from None
            out.append((text.rstrip("\r"), record))
        return out

    def truncate_log(self, step: int) -> None:
        """Drop log lines of steps after ``step`` (they are recomputed by the resumed run)
        and a torn last line (`read_log`)."""
        if not self.log.is_file():
            return
        kept = [text for text, record in self._log_lines(quiet=False) if record.get("step", 0) <= step]
        write_text_atomic(self.log, "".join(text + "\n" for text in kept))

    def append_log(self, record: dict) -> None:
        with open(self.log, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


def _acquire_lock(path: Path, root: Path) -> int:
    """An open descriptor of ``path`` holding its exclusive lock, or a `ConfigError` naming
    the holder. Retries when the file it locked was removed meanwhile by a holder that just
    finished (its lock then guards nothing)."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        if not _try_lock(fd):
            holder = _lock_holder(fd)
            os.close(fd)
            raise ConfigError(f"output_dir {root} is in use by another train process{holder}: two runs in one folder "
                              "would overwrite each other's checkpoints and log. Wait for it to finish (then pass "
                              "--resume to continue it), stop it, or choose another output_dir")
        try:
            if os.path.samestat(os.fstat(fd), os.stat(path)):
                return fd
        except FileNotFoundError:
            pass
        _unlock(fd)
        os.close(fd)


def _lock_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f" (pid {int(info['pid'])} on {info['host']}, since {info['since']})"
    except (OSError, ValueError, KeyError, TypeError, AttributeError):  # AttributeError: no os.pread (Windows)
        return ""


try:
    import fcntl

    def _try_lock(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False

    def _unlock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)
except ImportError:  # Windows
    import msvcrt

    def _try_lock(fd: int) -> bool:
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False

    def _unlock(fd: int) -> None:
        try:
            os.lseek(fd, 0, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
        except OSError:
            pass


def save_tensors(tensors: Mapping[str, torch.Tensor], path: Path) -> None:
    """Write tensors (moved to the CPU) as a safetensors file (trainable / EMA tensors)."""
    from safetensors.torch import save_file

    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path))
    os.chmod(path, new_file_mode())  # safetensors creates its files 0o600


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file written by `save_tensors`."""
    from safetensors.torch import load_file

    return load_file(str(path))


def copy_into(params: Mapping[str, torch.Tensor], tensors: Mapping[str, torch.Tensor], what: str) -> None:
    """Copy a checkpoint's trained tensors into the parameters; a `ConfigError` when the
    names or shapes do not match this run's trainable parts."""
    missing = sorted(set(params) - set(tensors))
    unexpected = sorted(set(tensors) - set(params))
    if missing or unexpected:
        raise ConfigError(f"{what}: the checkpoint's trained tensors do not match this run's trainable parts "
                          f"({len(missing)} missing, e.g. {missing[:3]}; {len(unexpected)} unexpected, e.g. "
                          f"{unexpected[:3]}). Resume with the config the run was started with.")
    with torch.no_grad():
        for k, p in params.items():
            if tuple(tensors[k].shape) != tuple(p.shape):
                raise ConfigError(f"{what}: {k} has shape {tuple(tensors[k].shape)}, the model {tuple(p.shape)}")
            p.copy_(tensors[k].to(p.device, p.dtype))


def check_against_stored(run: RunDir, cfg: TrainConfig) -> None:
    """Warn when a resumed run's config changes what the stored one computes."""
    if not run.config.is_file():
        return
    stored = json.loads(run.config.read_text(encoding="utf-8"))
    # Keys that change what is computed; the rest (steps, logging, validation) may change on resume.
    state_keys = ("model", "preset", "init", "init_vae", "init_id_encoder", "text", "trainable", "data_root",
                  "split", "data_limit", "resolution", "seed", "batch_size", "grad_accum", "lr", "lr_scheduler",
                  "lr_warmup_steps", "weight_decay", "adam_betas", "adam_eps", "mixed_precision", "ema_decay",
                  "stage", "generated_masks", "latent_scale", "latent_shift", "prediction_type", "figure_loss_weight",
                  "objective", "refiner")
    differ = [k for k in state_keys if k in stored and stored[k] != getattr(cfg, k)]
    if differ:
        print(f"warning: resuming {run.root} with a config that differs from the stored one in "
              f"{', '.join(differ)}; the run will not reproduce an uninterrupted one", file=sys.stderr)
