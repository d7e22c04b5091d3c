"""MGIG in our single-file safetensors format, and `load_mgig`, the one MGIG loader.

Format (written by `save_mgig` through `files.save_native`):

- keys: `MGIGModel.state_dict()` names — ``unet.*``, ``controlnet.*`` (diffusers),
  ``id_encoder.dinov2.*`` (transformers `Dinov2Model`, named as by the transformers that
  wrote the file; the other naming is re-mapped when read, `native_for_installed_transformers`),
  ``id_encoder.projector.*``, ``vae.*``, and ``refiner.*`` for a model with a ★ scene
  refiner (detected from its tensors). The noise schedule is in the config, not stored as
  tensors.
- metadata: ``format``/``format_version`` (files.py), ``model`` = "mgig", ``preset``
  (`mgig.preset_name_of`), ``dtype``, ``config`` = the `MGIGConfig` as JSON
  (`MGIGConfig.to_dict`), and ``source`` for a converted or trained file.

Every architecture number is read from tensor shapes (`detect_mgig_config`), except the
attention head widths, which weights do not determine: from the ``config`` metadata, else
the `pipelines.mgig.default_head_dim` convention (override with `unet_head_dim=` /
`dino_num_heads=`). The metadata config also supplies what shapes cannot show (schedule,
GroupNorm groups, latent scale, working size, prediction type) and is cross-checked: a
config that disagrees with the shapes is refused. Loading is strict: missing or
unexpected tensors raise `MGIGCheckpointError` naming them.

`load_mgig` takes an official ``mgig.ckpt`` (renamed by `official_mgig.official_to_native`)
or one of our files; the embedded default is `loader.load_mgig_model`'s.
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import replace
from pathlib import Path
from typing import Mapping

import torch

from ..pipelines.files import DTYPES, save_native, state_dict_mismatch
from ..pipelines.mgig import (OFFICIAL_SCHEDULE, MGIGConfig, MGIGModel, controlnet_kwargs, default_head_dim,
                              dinov2_kwargs, preset_name_of, unet_kwargs)
from ..pipelines.mgig.inputs import COLOUR_HINT_CHANNELS, HINT_CHANNELS
from ..pipelines.mgig.refiner import detect_refiner_config
from . import stored_config
from .ldm_vae import VAEKeyError, detect_diffusers_vae_config
from .official_mgig import (OFFICIAL_PREFIXES, MGIGCheckpointError, _dinov2_hf_to_official, detect_schedule,
                            dinov2_official_to_hf, installed_dinov2_scheme, official_to_native, read_state_dict)

MODEL_NAME = "mgig"  # the `model` metadata of our files
NATIVE_PREFIXES = ("unet.", "controlnet.", "id_encoder.", "vae.")


# ---------------------------------------------------------------------------------------
# Saving
# ---------------------------------------------------------------------------------------

def save_mgig(model: MGIGModel, path: str | os.PathLike, *, dtype: str = "fp16", preset: str | None = None,
              overwrite: bool = False, source: str | None = None) -> Path:
    """Write `model` in our safetensors format (`files.save_native`): the tensors of
    `MGIGModel.state_dict()` (`unet.*`, `controlnet.*`, `id_encoder.*`, `vae.*`, a ★ `refiner.*`) and the
    `MGIGConfig` as ``config`` metadata (head counts and the schedule, which shapes do not
    show). ``source`` (e.g. the official file name) is recorded as metadata."""
    extra = {"source": str(source)} if source else {}
    return save_native(path, model.state_dict(), model=MODEL_NAME, preset=preset or preset_name_of(model.config),
                       dtype=dtype, config=model.config.to_dict(), extra=extra, overwrite=overwrite)


# ---------------------------------------------------------------------------------------
# Recognising the format
# ---------------------------------------------------------------------------------------

def checkpoint_format(sd: Mapping[str, torch.Tensor], what: str = "state dict") -> str:
    """'official' or 'native'; raises `MGIGCheckpointError` explaining what else it looks like."""
    def has(prefix):
        return any(k.startswith(prefix) for k in sd)

    if has(OFFICIAL_PREFIXES["controlnet"]) and has(OFFICIAL_PREFIXES["projector"]):
        return "official"
    if all(has(p) for p in NATIVE_PREFIXES):
        return "native"
    if has(OFFICIAL_PREFIXES["unet"]):
        if has(OFFICIAL_PREFIXES["controlnet"]):
            kind = "a ControlNet checkpoint without the DINOv2 projector (cond_stage_model.projector.*)"
        else:
            kind = "a plain Stable Diffusion checkpoint (model.diffusion_model.* but no control_model.*)"
        raise MGIGCheckpointError(f"{what} is {kind}, not an MGIG/AnyDoor checkpoint: expected "
                                  "control_model.* and cond_stage_model.projector.* as well")
    if has(OFFICIAL_PREFIXES["controlnet"]):
        raise MGIGCheckpointError(f"{what} looks like a ControlNet-only file (control_model.* without "
                                  "model.diffusion_model.* / cond_stage_model.projector.*), not MGIG/AnyDoor")
    if any(has(p) for p in NATIVE_PREFIXES):
        missing = [p + "*" for p in NATIVE_PREFIXES if not has(p)]
        raise MGIGCheckpointError(f"{what} looks like our MGIG format but has no {', '.join(missing)} tensors")
    sample = ", ".join(list(sd)[:4])
    raise MGIGCheckpointError(f"{what} is not an MGIG checkpoint: expected keys starting with "
                              f"control_model. / cond_stage_model.projector. (official) or unet. / controlnet. "
                              f"(ours); found e.g. {sample}")


# ---------------------------------------------------------------------------------------
# Reading our files
# ---------------------------------------------------------------------------------------

def native_for_installed_transformers(native_sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Re-map `id_encoder.dinov2.*` if the file was written with the other transformers
    naming scheme (see `installed_dinov2_scheme`); other keys pass through."""
    prefix = "id_encoder.dinov2."
    file_scheme = "v5" if any(k.startswith(prefix) and ".attention.q_proj." in k for k in native_sd) else (
        "v4" if any(k.startswith(prefix) and ".attention.attention.query." in k for k in native_sd) else None)
    if file_scheme is None or file_scheme == installed_dinov2_scheme():
        return dict(native_sd)
    dino = _dinov2_hf_to_official({k[len(prefix):]: v for k, v in native_sd.items() if k.startswith(prefix)})
    converted, _ = dinov2_official_to_hf(dino)
    out = {k: v for k, v in native_sd.items() if not k.startswith(prefix)}
    out.update({prefix + k: v for k, v in converted.items()})
    return out


# ---------------------------------------------------------------------------------------
# Architecture detection (native names)
# ---------------------------------------------------------------------------------------

def _sub(sd: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def _shape(sd, key, what) -> tuple[int, ...]:
    if key not in sd:
        raise MGIGCheckpointError(f"cannot detect the {what}: tensor {key!r} is missing")
    return tuple(sd[key].shape)


def _count(sd, pattern) -> int:
    found = {int(m.group(1)) for k in sd if (m := re.match(pattern, k))}
    return max(found) + 1 if found else 0


def _detect_unet_like(sd: Mapping[str, torch.Tensor], what: str, head_dim: int | None) -> dict:
    """Shared encoder/middle detection for `unet.*` and `controlnet.*` (diffusers names)."""
    levels = _count(sd, r"down_blocks\.(\d+)\.")
    if levels == 0:
        raise MGIGCheckpointError(f"cannot detect the {what}: no down_blocks.* tensors")
    widths = [_shape(sd, f"down_blocks.{i}.resnets.0.conv1.weight", f"{what} level {i} width")[0]
              for i in range(levels)]
    base = widths[0]
    if any(w % base for w in widths):
        raise MGIGCheckpointError(f"{what}: level widths {widths} are not multiples of the first")
    attention = [any(k.startswith(f"down_blocks.{i}.attentions.") for k in sd) for i in range(levels)]
    to_k = sorted(k for k in sd if k.endswith("attn2.to_k.weight"))
    if not to_k:
        raise MGIGCheckpointError(f"{what}: no cross-attention (attn2) found; MGIG's UNet attends to the ID tokens")
    proj_in = sd["mid_block.attentions.0.proj_in.weight"] if "mid_block.attentions.0.proj_in.weight" in sd else None
    if proj_in is None:
        raise MGIGCheckpointError(f"{what}: the middle block has no transformer (mid_block.attentions.0)")
    return dict(model_channels=base, channel_mult=[w // base for w in widths],
                num_res_blocks=_count(sd, r"down_blocks\.0\.resnets\.(\d+)\."), attention_levels=attention,
                context_dim=int(sd[to_k[0]].shape[1]),
                head_dim=head_dim or default_head_dim(base),
                transformer_depth=_count(sd, r"mid_block\.attentions\.0\.transformer_blocks\.(\d+)\."),
                linear_projection=proj_in.ndim == 2)


def detect_mgig_config(native_sd: Mapping[str, torch.Tensor], *, unet_head_dim: int | None = None,
                       dino_num_heads: int | None = None, schedule: dict | None = None) -> MGIGConfig:
    """Read the MGIG architecture from a native (`MGIGModel.state_dict()`-named) state dict.

    Head widths are not visible in weights: `unet_head_dim` (default
    `default_head_dim(model_channels)`) and `dino_num_heads` (default hidden /
    `default_head_dim(hidden)`) override the convention. `schedule` defaults to the official one.
    """
    unet_sd, cn_sd = _sub(native_sd, "unet."), _sub(native_sd, "controlnet.")
    dino_sd, vae_sd = _sub(native_sd, "id_encoder.dinov2."), _sub(native_sd, "vae.")

    u = _detect_unet_like(unet_sd, "UNet", unet_head_dim)
    unet = unet_kwargs(**u, in_channels=_shape(unet_sd, "conv_in.weight", "UNet input")[1],
                       out_channels=_shape(unet_sd, "conv_out.weight", "UNet output")[0])

    c = _detect_unet_like(cn_sd, "ControlNet", unet_head_dim)
    mismatch = [k for k in ("model_channels", "channel_mult", "num_res_blocks", "context_dim") if c[k] != u[k]]
    if mismatch:
        raise MGIGCheckpointError("ControlNet and UNet encoders differ in " + ", ".join(
            f"{k} ({c[k]} vs {u[k]})" for k in mismatch) + "; their residuals could not be added")
    hint_in = _shape(cn_sd, "controlnet_cond_embedding.conv_in.weight", "ControlNet hint input")
    n_hint_blocks = _count(cn_sd, r"controlnet_cond_embedding\.blocks\.(\d+)\.")
    hint_widths = [hint_in[0]] + [_shape(cn_sd, f"controlnet_cond_embedding.blocks.{b}.weight", "hint block")[0]
                                  for b in range(1, n_hint_blocks, 2)]
    controlnet = controlnet_kwargs(unet_kwargs(**c, in_channels=unet["in_channels"]),
                                   hint_channels=hint_in[1], hint_widths=hint_widths)

    hidden = _shape(dino_sd, "embeddings.cls_token", "DINOv2 width")[-1]
    patch = _shape(dino_sd, "embeddings.patch_embeddings.projection.weight", "DINOv2 patch size")[-1]
    positions = _shape(dino_sd, "embeddings.position_embeddings", "DINOv2 position grid")[1] - 1
    grid = math.isqrt(positions)
    if grid * grid != positions:
        raise MGIGCheckpointError(f"DINOv2 position embedding holds {positions} patches, not a square grid")
    if "encoder.layer.0.mlp.gate_proj.weight" in dino_sd:
        ffn_hidden = dino_sd["encoder.layer.0.mlp.gate_proj.weight"].shape[0]
    elif "encoder.layer.0.mlp.weights_in.weight" in dino_sd:
        ffn_hidden = dino_sd["encoder.layer.0.mlp.weights_in.weight"].shape[0] // 2
    else:
        raise MGIGCheckpointError("DINOv2 blocks have no SwiGLU FFN (mlp.w12); only the ViT-g style "
                                  "SwiGLU DINOv2 of AnyDoor is supported")
    # transformers derives the SwiGLU width from mlp_ratio like DINOv2's SwiGLUFFNFused
    ratios = [r for r in range(1, 9) if (int(hidden * r * 2 / 3) + 7) // 8 * 8 == ffn_hidden]
    if not ratios:
        raise MGIGCheckpointError(f"DINOv2 SwiGLU width {ffn_hidden} matches no mlp_ratio for width {hidden}")
    dinov2 = dinov2_kwargs(hidden_size=hidden, depth=_count(dino_sd, r"encoder\.layer\.(\d+)\."),
                           num_heads=dino_num_heads, patch_size=patch, image_size=grid * patch,
                           mlp_ratio=4 if 4 in ratios else ratios[0])
    projector = _shape(native_sd, "id_encoder.projector.weight", "ID projector")
    if projector[1] != hidden:
        raise MGIGCheckpointError(f"ID projector input width {projector[1]} != DINOv2 width {hidden}")
    if projector[0] != u["context_dim"]:
        raise MGIGCheckpointError(f"ID projector output width {projector[0]} != UNet context width "
                                  f"{u['context_dim']}")
    return MGIGConfig(unet=unet, controlnet=controlnet,
                      id_encoder={"dinov2": dinov2, "context_dim": projector[0]},
                      vae=detect_diffusers_vae_config(vae_sd),
                      schedule=dict(schedule or OFFICIAL_SCHEDULE),
                      refiner=_detect_refiner(_sub(native_sd, "refiner.")),
                      colour_hint=hint_in[1] == HINT_CHANNELS + COLOUR_HINT_CHANNELS)


def _detect_refiner(refiner_sd: Mapping[str, torch.Tensor]) -> dict | None:
    try:
        return detect_refiner_config(dict(refiner_sd))
    except ValueError as e:
        raise MGIGCheckpointError(str(e)) from e


# ---------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------

def _metadata_config(metadata: Mapping[str, str], what: str) -> MGIGConfig | None:
    if metadata.get("model") not in (None, MODEL_NAME):
        raise MGIGCheckpointError(f"{what}: this is an interact-custom {metadata.get('model')!r} file, not MGIG")
    config = stored_config.parse_config(metadata, what)
    if config is None:
        return None
    stored_config.check_mgig_config(config, what)  # every stored setting, before any is used
    return MGIGConfig.from_dict(config)


def _detect_like(native: Mapping[str, torch.Tensor], stored: MGIGConfig, what: str) -> MGIGConfig:
    """Detect from shapes, taking head counts and schedule from the stored config, and
    refuse a stored config that disagrees with the tensors."""
    widths, heads = stored.unet["block_out_channels"], stored.unet["attention_head_dim"]
    detected = detect_mgig_config(native, unet_head_dim=widths[0] // heads[0],
                                  dino_num_heads=stored.id_encoder["dinov2"]["num_attention_heads"],
                                  schedule=stored.schedule)
    # Training facts, not visible in shapes: the working size, the prediction type and the
    # latent scale.
    unseen = {"image_size": int(stored.image_size), "prediction_type": stored.prediction_type}
    for part in ("vae", "unet", "controlnet"):  # GroupNorm groups are not in shapes either
        mine, theirs = getattr(detected, part), getattr(stored, part)
        unseen[part] = {**mine, **{k: theirs[k] for k in ("scaling_factor", "norm_num_groups")
                                   if k in theirs and k in mine}}
    detected = replace(detected, **unseen)
    differ = [k for k, v in detected.to_dict().items() if json.loads(json.dumps(v)) != stored.to_dict()[k]]
    if differ:
        raise MGIGCheckpointError(f"{what}: the 'config' metadata disagrees with the tensor shapes in "
                                  f"{', '.join(differ)}")
    return detected


def load_mgig(source: str | os.PathLike | Mapping[str, torch.Tensor], *, device: str | torch.device = "cpu",
              dtype: torch.dtype | str | None = None, unet_head_dim: int | None = None,
              dino_num_heads: int | None = None, config: MGIGConfig | None = None,
              metadata: Mapping[str, str] | None = None, what: str | None = None) -> MGIGModel:
    """Load an MGIG model from a file path or a state dict (official or our format; with a
    state dict, ``metadata`` is its file's and ``what`` names it in errors).

    The architecture is detected from the tensors (head widths from `unet_head_dim` /
    `dino_num_heads`, from our files' ``config`` metadata, else the
    `pipelines.mgig.default_head_dim` convention), or given as `config`. The model is built
    without random initialisation and every tensor must find its place: missing or
    unexpected ones raise `MGIGCheckpointError` naming them.
    """
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"dtype: expected one of {', '.join(DTYPES)} or a torch.dtype, got {dtype!r}")
        dtype = DTYPES[dtype]
    if isinstance(source, Mapping):
        sd, metadata, what = dict(source), dict(metadata or {}), what or "MGIG state dict"
    else:
        (sd, metadata), what = read_state_dict(source, dtype), Path(source).name
    stored = _metadata_config(metadata, what)
    if checkpoint_format(sd, what) == "official":
        schedule = detect_schedule(sd, what)
        native = official_to_native(sd, what=what)
    else:
        schedule = None
        native = native_for_installed_transformers(sd)
    try:
        if config is None and stored is not None and unet_head_dim is None and dino_num_heads is None:
            config = _detect_like(native, stored, what)
        elif config is None:
            config = detect_mgig_config(native, unet_head_dim=unet_head_dim, dino_num_heads=dino_num_heads,
                                        schedule=schedule)
    except VAEKeyError as e:
        raise MGIGCheckpointError(f"{what}: VAE ('vae.*'): {e}") from e
    with torch.device("meta"):
        model = MGIGModel(config)  # no random init: every tensor comes from the file
    problem = state_dict_mismatch(model.state_dict(), native, f"MGIG {what}")
    if problem:
        raise MGIGCheckpointError(problem)
    model.load_state_dict(native, strict=True, assign=True)
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)
