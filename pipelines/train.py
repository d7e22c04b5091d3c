"""Training: one entry point for the VAE, IAMG and MGIG, built on 🤗 Accelerate.

    python -m interact_custom train {vae,iamg,mgig} --config FILE [--set KEY=VALUE ...] [--resume]
    accelerate launch -m interact_custom train mgig --config FILE      # several GPUs / machines
    torchrun --nproc_per_node 2 -m interact_custom train iamg --config FILE   # CPU processes (gloo)
    python -m interact_custom train masks --iamg FILE --data DIR --out DIR   # MGIG stage-2 input
    python -m interact_custom train --list-keys                              # every config key

The same command runs on the CPU, one GPU, several GPUs (DDP) or several machines; mixed
precision (``fp16``/``bf16``), gradient checkpointing, gradient accumulation and an
optional EMA are config keys. A config is a JSON object of plain keys (`TrainConfig`,
examples in ``pipelines/train_configs/``); ``--set key=value`` overrides one (the value is parsed as JSON,
else taken as a string). Relative paths are relative to the working directory.

What trains (``trainable``, defaults in brackets; everything else is frozen):

- ``vae`` — an SD kl-f8 style `AutoencoderKL` [``vae``; or ``decoder``] from scratch
  (``preset`` "iamg:<preset>" / "mgig:<preset>" picks the architecture of that model's
  VAE) or from ``init``: reconstruction L1 (or MSE) + ``kl_weight``·KL, weighted as LDM's
  autoencoder loss without its perceptual/GAN terms. The small presets have no
  pretrained VAE: train one, then pass it to IAMG/MGIG as ``init_vae``.
- ``iamg`` — the official objective (ε-MSE, t uniform, `iamg.iamg_training_loss`).
  *Official variant*: ``init`` = the released iamg.pth (or one of our files) [``unet``].
  ★ *Text variant*: ``text: true`` adds zero-initialised cross-attention to an init
  without it (`iamg.with_cross_attention`), or ``preset`` "small_text" / "tiny_text"
  from scratch [``unet`` + ``text_encoder``; ``unet_cross_attention`` trains only the
  new layers]. Background / box / text dropout (`train_data.IAMGTrainData`).
- ``mgig`` — what the official code trains: ControlNet + the UNet's decoder half + the
  ID projector, DINOv2 frozen [``controlnet``, ``unet_decoder``, ``projector``] when
  starting from ``init`` (mgig.ckpt or ours); from a ``preset`` everything trains,
  including the small ID encoder [``controlnet``, ``unet``, ``id_encoder``]. The official
  model predicts ε; ★ ``prediction_type: v_prediction`` trains v instead (saved with the
  weights; the samplers still receive ε, `samplers.eps_from_v`; IAMG likewise). ★ Stage 1 on
  ground-truth masks, stage 2 (``stage: 2``) on IAMG-generated masks
  (``generated_masks``, made by ``train masks``); background / box / ID dropout
  (`train_data.MGIGTrainData`). ★ ``figure_loss_weight`` counts the loss on the
  figure's latent pixels N times (`figure_weighted_mse`): the identity is learnt there.

Output folder (``output_dir``)::

    config.json                     the resolved config of the run
    log.jsonl                       one JSON line per logged step (loss, lr, s/step) and validation
    samples/step_XXXXXX.png         validation images (IAMG: condition | truth | generated mask;
                                    MGIG: reference | hint | layout | generated | truth; VAE: in | out)
    checkpoints/step_XXXXXX/        Accelerate state (optimizer, RNG, grad scaler) + our files:
                                    trainable.safetensors (trained tensors only; the frozen ones come
                                    from the init/preset again), ema.safetensors, train_state.json
    checkpoints/latest              name of the newest complete checkpoint
    final.safetensors               our format (save_iamg / save_mgig; VAE: `vae.*` tensors);
                                    EMA weights when EMA is on (raw ones in final_noema.safetensors)

Checkpoints are written to ``checkpoints/.tmp_step_XXXXXX`` and renamed when complete,
then ``latest`` is replaced atomically, so an interruption at any moment leaves the
previous checkpoint as the newest one; temp folders are ignored (and replaced). ``--resume``
continues from ``latest`` with identical state: every random choice of a step (data
order, augmentation, t, noise, dropout) is derived from (seed, step, process), so the
resumed run computes exactly what an uninterrupted run computes (given the same number
of processes). ``max_steps_per_run`` stops an
invocation early with a checkpoint (time-limited or pre-emptible machines).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import shutil
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import iamg, samplers, train_data
from .mgig import MGIGModel, mgig_config, MGIG_PRESETS
from ..weights_manager.files import write_text_atomic

MODEL_KINDS = ("vae", "iamg", "mgig")
CHECKPOINTS = "checkpoints"
LATEST = "latest"
TMP_PREFIX = ".tmp_"
STATE_FILE = "train_state.json"        # written last: a checkpoint folder without it is incomplete
TRAINABLE_FILE = "trainable.safetensors"
EMA_FILE = "ema.safetensors"
FINAL_FILE = "final.safetensors"
FINAL_NOEMA_FILE = "final_noema.safetensors"
CHECKPOINT_FORMAT = 1
# LR defaults: the paper fine-tunes both models with AdamW at 1e-5; from scratch a small
# model needs a larger step.
LR_FINETUNE = 1e-5
LR_SCRATCH = 1e-4


class ConfigError(ValueError):
    """A training config that cannot be used (the message names the key)."""


# --------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------

def _key(default: Any, doc: str):
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: json.loads(json.dumps(d)), metadata={"doc": doc})
    return field(default=default, metadata={"doc": doc})


@dataclass
class TrainConfig:
    """Every key of a training config (``train --list-keys`` prints them with their meaning)."""

    # what to train
    model: str | None = _key(None, "vae | iamg | mgig (the command's argument; must agree when in the file)")
    preset: str | None = _key(None, "architecture to train from scratch: iamg.MODEL_PRESETS (iamg), "
                                    "mgig presets (mgig), 'iamg:<preset>' / 'mgig:<preset>' (vae)")
    init: str | None = _key(None, "weights to start from: an official file (iamg.pth / mgig.ckpt) or one of ours")
    init_vae: str | None = _key(None, "replace the VAE by the `vae.*` tensors of this file (e.g. a `train vae` result)")
    init_id_encoder: str | None = _key(None, "MGIG: replace the ID encoder by the `id_encoder.*` tensors of this file")
    text: bool = _key(False, "IAMG: make the ★ text variant (zero-initialised cross-attention) from an init without it")
    tokenizer_dir: str | None = _key(None, "IAMG text with a CLIP vocabulary: folder with vocab.json + merges.txt")
    trainable: list | None = _key(None, "parts to train (null = the model's default; see the module docstring)")
    # data
    data_root: str | None = _key(None, "CHOI dataset folder (pipelines/dataset.py format)")
    split: str = _key("train", "training split")
    val_split: str | None = _key("val", "validation split (falls back to the training split when empty)")
    data_limit: int | None = _key(None, "use only the first N samples of the split (overfitting tests)")
    resolution: int | None = _key(None, "training image side (null: iamg 256, mgig 512, vae 256)")
    num_workers: int = _key(0, "DataLoader worker processes")
    # optimisation
    seed: int = _key(0, "seed of the initialisation, the data order and every random draw of a step")
    steps: int = _key(1000, "total optimizer steps")
    max_steps_per_run: int | None = _key(None, "stop this invocation after N steps (with a checkpoint); "
                                               "--resume continues")
    batch_size: int = _key(4, "samples per process and micro-step")
    grad_accum: int = _key(1, "micro-steps per optimizer step")
    lr: float | None = _key(None, f"AdamW learning rate (null: {LR_FINETUNE:g} from init, {LR_SCRATCH:g} from scratch)")
    lr_scheduler: str = _key("constant", "diffusers scheduler name: constant, constant_with_warmup, linear, cosine, ...")
    lr_warmup_steps: int = _key(0, "warm-up steps of the scheduler")
    weight_decay: float = _key(0.01, "AdamW weight decay")
    adam_betas: list = _key([0.9, 0.999], "AdamW betas")
    adam_eps: float = _key(1e-8, "AdamW epsilon")
    max_grad_norm: float | None = _key(1.0, "gradient clipping (null: none)")
    mixed_precision: str = _key("no", "no | fp16 | bf16 (Accelerate autocast; fp16 adds a grad scaler)")
    grad_checkpointing: bool = _key(False, "recompute activations in the backward pass (less memory)")
    latent_shift: Any = _key(None, "iamg only: null, or \"auto\" = subtract the per-channel mean of the training "
                                   "targets' latents first (a VAE trained from scratch has off-centre latents)")
    latent_scale: Any = _key(None, "iamg/mgig latent scale: null = the model's (SD's 0.18215), a number, or "
                                   "\"auto\" = 1/std of the training targets' latents (for a VAE trained from "
                                   "scratch, whose latents have no set scale; LDM's scale_by_std)")
    prediction_type: str | None = _key(None, "iamg/mgig: what the UNet learns to predict: null = the model's "
                                             "(an init file's; epsilon for a preset), epsilon, or ★ v_prediction "
                                             "(learns the high-noise steps far sooner from scratch)")
    ema_decay: float | None = _key(None, "EMA of the trained weights (e.g. 0.9999; LDM warm-up "
                                         "min(decay, (1+n)/(10+n))); null: no EMA")
    frozen_dtype: str | None = _key(None, "cast fully frozen parts (VAE, text encoder, DINOv2) to fp16/bf16 "
                                          "(needs mixed_precision; they are saved at that precision)")
    device: str = _key("auto", "auto (Accelerate's choice) | cpu")
    # output
    output_dir: str | None = _key(None, "run folder (layout in the module docstring)")
    checkpoint_every: int = _key(500, "steps between checkpoints (the last step always gets one)")
    keep_checkpoints: int | None = _key(None, "keep only the newest N checkpoints (null: all)")
    validate_every: int = _key(500, "steps between validation images (0: never; the last step always gets them)")
    validation_samples: int = _key(4, "validation samples per image")
    validation_steps: int = _key(20, "DDIM steps of the validation samples")
    validation_guidance: float = _key(5.0, "classifier-free guidance of the validation samples")
    log_every: int = _key(10, "steps between log.jsonl lines / progress lines")
    save_dtype: str = _key("fp32", "dtype of final.safetensors: fp32 | fp16 | bf16")
    # IAMG / MGIG data
    background_dropout: float = _key(0.0, "IAMG / MGIG: probability of replacing the background by a white canvas")
    box_dropout: float = _key(0.0, "IAMG: probability of the empty condition (no background, no box); "
                                   "MGIG: of zeroing the layout channel (no box, no mask)")
    text_dropout: float = _key(0.1, "IAMG text variant: probability of the empty prompt (classifier-free guidance)")
    id_dropout: float = _key(0.0, "MGIG: probability of the all-zero reference (the unconditional context)")
    # MGIG
    stage: int = _key(1, "MGIG: 1 = ground-truth masks, 2 = IAMG-generated masks (generated_masks)")
    generated_masks: str | None = _key(None, "MGIG stage 2: folder of <sample id>.png IAMG masks (train masks)")
    box_ratio: list = _key(list(train_data.OFFICIAL_BOX_RATIO), "MGIG: target-box growth [lo, hi) (official 1.1)")
    crop_ratio: list = _key(list(train_data.OFFICIAL_CROP_RATIO), "MGIG: crop growth [lo, hi) (official 1.3..2.9)")
    mask_channel_prob: float = _key(train_data.OFFICIAL_MASK_CHANNEL_PROB,
                                    "MGIG: probability that the layout channel is the union mask, else the box")
    perturb_prob: float = _key(train_data.OFFICIAL_PERTURB_PROB,
                               "MGIG: probability of perturbing that mask (official 1; stage 2: the generated "
                               "mask is imperfect already)")
    hflip_prob: float = _key(train_data.OFFICIAL_HFLIP_PROB, "MGIG: reference-canvas flip probability")
    color_prob: float = _key(train_data.OFFICIAL_COLOR_PROB, "MGIG: reference brightness/contrast jitter probability")
    figure_loss_weight: float = _key(1.0, "MGIG: ★ weight of the loss on the latent pixels of the human ∪ object "
                                          "(1 = official, unweighted; >1 spends more of the gradient on identity)")
    # VAE
    vae_sources: list = _key(["target", "mask"], f"VAE images: any of {', '.join(train_data.VAE_SOURCES)}")
    vae_loss: str = _key("l1", "VAE reconstruction loss: l1 | mse")
    vae_logvar_init: float | None = _key(-6.0, "VAE from scratch: initial posterior log-variance "
                                               "(quant_conv bias; null: the layer's own init)")
    kl_weight: float = _key(1e-6, "VAE KL weight (relative to the per-pixel reconstruction loss)")

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def describe_keys() -> str:
    """Every config key with its default and meaning (``train --list-keys``)."""
    lines = []
    for f in dataclasses.fields(TrainConfig):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        lines.append(f"{f.name:20s} {json.dumps(default):14s} {f.metadata['doc']}")
    return "\n".join(lines)


def parse_override(text: str) -> tuple[str, Any]:
    """``key=value`` → (key, value parsed as JSON, else the raw string)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE")
    key, raw = text.split("=", 1)
    key = key.strip()
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key, value


def make_config(data: Mapping[str, Any], *, model: str | None = None) -> TrainConfig:
    """Validate a plain dict into a `TrainConfig` (unknown keys, wrong types and values
    raise `ConfigError` naming the key). ``model`` (the command's argument) must agree
    with a ``model`` key in the data."""
    data = dict(data)
    unknown = sorted(set(data) - set(TrainConfig.keys()))
    if unknown:
        raise ConfigError(f"unknown config key(s) {', '.join(unknown)}; see `train --list-keys`")
    if model is not None:
        if data.get("model") not in (None, model):
            raise ConfigError(f"model: the config is for {data['model']!r} but the command trains {model!r}")
        data["model"] = model
    cfg = TrainConfig(**data)
    _validate(cfg)
    return cfg


def load_config(path: str | os.PathLike | None, overrides: list[str] = (), *, model: str | None = None) -> TrainConfig:
    """A config file (JSON object; None = all defaults) with ``key=value`` overrides."""
    data: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"--config {p}: file not found")
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ConfigError(f"--config {p}: not valid JSON: {e}") from e
        if not isinstance(data, dict):
            raise ConfigError(f"--config {p}: expected a JSON object of keys, got {type(data).__name__}")
        data.pop("_comment", None)
    for text in overrides:
        key, value = parse_override(text)
        data[key] = value
    return make_config(data, model=model)


def _validate(cfg: TrainConfig) -> None:
    def fail(key, expected):
        raise ConfigError(f"{key}: expected {expected}, got {getattr(cfg, key)!r}")

    if cfg.model not in MODEL_KINDS:
        fail("model", " | ".join(MODEL_KINDS))
    ints = {"steps": 1, "batch_size": 1, "grad_accum": 1, "checkpoint_every": 0, "validate_every": 0,
            "validation_samples": 0, "validation_steps": 1, "log_every": 1, "num_workers": 0, "lr_warmup_steps": 0,
            "seed": 0}
    for key, low in ints.items():
        v = getattr(cfg, key)
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            fail(key, f"an integer >= {low}")
    for key in ("max_steps_per_run", "keep_checkpoints", "data_limit", "resolution"):
        v = getattr(cfg, key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            fail(key, "null or an integer >= 1")
    if cfg.resolution is not None and cfg.resolution % 8:
        fail("resolution", "a multiple of 8 (the VAE downsamples by 8)")
    for key in ("background_dropout", "box_dropout", "text_dropout", "id_dropout", "mask_channel_prob",
                "perturb_prob", "hflip_prob", "color_prob"):
        v = getattr(cfg, key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
            fail(key, "a probability in [0, 1]")
    for key in ("weight_decay", "adam_eps", "kl_weight", "validation_guidance"):
        v = getattr(cfg, key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
            fail(key, "a number >= 0")
    v = cfg.figure_loss_weight
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 1:
        fail("figure_loss_weight", "a number >= 1 (1 = the official unweighted loss)")
    if v != 1 and cfg.model != "mgig":
        fail("figure_loss_weight", "1 except for mgig runs")
    if cfg.lr is not None and (isinstance(cfg.lr, bool) or not isinstance(cfg.lr, (int, float)) or cfg.lr <= 0):
        fail("lr", "null or a positive number")
    if cfg.max_grad_norm is not None and (not isinstance(cfg.max_grad_norm, (int, float)) or cfg.max_grad_norm <= 0):
        fail("max_grad_norm", "null or a positive number")
    if cfg.latent_shift not in (None, "auto") or (cfg.latent_shift is not None and cfg.model != "iamg"):
        fail("latent_shift", 'null, or "auto" for an iamg run')
    if cfg.latent_scale is not None and cfg.latent_scale != "auto" and (
            isinstance(cfg.latent_scale, bool) or not isinstance(cfg.latent_scale, (int, float))
            or not 0 < cfg.latent_scale < math.inf):
        fail("latent_scale", 'null, "auto" or a positive number')
    if cfg.prediction_type is not None and (cfg.prediction_type not in samplers.PREDICTION_TYPES
                                            or cfg.model == "vae"):
        fail("prediction_type", f"null, or one of {', '.join(samplers.PREDICTION_TYPES)} for an iamg/mgig run")
    if cfg.ema_decay is not None and (not isinstance(cfg.ema_decay, (int, float)) or not 0 < cfg.ema_decay < 1):
        fail("ema_decay", "null or a number in (0, 1)")
    if not (isinstance(cfg.adam_betas, list) and len(cfg.adam_betas) == 2):
        fail("adam_betas", "[beta1, beta2]")
    for key in ("box_ratio", "crop_ratio"):
        v = getattr(cfg, key)
        if not (isinstance(v, list) and len(v) == 2 and all(isinstance(x, (int, float)) for x in v)
                and 1.0 <= v[0] <= v[1]):
            fail(key, "[lo, hi] with 1 <= lo <= hi")
    if cfg.mixed_precision not in ("no", "fp16", "bf16"):
        fail("mixed_precision", "no | fp16 | bf16")
    if cfg.frozen_dtype not in (None, "fp16", "bf16", "fp32"):
        fail("frozen_dtype", "null | fp16 | bf16 | fp32")
    if cfg.frozen_dtype in ("fp16", "bf16") and cfg.mixed_precision == "no":
        raise ConfigError("frozen_dtype: reduced-precision frozen parts need mixed_precision fp16 or bf16 "
                          "(autocast joins them to the fp32 trained parts)")
    if cfg.save_dtype not in ("fp32", "fp16", "bf16"):
        fail("save_dtype", "fp32 | fp16 | bf16")
    if cfg.device not in ("auto", "cpu"):
        fail("device", "auto | cpu")
    if cfg.vae_loss not in ("l1", "mse"):
        fail("vae_loss", "l1 | mse")
    if cfg.stage not in (1, 2):
        fail("stage", "1 or 2")
    if cfg.stage == 2 and not cfg.generated_masks:
        raise ConfigError("stage 2 trains MGIG on IAMG-generated masks: set generated_masks to their folder "
                          "(make it with `python -m interact_custom train masks`)")
    if cfg.stage == 2 and cfg.model != "mgig":
        raise ConfigError(f"stage: stage 2 is an MGIG setting; this config trains {cfg.model!r}")
    if cfg.trainable is not None and not (isinstance(cfg.trainable, list) and cfg.trainable):
        fail("trainable", "null or a non-empty list of part names")
    if cfg.init is None and cfg.preset is None:
        raise ConfigError("set `preset` (train from scratch) or `init` (start from weights)")
    if not cfg.data_root:
        raise ConfigError("data_root: set the CHOI dataset folder to train on")
    if not cfg.output_dir:
        raise ConfigError("output_dir: set the run folder")


def resolved_resolution(cfg: TrainConfig) -> int:
    return cfg.resolution or {"iamg": iamg.IMAGE_SIZE, "mgig": 512, "vae": 256}[cfg.model]


def resolved_lr(cfg: TrainConfig) -> float:
    return float(cfg.lr) if cfg.lr is not None else (LR_FINETUNE if cfg.init else LR_SCRATCH)


# --------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------

def _vae_arch(vae) -> dict:
    # The AutoencoderKL kwargs that define the architecture (what `kl_vae_config` writes).
    keys = iamg.kl_vae_config((32,), 1).keys()
    return {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in vae.config.items() if k in keys}


def _vae_preset_config(preset: str) -> dict:
    kind, _, name = preset.partition(":")
    if kind == "iamg" and name in iamg.MODEL_PRESETS:
        return dict(iamg.model_preset(name).vae)
    if kind == "mgig" and name in MGIG_PRESETS:
        return dict(mgig_config(name).vae)
    choices = [f"iamg:{n}" for n in iamg.MODEL_PRESETS] + [f"mgig:{n}" for n in MGIG_PRESETS]
    raise ConfigError(f"preset: a VAE preset names the model whose VAE it is: one of {', '.join(choices)}; "
                      f"got {preset!r}")


def _tensors_with_prefix(path: str | os.PathLike, prefix: str, what: str) -> tuple[dict, dict]:
    from ..weights_manager.files import read_weights, strip_prefix
    from ..weights_manager.official_mgig import native_for_installed_transformers

    sd, metadata = read_weights(path)
    sd = native_for_installed_transformers(sd)
    sub = strip_prefix(sd, prefix)
    if not sub:
        raise ConfigError(f"{what}: {path} has no '{prefix}*' tensors (found e.g. {', '.join(list(sd)[:3])})")
    return sub, metadata


def load_vae_file(path: str | os.PathLike) -> nn.Module:
    """The VAE (diffusers `AutoencoderKL`) stored as `vae.*` in any of our files — a
    `train vae` result, or an IAMG/MGIG file in our format."""
    from ..weights_manager.files import load_strict
    from ..weights_manager.ldm_vae import build_vae, detect_diffusers_vae_config

    sd, metadata = _tensors_with_prefix(path, "vae.", "VAE file")
    stored = (json.loads(metadata["config"]).get("vae") or {}) if metadata.get("config") else {}
    vae = build_vae(detect_diffusers_vae_config(sd, scaling_factor=float(stored.get("scaling_factor",
                                                                                  iamg.VAE_SCALE_FACTOR)),
                                                norm_num_groups=stored.get("norm_num_groups")))
    load_strict(vae, {k: v.float() for k, v in sd.items()}, f"{Path(path).name}: VAE ('vae.*')")
    return vae


def save_vae(vae: nn.Module, path: str | os.PathLike, *, dtype: str = "fp32", preset: str = "custom") -> Path:
    """A `train vae` result in our format: `vae.*` tensors, metadata model "vae"."""
    from ..weights_manager.files import save_native

    sd = {f"vae.{k}": v for k, v in vae.state_dict().items()}
    return save_native(path, sd, model="vae", preset=preset, dtype=dtype, config={"vae": _vae_arch(vae)},
                       overwrite=True)


def build_model(cfg: TrainConfig) -> nn.Module:
    """The model a config trains, before freezing: `IAMGModel`, `MGIGModel` or a diffusers
    `AutoencoderKL`. From ``init`` (official or our file) or a ``preset`` seeded with
    ``seed``; then ``init_vae`` / ``init_id_encoder`` replace those parts."""
    from ..weights_manager.files import load_strict

    if cfg.model == "vae":
        if cfg.init:
            model = load_vae_file(cfg.init)
        else:
            from ..weights_manager.ldm_vae import build_vae

            arch = _vae_preset_config(cfg.preset)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(cfg.seed)
                model = build_vae(arch)
            if cfg.vae_logvar_init is not None:
                # The posterior's log-variance starts at ~0: latents are sampled with unit
                # noise, which swamps the young encoder's means, and with a KL weight of
                # 1e-6 the encoder needs thousands of steps to shrink it. Starting small
                # lets reconstruction learn at once.
                with torch.no_grad():
                    model.quant_conv.bias[arch["latent_channels"]:].fill_(float(cfg.vae_logvar_init))
        return model.float()

    if cfg.model == "iamg":
        from ..weights_manager.native_iamg import load_iamg

        if cfg.init:
            model = load_iamg(cfg.init, tokenizer_dir=cfg.tokenizer_dir)
            if cfg.text and not model.uses_text:
                model = iamg.with_cross_attention(model)
        else:
            if cfg.preset not in iamg.MODEL_PRESETS:
                raise ConfigError(f"preset: unknown IAMG preset {cfg.preset!r}; choose from "
                                  f"{', '.join(iamg.MODEL_PRESETS)}")
            model = iamg.build_iamg(cfg.preset, seed=cfg.seed)
        if model.uses_text and cfg.tokenizer_dir and model.tokenizer is None:
            model.tokenizer = iamg.resolve_prompt_tokenizer(cfg.tokenizer_dir, vocab_size=model.text_vocab_size)
    else:
        from ..weights_manager.official_mgig import load_mgig

        if cfg.init:
            model = load_mgig(cfg.init)
        else:
            if cfg.preset not in MGIG_PRESETS:
                raise ConfigError(f"preset: unknown MGIG preset {cfg.preset!r}; choose from {', '.join(MGIG_PRESETS)}")
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(cfg.seed)
                model = MGIGModel(mgig_config(cfg.preset))
        if cfg.init_id_encoder:
            sd, _ = _tensors_with_prefix(cfg.init_id_encoder, "id_encoder.", "init_id_encoder")
            load_strict(model.id_encoder, {k: v.float() for k, v in sd.items()},
                        f"init_id_encoder {Path(cfg.init_id_encoder).name}")
    if cfg.init_vae:
        sd, _ = _tensors_with_prefix(cfg.init_vae, "vae.", "init_vae")
        load_strict(model.vae, {k: v.float() for k, v in sd.items()}, f"init_vae {Path(cfg.init_vae).name}")
    # The model works at the size it is trained at (saved with it; inference resizes to it).
    if cfg.model == "iamg":
        model.image_size = resolved_resolution(cfg)
        if cfg.prediction_type is not None:
            model.prediction_type = cfg.prediction_type
    else:
        model.config.image_size = resolved_resolution(cfg)
        if cfg.prediction_type is not None:
            model.config.prediction_type = cfg.prediction_type
    return model.float()


def model_parts(kind: str, model: nn.Module) -> dict[str, list[nn.Module]]:
    """The named parts ``trainable`` can select, per model kind."""
    if kind == "vae":
        return {"vae": [model], "decoder": [model.decoder, model.post_quant_conv]}
    if kind == "iamg":
        parts = {"unet": [model.unet],
                 "unet_cross_attention": [m.cross_attn for m in model.unet.modules()
                                          if isinstance(m, iamg.IAMGAttention) and m.cross_attn is not None]}
        if model.text_encoder is not None:
            parts["text_encoder"] = [model.text_encoder]
        return parts
    unet = model.unet
    return {"controlnet": [model.controlnet], "unet": [unet],
            "unet_decoder": [unet.up_blocks, unet.conv_norm_out, unet.conv_out],
            "projector": [model.id_encoder.projector], "id_encoder": [model.id_encoder]}


def default_trainable(cfg: TrainConfig, model: nn.Module) -> list[str]:
    if cfg.model == "vae":
        return ["vae"]
    if cfg.model == "iamg":
        if cfg.init or not model.uses_text or model.text_encoder is None:
            return ["unet"]
        return ["unet", "text_encoder"]
    return ["controlnet", "unet_decoder", "projector"] if cfg.init else ["controlnet", "unet", "id_encoder"]


def set_trainable(cfg: TrainConfig, model: nn.Module) -> list[str]:
    """Freeze everything, then unfreeze the ``trainable`` parts; returns their names."""
    parts = model_parts(cfg.model, model)
    names = list(cfg.trainable) if cfg.trainable is not None else default_trainable(cfg, model)
    unknown = [n for n in names if n not in parts]
    if unknown:
        raise ConfigError(f"trainable: unknown part(s) {', '.join(unknown)} for {cfg.model}; "
                          f"choose from {', '.join(parts)}")
    model.requires_grad_(False)
    for name in names:
        if not parts[name]:
            raise ConfigError(f"trainable: {name!r} selects nothing in this {cfg.model} model "
                              "(no cross-attention? set text: true)")
        for module in parts[name]:
            module.requires_grad_(True)
    return names


def trained_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Name → parameter of everything that trains (what checkpoints and the EMA hold)."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def _checkpoint_forward(module: nn.Module) -> None:
    # Activation checkpointing for modules without a diffusers/transformers switch (the
    # IAMG UNet blocks): the instance's forward is wrapped, so names and state dicts stay.
    from torch.utils.checkpoint import checkpoint

    inner = module.forward

    def forward(*args, **kwargs):
        if module.training and torch.is_grad_enabled():
            return checkpoint(inner, *args, use_reentrant=False, **kwargs)
        return inner(*args, **kwargs)

    module.forward = forward


def _hf_checkpointing(model) -> None:
    # transformers 5 renamed the switch; 4.x only has the old name.
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable()


LATENT_SCALE_ITEMS = 64  # training targets `calibrated_latent_scale` measures


@torch.no_grad()
def _target_latents(model: nn.Module, dataset, items: int) -> torch.Tensor:
    vae = model.vae
    p = next(vae.parameters())
    latents = []
    for start in range(0, min(items, len(dataset)), 16):
        batch = torch.stack([dataset.item(i)["target"] for i in range(start, min(start + 16, items, len(dataset)))])
        latents.append(vae.encode(batch.to(p.device, p.dtype)).latent_dist.mean.float())
    return torch.cat(latents)


def calibrated_latent_shift(model: nn.Module, dataset, items: int = LATENT_SCALE_ITEMS) -> list[float]:
    """Per-channel mean of the VAE latents of the first ``items`` training targets
    (rounded to 4 decimals): subtracted so the diffusion latents are centred."""
    return [round(float(v), 4) for v in _target_latents(model, dataset, items).mean((0, 2, 3))]


@torch.no_grad()
def calibrated_latent_scale(model: nn.Module, dataset, items: int = LATENT_SCALE_ITEMS) -> float:
    """1 / std of the VAE latents (posterior means) of the first ``items`` training
    targets (no augmentation: the same value on every process and on resume), rounded to
    4 significant digits. Diffusion assumes unit-variance latents; a VAE trained from
    scratch has latents of arbitrary scale (LDM's ``scale_by_std``)."""
    z = _target_latents(model, dataset, items)
    shift = getattr(model, "latent_shift", None)
    if shift is not None:  # the scale of the centred latents
        z = z - torch.tensor(shift).view(1, -1, 1, 1)
    std = float(z.std())
    if not math.isfinite(std) or std <= 0:
        raise ConfigError(f"latent_scale: the VAE's latents have std {std}; cannot calibrate (is the VAE trained?)")
    return float(f"{1.0 / std:.4g}")


def set_latent_scale(model: nn.Module, scale: float) -> None:
    """Use ``scale`` as the latent scale of an IAMG / MGIG model (saved with it)."""
    if isinstance(model, iamg.IAMGModel):
        model.scale_factor = float(scale)
        model.vae.register_to_config(scaling_factor=float(scale))  # saved files keep both in step
    else:
        model.vae.register_to_config(scaling_factor=float(scale))
        model.config.vae["scaling_factor"] = float(scale)


def enable_grad_checkpointing(kind: str, model: nn.Module) -> None:
    """Recompute activations in the backward pass of every part that trains."""
    if kind == "vae":
        model.enable_gradient_checkpointing()
    elif kind == "iamg":
        for block in [*model.unet.down_blocks, model.unet.mid_block, *model.unet.up_blocks]:
            for m in [*block.resnets, *(block.attentions or [])]:
                _checkpoint_forward(m)
        if model.text_encoder is not None and any(p.requires_grad for p in model.text_encoder.parameters()):
            _hf_checkpointing(model.text_encoder)
    else:
        model.unet.enable_gradient_checkpointing()
        model.controlnet.enable_gradient_checkpointing()
        if any(p.requires_grad for p in model.id_encoder.dinov2.parameters()):
            _hf_checkpointing(model.id_encoder.dinov2)


def cast_frozen(kind: str, model: nn.Module, dtype: torch.dtype) -> None:
    """Cast the wholly frozen parts (VAE, text encoder, DINOv2) to ``dtype`` (memory)."""
    if kind == "vae":
        return
    frozen = [model.vae]
    if kind == "iamg" and model.text_encoder is not None:
        frozen.append(model.text_encoder)
    if kind == "mgig":
        frozen.append(model.id_encoder.dinov2)
    for m in frozen:
        if not any(p.requires_grad for p in m.parameters()):
            m.to(dtype)


# --------------------------------------------------------------------------------------
# Losses (nn.Modules, so Accelerate/DDP wraps the whole step)
# --------------------------------------------------------------------------------------

def step_seed(seed: int, step: int, micro: int, process: int) -> int:
    """The seed of every random draw of one micro-step on one process (see module docstring)."""
    return int(np.random.SeedSequence([seed, step, micro, process]).generate_state(1, np.uint64)[0] >> 1)


def _sample_latent(vae, images: torch.Tensor, scale: float, generator: torch.Generator) -> torch.Tensor:
    # Posterior *sample*, like the official trainers' encode_first_stage.
    p = next(vae.parameters())
    posterior = vae.encode(images.to(p.device, p.dtype)).latent_dist
    return (posterior.sample(generator) * scale).float()


class IAMGLoss(nn.Module):
    """`iamg.iamg_training_loss` of a batch (box dropout = the empty condition)."""

    def __init__(self, model: iamg.IAMGModel, cfg: TrainConfig):
        super().__init__()
        self.model = model
        self.box_dropout, self.text_dropout = float(cfg.box_dropout), float(cfg.text_dropout)

    def forward(self, batch: dict, seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        inputs = {"target": batch["target"], "condition": batch["condition"]}
        if self.model.uses_text:
            inputs["input_ids"] = batch["input_ids"]
        return iamg.iamg_training_loss(self.model, inputs, cond_dropout=self.box_dropout,
                                       text_dropout=self.text_dropout, generator=g)


class MGIGLoss(nn.Module):
    """The official ControlLDM objective: MSE(ε̂(x_t, t | ID context, hint), ε), t uniform;
    for a ★ v_prediction model the target is v instead (`samplers.v_target`)."""

    def __init__(self, model: MGIGModel, cfg: TrainConfig | None = None):
        super().__init__()
        self.model = model
        self.figure_weight = 1.0 if cfg is None else float(cfg.figure_loss_weight)

    def forward(self, batch: dict, seed: int) -> torch.Tensor:
        m = self.model
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            x0 = _sample_latent(m.vae, batch["target"], m.latent_scale, g)
        n, device = x0.shape[0], x0.device
        t = torch.randint(0, len(m.alphas_cumprod), (n,), generator=g).to(device)
        noise = torch.randn(x0.shape, generator=g).to(device)
        a = m.alphas_cumprod.to(device)[t].view(n, 1, 1, 1)
        x_t = a.sqrt() * x0 + (1.0 - a).sqrt() * noise
        context = m.encode_id(batch["reference"])
        # The ControlNet runs batched in the default memory layout: 2-5x faster than the
        # per-sample channels-last path inference uses to reproduce the official outputs
        # to ~1e-6 (`mgig.CONTROLNET_MEMORY_FORMAT`); the two differ by float rounding only.
        hint = batch["hint"].to(x_t.dtype)
        down, mid = m.controlnet(x_t, t, encoder_hidden_states=context.to(x_t.dtype), controlnet_cond=hint,
                                 return_dict=False)
        output = m.unet_output(x_t, t, context, [*down, mid])
        target = samplers.training_target(m.config.prediction_type, x0, noise, a)
        if self.figure_weight == 1.0:
            return F.mse_loss(output.float(), target)
        return figure_weighted_mse(output.float(), target, batch["figure"], self.figure_weight)


def figure_weighted_mse(output: torch.Tensor, target: torch.Tensor, figure: torch.Tensor,
                        weight: float) -> torch.Tensor:
    """★ MSE with the latent pixels covered by the figure (``figure`` [B,1,S,S] in 0..1,
    area-pooled to the latent grid) counted ``weight`` times, normalised by the total
    weight so the loss stays an average squared error. Around the figure the scene is
    either copied from the hint or inside the box and unknowable; the identity (colours,
    patterns) is only learnt from the figure's few pixels."""
    cover = F.adaptive_avg_pool2d(figure.to(output.dtype), output.shape[-2:])
    w = 1.0 + (weight - 1.0) * cover
    return (w * (output - target).pow(2)).sum() / (w.sum() * output.shape[1])


class VAELoss(nn.Module):
    """Reconstruction (L1 or MSE, per pixel) + kl_weight · KL / pixels: LDM's autoencoder
    loss without the perceptual and adversarial terms."""

    def __init__(self, model: nn.Module, cfg: TrainConfig):
        super().__init__()
        self.model = model
        self.kind, self.kl_weight = cfg.vae_loss, float(cfg.kl_weight)

    def forward(self, batch: dict, seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        x = batch["image"].to(next(self.model.parameters()).dtype)
        posterior = self.model.encode(x).latent_dist
        rec = self.model.decode(posterior.sample(g)).sample
        diff = rec.float() - x.float()
        rec_loss = diff.abs().mean() if self.kind == "l1" else diff.pow(2).mean()
        kl = posterior.kl().float().mean() / x[0].numel()
        return rec_loss + self.kl_weight * kl


LOSSES = {"vae": VAELoss, "iamg": IAMGLoss, "mgig": MGIGLoss}


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
        mask_channel_prob=cfg.mask_channel_prob, perturb_prob=cfg.perturb_prob, hflip_prob=cfg.hflip_prob,
        color_prob=cfg.color_prob,
        background_dropout=cfg.background_dropout, box_dropout=cfg.box_dropout, id_dropout=cfg.id_dropout,
        generated_masks=cfg.generated_masks if (generated and cfg.stage == 2) else None, **common)


def _to_device(batch: dict, device: torch.device) -> dict:
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


# --------------------------------------------------------------------------------------
# EMA
# --------------------------------------------------------------------------------------

class EMA:
    """Exponential moving average of the trained parameters (fp32 shadow copies), with
    LDM `LitEma`'s warm-up: decay_n = min(decay, (1 + n) / (10 + n))."""

    def __init__(self, params: Mapping[str, torch.Tensor], decay: float):
        self.decay = float(decay)
        self.shadow = {k: p.detach().float().clone() for k, p in params.items()}

    @torch.no_grad()
    def update(self, params: Mapping[str, torch.Tensor], num_updates: int) -> None:
        d = min(self.decay, (1.0 + num_updates) / (10.0 + num_updates))
        for k, p in params.items():
            self.shadow[k].lerp_(p.detach().float(), 1.0 - d)

    @contextmanager
    def applied(self, params: Mapping[str, torch.Tensor]):
        """Temporarily put the EMA weights into the model (restored exactly afterwards)."""
        saved = {k: p.detach().clone() for k, p in params.items()}
        with torch.no_grad():
            for k, p in params.items():
                p.copy_(self.shadow[k])
        try:
            yield
        finally:
            with torch.no_grad():
                for k, p in params.items():
                    p.copy_(saved[k])


# --------------------------------------------------------------------------------------
# Run folder, checkpoints
# --------------------------------------------------------------------------------------

def _step_name(step: int) -> str:
    return f"step_{step:06d}"


class RunDir:
    """Paths of a run folder and its checkpoint bookkeeping (module docstring)."""

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


def _save_tensors(tensors: Mapping[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path))


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def _copy_into(params: Mapping[str, torch.Tensor], tensors: Mapping[str, torch.Tensor], what: str) -> None:
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
    image = model.decode_latent(z)
    return [[_u8(reference[i] * 2 - 1), _u8(hint[i, :3]), _u8(hint[i, 3:]), _u8(image[i]), _u8(batch["target"][i])]
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


def _check_against_stored(run: RunDir, cfg: TrainConfig) -> None:
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





def train(cfg: TrainConfig, *, resume: bool = False, progress: bool = True) -> TrainResult:
    """Run (or, with ``resume``, continue) the training a config describes; see the module
    docstring for what is written. Returns a `TrainResult`."""
    from accelerate import Accelerator

    accelerator = Accelerator(mixed_precision=cfg.mixed_precision, cpu=cfg.device == "cpu")
    with samplers.flush_denormals(accelerator.device.type == "cpu"):
        return _train(cfg, accelerator, resume=resume, progress=progress)


def _train(cfg: TrainConfig, accelerator, *, resume: bool, progress: bool) -> TrainResult:
    from diffusers.optimization import get_scheduler

    run = RunDir(cfg.output_dir)
    main = accelerator.is_main_process
    resume_from = run.latest_checkpoint() if resume else None
    if not resume and run.has_run():
        raise ConfigError(f"output_dir {run.root} already holds a run; pass --resume to continue it "
                          "or choose another output_dir")
    if resume and resume_from is None and main and run.root.exists():
        print(f"--resume: no checkpoint in {run.checkpoints}; starting from step 0", file=sys.stderr)
    if resume_from is not None and main:
        _check_against_stored(run, cfg)

    model = build_model(cfg)
    set_trainable(cfg, model)
    if cfg.frozen_dtype in ("fp16", "bf16"):
        from ..weights_manager.files import DTYPES

        cast_frozen(cfg.model, model, DTYPES[cfg.frozen_dtype])
    if cfg.grad_checkpointing:
        enable_grad_checkpointing(cfg.model, model)
    params = trained_parameters(model)
    loss_module = LOSSES[cfg.model](model, cfg)
    loss_module.train()

    dataset = build_dataset(cfg, model)
    scale = None
    if cfg.latent_shift == "auto" and cfg.model == "iamg":
        model.latent_shift = calibrated_latent_shift(model, dataset)
    if cfg.latent_scale is not None and cfg.model != "vae":
        scale = calibrated_latent_scale(model, dataset) if cfg.latent_scale == "auto" else float(cfg.latent_scale)
        set_latent_scale(model, scale)
    val_items: list[dict] = []
    if main and cfg.validation_samples:
        try:
            val_data = build_dataset(cfg, model, split=cfg.val_split, generated=False) if cfg.val_split else dataset
        except ValueError:  # no samples in that split
            val_data = dataset
        val_items = [val_data.item(i) for i in range(min(cfg.validation_samples, len(val_data)))]

    optimizer = torch.optim.AdamW(list(params.values()), lr=resolved_lr(cfg), betas=tuple(cfg.adam_betas),
                                  eps=cfg.adam_eps, weight_decay=cfg.weight_decay)
    # Not prepared by Accelerate (which would step it once per process): one step per
    # optimizer step, its state saved in train_state.json.
    scheduler = get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=cfg.lr_warmup_steps,
                              num_training_steps=cfg.steps)
    loss_module, optimizer = accelerator.prepare(loss_module, optimizer)
    core = accelerator.unwrap_model(loss_module).model
    params = trained_parameters(core)
    ema = EMA(params, cfg.ema_decay) if cfg.ema_decay else None

    def save_hook(models, weights, output_dir):
        # Only the trained tensors are checkpointed: the frozen ones come back from the
        # init file / seeded preset, identical, and the official model is 2.45 B parameters.
        if main:
            _save_tensors(params, Path(output_dir) / TRAINABLE_FILE)
        weights.clear()

    def load_hook(models, input_dir):
        _copy_into(params, _load_tensors(Path(input_dir) / TRAINABLE_FILE), f"checkpoint {input_dir}")
        models.clear()

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)

    start = 0
    if resume_from is not None:
        accelerator.load_state(str(resume_from))
        state = json.loads((resume_from / STATE_FILE).read_text(encoding="utf-8"))
        start = int(state["step"])
        scheduler.load_state_dict(state["scheduler"])
        if ema is not None:
            if not (resume_from / EMA_FILE).is_file():
                raise ConfigError(f"ema_decay is set but checkpoint {resume_from} has no EMA weights")
            ema.shadow = {k: v.to(next(iter(params.values())).device) for k, v in
                          _load_tensors(resume_from / EMA_FILE).items()}
        if main:
            print(f"resumed {run.root} at step {start} from {resume_from.name}", file=sys.stderr)
    if main:
        run.root.mkdir(parents=True, exist_ok=True)
        run.checkpoints.mkdir(exist_ok=True)
        run.truncate_log(start)  # lines of steps after the checkpoint are recomputed now
        write_text_atomic(run.config, json.dumps(cfg.to_dict(), indent=2) + "\n")
        if scale is not None and start == 0:
            shift = getattr(model, "latent_shift", None)
            run.append_log({"step": 0, "latent_scale": scale, **({"latent_shift": shift} if shift else {})})
            print(f"latent scale {scale:g}" + (f", shift {shift}" if shift else ""), file=sys.stderr)
    accelerator.wait_for_everyone()

    def save_checkpoint(step: int) -> None:
        name = _step_name(step)
        tmp = run.checkpoints / f"{TMP_PREFIX}{name}"
        if main:
            shutil.rmtree(tmp, ignore_errors=True)  # a stale one from an interrupted save
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp))
        if main:
            if ema is not None:
                _save_tensors(ema.shadow, tmp / EMA_FILE)
            state = {"format": CHECKPOINT_FORMAT, "model": cfg.model, "step": step,
                     "scheduler": scheduler.state_dict(), "trainable": sorted(params)}
            (tmp / STATE_FILE).write_text(json.dumps(state, indent=1), encoding="utf-8")
            run.publish(tmp, name)
            run.prune(cfg.keep_checkpoints)
        accelerator.wait_for_everyone()

    def validate(step: int) -> None:
        if main and val_items:
            was_training = core.training
            core.eval()
            with (ema.applied(params) if ema is not None else nullcontext()), accelerator.autocast():
                rows = validation_rows(cfg, core, val_items, accelerator.device)
            core.train(was_training)
            from .dataset import save_png

            run.samples.mkdir(exist_ok=True)
            path = run.samples / f"{_step_name(step)}.png"
            save_png(path, _grid(rows, resolved_resolution(cfg)), overwrite=True)
            run.append_log({"step": step, "validation": str(path.relative_to(run.root))})
        accelerator.wait_for_everyone()

    sampler = train_data.PositionSampler(cfg.batch_size, num_processes=accelerator.num_processes,
                                         process_index=accelerator.process_index, start=start * cfg.grad_accum)
    loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler,
                                         num_workers=cfg.num_workers, pin_memory=accelerator.device.type == "cuda",
                                         persistent_workers=cfg.num_workers > 0)
    batches = iter(loader)
    stop = cfg.steps if cfg.max_steps_per_run is None else min(cfg.steps, start + cfg.max_steps_per_run)
    bar = Progress(cfg.steps) if (main and progress) else None
    losses: list[float] = []
    t_start, step = time.perf_counter(), start
    try:
        for step in range(start, stop):
            total = torch.zeros((), device=accelerator.device)
            for micro in range(cfg.grad_accum):
                batch = _to_device(next(batches), accelerator.device)
                seed = step_seed(cfg.seed, step, micro, accelerator.process_index)
                sync = micro == cfg.grad_accum - 1
                with nullcontext() if sync else accelerator.no_sync(loss_module):
                    loss = loss_module(batch, seed)
                    accelerator.backward(loss / cfg.grad_accum)
                total += loss.detach().float()
            if cfg.max_grad_norm:
                accelerator.clip_grad_norm_(list(params.values()), cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                ema.update(params, step + 1)
            done = step + 1
            loss_value = accelerator.reduce(total / cfg.grad_accum, "mean").item()
            losses.append(loss_value)
            if not math.isfinite(loss_value):
                raise FloatingPointError(f"step {done}: loss is {loss_value}; lower lr or use bf16 instead of fp16")
            if main and (done % cfg.log_every == 0 or done == stop):
                lr = scheduler.get_last_lr()[0]
                run.append_log({"step": done, "loss": loss_value, "lr": lr,
                                "s_per_step": (time.perf_counter() - t_start) / (done - start)})
                if bar is not None:
                    bar.update(done, start, loss_value, lr)
            if done == cfg.steps or done == stop or (cfg.checkpoint_every and done % cfg.checkpoint_every == 0):
                save_checkpoint(done)
            if done == cfg.steps or (cfg.validate_every and done % cfg.validate_every == 0):
                validate(done)
        step = stop
    finally:
        if bar is not None:
            bar.close()
    seconds = (time.perf_counter() - t_start) / max(stop - start, 1)

    final = None
    if stop == cfg.steps:
        final = run.final
        if main:
            core.to("cpu")
            save_final(cfg, core, run.final)
            if ema is not None:
                os.replace(run.final, run.root / FINAL_NOEMA_FILE)
                with ema.applied(trained_parameters(core)):
                    save_final(cfg, core, run.final)
        accelerator.wait_for_everyone()
    accelerator.end_training()
    return TrainResult(output_dir=run.root, step=step, final=final, losses=losses, seconds_per_step=seconds,
                       main_process=main)


def save_final(cfg: TrainConfig, model: nn.Module, path: Path) -> Path:
    """The trained model in our format: `save_iamg` / `save_mgig` / `save_vae`."""
    if cfg.model == "vae":
        return save_vae(model, path, dtype=cfg.save_dtype, preset=cfg.preset or "custom")
    if cfg.model == "iamg":
        from ..weights_manager.native_iamg import save_iamg

        return save_iamg(model, path, dtype=cfg.save_dtype, overwrite=True)
    from ..weights_manager.official_mgig import save_mgig

    return save_mgig(model, path, dtype=cfg.save_dtype, overwrite=True,
                     source=f"trained: {Path(cfg.output_dir).name}")


# --------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", nargs="?", choices=[*MODEL_KINDS, "masks"],
                        help="what to train; 'masks' writes IAMG masks for MGIG stage 2")
    parser.add_argument("--config", help="JSON config file (examples in pipelines/train_configs/; keys: --list-keys)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config key (value parsed as JSON, else a string); repeatable")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in output_dir from its latest checkpoint (start fresh if none)")
    parser.add_argument("--list-keys", action="store_true", help="print every config key, its default and meaning")
    masks = parser.add_argument_group("masks (MGIG stage 2 input)")
    masks.add_argument("--iamg", help="IAMG weights (official iamg.pth or ours)")
    masks.add_argument("--data", help="CHOI dataset folder")
    masks.add_argument("--out", help="folder for <sample id>.png masks")
    masks.add_argument("--split", default="train", help="dataset split (default train)")
    masks.add_argument("--steps", type=int, default=iamg.DEFAULT_STEPS, help="sampler steps")
    masks.add_argument("--sampler", default="plms", choices=samplers.SAMPLER_NAMES)
    masks.add_argument("--guidance", type=float, default=iamg.DEFAULT_GUIDANCE)
    masks.add_argument("--seed", type=int, default=0, help="sample i uses seed + i")
    masks.add_argument("--limit", type=int, default=None, help="only the first N samples")
    masks.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    masks.add_argument("--tokenizer-dir", default=None, help="prompt tokenizer folder (CLIP-vocabulary IAMG)")
    masks.add_argument("--overwrite", action="store_true", help="regenerate masks that exist")


def _run_masks(args) -> int:
    from ..weights_manager.native_iamg import load_iamg

    missing = [f"--{n}" for n in ("iamg", "data", "out") if not getattr(args, n)]
    if missing:
        print(f"interact-custom train masks: missing {', '.join(missing)}", file=sys.stderr)
        return 2
    model = load_iamg(args.iamg, device=args.device, tokenizer_dir=args.tokenizer_dir)

    def report(i, n):
        print(f"\rmask {i}/{n}", end="", file=sys.stderr, flush=True)

    written = train_data.write_generated_masks(model, args.data, args.out, split=args.split, steps=args.steps,
                                               sampler=args.sampler, guidance=args.guidance, seed=args.seed,
                                               overwrite=args.overwrite, limit=args.limit, progress=report)
    print(f"\nwrote {written} masks to {args.out}", file=sys.stderr)
    return 0


def run(args: argparse.Namespace) -> int:
    if args.list_keys:
        print(describe_keys())
        return 0
    if args.model is None:
        print("interact-custom train: name what to train: vae, iamg, mgig or masks", file=sys.stderr)
        return 2
    if args.model == "masks":
        return _run_masks(args)
    from ..weights_manager.files import WeightsError
    from .dataset import DatasetError

    try:
        cfg = load_config(args.config, args.overrides, model=args.model)
        result = train(cfg, resume=args.resume)
    except (ConfigError, WeightsError, DatasetError, FileNotFoundError) as e:
        print(f"interact-custom train: {e}", file=sys.stderr)
        return 2
    where = result.final if result.final is not None else f"{result.output_dir / CHECKPOINTS} (stopped early)"
    if result.main_process:
        print(f"step {result.step}/{cfg.steps}, {result.seconds_per_step:.3f} s/step; weights: {where}", file=sys.stderr)
    return 0
