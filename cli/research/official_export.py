"""Writing a model in the official checkpoint formats: the inverse of the official loaders.

- `mgig_official_state_dict`: an `MGIGModel` as the official AnyDoor/MGIG Lightning
  ``state_dict`` (``mgig.ckpt``), read back by `native_mgig.load_mgig`;
- `iamg_official_checkpoint`: an `IAMGModel` (released architecture) as the official
  trainer's ``iamg.pth`` dict, read back by `official_iamg.load_official_iamg`;
- `ldm_unet_to_official` / `ldm_schedule_buffers`: the LDM UNet names and the DDPM
  buffers both formats share.

The key maps are the loaders' own (`official_mgig`, `official_iamg`, `ldm_vae`,
`native_iamg`), inverted here, so the names have one source. Used by `benchmark` to
time loading an official-format file of the same model as our safetensors file.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
import torch

from ...pipelines import samplers
from ...pipelines.files import strip_prefix
from ...pipelines.iamg import IAMGModel
from ...pipelines.mgig import MGIGModel
from ...weights_manager.ldm_vae import convert_diffusers_vae_to_ldm
from ...weights_manager.native_iamg import TEXT_MODEL, native_state_dict
from ...weights_manager.official_iamg import _RESNET, TEXT_PREFIX, unet_module_map
from ...weights_manager.official_mgig import _RESBLOCK_NAMES, OFFICIAL_PREFIXES, _dinov2_hf_to_official, _unet_module_map


def ldm_schedule_buffers(schedule: Mapping | None = None, *, logvar: bool = True) -> dict[str, torch.Tensor]:
    """The DDPM buffers an LDM model registers (``register_schedule``, v_posterior 0),
    float64 maths then float32 as stored; ``logvar`` (zeros) is LatentDiffusion's extra."""
    s = dict(schedule or {"num_train_timesteps": samplers.NUM_TRAIN_TIMESTEPS,
                          "linear_start": samplers.LINEAR_START, "linear_end": samplers.LINEAR_END})
    betas = samplers.ldm_linear_betas(s["num_train_timesteps"], s["linear_start"], s["linear_end"])
    alphas = 1.0 - betas
    ac = np.cumprod(alphas)
    ac_prev = np.append(1.0, ac[:-1])
    post_var = betas * (1.0 - ac_prev) / (1.0 - ac)
    out = {
        "betas": betas, "alphas_cumprod": ac, "alphas_cumprod_prev": ac_prev,
        "sqrt_alphas_cumprod": np.sqrt(ac), "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - ac),
        "log_one_minus_alphas_cumprod": np.log(1.0 - ac), "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / ac),
        "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / ac - 1.0), "posterior_variance": post_var,
        "posterior_log_variance_clipped": np.log(np.maximum(post_var, 1e-20)),
        "posterior_mean_coef1": betas * np.sqrt(ac_prev) / (1.0 - ac),
        "posterior_mean_coef2": (1.0 - ac_prev) * np.sqrt(alphas) / (1.0 - ac),
    }
    if logvar:
        out["logvar"] = np.zeros(len(betas))
    return {k: torch.tensor(v, dtype=torch.float32) for k, v in out.items()}


def ldm_unet_to_official(native: Mapping[str, torch.Tensor], unet_cfg: Mapping, prefix: str, *,
                          hint_convs: int = 0) -> dict[str, torch.Tensor]:
    # The inverse of official_mgig's module map (one source of truth for the names).

    attention = [t.startswith("CrossAttn") for t in unet_cfg["down_block_types"]]
    modules = {v: k for k, v in _unet_module_map(len(unet_cfg["block_out_channels"]), unet_cfg["layers_per_block"],
                                                 attention, hint_convs=hint_convs).items()}
    resnet_names = {v: k for k, v in _RESBLOCK_NAMES.items()}
    out = {}
    for key, value in native.items():
        parts = key.split(".")
        for cut in range(len(parts) - 1, 0, -1):
            module = ".".join(parts[:cut])
            if module in modules:
                head, param = ".".join(parts[cut:-1]), parts[-1]
                if ".resnets." in module:
                    head = resnet_names.get(head, head)
                out[f"{prefix}{modules[module]}.{head + '.' if head else ''}{param}"] = value
                break
        else:
            raise KeyError(f"no official name for {key!r}")
    return out


def mgig_official_state_dict(model: MGIGModel, seed: int = 0) -> dict[str, torch.Tensor]:
    """``model`` as the official AnyDoor/MGIG Lightning ``state_dict`` (prefixes
    ``model.diffusion_model.``, ``control_model.``, ``cond_stage_model.model.``,
    ``cond_stage_model.projector.``, ``first_stage_model.`` + the 13 schedule buffers):
    what `native_mgig.load_mgig` reads back to the same model. The
    ControlNet's input conv, which the official file holds but never uses, gets seeded
    random values. A ★ refiner has no place in the official format and is left out; a ★
    colour hint would change the official hint width, so it is refused."""
    cfg, sd = model.config, model.state_dict()
    if cfg.colour_hint:
        raise ValueError("the official MGIG format reads a 4-channel hint; a ★ colour-hint model "
                         "(colour_hint) can only be saved in our safetensors format")
    out = ldm_unet_to_official(strip_prefix(sd, "unet."), cfg.unet, OFFICIAL_PREFIXES["unet"])
    control = strip_prefix(sd, "controlnet.")
    blocks = {k.split(".")[2] for k in control if k.startswith("controlnet_cond_embedding.blocks.")}
    out.update(ldm_unet_to_official(control, cfg.controlnet, OFFICIAL_PREFIXES["controlnet"],
                                     hint_convs=len(blocks) + 2))
    width, in_ch = cfg.controlnet["block_out_channels"][0], cfg.controlnet["in_channels"]
    g = torch.Generator().manual_seed(seed)
    unused_conv = f"{OFFICIAL_PREFIXES['controlnet']}input_blocks.0.0."
    out[unused_conv + "weight"] = torch.randn(width, in_ch, 3, 3, generator=g) * 0.02
    out[unused_conv + "bias"] = torch.zeros(width)
    dino = _dinov2_hf_to_official(strip_prefix(sd, "id_encoder.dinov2."))
    out.update({OFFICIAL_PREFIXES["dinov2"] + k: v for k, v in dino.items()})
    out.update({OFFICIAL_PREFIXES["projector"] + k: v for k, v in strip_prefix(sd, "id_encoder.projector.").items()})
    vae = convert_diffusers_vae_to_ldm(strip_prefix(sd, "vae."))
    out.update({OFFICIAL_PREFIXES["vae"] + k: v for k, v in vae.items()})
    out.update(ldm_schedule_buffers(cfg.schedule))
    return out


def iamg_official_checkpoint(model: IAMGModel) -> dict:
    """``model`` as the official IAMG trainer's ``iamg.pth`` dict: ``model`` (official
    UNet names, legacy per-head interleaved qkv as 1×1 conv1d), ``text_encoder``
    (``transformer.text_model.*``), ``autoencoder`` (LDM names), ``diffusion`` (12
    schedule buffers), ``iters`` and ``config_dict`` (the head count, which shapes do not
    show). The optimizer state of a training checkpoint is not written (the loader never
    reads it). Only the released architecture fits (no cross-attention)."""
    cfg = model.unet.config
    if cfg.cross_attention_dim is not None:
        raise ValueError("the official IAMG format has no place for cross-attention (★ text variant); "
                         "use our safetensors format for it")
    sd = model.unet.state_dict()
    resnet_names = {v: k for k, v in _RESNET.items()}
    unet, used = {}, set()
    for src, dst, kind in unet_module_map(cfg):
        for key in [k for k in sd if k.startswith(dst + ".")]:
            module, _, param = key[len(dst) + 1:].rpartition(".")
            if kind == "plain":
                unet[f"{src}.{key[len(dst) + 1:]}"] = sd[key]
            elif kind == "resnet":
                unet[f"{src}.{resnet_names[module]}.{param}"] = sd[key]
            elif module == "group_norm":
                unet[f"{src}.norm.{param}"] = sd[key]
            elif module == "to_out.0":
                unet[f"{src}.proj_out.{param}"] = sd[key][..., None] if param == "weight" else sd[key]
            elif module == "to_q":
                # legacy layout: rows [q_h, k_h, v_h] for each head h
                q, k, v = (sd[f"{dst}.{n}.{param}"] for n in ("to_q", "to_k", "to_v"))
                heads = cfg.num_heads
                qkv = torch.stack([t.reshape(heads, t.shape[0] // heads, *t.shape[1:]) for t in (q, k, v)], dim=1)
                qkv = qkv.reshape(3 * q.shape[0], *q.shape[1:])
                unet[f"{src}.qkv.{param}"] = qkv[..., None] if param == "weight" else qkv
                used.update(f"{dst}.{n}.{param}" for n in ("to_k", "to_v"))
            elif module not in ("to_k", "to_v"):
                raise KeyError(f"no official name for IAMG UNet key {key!r}")
            used.add(key)
    left = sorted(set(sd) - used)
    if left:
        raise KeyError(f"IAMG UNet keys without an official name: {', '.join(left[:5])}")
    text = {TEXT_PREFIX + "text_model." + k[len(TEXT_MODEL):]: v for k, v in native_state_dict(model).items()
            if k.startswith(TEXT_MODEL)}
    return {"model": unet, "text_encoder": text, "autoencoder": convert_diffusers_vae_to_ldm(model.vae.state_dict()),
            "diffusion": ldm_schedule_buffers(logvar=False), "iters": 0,
            "config_dict": {"model": {"params": {"num_heads": cfg.num_heads, "num_head_channels": -1}}}}
