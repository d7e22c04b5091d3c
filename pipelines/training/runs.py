"""The run folder (``output_dir``): its layout, the atomic checkpoint bookkeeping
(`RunDir`), the log, and the safetensors files of trained tensors a checkpoint holds.
The layout and the checkpoint protocol are described in `pipelines.training`.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Mapping

import torch

from ..files import write_text_atomic
from .config import ConfigError, TrainConfig

CHECKPOINTS = "checkpoints"
LATEST = "latest"
TMP_PREFIX = ".tmp_"
STATE_FILE = "train_state.json"        # written last: a checkpoint folder without it is incomplete
TRAINABLE_FILE = "trainable.safetensors"
EMA_FILE = "ema.safetensors"
FINAL_FILE = "final.safetensors"
FINAL_NOEMA_FILE = "final_noema.safetensors"
CHECKPOINT_FORMAT = 1


def step_name(step: int) -> str:
    """The folder / image name of a step: step_000042."""
    return f"step_{step:06d}"


class RunDir:
    """Paths of a run folder and its checkpoint bookkeeping (layout and protocol: `pipelines.training`)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.checkpoints = self.root / CHECKPOINTS
        self.samples = self.root / "samples"
        self.log = self.root / "log.jsonl"
        self.config = self.root / "config.json"
        self.final = self.root / FINAL_FILE

    @staticmethod
    def is_complete(folder: Path) -> bool:
        return folder.is_dir() and (folder / STATE_FILE).is_file()

    def latest_checkpoint(self) -> Path | None:
        """The checkpoint ``latest`` names, else the newest complete ``step_*`` folder;
        temp folders of interrupted saves are never considered."""
        pointer = self.checkpoints / LATEST
        if pointer.is_file():
            folder = self.checkpoints / pointer.read_text(encoding="utf-8").strip()
            if self.is_complete(folder):
                return folder
        if not self.checkpoints.is_dir():
            return None
        done = sorted(d for d in self.checkpoints.iterdir()
                      if re.fullmatch(r"step_\d+", d.name) and self.is_complete(d))
        return done[-1] if done else None

    def has_run(self) -> bool:
        return self.latest_checkpoint() is not None or self.final.exists()

    def publish(self, tmp: Path, name: str) -> Path:
        """Move a completely written checkpoint into place, then point ``latest`` at it."""
        final = self.checkpoints / name
        if final.exists():  # re-saving a step (a resumed run passing a step saved before)
            old = self.checkpoints / f"{TMP_PREFIX}old_{name}"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        write_text_atomic(self.checkpoints / LATEST, name + "\n")
        return final

    def prune(self, keep: int | None) -> None:
        if not keep:
            return
        done = sorted(d for d in self.checkpoints.iterdir() if re.fullmatch(r"step_\d+", d.name))
        for d in done[:-keep]:
            shutil.rmtree(d, ignore_errors=True)

    def truncate_log(self, step: int) -> None:
        """Drop log lines of steps after ``step`` (they are recomputed by the resumed run)."""
        if not self.log.is_file():
            return
        kept = [line for line in self.log.read_text(encoding="utf-8").splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= step]
        write_text_atomic(self.log, "".join(line + "\n" for line in kept))

    def append_log(self, record: dict) -> None:
        with open(self.log, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


def save_tensors(tensors: Mapping[str, torch.Tensor], path: Path) -> None:
    """Write tensors (moved to the CPU) as a safetensors file (trainable / EMA tensors)."""
    from safetensors.torch import save_file

    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path))


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
                  "stage", "generated_masks", "latent_scale", "latent_shift", "prediction_type", "figure_loss_weight")
    differ = [k for k in state_keys if k in stored and stored[k] != getattr(cfg, k)]
    if differ:
        print(f"warning: resuming {run.root} with a config that differs from the stored one in "
              f"{', '.join(differ)}; the run will not reproduce an uninterrupted one", file=sys.stderr)
