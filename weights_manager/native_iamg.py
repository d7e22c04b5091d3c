"""IAMG in our single-file safetensors format, and `load_iamg`, the one IAMG loader.

Format (written by `save_iamg` through `files.save_native`), for the released
architecture and the ★ text variants alike:

- keys with component prefixes: ``unet.*`` (`IAMGUNet` names, see `official_iamg` for
  the map from the official ones), ``vae.*`` (diffusers `AutoencoderKL`),
  ``text_encoder.*`` (transformers `CLIPTextModel`, always written with the
  ``text_encoder.text_model.*`` names of transformers 4 / the Hub, whichever transformers
  is installed). The DDPM schedule is not stored: it is fixed (`samplers.ldm_alphas_cumprod`).
- metadata: ``format``/``format_version`` (files.py), ``model`` = "iamg", ``preset``
  (`iamg.MODEL_PRESETS` name, a `iamg.PRESETS` UNet name or "custom"), ``dtype``,
  ``config`` = JSON {"unet", "vae", "text_encoder", "scale_factor"}, and ``tokenizer`` =
  JSON {file name: text} of the prompt tokenizer (`text.PromptTokenizer.files`) when the
  model has one, so a text model file is self-contained.

Loading detects the architecture from the tensor shapes; the metadata config supplies
only what shapes cannot show (head counts, norm groups, the text encoder's special-token
ids, the latent scale) and is cross-checked: any disagreement with the shapes is refused.

`load_iamg` takes an official ``iamg.pth`` (`official_iamg.load_official_iamg`) or one of
our files; the embedded default is `loader.load_iamg_model`'s.
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Mapping

import torch

from ..pipelines import iamg
from ..pipelines.iamg import IAMGModel, IAMGUNet, IAMGUNetConfig
from ..pipelines.files import DTYPES, WeightsError, check_finite, is_native, load_strict, read_weights, save_native
from ..pipelines.text import resolve_prompt_tokenizer
from ..pipelines.vae import build_vae, kl_vae_config
from . import stored_config
from .ldm_vae import VAEKeyError, detect_diffusers_vae_config
from .official_iamg import (OFFICIAL_NUM_HEADS, TEXT_PREFIX, _build_on_meta, _load_assign, build_text_encoder,
                            check_iamg_dict, detect_text_encoder_config, load_official_iamg,
                            text_model_prefix_of)

MODEL_NAME = "iamg"
COMPONENTS = ("unet.", "vae.", "text_encoder.")
# Canonical text-encoder names in our files (transformers 4 / Hub CLIPTextModel names).
TEXT_MODEL = "text_encoder.text_model."


# --------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------

def _vae_config(vae) -> dict:
    # The AutoencoderKL kwargs that define the architecture (the keys `kl_vae_config` and
    # `ldm_vae` detection use), as plain data.
    keys = kl_vae_config((32,), 1).keys()
    return {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in vae.config.items() if k in keys}


def _text_config(text_encoder) -> dict:
    cfg = text_encoder.config
    keys = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "max_position_embeddings", "hidden_act", "bos_token_id", "eos_token_id", "pad_token_id")
    return {k: getattr(cfg, k) for k in keys}


def model_config(model: IAMGModel) -> dict:
    """The plain-data architecture written to the ``config`` metadata."""
    return {"unet": model.unet.config.to_dict(), "vae": _vae_config(model.vae),
            "text_encoder": _text_config(model.text_encoder) if model.text_encoder is not None else None,
            "scale_factor": model.scale_factor, "image_size": model.image_size,
            "latent_shift": model.latent_shift, "prediction_type": model.prediction_type}


def native_state_dict(model: IAMGModel) -> dict[str, torch.Tensor]:
    """All tensors of ``model`` with our component prefixes (see the module docstring)."""
    sd = {f"unet.{k}": v for k, v in model.unet.state_dict().items()}
    sd.update({f"vae.{k}": v for k, v in model.vae.state_dict().items()})
    if model.text_encoder is not None:
        prefix = text_model_prefix_of(model.text_encoder)
        for k, v in model.text_encoder.state_dict().items():
            if k.endswith("position_ids"):  # a fixed arange buffer older transformers persisted
                continue
            sd[TEXT_MODEL + k[len(prefix):]] = v
    return sd


def save_iamg(model: IAMGModel, path: str | os.PathLike, *, dtype: str = "fp16", preset: str | None = None,
              overwrite: bool = False, source: str | None = None) -> Path:
    """Write ``model`` to ``path`` in our safetensors format (atomic; an existing file is
    refused unless ``overwrite``). ``dtype``: "fp16", "bf16" or "fp32" for the stored
    tensors. ``preset`` defaults to the model's (`IAMGModel.preset`) or the name
    `iamg.preset_name_of` finds. ``source`` (e.g. the official file name) is recorded."""
    cfg = model_config(model)
    if preset is None:
        preset = model.preset or iamg.preset_name_of(model.unet.config, cfg["vae"], cfg["text_encoder"])
    extra = {"source": str(source)} if source else {}
    if model.tokenizer is not None:
        extra["tokenizer"] = json.dumps(model.tokenizer.files, sort_keys=True)
    elif model.uses_text:
        warnings.warn(f"{path}: saving a text-conditioned IAMG without its prompt tokenizer; loading it "
                      "will need tokenizer_dir=", stacklevel=2)
    return save_native(path, native_state_dict(model), model=MODEL_NAME, preset=str(preset), dtype=dtype,
                       config=cfg, extra=extra, overwrite=overwrite)


# --------------------------------------------------------------------------------------
# Architecture detection (native names)
# --------------------------------------------------------------------------------------

def _sub(sd: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def _count(sd: Mapping[str, torch.Tensor], prefix: str) -> int:
    import re

    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    found = {int(m.group(1)) for k in sd if (m := pattern.match(k))}
    return max(found) + 1 if found else 0


def detect_native_unet_config(unet_sd: Mapping[str, torch.Tensor], *, num_heads: int | None = None,
                              norm_num_groups: int = 32) -> IAMGUNetConfig:
    """Read the `IAMGUNet` architecture from its own state dict (no ``unet.`` prefix).

    Head count and norm groups are not visible in shapes: pass them (from the metadata);
    the head count defaults to the official 8.
    """
    def shape(key):
        if key not in unet_sd:
            raise WeightsError(f"IAMG UNet ('unet.*'): missing {key!r}; not an IAMG UNet in our format")
        return tuple(unet_sd[key].shape)

    C, in_ch = shape("conv_in.weight")[:2]
    out_ch = shape("conv_out.weight")[0]
    levels = _count(unet_sd, "down_blocks.")
    if levels == 0:
        raise WeightsError("IAMG UNet ('unet.*'): no down_blocks")
    R = _count(unet_sd, "down_blocks.0.resnets.")
    mult, attn = [], []
    for level in range(levels):
        width = shape(f"down_blocks.{level}.resnets.0.conv1.weight")[0]
        if width % C:
            raise WeightsError(f"IAMG UNet: level {level} width {width} is not a multiple of {C}")
        mult.append(width // C)
        if any(k.startswith(f"down_blocks.{level}.attentions.") for k in unet_sd):
            attn.append(2 ** level)
    cross = unet_sd.get("mid_block.attentions.0.cross_attn.to_k.weight")
    try:
        return IAMGUNetConfig(in_channels=in_ch, out_channels=out_ch, model_channels=C, channel_mult=tuple(mult),
                              num_res_blocks=R, attention_resolutions=tuple(sorted(attn, reverse=True)),
                              num_heads=int(num_heads or OFFICIAL_NUM_HEADS),
                              cross_attention_dim=int(cross.shape[1]) if cross is not None else None,
                              norm_num_groups=int(norm_num_groups))
    except ValueError as e:
        raise WeightsError(f"IAMG UNet: detected an unusable architecture: {e}") from e


def _mismatches(detected: Mapping, stored: Mapping) -> list[str]:
    def norm(k, v):
        if k == "attention_resolutions":  # a set of rates, in any order
            return sorted(v)
        return list(v) if isinstance(v, (list, tuple)) else v
    return [f"{k}: shapes say {norm(k, detected[k])!r}, metadata says {norm(k, stored[k])!r}"
            for k in detected if k in stored and norm(k, detected[k]) != norm(k, stored[k])]


def detect_native_config(sd: Mapping[str, torch.Tensor], metadata_config: Mapping | None = None,
                         what: str = "IAMG file") -> dict:
    """Architecture of a native state dict: {"unet": IAMGUNetConfig, "vae": AutoencoderKL
    kwargs, "text_encoder": CLIPTextConfig kwargs or None, "scale_factor"}.

    ``metadata_config`` (the file's ``config``) supplies head counts, norm groups,
    special-token ids and the latent scale; every field the shapes determine must agree
    with it, otherwise a `WeightsError` lists the differences.
    """
    meta = dict(metadata_config or {})
    meta_unet = dict(meta.get("unet") or {})
    unet_cfg = detect_native_unet_config(_sub(sd, "unet."), num_heads=meta_unet.get("num_heads"),
                                         norm_num_groups=meta_unet.get("norm_num_groups", 32))
    scale = float(meta.get("scale_factor", iamg.VAE_SCALE_FACTOR))
    try:
        vae_cfg = detect_diffusers_vae_config(_sub(sd, "vae."), scaling_factor=scale,
                                              norm_num_groups=(meta.get("vae") or {}).get("norm_num_groups"))
    except VAEKeyError as e:
        raise WeightsError(f"{what}: VAE ('vae.*'): {e}") from e

    te_cfg = None
    te_sd = _sub(sd, TEXT_MODEL)
    if te_sd:
        meta_te = dict(meta.get("text_encoder") or {})
        te_cfg = detect_text_encoder_config({TEXT_PREFIX + "text_model." + k: v for k, v in te_sd.items()},
                                            num_heads=meta_te.get("num_attention_heads"))
        for k in ("hidden_act", "bos_token_id", "eos_token_id", "pad_token_id"):
            if k in meta_te:
                te_cfg[k] = meta_te[k]
    elif any(k.startswith("text_encoder.") for k in sd):
        raise WeightsError(f"{what}: text encoder tensors must be named 'text_encoder.text_model.*'")

    problems = _mismatches(unet_cfg.to_dict(), meta_unet) + _mismatches(vae_cfg, dict(meta.get("vae") or {}))
    if te_cfg is not None:
        problems += _mismatches(te_cfg, dict(meta.get("text_encoder") or {}))
    elif meta.get("text_encoder"):
        problems.append("text_encoder: metadata describes one, the file has no 'text_encoder.*' tensors")
    if problems:
        raise WeightsError(f"{what}: the metadata config disagrees with the tensors ({'; '.join(problems[:6])}). "
                           "The file was edited or is corrupt; refusing it.")
    if unet_cfg.cross_attention_dim is not None:
        if te_cfg is None:
            raise WeightsError(f"{what}: the UNet has cross-attention but the file has no text encoder")
        if te_cfg["hidden_size"] != unet_cfg.cross_attention_dim:
            raise WeightsError(f"{what}: text encoder width {te_cfg['hidden_size']} != UNet cross-attention "
                               f"width {unet_cfg.cross_attention_dim}")
    return {"unet": unet_cfg, "vae": vae_cfg, "text_encoder": te_cfg, "scale_factor": scale}


# --------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------

def _prompt_tokenizer(tokenizer_dir, embedded: dict | None, vocab_size: int, clip_fallback_dir, what: str):
    """`resolve_prompt_tokenizer`; a tokenizer stored in the file that cannot be built is a
    `WeightsError` naming the setting (its text is not quoted)."""
    if tokenizer_dir is not None or not embedded:
        return resolve_prompt_tokenizer(tokenizer_dir, vocab_size=vocab_size, clip_fallback_dir=clip_fallback_dir,
                                        what=f"{what}: IAMG text encoder")
    try:
        return resolve_prompt_tokenizer(embedded=embedded, vocab_size=vocab_size, what=f"{what}: IAMG text encoder")
    except MemoryError:
        raise
    except Exception as e:  # tokenizers / transformers / json raise their own error types
        reason = str(e) if type(e) is ValueError and "tokens but the text encoder" in str(e) else \
            "it cannot be read as a tokenizer (tokenizer.json of `tokenizers`, or CLIP's vocab.json + merges.txt)"
        raise WeightsError(f"{what}: stored setting 'tokenizer': {reason}; the file is damaged or was edited — "
                           "refusing to load it (or pass a tokenizer folder)") from e


def load_native_iamg(source: str | os.PathLike | Mapping[str, torch.Tensor], *,
                     metadata: Mapping[str, str] | None = None, what: str | None = None,
                     device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                     tokenizer_dir: str | os.PathLike | None = None,
                     clip_fallback_dir: str | os.PathLike | None = None) -> IAMGModel:
    """Load one of our IAMG files (a path, or its tensors + ``metadata``; ``what`` names
    it in errors) strictly.

    The prompt tokenizer of a text model is resolved by `text.resolve_prompt_tokenizer`:
    ``tokenizer_dir``, else the one stored in the file, else ``clip_fallback_dir`` (CLIP
    vocabularies only; the nodes pass ComfyUI's), else a `FileNotFoundError` naming what
    to pass.
    """
    if isinstance(source, Mapping):
        sd, metadata, what = dict(source), dict(metadata or {}), what or "IAMG state dict"
    else:
        sd, file_meta = read_weights(source, dtype=dtype)  # cast as read: one stored tensor at a time
        metadata = dict(metadata or file_meta)
        what = what or Path(source).name
    if metadata.get("model") not in (None, MODEL_NAME):
        raise WeightsError(f"{what}: this is an interact-custom {metadata.get('model')!r} file, not IAMG")
    check_finite(sd, what)
    missing = [p + "*" for p in ("unet.", "vae.") if not any(k.startswith(p) for k in sd)]
    if missing:
        raise WeightsError(f"{what}: not an IAMG file in our format — no {', '.join(missing)} tensors "
                           f"(found e.g. {', '.join(list(sd)[:4])})")
    unknown = sorted({k.split(".", 1)[0] + "." for k in sd} - set(COMPONENTS))
    if unknown:
        raise WeightsError(f"{what}: unexpected component(s) {', '.join(unknown)}; IAMG files hold "
                           f"{', '.join(COMPONENTS)}")
    meta_cfg = stored_config.parse_config(metadata, what)
    if meta_cfg is not None:
        stored_config.check_iamg_config(meta_cfg, what)  # every stored setting, before any is used
    embedded_tokenizer = stored_config.parse_tokenizer(metadata, what)
    cfg = detect_native_config(sd, meta_cfg, what)

    unet = _build_on_meta(lambda: IAMGUNet(cfg["unet"]))
    _load_assign(unet, {k: v.to(dtype) for k, v in _sub(sd, "unet.").items()}, f"{what}: IAMG UNet ('unet.*')")
    vae = _build_on_meta(lambda: build_vae(cfg["vae"]))
    _load_assign(vae, {k: v.to(dtype) for k, v in _sub(sd, "vae.").items()}, f"{what}: IAMG VAE ('vae.*')")
    text_encoder = tokenizer = None
    if cfg["text_encoder"] is not None:
        text_encoder = build_text_encoder(cfg["text_encoder"])
        prefix = text_model_prefix_of(text_encoder)
        load_strict(text_encoder, {prefix + k: v for k, v in _sub(sd, TEXT_MODEL).items()},
                    f"{what}: IAMG text encoder ('text_encoder.*')")
        text_encoder = text_encoder.to(dtype).eval()
        if cfg["unet"].cross_attention_dim is not None:
            tokenizer = _prompt_tokenizer(tokenizer_dir, embedded_tokenizer, cfg["text_encoder"]["vocab_size"],
                                          clip_fallback_dir, what)
    model = IAMGModel(unet.eval(), vae.eval(), text_encoder, scale_factor=cfg["scale_factor"], tokenizer=tokenizer,
                      preset=metadata.get("preset") or iamg.preset_name_of(cfg["unet"], cfg["vae"],
                                                                           cfg["text_encoder"]),
                      image_size=int((meta_cfg or {}).get("image_size", iamg.IMAGE_SIZE)),
                      latent_shift=(meta_cfg or {}).get("latent_shift"),
                      prediction_type=(meta_cfg or {}).get("prediction_type", "epsilon"))
    return model.to(device).eval().requires_grad_(False)


def load_iamg(source: str | os.PathLike | Mapping, device: torch.device | str = "cpu",
              dtype: torch.dtype = torch.float32, *, tokenizer_dir: str | os.PathLike | None = None,
              clip_fallback_dir: str | os.PathLike | None = None, metadata: Mapping[str, str] | None = None,
              what: str | None = None, **official_kwargs) -> IAMGModel:
    """Load IAMG from ``source`` (a path, or a file's content already read with its
    ``metadata``; ``what`` names it in errors):

    - one of our safetensors (or torch) files with ``unet.*``/``vae.*`` tensors;
    - the official ``iamg.pth`` (``model``/``autoencoder``/… entries);
      ``official_kwargs`` go to `official_iamg.load_official_iamg`.
    """
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"dtype: expected one of {', '.join(DTYPES)} or a torch.dtype, got {dtype!r}")
        dtype = DTYPES[dtype]
    if isinstance(source, Mapping):
        obj, metadata, name = source, dict(metadata or {}), what or "IAMG checkpoint"
    else:
        (obj, metadata), name = read_weights(source, dtype=dtype), Path(source).name
    if is_native(metadata) or any(str(k).startswith("unet.") for k in obj):
        return load_native_iamg(obj, metadata=metadata, what=name, device=device, dtype=dtype,
                                tokenizer_dir=tokenizer_dir, clip_fallback_dir=clip_fallback_dir)
    check_iamg_dict(obj, name)
    return load_official_iamg(obj, device=device, dtype=dtype, what=name, **official_kwargs)
