"""The training loop: `train` runs (or resumes) the run a `TrainConfig` describes, on the
CPU, one GPU or several (Accelerate), writing the run folder (`runs.RunDir`).

One call: open the run folder (or find the checkpoint to resume), build the model and its
loss (`models`, `losses`), the datasets (`data`), calibrate the latents, prepare model and
optimizer with Accelerate, restore a checkpoint, then the optimizer steps — each logged,
checkpointed and validated as the config says — and the final file. Every random draw of
a step is seeded by `step_seed` (seed, step, micro-step, process), so a resumed run
computes what an uninterrupted one does. Weight files are read and written through the
`weights_manager` (through `.models`).
"""
from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ....pipelines import iamg, samplers
from ..data.dataset import save_png
from ....pipelines.files import DTYPES, write_failure, write_text_atomic
from ....pipelines.mgig.refiner import reference_colours
from . import data as train_data
from .config import ConfigError, TrainConfig, resolved_lr, resolved_mixed_precision, resolved_resolution
from .ema import EMA
from .losses import LOSSES
from .models import (build_model, calibrated_latent_scale, calibrated_latent_shift, cast_frozen,
                     enable_grad_checkpointing, save_final, set_latent_scale, set_trainable, trained_parameters)
from .runs import (CHECKPOINT_FORMAT, EMA_FILE, FINAL_NOEMA_FILE, STATE_FILE, TMP_PREFIX, TRAINABLE_FILE, RunDir,
                   check_against_stored, copy_into, fsync_dir, fsync_file, load_tensors, save_tensors, step_name)


def step_seed(seed: int, step: int, micro: int, process: int) -> int:
    """The seed of every random draw of one micro-step on one process (see module docstring)."""
    return int(np.random.SeedSequence([seed, step, micro, process]).generate_state(1, np.uint64)[0] >> 1)


# --------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------

def build_dataset(cfg: TrainConfig, model: nn.Module, *, split: str | None = None, generated: bool = True):
    """The `train_data` dataset of a config (``split`` overrides the training split;
    ``generated=False`` ignores stage-2 masks, e.g. for validation)."""
    common = {"split": cfg.split if split is None else split, "seed": cfg.seed, "limit": cfg.data_limit}
    size = resolved_resolution(cfg)
    if cfg.model == "vae":
        return train_data.VAETrainData(cfg.data_root, size=size, sources=cfg.vae_sources, **common)
    if cfg.model == "iamg":
        tokenize = None
        if model.uses_text:
            model.tokenize([""])  # resolves the tokenizer now, with a clear error if there is none
            tokenize = model.tokenizer
        return train_data.IAMGTrainData(cfg.data_root, size=size, background_dropout=cfg.background_dropout,
                                        tokenize=tokenize, **common)
    return train_data.MGIGTrainData(
        cfg.data_root, size=size, box_ratio=cfg.box_ratio, crop_ratio=cfg.crop_ratio,
        mask_channel_prob=cfg.mask_channel_prob, perturb_prob=cfg.perturb_prob,
        figure_collage_prob=cfg.figure_collage_prob, hflip_prob=cfg.hflip_prob,
        color_prob=cfg.color_prob, colour_hint=bool(model.config.colour_hint),
        background_dropout=cfg.background_dropout, box_dropout=cfg.box_dropout, id_dropout=cfg.id_dropout,
        generated_masks=cfg.generated_masks if (generated and cfg.stage == 2) else None, **common)


def _to_device(batch: dict, device: torch.device) -> dict:
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


# --------------------------------------------------------------------------------------
# Validation images
# --------------------------------------------------------------------------------------

def _u8(x: torch.Tensor) -> np.ndarray:
    """[C,H,W] in [-1, 1] (C = 1 or 3) → uint8 HxWx3."""
    x = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    if x.shape[0] == 1:
        x = x.expand(3, -1, -1)
    return x.permute(1, 2, 0).numpy()


def _grid(rows: list[list[np.ndarray]], side: int):
    """The panels as one RGB sheet, a row per item, each panel resized to side²."""
    from PIL import Image

    cols = max(len(r) for r in rows)
    sheet = Image.new("RGB", (cols * side, len(rows) * side), (0, 0, 0))
    for i, row in enumerate(rows):
        for j, panel in enumerate(row):
            im = Image.fromarray(panel)
            if im.size != (side, side):
                im = im.resize((side, side), Image.BILINEAR)
            sheet.paste(im, (j * side, i * side))
    return sheet


@torch.no_grad()
def validation_rows(cfg: TrainConfig, model: nn.Module, items: list[dict], device: torch.device) -> list[list[np.ndarray]]:
    """Generate from the validation items; one row of panels (uint8 images) per item."""
    if not items:
        return []
    batch = _to_device(torch.utils.data.default_collate(items), device)
    n = len(items)
    if cfg.model == "vae":
        rec = model.decode(model.encode(batch["image"]).latent_dist.mean).sample
        return [[_u8(batch["image"][i]), _u8(rec[i])] for i in range(n)]
    if cfg.model == "iamg":
        cond = model.encode_condition(batch["condition"]).float()
        context = uncond = None
        if model.uses_text:
            context = model.encode_prompts(batch["caption"])
            uncond = model.encode_prompts([""] * n)
        x_T = samplers.initial_noise(tuple(cond.shape), cfg.seed, device=device)
        latent = iamg.sample_mask_latent(model, cond, steps=cfg.validation_steps, sampler="ddim", x_T=x_T,
                                         context=context, uncond_context=uncond, guidance=cfg.validation_guidance)
        soft = iamg.soft_mask_from_decoded(model.decode(latent))
        return [[_u8(batch["condition"][i]), _u8(batch["target"][i]), _u8(soft[i:i + 1] * 2 - 1)]
                for i in range(n)]
    hint, reference = batch["hint"], batch["reference"]
    context, uncond = model.encode_id(reference), model.uncond_context(n)
    side = hint.shape[-1] // 8
    x_T = samplers.initial_noise((n, model.latent_channels, side, side), cfg.seed, device=device)
    eps_fn = samplers.guided_eps(lambda x, t, context, hint: model.predict_eps(x, t, context, hint),
                                 {"context": context, "hint": hint}, {"context": uncond, "hint": hint},
                                 cfg.validation_guidance)
    z = samplers.sample(eps_fn, x_T, model.alphas_cumprod.to(device), cfg.validation_steps, "ddim")
    colours = reference_colours(reference, batch["reference_mask"])
    image = model.decode_latent(z, hint=hint, colours=colours, scene=batch["scene"])
    return [[_u8(reference[i] * 2 - 1), _u8(hint[i, :3]), _u8(hint[i, 3:4]), _u8(image[i]), _u8(batch["target"][i])]
            for i in range(n)]


# --------------------------------------------------------------------------------------
# Progress
# --------------------------------------------------------------------------------------

class Progress:
    """One progress line (rewritten in place on a terminal, one line per update in a log)."""

    def __init__(self, total: int, stream=None):
        self.total, self.stream = total, stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.start = time.perf_counter()
        self.width = 0

    def update(self, step: int, first: int, loss: float, lr: float) -> None:
        elapsed = time.perf_counter() - self.start
        rate = elapsed / max(step - first, 1)
        eta = rate * (self.total - step)
        text = (f"step {step}/{self.total}  loss {loss:.4f}  lr {lr:.2e}  {rate:.2f} s/step  "
                f"eta {int(eta // 3600)}:{int(eta % 3600 // 60):02d}:{int(eta % 60):02d}")
        if self.tty:
            self.stream.write("\r" + text.ljust(self.width))
            self.width = len(text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty and self.width:
            self.stream.write("\n")
            self.stream.flush()


# --------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------

@dataclass
class TrainResult:
    """What a `train` call did: the run folder, the step reached, the final file (None when
    the run stopped early at ``max_steps_per_run``) and the logged losses of this call."""

    output_dir: Path
    step: int
    final: Path | None
    losses: list[float]
    seconds_per_step: float
    main_process: bool = True


def train(cfg: TrainConfig, *, resume: bool = False, progress: bool = True,
          overwrite: bool = False) -> TrainResult:
    """Run (or, with ``resume``, continue) the training a config describes; see
    `cli.research.training` for what is written. Returns a `TrainResult`.

    The main process holds the run folder's lock throughout (`RunDir.locked`: a second
    `train` there is refused). A folder holding other files than a run is refused unless
    ``overwrite`` (`RunDir.foreign_files`)."""
    from accelerate import Accelerator

    on_cpu = cfg.device == "cpu" or not torch.cuda.is_available()
    mixed_precision = resolved_mixed_precision(cfg, "cpu" if on_cpu else "cuda")
    if cfg.mixed_precision == "auto":
        print(f"mixed_precision auto: {mixed_precision} on this {'CPU' if on_cpu else 'GPU'}", file=sys.stderr)
    accelerator = Accelerator(mixed_precision=mixed_precision, cpu=cfg.device == "cpu")
    run = RunDir(cfg.output_dir)
    main = accelerator.is_main_process
    if main and not overwrite and (foreign := run.foreign_files()):
        raise ConfigError(f"output_dir {run.root} holds files that are not a training run ("
                          + ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "") + "); a run writes "
                          "config.json, log.jsonl, checkpoints/ and final.safetensors there, replacing or appending "
                          "to files of those names. Choose an empty or new folder, or pass --overwrite to train "
                          "there anyway")
    with (run.locked() if main else nullcontext()), samplers.flush_denormals(accelerator.device.type == "cpu"):
        return _train(cfg, accelerator, run, resume=resume, progress=progress)


def _train(cfg: TrainConfig, accelerator, run: RunDir, *, resume: bool,
           progress: bool) -> TrainResult:
    main = accelerator.is_main_process
    resume_from = _resume_point(run, cfg, resume=resume, main=main)

    model, loss_module, params = _prepare_model(cfg)
    dataset = build_dataset(cfg, model)
    if getattr(model, "tokenizer", None) is not None and hasattr(dataset, "choi"):
        # The model's file then says which words it learned; IAMG warns about the others.
        model.tokenizer = model.tokenizer.with_trained_words(r["caption"] for r in dataset.choi.records)
    scale = _calibrate_latents(cfg, model, dataset)
    val_items = _validation_items(cfg, model, dataset) if main and cfg.validation_samples else []

    optimizer, scheduler = _optimizer(cfg, params)
    loss_module, optimizer = accelerator.prepare(loss_module, optimizer)
    core = accelerator.unwrap_model(loss_module).model
    params = trained_parameters(core)
    ema = EMA(params, cfg.ema_decay) if cfg.ema_decay else None
    _checkpoint_trained_tensors_only(accelerator, params)

    start = 0
    if resume_from is not None:
        start = _restore(accelerator, resume_from, scheduler, ema, params)
        if main:
            print(f"resumed {run.root} at step {start} from {resume_from.name}", file=sys.stderr)
    if main:
        _open_run_folder(run, cfg, start, model, scale)
    accelerator.wait_for_everyone()

    session = _Session(cfg, accelerator, run, loss_module, optimizer, scheduler, core, params, ema,
                       val_items)
    sampler = train_data.PositionSampler(cfg.batch_size, num_processes=accelerator.num_processes,
                                         process_index=accelerator.process_index, start=start * cfg.grad_accum)
    loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler,
                                         num_workers=cfg.num_workers, pin_memory=accelerator.device.type == "cuda",
                                         persistent_workers=cfg.num_workers > 0)
    batches = iter(loader)
    stop = cfg.steps if cfg.max_steps_per_run is None else min(cfg.steps, start + cfg.max_steps_per_run)
    bar = Progress(cfg.steps) if (main and progress) else None
    t_start = time.perf_counter()
    try:
        losses = session.run_steps(batches, start, stop, t_start, bar)
    finally:
        if bar is not None:
            bar.close()
    seconds = (time.perf_counter() - t_start) / max(stop - start, 1)

    final = session.save_final() if stop == cfg.steps else None
    accelerator.end_training()
    return TrainResult(output_dir=run.root, step=stop, final=final, losses=losses, seconds_per_step=seconds,
                       main_process=main)


# The steps of `_train` before the loop.

def _resume_point(run: RunDir, cfg: TrainConfig, *, resume: bool, main: bool) -> Path | None:
    """The checkpoint to continue from (None: start at step 0): the newest whose files are
    whole (`RunDir.resumable_checkpoint`); a fresh run refuses a folder that holds one.
    Checks the log now, so a corrupt line is reported before the model is built."""
    if not resume and run.has_run():
        raise ConfigError(f"output_dir {run.root} already holds a run; pass --resume to continue it "
                          "or choose another output_dir")
    resume_from = run.resumable_checkpoint(quiet=not main) if resume else None
    if main:
        run.read_log(quiet=True)  # a torn last line is dropped (and reported) by truncate_log
    if resume and resume_from is None and main and run.root.exists():
        print(f"--resume: no checkpoint in {run.checkpoints}; starting from step 0", file=sys.stderr)
    if resume_from is not None and main:
        check_against_stored(run, cfg)
    return resume_from


def _prepare_model(cfg: TrainConfig) -> tuple[nn.Module, nn.Module, dict[str, nn.Parameter]]:
    """The model with only its trainable parts unfrozen and the memory switches applied,
    its loss module (in training mode) and its trained parameters."""
    model = build_model(cfg)
    set_trainable(cfg, model)
    if cfg.frozen_dtype in ("fp16", "bf16"):
        cast_frozen(cfg.model, model, DTYPES[cfg.frozen_dtype])
    if cfg.grad_checkpointing:
        enable_grad_checkpointing(cfg.model, model)
    params = trained_parameters(model)
    loss_module = LOSSES[cfg.model](model, cfg)
    loss_module.train()
    return model, loss_module, params


def _calibrate_latents(cfg: TrainConfig, model: nn.Module, dataset) -> float | None:
    """Apply ``latent_shift`` / ``latent_scale`` (measured on the training targets when
    "auto"); returns the scale set, None when the model keeps its own."""
    scale = None
    if cfg.latent_shift == "auto" and cfg.model == "iamg":
        model.latent_shift = calibrated_latent_shift(model, dataset)
    if cfg.latent_scale is not None and cfg.model != "vae":
        scale = calibrated_latent_scale(model, dataset) if cfg.latent_scale == "auto" else float(cfg.latent_scale)
        set_latent_scale(model, scale)
    return scale


def _validation_items(cfg: TrainConfig, model: nn.Module, dataset) -> list[dict]:
    """The un-augmented items validation generates from: the first of ``val_split``,
    else of the training split."""
    try:
        val_data = build_dataset(cfg, model, split=cfg.val_split, generated=False) if cfg.val_split else dataset
    except ValueError:  # no samples in that split
        val_data = dataset
    return [val_data.item(i) for i in range(min(cfg.validation_samples, len(val_data)))]


def _optimizer(cfg: TrainConfig, params: dict[str, nn.Parameter]):
    """AdamW over the trained parameters and the LR scheduler."""
    from diffusers.optimization import get_scheduler

    optimizer = torch.optim.AdamW(list(params.values()), lr=resolved_lr(cfg), betas=tuple(cfg.adam_betas),
                                  eps=cfg.adam_eps, weight_decay=cfg.weight_decay)
    # Not prepared by Accelerate (which would step it once per process): one step per
    # optimizer step, its state saved in train_state.json.
    scheduler = get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=cfg.lr_warmup_steps,
                              num_training_steps=cfg.steps)
    return optimizer, scheduler


def _checkpoint_trained_tensors_only(accelerator, params: dict[str, nn.Parameter]) -> None:
    main = accelerator.is_main_process

    def save_hook(models, weights, output_dir):
        # Only the trained tensors are checkpointed: the frozen ones come back from the
        # init file / seeded preset, identical, and the official model is 2.45 B parameters.
        if main:
            save_tensors(params, Path(output_dir) / TRAINABLE_FILE)
        weights.clear()

    def load_hook(models, input_dir):
        copy_into(params, load_tensors(Path(input_dir) / TRAINABLE_FILE), f"checkpoint {input_dir}")
        models.clear()

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


def _restore(accelerator, checkpoint: Path, scheduler, ema: EMA | None, params: dict[str, nn.Parameter]) -> int:
    """Load a checkpoint (Accelerate's state, our trained tensors, the scheduler, the EMA);
    returns its step. A file that cannot be read is a `ConfigError` naming the checkpoint."""
    from safetensors import SafetensorError

    try:
        accelerator.load_state(str(checkpoint))
        state = json.loads((checkpoint / STATE_FILE).read_text(encoding="utf-8"))
        start = int(state["step"])
        scheduler.load_state_dict(state["scheduler"])
        if ema is not None:
            if not (checkpoint / EMA_FILE).is_file():
                raise ConfigError(f"ema_decay is set but checkpoint {checkpoint} has no EMA weights")
            ema.shadow = {k: v.to(next(iter(params.values())).device) for k, v in
                          load_tensors(checkpoint / EMA_FILE).items()}
    except ConfigError:
        raise
    except (OSError, EOFError, RuntimeError, ValueError, KeyError, SafetensorError) as e:
        detail = (str(e).strip().splitlines() or [""])[0]
        raise ConfigError(f"checkpoint {checkpoint} cannot be loaded ({type(e).__name__}: {detail}); move that "
                          "folder out of checkpoints/ to resume from the previous one") from e
    return start


def _open_run_folder(run: RunDir, cfg: TrainConfig, start: int, model: nn.Module, scale: float | None) -> None:
    """Create the folder, drop the log lines a resumed run recomputes, write config.json
    (and, on a fresh run, the calibrated latent scale / shift as the log's step 0)."""
    run.root.mkdir(parents=True, exist_ok=True)
    run.checkpoints.mkdir(exist_ok=True)
    removed = run.remove_temp_leftovers()
    if removed:
        print(f"removed {len(removed)} leftover temp files/folders of an interrupted write in {run.root}: "
              + ", ".join(str(p.relative_to(run.root)) for p in removed[:5]) + (" ..." if len(removed) > 5 else ""),
              file=sys.stderr)
    run.truncate_log(start)  # lines of steps after the checkpoint are recomputed now
    write_text_atomic(run.config, json.dumps(cfg.to_dict(), indent=2) + "\n")
    if scale is not None and start == 0:
        shift = getattr(model, "latent_shift", None)
        run.append_log({"step": 0, "latent_scale": scale, **({"latent_shift": shift} if shift else {})})
        print(f"latent scale {scale:g}" + (f", shift {shift}" if shift else ""), file=sys.stderr)


@dataclass
class _Session:
    """What the steps of one `train` call share: the prepared loss module (``core`` is the
    model inside it), optimizer, scheduler, trained parameters and EMA."""

    cfg: TrainConfig
    accelerator: Any
    run: RunDir
    loss_module: nn.Module
    optimizer: Any
    scheduler: Any
    core: nn.Module
    params: dict[str, nn.Parameter]
    ema: EMA | None
    val_items: list[dict]

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    def run_steps(self, batches, start: int, stop: int, t_start: float, bar: Progress | None) -> list[float]:
        """Optimizer steps ``start`` … ``stop − 1``, each logged, checkpointed and validated
        as the config says; returns their losses."""
        cfg = self.cfg
        losses: list[float] = []
        for step in range(start, stop):
            loss_value = self.optimizer_step(batches, step)
            done = step + 1
            losses.append(loss_value)
            if not math.isfinite(loss_value):
                raise FloatingPointError(f"step {done}: loss is {loss_value}; lower lr or use bf16 instead of fp16")
            if self.main and (done % cfg.log_every == 0 or done == stop):
                lr = self.scheduler.get_last_lr()[0]
                self.run.append_log({"step": done, "loss": loss_value, "lr": lr,
                                     "s_per_step": (time.perf_counter() - t_start) / (done - start)})
                if bar is not None:
                    bar.update(done, start, loss_value, lr)
            if done == cfg.steps or done == stop or (cfg.checkpoint_every and done % cfg.checkpoint_every == 0):
                self.save_checkpoint(done)
            if done == cfg.steps or (cfg.validate_every and done % cfg.validate_every == 0):
                self.validate(done)
        return losses

    def optimizer_step(self, batches, step: int) -> float:
        """One optimizer step (``grad_accum`` micro-steps); returns its loss, averaged over
        the micro-steps and processes."""
        cfg, accelerator = self.cfg, self.accelerator
        total = torch.zeros((), device=accelerator.device)
        for micro in range(cfg.grad_accum):
            batch = _to_device(next(batches), accelerator.device)
            seed = step_seed(cfg.seed, step, micro, accelerator.process_index)
            sync = micro == cfg.grad_accum - 1
            with nullcontext() if sync else accelerator.no_sync(self.loss_module):
                loss = self.loss_module(batch, seed)
                accelerator.backward(loss / cfg.grad_accum)
            total += loss.detach().float()
        if cfg.max_grad_norm:
            accelerator.clip_grad_norm_(list(self.params.values()), cfg.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.params, step + 1)
        return accelerator.reduce(total / cfg.grad_accum, "mean").item()

    def save_checkpoint(self, step: int) -> None:
        """Write checkpoint ``step`` to a temp folder, then publish it (`RunDir.publish`)."""
        accelerator, run, main = self.accelerator, self.run, self.main
        name = step_name(step)
        tmp = run.checkpoints / f"{TMP_PREFIX}{name}"
        if main:
            shutil.rmtree(tmp, ignore_errors=True)  # a stale one from an interrupted save
        accelerator.wait_for_everyone()
        try:
            accelerator.save_state(str(tmp))
            if main:
                if self.ema is not None:
                    save_tensors(self.ema.shadow, tmp / EMA_FILE)
                state = {"format": CHECKPOINT_FORMAT, "model": self.cfg.model, "step": step,
                         "scheduler": self.scheduler.state_dict(), "trainable": sorted(self.params)}
                (tmp / STATE_FILE).write_text(json.dumps(state, indent=1), encoding="utf-8")
                run.publish(tmp, name)
        except Exception as e:  # a full disk: torch.save / safetensors report it their own ways
            failure = write_failure(e, run.checkpoints / name,
                                    f"checkpoint {name} was not written (the earlier ones are kept); free some "
                                    "space, then continue the run with --resume")
            if failure is None:
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # the partial checkpoint only takes space
            raise failure from e
        if main:
            run.prune(self.cfg.keep_checkpoints)
        accelerator.wait_for_everyone()

    def validate(self, step: int) -> None:
        """The validation sheet of ``step`` (EMA weights when EMA is on)."""
        core, ema, run = self.core, self.ema, self.run
        if self.main and self.val_items:
            was_training = core.training
            core.eval()
            with (ema.applied(self.params) if ema is not None else nullcontext()), self.accelerator.autocast():
                rows = validation_rows(self.cfg, core, self.val_items, self.accelerator.device)
            core.train(was_training)
            run.samples.mkdir(exist_ok=True)
            path = run.samples / f"{step_name(step)}.png"
            save_png(path, _grid(rows, resolved_resolution(self.cfg)), overwrite=True)
            run.append_log({"step": step, "validation": str(path.relative_to(run.root))})
        self.accelerator.wait_for_everyone()

    def save_final(self) -> Path:
        """final.safetensors (EMA weights when EMA is on, the raw ones in final_noema)."""
        cfg, core, run = self.cfg, self.core, self.run
        if self.main:
            core.to("cpu")
            save_final(cfg, core, run.final)
            if self.ema is not None:
                os.replace(run.final, run.root / FINAL_NOEMA_FILE)
                with self.ema.applied(trained_parameters(core)):
                    save_final(cfg, core, run.final)
            for path in (run.final, run.root / FINAL_NOEMA_FILE):
                if path.is_file():
                    fsync_file(path)
            fsync_dir(run.root)
        self.accelerator.wait_for_everyone()
        return run.final
