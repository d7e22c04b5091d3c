"""The model a training run trains: building it from a ``preset`` or an ``init`` file,
choosing the parts that train (`model_parts`, ``trainable``), memory switches (gradient
checkpointing, reduced-precision frozen parts), latent calibration, and writing the final
file.

Weight files in the official and our IAMG / MGIG formats are read and written through
`weights_manager` (`load_init`, `read_tensors`, `save_final`); a VAE run's `vae.*` file
is written here (`save_vae`).
"""
from __future__ import annotations

import math
import os
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from ....pipelines import iamg
from ....pipelines.files import check_finite, load_strict, read_weights, save_native, strip_prefix
from ....pipelines.mgig import MGIG_PRESETS, build_mgig, mgig_config
from ....pipelines.text import resolve_prompt_tokenizer
from ....pipelines.vae import build_vae, kl_vae_config
from ....weights_manager import stored_config
from ....weights_manager.ldm_vae import detect_diffusers_vae_config
from ....weights_manager.native_iamg import load_iamg, save_iamg
from ....weights_manager.native_mgig import load_mgig, native_for_installed_transformers, save_mgig
from .config import ConfigError, TrainConfig, resolved_resolution


def read_tensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """The tensors of a weight file under the names the installed libraries use, and its
    metadata: the files of ``init_vae`` / ``init_id_encoder``."""
    sd, metadata = read_weights(path)
    check_finite(sd, Path(path).name)  # an init file with NaN / Inf would train NaN
    return native_for_installed_transformers(sd), metadata


def load_vae_file(path: str | os.PathLike) -> nn.Module:
    """The VAE (diffusers `AutoencoderKL`) stored as `vae.*` in any of our files — a
    `train vae` result, or an IAMG/MGIG file in our format."""
    sd, metadata = part_tensors(path, "vae.", "VAE file")
    stored = (stored_config.parse_config(metadata, Path(path).name) or {}).get("vae") or {}
    stored_config.check_vae_settings(stored, Path(path).name)
    vae = build_vae(detect_diffusers_vae_config(sd, scaling_factor=float(stored.get("scaling_factor",
                                                                                  iamg.VAE_SCALE_FACTOR)),
                                                norm_num_groups=stored.get("norm_num_groups")))
    load_strict(vae, {k: v.float() for k, v in sd.items()}, f"{Path(path).name}: VAE ('vae.*')")
    return vae


def load_init(kind: str, path: str | os.PathLike, *, tokenizer_dir: str | None = None) -> nn.Module:
    """The model of kind ``kind`` ("vae", "iamg", "mgig") stored in ``path`` (``init``):
    an official file or one of ours."""
    if kind == "vae":
        return load_vae_file(path)
    if kind == "iamg":
        return load_iamg(path, tokenizer_dir=tokenizer_dir)
    return load_mgig(path)


# --------------------------------------------------------------------------------------
# Building the model, its weight files
# --------------------------------------------------------------------------------------

def _vae_arch(vae) -> dict:
    # The AutoencoderKL kwargs that define the architecture (what `kl_vae_config` writes).
    keys = kl_vae_config((32,), 1).keys()
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


def part_tensors(path: str | os.PathLike, prefix: str, what: str) -> tuple[dict, dict]:
    """The ``prefix*`` tensors of a weight file (prefix stripped) and its metadata; a
    `ConfigError` naming ``what`` if it has none."""
    sd, metadata = read_tensors(path)
    sub = strip_prefix(sd, prefix)
    if not sub:
        raise ConfigError(f"{what}: {path} has no '{prefix}*' tensors (found e.g. {', '.join(list(sd)[:3])})")
    return sub, metadata


def build_model(cfg: TrainConfig) -> nn.Module:
    """The model a config trains, before freezing: `IAMGModel`, `MGIGModel` or a diffusers
    `AutoencoderKL`. From ``init`` (official or our file) or a
    ``preset`` seeded with ``seed``; then ``init_vae`` / ``init_id_encoder`` replace those
    parts."""
    if cfg.model == "vae":
        if cfg.init:
            model = load_init("vae", cfg.init)
        else:
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
        if cfg.init:
            model = load_init("iamg", cfg.init, tokenizer_dir=cfg.tokenizer_dir)
            if cfg.text and not model.uses_text:
                model = iamg.with_cross_attention(model)
        else:
            if cfg.preset not in iamg.MODEL_PRESETS:
                raise ConfigError(f"preset: unknown IAMG preset {cfg.preset!r}; choose from "
                                  f"{', '.join(iamg.MODEL_PRESETS)}")
            model = iamg.build_iamg(cfg.preset, seed=cfg.seed)
        if model.uses_text and cfg.tokenizer_dir and model.tokenizer is None:
            model.tokenizer = resolve_prompt_tokenizer(cfg.tokenizer_dir, vocab_size=model.text_vocab_size)
    else:
        if cfg.init:
            model = load_init("mgig", cfg.init)
        else:
            if cfg.preset not in MGIG_PRESETS:
                raise ConfigError(f"preset: unknown MGIG preset {cfg.preset!r}; choose from {', '.join(MGIG_PRESETS)}")
            model = build_mgig(cfg.preset, seed=cfg.seed)
        if cfg.refiner is not None and model.refiner is None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(cfg.seed)
                model.add_refiner(cfg.refiner)
        if cfg.colour_hint:
            model.add_colour_hint()
        if cfg.init_id_encoder:
            sd, _ = part_tensors(cfg.init_id_encoder, "id_encoder.", "init_id_encoder")
            load_strict(model.id_encoder, {k: v.float() for k, v in sd.items()},
                        f"init_id_encoder {Path(cfg.init_id_encoder).name}")
    if cfg.init_vae:
        sd, _ = part_tensors(cfg.init_vae, "vae.", "init_vae")
        load_strict(model.vae, {k: v.float() for k, v in sd.items()}, f"init_vae {Path(cfg.init_vae).name}")
    # The model works at the size it is trained at (saved with it; inference resizes to it).
    if cfg.model == "iamg":
        model.image_size = resolved_resolution(cfg)
        if cfg.prediction_type is not None:
            model.prediction_type = cfg.prediction_type
    else:
        trained = {"image_size": resolved_resolution(cfg)}
        if cfg.prediction_type is not None:
            trained["prediction_type"] = cfg.prediction_type
        model.config = replace(model.config, **trained)
    return model.float()


def save_vae(vae: nn.Module, path: str | os.PathLike, *, dtype: str = "fp32", preset: str = "custom") -> Path:
    """A `train vae` result in our format: `vae.*` tensors, metadata model "vae"."""
    sd = {f"vae.{k}": v for k, v in vae.state_dict().items()}
    return save_native(path, sd, model="vae", preset=preset, dtype=dtype, config={"vae": _vae_arch(vae)},
                       overwrite=True)


def save_final(cfg: TrainConfig, model: nn.Module, path: Path) -> Path:
    """The trained model in our format: `save_vae`, `save_iamg` or `save_mgig`."""
    if cfg.model == "vae":
        return save_vae(model, path, dtype=cfg.save_dtype, preset=cfg.preset or "custom")
    if cfg.model == "iamg":
        return save_iamg(model, path, dtype=cfg.save_dtype, overwrite=True)
    return save_mgig(model, path, dtype=cfg.save_dtype, overwrite=True, source=f"trained: {Path(cfg.output_dir).name}")


# --------------------------------------------------------------------------------------
# Trainable parts
# --------------------------------------------------------------------------------------

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
            "projector": [model.id_encoder.projector], "id_encoder": [model.id_encoder],
            "vae_decoder": [model.vae.decoder, model.vae.post_quant_conv],
            "refiner": [] if model.refiner is None else [model.refiner]}


def default_trainable(cfg: TrainConfig, model: nn.Module) -> list[str]:
    if cfg.model == "vae":
        return ["vae"]
    if cfg.model == "iamg":
        if cfg.init or not model.uses_text or model.text_encoder is None:
            return ["unet"]
        return ["unet", "text_encoder"]
    if cfg.objective == "decode":
        return ["refiner"] if model.refiner is not None else ["vae_decoder"]
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
            hint = "set refiner: <width>" if name == "refiner" else "no cross-attention? set text: true"
            raise ConfigError(f"trainable: {name!r} selects nothing in this {cfg.model} model ({hint})")
        for module in parts[name]:
            module.requires_grad_(True)
    return names


def trained_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Name → parameter of everything that trains (what checkpoints and the EMA hold)."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


# --------------------------------------------------------------------------------------
# Memory: gradient checkpointing, reduced-precision frozen parts
# --------------------------------------------------------------------------------------

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
# Latent calibration (``latent_shift`` / ``latent_scale`` "auto")
# --------------------------------------------------------------------------------------

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
        model.config = replace(model.config, vae={**model.config.vae, "scaling_factor": float(scale)})
