"""Training configs: `TrainConfig` (every key, its default and meaning), reading a JSON
file with ``--set key=value`` overrides, and validation (`ConfigError` names the key).

A config is a JSON object of plain keys (examples in ``cli/research/training/configs/``);
``train --list-keys`` prints them (`describe_keys`). Relative paths are relative to the
working directory.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ....pipelines import iamg, samplers
from ....pipelines.hardware import fast_bf16
from . import data as train_data

CONFIGS_DIR = Path(__file__).resolve().parent / "configs"  # the example training configs

MODEL_KINDS = ("vae", "iamg", "mgig")
# LR defaults: the paper fine-tunes both models with AdamW at 1e-5; from scratch a small
# model needs a larger step.
LR_FINETUNE = 1e-5
LR_SCRATCH = 1e-4
# The largest learning rate accepted: AdamW's step is about lr per weight, so beyond 1 a
# single step wipes the weights out (a typo such as 1e10 instead of 1e-10).
MAX_LR = 1.0


class ConfigError(ValueError):
    """A training config that cannot be used (the message names the key)."""


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
    data_root: str | None = _key(None, "CHOI dataset folder (cli/research/data/dataset.py format)")
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
    mixed_precision: str = _key("no", "no | fp16 | bf16 (Accelerate autocast; fp16 adds a grad scaler) | auto "
                                      "(bf16 where the device runs it natively: CUDA with bf16, CPUs with "
                                      "AMX / AVX512-bf16; else no)")
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
    figure_collage_prob: float = _key(0.0, "MGIG: ★ probability that the hint's detail map covers only the "
                                           "(grown) layout mask and the scene stays visible in the rest of the "
                                           "target box (inference: collage 'figure'; 0 = official)")
    perturb_prob: float = _key(train_data.OFFICIAL_PERTURB_PROB,
                               "MGIG: probability of perturbing that mask (official 1; stage 2: the generated "
                               "mask is imperfect already)")
    hflip_prob: float = _key(train_data.OFFICIAL_HFLIP_PROB, "MGIG: reference-canvas flip probability")
    color_prob: float = _key(train_data.OFFICIAL_COLOR_PROB, "MGIG: reference brightness/contrast jitter probability")
    figure_loss_weight: float = _key(1.0, "MGIG: ★ weight of the loss on the latent pixels of the human ∪ object "
                                          "(1 = official, unweighted; >1 spends more of the gradient on identity)")
    objective: str = _key("diffusion", "MGIG: diffusion (the official objective) | decode (★ train the decoding "
                                       "side — `vae_decoder`, `refiner` — to give back the target crop from its "
                                       "latent and the hint; the diffusion model is untouched)")
    decode_sampled_prob: float = _key(0.0, "MGIG objective decode: probability that an item's latent is the "
                                           "model's own one-step prediction x̂₀ from the target noised to a "
                                           "random t (guidance 3) instead of the target's: the decoding side "
                                           "then also learns to repair what sampling gets wrong")
    refiner: int | None = _key(None, "MGIG: give a model without one a fresh ★ scene refiner of this width "
                                     "(pipelines/mgig/refiner.py; null: keep what the model has)")
    colour_hint: bool = _key(False, "MGIG: give a model without it the ★ colour hint (the references' low-passed "
                                    "colours as 4 more hint channels, `inputs.colour_collage`), its new ControlNet "
                                    "input weights zero: unchanged output until trained")
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


def _finite(v) -> bool:
    """A JSON number that is not NaN or infinite (JSON's NaN / Infinity parse as floats)."""
    return not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)


def _lr_scheduler_names() -> list[str]:
    """diffusers' scheduler names that need no arguments beyond warm-up and total steps."""
    from diffusers.optimization import SchedulerType

    return [t.value for t in SchedulerType if t.value != "piecewise_constant"]


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
                "decode_sampled_prob", "figure_collage_prob", "perturb_prob", "hflip_prob", "color_prob"):
        v = getattr(cfg, key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
            fail(key, "a probability in [0, 1]")
    for key in ("weight_decay", "adam_eps", "kl_weight", "validation_guidance"):
        if not _finite(getattr(cfg, key)) or getattr(cfg, key) < 0:
            fail(key, "a finite number >= 0")
    v = cfg.figure_loss_weight
    if not _finite(v) or v < 1:
        fail("figure_loss_weight", "a finite number >= 1 (1 = the official unweighted loss)")
    if v != 1 and cfg.model != "mgig":
        fail("figure_loss_weight", "1 except for mgig runs")
    if cfg.objective not in ("diffusion", "decode") or (cfg.objective == "decode" and cfg.model != "mgig"):
        fail("objective", 'diffusion, or decode for an mgig run')
    if cfg.refiner is not None and (cfg.model != "mgig" or isinstance(cfg.refiner, bool)
                                    or not isinstance(cfg.refiner, int) or cfg.refiner < 1):
        fail("refiner", "null, or an integer width >= 1 for an mgig run")
    if not isinstance(cfg.colour_hint, bool) or (cfg.colour_hint and cfg.model != "mgig"):
        fail("colour_hint", "true or false (true only for an mgig run)")
    if cfg.lr is not None and (not _finite(cfg.lr) or not 0 < cfg.lr <= MAX_LR):
        fail("lr", f"null or a number in (0, {MAX_LR:g}] (AdamW with a larger step diverges at once; the paper "
                   f"fine-tunes at {LR_FINETUNE:g})")
    if cfg.max_grad_norm is not None and (not _finite(cfg.max_grad_norm) or cfg.max_grad_norm <= 0):
        fail("max_grad_norm", "null or a finite positive number")
    if cfg.vae_logvar_init is not None and not _finite(cfg.vae_logvar_init):
        fail("vae_logvar_init", "null or a finite number")
    schedulers = _lr_scheduler_names()
    if cfg.lr_scheduler not in schedulers:
        fail("lr_scheduler", " | ".join(schedulers))
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
    if not (isinstance(cfg.adam_betas, list) and len(cfg.adam_betas) == 2
            and all(_finite(b) and 0 <= b < 1 for b in cfg.adam_betas)):
        fail("adam_betas", "[beta1, beta2], each in [0, 1)")
    for key in ("box_ratio", "crop_ratio"):
        v = getattr(cfg, key)
        if not (isinstance(v, list) and len(v) == 2 and all(_finite(x) for x in v) and 1.0 <= v[0] <= v[1]):
            fail(key, "[lo, hi] with 1 <= lo <= hi (finite)")
    if cfg.mixed_precision not in ("no", "fp16", "bf16", "auto"):
        fail("mixed_precision", "no | fp16 | bf16 | auto")
    if cfg.frozen_dtype not in (None, "fp16", "bf16", "fp32"):
        fail("frozen_dtype", "null | fp16 | bf16 | fp32")
    if cfg.frozen_dtype in ("fp16", "bf16") and cfg.mixed_precision in ("no", "auto"):
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


def resolved_mixed_precision(cfg: TrainConfig, device_type: str) -> str:
    """``mixed_precision`` for a run on a ``device_type`` device: "auto" is bf16 where it is
    native there (`hardware.fast_bf16`; emulated bf16 on a CPU is many times slower than fp32),
    else "no"."""
    if cfg.mixed_precision != "auto":
        return cfg.mixed_precision
    return "bf16" if fast_bf16(device_type) else "no"


def resolved_lr(cfg: TrainConfig) -> float:
    return float(cfg.lr) if cfg.lr is not None else (LR_FINETUNE if cfg.init else LR_SCRATCH)
