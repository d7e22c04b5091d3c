"""Loading MGIG weights: the official AnyDoor-format `mgig.ckpt` and our native format.

Formats accepted by `load_mgig`:

- official: a Lightning checkpoint (`{"state_dict": {...}, ...}`) or the bare state dict,
  as `.ckpt` / `.pth` / `.pt` (read with ``torch.load(weights_only=True)``: files that
  need pickled code are refused) or `.safetensors`. Prefixes `model.diffusion_model.`
  (UNet), `control_model.` (ControlNet), `cond_stage_model.model.` (DINOv2, original
  naming), `cond_stage_model.projector.`, `first_stage_model.` (LDM VAE) and the 13
  schedule buffers (`betas`, `alphas_cumprod`, ...).
- native: `MGIGModel.state_dict()` names (`unet.*`, `controlnet.*`, `id_encoder.*`, `vae.*`, and
  `refiner.*` for a model with a ★ scene refiner: detected from its tensors).

Every architecture number is read from tensor shapes (`detect_mgig_config`), except the
attention head width, which weights do not determine (see `pipelines.mgig.default_head_dim`;
override with `unet_head_dim=` / `dino_num_heads=`). Loading is strict: missing or
unexpected tensors raise `MGIGCheckpointError` naming them.

Key map, official -> native (`official_to_native`). LDM UNet (`model.diffusion_model.` ->
`unet.`, and `control_model.` -> `controlnet.` for the shared encoder part); l = level,
j = block in level, R = res-blocks per level, L = levels:

| official | native (diffusers) |
|---|---|
| time_embed.0 / .2 | time_embedding.linear_1 / linear_2 |
| input_blocks.0.0 | conv_in (UNet only, see below) |
| input_blocks.(1 + l(R+1) + j).0 | down_blocks.l.resnets.j |
| input_blocks.(1 + l(R+1) + j).1 | down_blocks.l.attentions.j |
| input_blocks.((l+1)(R+1)).0.op | down_blocks.l.downsamplers.0.conv |
| middle_block.0 / .1 / .2 | mid_block.resnets.0 / attentions.0 / resnets.1 |
| output_blocks.(k(R+1) + j).0 | up_blocks.k.resnets.j |
| output_blocks.(k(R+1) + j).1 | up_blocks.k.attentions.j (levels with attention) |
| output_blocks.(k(R+1) + R).{1,2}.conv | up_blocks.k.upsamplers.0.conv |
| out.0 / out.2 | conv_norm_out / conv_out |
| ResBlock in_layers.0, in_layers.2, emb_layers.1, out_layers.0, out_layers.3, skip_connection | norm1, conv1, time_emb_proj, norm2, conv2, conv_shortcut |
| SpatialTransformer norm, proj_in, transformer_blocks.*, proj_out | same names |
| control_model.input_hint_block.{0,2,4,6,8,10,12,14} | controlnet.controlnet_cond_embedding.{conv_in, blocks.0..5, conv_out} |
| control_model.zero_convs.i.0 | controlnet.controlnet_down_blocks.i |
| control_model.middle_block_out.0 | controlnet.controlnet_mid_block |
| control_model.input_blocks.0.0 | dropped: the ControlNet never uses it (the hint embedding replaces its output; `pipelines.mgig.LatentIgnored`) |

DINOv2 (`cond_stage_model.model.` -> `id_encoder.dinov2.`; transformers names of the
installed version, both the 4.x and 5.x schemes are handled):

| official | transformers 5.x | transformers 4.x |
|---|---|---|
| cls_token, mask_token, pos_embed | embeddings.cls_token, embeddings.mask_token, embeddings.position_embeddings | same |
| patch_embed.proj | embeddings.patch_embeddings.projection | same |
| blocks.i.norm1 / norm2 | encoder.layer.i.norm1 / norm2 | same |
| blocks.i.attn.qkv (rows q, k, v) | ....attention.{q,k,v}_proj | ....attention.attention.{query,key,value} |
| blocks.i.attn.proj | ....attention.o_proj | ....attention.output.dense |
| blocks.i.ls1.gamma / ls2.gamma | ....layer_scale1.lambda1 / layer_scale2.lambda1 | same |
| blocks.i.mlp.w12 (rows x1, x2; silu(x1)·x2) | ....mlp.gate_proj (x1) / up_proj (x2) | ....mlp.weights_in |
| blocks.i.mlp.w3 | ....mlp.down_proj | ....mlp.weights_out |
| norm | layernorm | same |

`cond_stage_model.projector.` -> `id_encoder.projector.`; `first_stage_model.` -> `vae.`
via `weights_manager.ldm_vae` (its own table).
"""
from __future__ import annotations

import functools
import json
import math
import os
import re
from pathlib import Path
from typing import Mapping

import torch

from ..pipelines.mgig import (
    MGIG_PRESETS, OFFICIAL_SCHEDULE, MGIGConfig, MGIGModel, controlnet_kwargs, default_head_dim, dinov2_kwargs,
    mgig_config, schedule_alphas_cumprod, unet_kwargs,
)
from ..pipelines.files import DTYPES, WeightsError, check_finite, read_weights, save_native, state_dict_mismatch
from ..pipelines.mgig.inputs import COLOUR_HINT_CHANNELS, HINT_CHANNELS
from ..pipelines.mgig.refiner import detect_refiner_config
from . import stored_config
from .ldm_vae import VAEKeyError, convert_ldm_vae, detect_diffusers_vae_config

OFFICIAL_PREFIXES = {
    "unet": "model.diffusion_model.",
    "controlnet": "control_model.",
    "dinov2": "cond_stage_model.model.",
    "projector": "cond_stage_model.projector.",
    "vae": "first_stage_model.",
}
NATIVE_PREFIXES = ("unet.", "controlnet.", "id_encoder.", "vae.")
# LatentDiffusion.register_schedule buffers (+ `logvar`), stored at the top level.
SCHEDULE_BUFFERS = (
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
    "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
    "logvar",
)
# Official tensors with no counterpart in our model, by design.
DROPPED_OFFICIAL_KEYS = ("control_model.input_blocks.0.0.weight", "control_model.input_blocks.0.0.bias")
MODEL_NAME = "mgig"  # the `model` metadata of our files


class MGIGCheckpointError(WeightsError):
    """A file or state dict is not a loadable MGIG checkpoint; the message says why."""


# ---------------------------------------------------------------------------------------
# Reading files
# ---------------------------------------------------------------------------------------

def read_state_dict(path: str | Path, dtype: torch.dtype | None = None) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a checkpoint file (`files.read_weights`: no pickled code is ever run) into a
    flat state dict of tensors and the file's metadata (`state_dict_of`); ``dtype`` casts
    safetensors tensors as they are read (one stored tensor alive at a time)."""
    obj, metadata = read_weights(path, dtype=dtype)
    return state_dict_of(obj, Path(path).name), metadata


def state_dict_of(obj: Mapping, name: str) -> dict[str, torch.Tensor]:
    """The flat state dict of a file's content: a Lightning checkpoint's `state_dict` entry
    is unwrapped; other Lightning entries (epoch, ...) are ignored. Tensors holding NaN /
    Inf or stored in a non-floating dtype are refused (`files.check_finite`)."""
    if isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if {"model", "autoencoder", "diffusion"} <= set(obj):
        raise MGIGCheckpointError(f"{name} is an IAMG checkpoint (entries 'model', 'autoencoder', "
                                  "'diffusion'), not MGIG; load it as the IAMG model")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad or not obj:
        raise MGIGCheckpointError(f"{name}: expected a state dict of tensors or a Lightning checkpoint with "
                                  f"'state_dict'; found entries {', '.join(map(str, (bad or list(obj))[:5])) or 'none'}")
    check_finite(obj, name)
    return dict(obj)


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
# Official -> native key map
# ---------------------------------------------------------------------------------------

_RESBLOCK_NAMES = {"in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj",
                   "out_layers.0": "norm2", "out_layers.3": "conv2", "skip_connection": "conv_shortcut"}


def _ldm_unet_layout(sd: Mapping[str, torch.Tensor], prefix: str) -> tuple[int, int, list[bool]]:
    """(levels, res-blocks per level, attention per level) of an LDM openaimodel UNet/ControlNet."""
    def has(name):
        return f"{prefix}{name}" in sd

    attention, blocks_in_level, counts = [], 0, []
    level_attention = False
    i = 1
    while has(f"input_blocks.{i}.0.in_layers.0.weight") or has(f"input_blocks.{i}.0.op.weight"):
        if has(f"input_blocks.{i}.0.op.weight"):
            counts.append(blocks_in_level)
            attention.append(level_attention)
            blocks_in_level, level_attention = 0, False
        else:
            blocks_in_level += 1
            level_attention |= has(f"input_blocks.{i}.1.norm.weight")
        i += 1
    counts.append(blocks_in_level)
    attention.append(level_attention)
    if i == 1 or not has("middle_block.0.in_layers.0.weight"):
        raise MGIGCheckpointError(f"{prefix}*: no LDM UNet input_blocks/middle_block found")
    if len(set(counts)) != 1 or counts[0] == 0:
        raise MGIGCheckpointError(f"{prefix}*: unsupported UNet layout (res-blocks per level {counts}; "
                                  "expected the same number at every level and conv downsampling)")
    return len(counts), counts[0], attention


def _unet_module_map(levels: int, per_level: int, attention: list[bool], *, hint_convs: int = 0) -> dict[str, str]:
    """Official module prefix -> native module prefix (see the module docstring table);
    `hint_convs` > 0 for the ControlNet (its hint-embedding conv count)."""
    controlnet = hint_convs > 0
    m = {"time_embed.0": "time_embedding.linear_1", "time_embed.2": "time_embedding.linear_2",
         "middle_block.0": "mid_block.resnets.0", "middle_block.1": "mid_block.attentions.0",
         "middle_block.2": "mid_block.resnets.1"}
    if not controlnet:
        m["input_blocks.0.0"] = "conv_in"
    i = 1
    for level in range(levels):
        for j in range(per_level):
            m[f"input_blocks.{i}.0"] = f"down_blocks.{level}.resnets.{j}"
            if attention[level]:
                m[f"input_blocks.{i}.1"] = f"down_blocks.{level}.attentions.{j}"
            i += 1
        if level < levels - 1:
            m[f"input_blocks.{i}.0.op"] = f"down_blocks.{level}.downsamplers.0.conv"
            i += 1
    if controlnet:
        for z in range(i):
            m[f"zero_convs.{z}.0"] = f"controlnet_down_blocks.{z}"
        m["middle_block_out.0"] = "controlnet_mid_block"
        hint = ["conv_in"] + [f"blocks.{b}" for b in range(hint_convs - 2)] + ["conv_out"]
        for n, name in enumerate(hint):
            m[f"input_hint_block.{2 * n}"] = f"controlnet_cond_embedding.{name}"
        return m
    o = 0
    for k in range(levels):  # diffusers up block k = LDM level levels-1-k
        has_attention = attention[levels - 1 - k]
        for j in range(per_level + 1):
            m[f"output_blocks.{o}.0"] = f"up_blocks.{k}.resnets.{j}"
            if has_attention:
                m[f"output_blocks.{o}.1"] = f"up_blocks.{k}.attentions.{j}"
            if j == per_level and k < levels - 1:
                m[f"output_blocks.{o}.{2 if has_attention else 1}.conv"] = f"up_blocks.{k}.upsamplers.0.conv"
            o += 1
    m["out.0"], m["out.2"] = "conv_norm_out", "conv_out"
    return m


def _convert_ldm_unet(sd: Mapping[str, torch.Tensor], prefix: str, new_prefix: str, *, controlnet: bool,
                      out: dict, leftovers: list) -> None:
    levels, per_level, attention = _ldm_unet_layout(sd, prefix)
    hint_convs = len({k for k in sd if re.match(re.escape(prefix) + r"input_hint_block\.\d+\.weight$", k)})
    if controlnet and hint_convs < 2:
        raise MGIGCheckpointError(f"{prefix}*: no ControlNet hint block (input_hint_block.*)")
    modules = _unet_module_map(levels, per_level, attention, hint_convs=hint_convs if controlnet else 0)
    for key, value in sd.items():
        if not key.startswith(prefix):
            continue
        rel = key[len(prefix):]
        parts = rel.split(".")
        for cut in range(len(parts) - 1, 0, -1):  # longest mapped module prefix
            module = ".".join(parts[:cut])
            if module in modules:
                rest = ".".join(parts[cut:])
                if ".resnets." in modules[module]:
                    head, _, param = rest.rpartition(".")
                    rest = f"{_RESBLOCK_NAMES.get(head, head)}.{param}"
                out[f"{new_prefix}{modules[module]}.{rest}"] = value
                break
        else:
            leftovers.append(key)


@functools.lru_cache(maxsize=None)
def installed_dinov2_scheme() -> str:
    """'v5' (q_proj/.../gate_proj, up_proj) or 'v4' (attention.attention.query/..., weights_in)
    naming of the installed transformers' Dinov2Model."""
    from transformers import Dinov2Config, Dinov2Model

    probe = Dinov2Model(Dinov2Config(hidden_size=8, num_hidden_layers=1, num_attention_heads=1, image_size=14,
                                     patch_size=14, use_swiglu_ffn=True))
    keys = set(probe.state_dict())
    if "encoder.layer.0.attention.q_proj.weight" in keys and "encoder.layer.0.mlp.gate_proj.weight" in keys:
        return "v5"
    if "encoder.layer.0.attention.attention.query.weight" in keys and "encoder.layer.0.mlp.weights_in.weight" in keys:
        return "v4"
    raise RuntimeError("unrecognised transformers Dinov2Model parameter names; this version of transformers "
                       "is not supported by the MGIG loader")


_DINO_TOP = {"cls_token": "embeddings.cls_token", "mask_token": "embeddings.mask_token",
             "pos_embed": "embeddings.position_embeddings",
             "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
             "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
             "norm.weight": "layernorm.weight", "norm.bias": "layernorm.bias"}
_DINO_BLOCK_SAME = {"norm1": "norm1", "norm2": "norm2", "ls1.gamma": "layer_scale1.lambda1",
                    "ls2.gamma": "layer_scale2.lambda1"}
_DINO_SCHEMES = {
    "v5": {"qkv": ("attention.q_proj", "attention.k_proj", "attention.v_proj"), "proj": "attention.o_proj",
           "w12": ("mlp.gate_proj", "mlp.up_proj"), "w3": "mlp.down_proj"},
    "v4": {"qkv": ("attention.attention.query", "attention.attention.key", "attention.attention.value"),
           "proj": "attention.output.dense", "w12": ("mlp.weights_in",), "w3": "mlp.weights_out"},
}


def dinov2_official_to_hf(sd: Mapping[str, torch.Tensor], scheme: str | None = None) -> tuple[dict, list]:
    """Original DINOv2 names (no prefix) -> transformers Dinov2Model names. Returns
    (converted, unconverted keys). Fused qkv / w12 are split by rows in their order."""
    names = _DINO_SCHEMES[scheme or installed_dinov2_scheme()]
    out, left = {}, []
    for key, value in sd.items():
        if key in _DINO_TOP:
            out[_DINO_TOP[key]] = value
            continue
        # block_chunks > 0 stores blocks.<chunk>.<i>; i stays the global block index
        m = re.match(r"blocks\.(?:\d+\.)?(\d+)\.(.+)\.(weight|bias|gamma)$", key)
        if not m:
            left.append(key)
            continue
        layer, module, param = m.groups()
        base = f"encoder.layer.{layer}."
        if f"{module}.{param}" in _DINO_BLOCK_SAME:
            out[base + _DINO_BLOCK_SAME[f"{module}.{param}"]] = value
        elif module in _DINO_BLOCK_SAME:
            out[f"{base}{_DINO_BLOCK_SAME[module]}.{param}"] = value
        elif module == "attn.qkv":
            for name, part in zip(names["qkv"], value.chunk(3, dim=0)):
                out[f"{base}{name}.{param}"] = part
        elif module == "attn.proj":
            out[f"{base}{names['proj']}.{param}"] = value
        elif module == "mlp.w12":
            for name, part in zip(names["w12"], value.chunk(len(names["w12"]), dim=0)):
                out[f"{base}{name}.{param}"] = part
        elif module == "mlp.w3":
            out[f"{base}{names['w3']}.{param}"] = value
        else:
            left.append(key)
    return out, left


def _dinov2_hf_to_official(sd: Mapping[str, torch.Tensor]) -> dict:
    """Inverse of `dinov2_official_to_hf` for either transformers scheme (used to re-map
    native files written with another transformers version)."""
    scheme = "v5" if any(".attention.q_proj." in k for k in sd) else "v4"
    names = _DINO_SCHEMES[scheme]
    top = {v: k for k, v in _DINO_TOP.items()}
    same = {v: k for k, v in _DINO_BLOCK_SAME.items()}
    out, pending = {}, {}
    for key, value in sd.items():
        if key in top:
            out[top[key]] = value
            continue
        m = re.match(r"encoder\.layer\.(\d+)\.(.+)$", key)
        if not m:
            raise MGIGCheckpointError(f"unexpected DINOv2 key {key!r}")
        layer, rest = m.groups()
        module, _, param = rest.rpartition(".")
        if rest in same:
            out[f"blocks.{layer}.{same[rest]}"] = value
        elif module in same:
            out[f"blocks.{layer}.{same[module]}.{param}"] = value
        elif module == names["proj"]:
            out[f"blocks.{layer}.attn.proj.{param}"] = value
        elif module == names["w3"]:
            out[f"blocks.{layer}.mlp.w3.{param}"] = value
        elif module in names["qkv"] or module in names["w12"]:
            fused = "attn.qkv" if module in names["qkv"] else "mlp.w12"
            order = names["qkv"] if module in names["qkv"] else names["w12"]
            pending.setdefault((layer, fused, param), {})[order.index(module)] = value
        else:
            raise MGIGCheckpointError(f"unexpected DINOv2 key {key!r}")
    for (layer, fused, param), parts in pending.items():
        out[f"blocks.{layer}.{fused}.{param}"] = torch.cat([parts[i] for i in sorted(parts)], dim=0)
    return out


def official_to_native(official_sd: Mapping[str, torch.Tensor], *, what: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Rename an official MGIG state dict to `MGIGModel` names (module-docstring tables).

    Schedule buffers and the ControlNet's unused input conv are left out; any other tensor
    that has no place in the model raises `MGIGCheckpointError`."""
    native: dict[str, torch.Tensor] = {}
    leftovers: list[str] = []
    _convert_ldm_unet(official_sd, OFFICIAL_PREFIXES["unet"], "unet.", controlnet=False,
                      out=native, leftovers=leftovers)
    _convert_ldm_unet(official_sd, OFFICIAL_PREFIXES["controlnet"], "controlnet.", controlnet=True,
                      out=native, leftovers=leftovers)
    dino_prefix = OFFICIAL_PREFIXES["dinov2"]
    dino, left = dinov2_official_to_hf({k[len(dino_prefix):]: v for k, v in official_sd.items()
                                        if k.startswith(dino_prefix)})
    native.update({f"id_encoder.dinov2.{k}": v for k, v in dino.items()})
    leftovers += [dino_prefix + k for k in left]
    proj_prefix = OFFICIAL_PREFIXES["projector"]
    native.update({f"id_encoder.projector.{k[len(proj_prefix):]}": v for k, v in official_sd.items()
                   if k.startswith(proj_prefix)})
    vae_prefix = OFFICIAL_PREFIXES["vae"]
    vae = convert_ldm_vae({k[len(vae_prefix):]: v for k, v in official_sd.items() if k.startswith(vae_prefix)})
    native.update({f"vae.{k}": v for k, v in vae.items()})

    known = tuple(OFFICIAL_PREFIXES.values())
    unexpected = [k for k in official_sd if not k.startswith(known) and k not in SCHEDULE_BUFFERS]
    unexpected += [k for k in leftovers if k not in DROPPED_OFFICIAL_KEYS]
    if unexpected:
        raise MGIGCheckpointError(f"{what}: {len(unexpected)} unexpected tensor(s) with no place in the MGIG "
                                  f"model: {', '.join(sorted(unexpected)[:8])}")
    return native


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


def detect_schedule(official_sd: Mapping[str, torch.Tensor], what: str = "checkpoint") -> dict:
    """The noise schedule stored in an official file's buffers, if any (else the official
    default). Only LDM's "linear" schedule is supported; anything else raises."""
    if "betas" not in official_sd:
        return dict(OFFICIAL_SCHEDULE)
    stored_config.check_schedule_buffers(official_sd, what)
    betas = official_sd["betas"].double()
    schedule = {"linear_start": round(float(betas[0]), 8), "linear_end": round(float(betas[-1]), 8),
                "num_train_timesteps": int(betas.numel())}
    if schedule["linear_start"] == round(OFFICIAL_SCHEDULE["linear_start"], 8) and \
            schedule["linear_end"] == round(OFFICIAL_SCHEDULE["linear_end"], 8):
        schedule.update({k: OFFICIAL_SCHEDULE[k] for k in ("linear_start", "linear_end")})
    ours = schedule_alphas_cumprod(schedule)
    stored = official_sd.get("alphas_cumprod", ours)
    if stored.shape != ours.shape or not torch.allclose(stored.float(), ours, rtol=1e-5, atol=1e-7):
        raise MGIGCheckpointError(f"{what}: its noise schedule (betas {schedule['linear_start']}..."
                                  f"{schedule['linear_end']}, {schedule['num_train_timesteps']} steps) is not "
                                  "LDM's 'linear' schedule; unsupported")
    return schedule


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
    detected.image_size = int(stored.image_size)
    detected.prediction_type = stored.prediction_type
    for part in ("vae", "unet", "controlnet"):  # GroupNorm groups are not in shapes either
        for key in ("scaling_factor", "norm_num_groups"):
            if key in getattr(stored, part) and key in getattr(detected, part):
                getattr(detected, part)[key] = getattr(stored, part)[key]
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


def preset_name_of(config: MGIGConfig) -> str:
    """The `mgig_config` preset `config`'s architecture equals (whatever its working size,
    prediction type, latent scale, ★ refiner and ★ colour hint, which training sets), else "custom"."""
    def arch(cfg: dict) -> dict:
        cfg.pop("refiner", None)
        if cfg.pop("colour_hint", False):
            cfg["controlnet"]["conditioning_channels"] = HINT_CHANNELS
        cfg.pop("image_size", None)
        cfg.pop("prediction_type", None)
        cfg["vae"].pop("scaling_factor", None)
        return cfg

    mine = arch(json.loads(json.dumps(config.to_dict())))
    for name in MGIG_PRESETS:
        theirs = arch(mgig_config(name).to_dict())
        if theirs == mine:
            return name
    return "custom"


def save_mgig(model: MGIGModel, path: str | os.PathLike, *, dtype: str = "fp16", preset: str | None = None,
              overwrite: bool = False, source: str | None = None) -> Path:
    """Write `model` in our safetensors format (`files.save_native`): the tensors of
    `MGIGModel.state_dict()` (`unet.*`, `controlnet.*`, `id_encoder.*`, `vae.*`, a ★ `refiner.*`) and the
    `MGIGConfig` as ``config`` metadata (head counts and the schedule, which shapes do not
    show). ``source`` (e.g. the official file name) is recorded as metadata."""
    extra = {"source": str(source)} if source else {}
    return save_native(path, model.state_dict(), model=MODEL_NAME, preset=preset or preset_name_of(model.config),
                       dtype=dtype, config=model.config.to_dict(), extra=extra, overwrite=overwrite)
