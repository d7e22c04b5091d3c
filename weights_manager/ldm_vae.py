"""The LDM "kl-f8" VAE (CompVis `ldm.models.autoencoder.AutoencoderKL`) <-> diffusers
`AutoencoderKL`.

Both official checkpoints (MGIG's `first_stage_model.*`, IAMG's `autoencoder` entry) store
the VAE with LDM names; we run it as a diffusers `AutoencoderKL`. The architecture is read
from tensor shapes, never assumed, so reduced test models and the full SD kl-f8 load the
same way.

API (state dicts without any outer prefix, i.e. keys start with `encoder.`, `decoder.`,
`quant_conv.`, `post_quant_conv.`):

- ``detect_vae_config(ldm_sd) -> dict``: `AutoencoderKL(**config)` kwargs for an LDM state dict.
- ``detect_diffusers_vae_config(diffusers_sd) -> dict``: the same for a diffusers-named one.
- ``convert_ldm_vae(ldm_sd) -> dict``: LDM names -> diffusers names (1x1-conv attention
  weights become Linear weights).
- ``convert_diffusers_vae_to_ldm(diffusers_sd) -> dict``: the inverse.
- ``load_ldm_vae(ldm_sd) -> AutoencoderKL``: detect, build (`pipelines.vae.build_vae`),
  strict load via `files.load_strict`, which names missing/unexpected keys.

`VAEKeyError` is both a `KeyError` and a `files.WeightsError`.

Key map (i = resolution level, 0 = full resolution; n = number of levels; j = block):

| LDM | diffusers |
|---|---|
| encoder.down.i.block.j.{norm1,conv1,norm2,conv2} | encoder.down_blocks.i.resnets.j.(same) |
| ....nin_shortcut | ....conv_shortcut |
| encoder.down.i.attn.j | encoder.down_blocks.i.attentions.j |
| encoder.down.i.downsample.conv | encoder.down_blocks.i.downsamplers.0.conv |
| {en,de}coder.mid.block_1 / block_2 | {en,de}coder.mid_block.resnets.0 / 1 |
| {en,de}coder.mid.attn_1.{norm,q,k,v,proj_out} | ....mid_block.attentions.0.{group_norm,to_q,to_k,to_v,to_out.0} |
| {en,de}coder.norm_out | {en,de}coder.conv_norm_out |
| decoder.up.i.block.j / attn.j | decoder.up_blocks.(n-1-i).resnets.j / attentions.j |
| decoder.up.i.upsample.conv | decoder.up_blocks.(n-1-i).upsamplers.0.conv |
| conv_in, conv_out, quant_conv, post_quant_conv | unchanged |

(LDM lists decoder levels from full resolution up, diffusers in execution order, hence
the n-1-i.)
"""
from __future__ import annotations

import re
from typing import Mapping

import torch

from ..pipelines.files import WeightsError, load_strict
from ..pipelines.vae import SD_VAE_SCALE, build_vae

# LDM `Normalize` is GroupNorm(32 groups, eps 1e-6), the same as diffusers' VAE default.
_NORM_GROUPS = 32

_ATTN_NAMES = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
_ATTN_NAMES_INV = {v: k for k, v in _ATTN_NAMES.items()}
_RESNET_NAMES = {"nin_shortcut": "conv_shortcut"}
_RESNET_NAMES_INV = {v: k for k, v in _RESNET_NAMES.items()}


class VAEKeyError(KeyError, WeightsError):
    """A VAE state dict does not match the architecture read from its shapes (a KeyError
    for callers that look keys up, a `WeightsError` like every other weight problem)."""

    def __str__(self):  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


def _require(sd: Mapping[str, torch.Tensor], key: str, what: str) -> torch.Tensor:
    if key not in sd:
        raise VAEKeyError(f"not an LDM/diffusers VAE state dict: missing {key!r} ({what})")
    return sd[key]


def _levels(sd: Mapping[str, torch.Tensor], pattern: str) -> int:
    found = {int(m.group(1)) for k in sd if (m := re.match(pattern, k))}
    return max(found) + 1 if found else 0


def detect_vae_config(ldm_sd: Mapping[str, torch.Tensor], *, scaling_factor: float = SD_VAE_SCALE) -> dict:
    """Read the kl VAE architecture from an LDM-named state dict.

    Returns `diffusers.AutoencoderKL` keyword arguments (plain data). Detected:
    base width `ch` and `ch_mult` (from each level's first conv), `num_res_blocks`,
    `z_channels`, in/out image channels, mid-block attention (absent with LDM
    `attn_type="none"`) and per-level attention (LDM `attn_resolutions`).
    """
    conv_in = _require(ldm_sd, "encoder.conv_in.weight", "encoder input conv")
    n_levels = _levels(ldm_sd, r"encoder\.down\.(\d+)\.")
    if n_levels == 0:
        raise VAEKeyError("not an LDM VAE state dict: no 'encoder.down.<level>.*' keys")
    widths = [int(_require(ldm_sd, f"encoder.down.{i}.block.0.conv1.weight", f"level {i} first conv").shape[0])
              for i in range(n_levels)]
    num_res_blocks = _levels(ldm_sd, r"encoder\.down\.0\.block\.(\d+)\.")
    attn_levels = [any(k.startswith(f"encoder.down.{i}.attn.") for k in ldm_sd) for i in range(n_levels)]
    z_channels = int(_require(ldm_sd, "decoder.conv_in.weight", "decoder input conv").shape[1])
    return _config(
        in_channels=int(conv_in.shape[1]),
        out_channels=int(_require(ldm_sd, "decoder.conv_out.weight", "decoder output conv").shape[0]),
        widths=widths, attn_levels=attn_levels, num_res_blocks=num_res_blocks,
        latent_channels=z_channels,
        mid_attention="encoder.mid.attn_1.q.weight" in ldm_sd,
        scaling_factor=scaling_factor,
        double_z=int(_require(ldm_sd, "encoder.conv_out.weight", "encoder output conv").shape[0]) == 2 * z_channels,
    )


def detect_diffusers_vae_config(diffusers_sd: Mapping[str, torch.Tensor], *,
                                scaling_factor: float = SD_VAE_SCALE, norm_num_groups: int | None = None) -> dict:
    """`detect_vae_config` for a diffusers-named `AutoencoderKL` state dict. GroupNorm
    groups do not show in shapes: ``norm_num_groups`` (from a file's metadata) or SD's 32."""
    conv_in = _require(diffusers_sd, "encoder.conv_in.weight", "encoder input conv")
    n_levels = _levels(diffusers_sd, r"encoder\.down_blocks\.(\d+)\.")
    if n_levels == 0:
        raise VAEKeyError("not a diffusers VAE state dict: no 'encoder.down_blocks.<level>.*' keys")
    widths = [int(_require(diffusers_sd, f"encoder.down_blocks.{i}.resnets.0.conv1.weight",
                           f"level {i} first conv").shape[0]) for i in range(n_levels)]
    num_res_blocks = _levels(diffusers_sd, r"encoder\.down_blocks\.0\.resnets\.(\d+)\.")
    attn_levels = [any(k.startswith(f"encoder.down_blocks.{i}.attentions.") for k in diffusers_sd)
                   for i in range(n_levels)]
    z_channels = int(_require(diffusers_sd, "decoder.conv_in.weight", "decoder input conv").shape[1])
    return _config(
        in_channels=int(conv_in.shape[1]),
        out_channels=int(_require(diffusers_sd, "decoder.conv_out.weight", "decoder output conv").shape[0]),
        widths=widths, attn_levels=attn_levels, num_res_blocks=num_res_blocks,
        latent_channels=z_channels,
        mid_attention="encoder.mid_block.attentions.0.to_q.weight" in diffusers_sd,
        scaling_factor=scaling_factor,
        double_z=int(_require(diffusers_sd, "encoder.conv_out.weight", "encoder output conv").shape[0])
        == 2 * z_channels,
        norm_num_groups=norm_num_groups or _NORM_GROUPS,
    )


def _config(*, in_channels, out_channels, widths, attn_levels, num_res_blocks, latent_channels,
            mid_attention, scaling_factor, double_z, norm_num_groups=_NORM_GROUPS) -> dict:
    if not double_z:
        # diffusers' AutoencoderKL always predicts mean and log-variance.
        raise VAEKeyError("VAE encoder outputs z_channels (double_z=False); only KL VAEs "
                          "(mean + logvar, double_z=True) are supported")
    return {
        "in_channels": in_channels,
        "out_channels": out_channels,
        "down_block_types": ["AttnDownEncoderBlock2D" if a else "DownEncoderBlock2D" for a in attn_levels],
        "up_block_types": ["AttnUpDecoderBlock2D" if a else "UpDecoderBlock2D" for a in reversed(attn_levels)],
        "block_out_channels": list(widths),
        "layers_per_block": num_res_blocks,
        "act_fn": "silu",
        "latent_channels": latent_channels,
        "norm_num_groups": int(norm_num_groups),
        "scaling_factor": scaling_factor,
        "mid_block_add_attention": mid_attention,
    }


def _n_decoder_levels(sd: Mapping[str, torch.Tensor], pattern: str) -> int:
    n = _levels(sd, pattern)
    if n == 0 and any(k.startswith("decoder.") for k in sd):
        raise VAEKeyError("VAE state dict has decoder keys but no decoder levels")
    return n


def _rename_mid(rest: str, to_diffusers: bool) -> str:
    if to_diffusers:
        rest = re.sub(r"^mid\.block_(\d)\.", lambda m: f"mid_block.resnets.{int(m.group(1)) - 1}.", rest)
        return re.sub(r"^mid\.attn_1\.", "mid_block.attentions.0.", rest)
    rest = re.sub(r"^mid_block\.resnets\.(\d)\.", lambda m: f"mid.block_{int(m.group(1)) + 1}.", rest)
    return re.sub(r"^mid_block\.attentions\.0\.", "mid.attn_1.", rest)


def _rename_leaf(key: str, to_diffusers: bool) -> str:
    """Rename the parameter-owning module at the end of a key (resnet shortcut, attention parts)."""
    *path, module, param = key.split(".")
    table_attn = _ATTN_NAMES if to_diffusers else _ATTN_NAMES_INV
    table_res = _RESNET_NAMES if to_diffusers else _RESNET_NAMES_INV
    in_attn = "attentions" in path  # callers rename LDM attn/attn_1 to `attentions` first
    if not to_diffusers and path[-1:] == ["to_out"]:  # 'to_out.0' spans two segments
        path, module = path[:-1], "to_out.0"
    if in_attn and module in table_attn:
        module = table_attn[module]
    elif module in table_res:
        module = table_res[module]
    return ".".join([*path, module, param])


def convert_ldm_vae(ldm_sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an LDM kl VAE state dict to diffusers `AutoencoderKL` names (see module table).

    Attention q/k/v/proj_out are 1x1 convs in LDM and Linear layers in diffusers: their
    weights are reshaped [C, C, 1, 1] -> [C, C]. Keys that are not VAE weights raise.
    """
    n = _n_decoder_levels(ldm_sd, r"decoder\.up\.(\d+)\.")
    out: dict[str, torch.Tensor] = {}
    for key, value in ldm_sd.items():
        part, _, rest = key.partition(".")
        if part in ("quant_conv", "post_quant_conv"):
            out[key] = value
            continue
        if part not in ("encoder", "decoder"):
            raise VAEKeyError(f"unexpected key {key!r} in an LDM VAE state dict")
        rest = _rename_mid(rest, True)
        rest = re.sub(r"^down\.(\d+)\.block\.", r"down_blocks.\1.resnets.", rest)
        rest = re.sub(r"^down\.(\d+)\.attn\.", r"down_blocks.\1.attentions.", rest)
        rest = re.sub(r"^down\.(\d+)\.downsample\.", r"down_blocks.\1.downsamplers.0.", rest)
        rest = re.sub(r"^up\.(\d+)\.block\.", lambda m: f"up_blocks.{n - 1 - int(m.group(1))}.resnets.", rest)
        rest = re.sub(r"^up\.(\d+)\.attn\.", lambda m: f"up_blocks.{n - 1 - int(m.group(1))}.attentions.", rest)
        rest = re.sub(r"^up\.(\d+)\.upsample\.", lambda m: f"up_blocks.{n - 1 - int(m.group(1))}.upsamplers.0.", rest)
        rest = re.sub(r"^norm_out\.", "conv_norm_out.", rest)
        new_key = _rename_leaf(f"{part}.{rest}", True)
        if ".attentions." in new_key and new_key.endswith(".weight") and value.ndim == 4:
            value = value[:, :, 0, 0]
        out[new_key] = value
    return out


def convert_diffusers_vae_to_ldm(diffusers_sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of `convert_ldm_vae`: diffusers `AutoencoderKL` names -> LDM names."""
    n = _n_decoder_levels(diffusers_sd, r"decoder\.up_blocks\.(\d+)\.")
    out: dict[str, torch.Tensor] = {}
    for key, value in diffusers_sd.items():
        part, _, rest = key.partition(".")
        if part in ("quant_conv", "post_quant_conv"):
            out[key] = value
            continue
        if part not in ("encoder", "decoder"):
            raise VAEKeyError(f"unexpected key {key!r} in a diffusers VAE state dict")
        is_attn_weight = ".attentions." in key and key.endswith(".weight") and value.ndim == 2
        new_key = _rename_leaf(key, False)
        part, _, rest = new_key.partition(".")
        rest = _rename_mid(rest, False)
        rest = re.sub(r"^down_blocks\.(\d+)\.resnets\.", r"down.\1.block.", rest)
        rest = re.sub(r"^down_blocks\.(\d+)\.attentions\.", r"down.\1.attn.", rest)
        rest = re.sub(r"^down_blocks\.(\d+)\.downsamplers\.0\.", r"down.\1.downsample.", rest)
        rest = re.sub(r"^up_blocks\.(\d+)\.resnets\.", lambda m: f"up.{n - 1 - int(m.group(1))}.block.", rest)
        rest = re.sub(r"^up_blocks\.(\d+)\.attentions\.", lambda m: f"up.{n - 1 - int(m.group(1))}.attn.", rest)
        rest = re.sub(r"^up_blocks\.(\d+)\.upsamplers\.0\.",
                      lambda m: f"up.{n - 1 - int(m.group(1))}.upsample.", rest)
        rest = re.sub(r"^conv_norm_out\.", "norm_out.", rest)
        out[f"{part}.{rest}"] = value[:, :, None, None] if is_attn_weight else value
    return out


def load_ldm_vae(ldm_sd: Mapping[str, torch.Tensor], *, scaling_factor: float = SD_VAE_SCALE,
                 what: str = "LDM VAE") -> "AutoencoderKL":  # noqa: F821
    """Detect, build and strictly load a diffusers `AutoencoderKL` from LDM-named weights."""
    vae = build_vae(detect_vae_config(ldm_sd, scaling_factor=scaling_factor))
    load_strict(vae, convert_ldm_vae(ldm_sd), what)
    return vae.eval()
