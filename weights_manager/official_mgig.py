"""The official AnyDoor-format MGIG checkpoint (`mgig.ckpt`): reading it, its key map to
our `MGIGModel` names (`official_to_native`; DINOv2 into either naming of transformers), and
its noise schedule (`detect_schedule`). Our safetensors format, architecture detection
and `load_mgig`, which loads either format, are in `native_mgig`.

The file: a Lightning checkpoint (`{"state_dict": {...}, ...}`) or the bare state dict,
as `.ckpt` / `.pth` / `.pt` (read with ``torch.load(weights_only=True)``: files that need
pickled code are refused) or `.safetensors`. Prefixes `model.diffusion_model.` (UNet),
`control_model.` (ControlNet), `cond_stage_model.model.` (DINOv2, original naming),
`cond_stage_model.projector.`, `first_stage_model.` (LDM VAE) and the 13 schedule buffers
(`betas`, `alphas_cumprod`, ...). Renamed, its tensors are detected and loaded as ours.

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
import re
from pathlib import Path
from typing import Mapping

import torch

from ..pipelines.files import WeightsError, check_finite, read_weights
from ..pipelines.mgig import OFFICIAL_SCHEDULE, schedule_alphas_cumprod
from . import stored_config
from .ldm_vae import convert_ldm_vae

OFFICIAL_PREFIXES = {
    "unet": "model.diffusion_model.",
    "controlnet": "control_model.",
    "dinov2": "cond_stage_model.model.",
    "projector": "cond_stage_model.projector.",
    "vae": "first_stage_model.",
}
# LatentDiffusion.register_schedule buffers (+ `logvar`), stored at the top level.
SCHEDULE_BUFFERS = (
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
    "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
    "logvar",
)
# Official tensors with no counterpart in our model, by design.
DROPPED_OFFICIAL_KEYS = ("control_model.input_blocks.0.0.weight", "control_model.input_blocks.0.0.bias")


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


# ---------------------------------------------------------------------------------------
# Noise schedule
# ---------------------------------------------------------------------------------------

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
