"""Loading the official IAMG checkpoint (`iamg.pth`, docs/METHOD.md §6.1).

The file is the official trainer's `torch.save` dict:
``model`` (UNet state dict, official `openaimodel` names, no prefix), ``autoencoder``
(LDM VAE names), ``text_encoder`` (``transformer.text_model.*``, a transformers
CLIPTextModel), ``diffusion`` (DDPM schedule buffers) and training state we ignore
(``opt``, ``scheduler``, ``iters``, ``config_dict``). It is read with
``torch.load(weights_only=True)`` (see `files.read_weights`).

Every architecture is detected from tensor shapes; loading is strict (any missing or
unexpected key is listed, then refused).

UNet key map (official → ours, `pipelines/iamg/model.py`; R = res-blocks per level,
L = levels, u = L-1-level counts the decoder from the deepest level):

| official | ours |
|---|---|
| time_embed.0 / .2 | time_embedding.linear_1 / linear_2 |
| input_blocks.0.0 | conv_in |
| input_blocks.{1 + l(R+1) + k}.0 / .1 | down_blocks.l.resnets.k / attentions.k.self_attn |
| input_blocks.{(l+1)(R+1)}.0 (l < L-1) | down_blocks.l.downsampler |
| middle_block.0 / .1 / .2 | mid_block.resnets.0 / attentions.0.self_attn / resnets.1 |
| output_blocks.{u(R+1) + k}.0 / .1 | up_blocks.u.resnets.k / attentions.k.self_attn |
| output_blocks.{u(R+1) + R}.{1 or 2} (level > 0) | up_blocks.u.upsampler |
| out.0 / out.2 | conv_norm_out / conv_out |

Inside a ResBlock: in_layers.0 → norm1, in_layers.2 → conv1, emb_layers.1 →
time_emb_proj, out_layers.0 → norm2, out_layers.3 → conv2, skip_connection →
conv_shortcut. Inside an AttentionBlock: norm → group_norm, proj_out (1×1 conv1d) →
to_out.0 (Linear), and qkv (1×1 conv1d, 3C rows) → to_q, to_k, to_v: the legacy layout
splits heads *before* q/k/v, so the rows are [head 0: q, k, v | head 1: q, k, v | …] and
are regrouped per head.
"""
from __future__ import annotations

import os
import re
import warnings
from typing import Iterator, Mapping

import torch

from ..pipelines.iamg import IAMGModel, IAMGUNet, IAMGUNetConfig, VAE_SCALE_FACTOR
from ..pipelines.files import WeightsError, check_finite, load_strict, read_weights
from ..pipelines.vae import build_vae
from . import stored_config
from .ldm_vae import convert_ldm_vae, detect_vae_config

REQUIRED_ENTRIES = ("model", "autoencoder")
KNOWN_ENTRIES = ("model", "autoencoder", "text_encoder", "diffusion", "opt", "scheduler", "iters",
                 "config_dict", "ema", "scaler")
# Official config value (configs/hoi_hico_shape.yaml); head count is not visible in shapes.
OFFICIAL_NUM_HEADS = 8
# CLIP text transformers use 64-dim heads (ViT-L/14: 768 = 12 × 64).
CLIP_HEAD_DIM = 64
TEXT_PREFIX = "transformer."

_RESNET = {"in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj",
           "out_layers.0": "norm2", "out_layers.3": "conv2", "skip_connection": "conv_shortcut"}


# --------------------------------------------------------------------------------------
# Reading and detection
# --------------------------------------------------------------------------------------

def read_official_iamg(path: str | os.PathLike) -> dict:
    """Read ``iamg.pth`` safely and check it is an IAMG training checkpoint."""
    obj, _ = read_weights(path)
    name = os.path.basename(str(path))
    check_iamg_dict(obj, name)
    return obj


def check_iamg_dict(obj: Mapping, name: str = "checkpoint") -> None:
    """Raise a `WeightsError` saying what the file is instead when it is not an IAMG file."""
    if not isinstance(obj, Mapping):
        raise WeightsError(f"{name}: not an IAMG checkpoint (expected a dict, found {type(obj).__name__})")
    missing = [k for k in REQUIRED_ENTRIES if not isinstance(obj.get(k), Mapping)]
    if not missing:
        if "input_blocks.0.0.weight" not in obj["model"]:
            raise WeightsError(f"{name}: entry 'model' is not an IAMG UNet state dict "
                               "(no 'input_blocks.0.0.weight')")
        return
    keys = list(obj)[:8]
    hint = ""
    if "state_dict" in obj and any(str(k).startswith("control_model.") for k in obj["state_dict"]):
        hint = " It looks like an MGIG (AnyDoor ControlLDM) checkpoint; load it with the MGIG loader."
    elif "state_dict" in obj or any(str(k).startswith("model.diffusion_model.") for k in obj):
        hint = " It looks like a Lightning/LDM checkpoint, not the IAMG trainer's dict."
    elif all(isinstance(v, torch.Tensor) for v in obj.values()):
        hint = " It is a bare state dict; IAMG files hold 'model', 'autoencoder', 'text_encoder', 'diffusion'."
    raise WeightsError(f"{name}: not an IAMG checkpoint — missing entr{'y' if len(missing) == 1 else 'ies'} "
                       f"{', '.join(map(repr, missing))} (found: {', '.join(map(str, keys))}).{hint}")


def _indices(sd: Mapping[str, torch.Tensor], pattern: str) -> list[int]:
    return sorted({int(m.group(1)) for k in sd if (m := re.match(pattern, k))})


def _num_heads_from_config_dict(config_dict) -> int | None:
    try:
        params = config_dict["model"]["params"]
        if int(params.get("num_head_channels", -1)) != -1:
            return None
        return int(params["num_heads"])
    except Exception:  # absent, or not plain data: fall back to the official value
        return None


def detect_unet_config(model_sd: Mapping[str, torch.Tensor], *, num_heads: int | None = None,
                       config_dict=None) -> IAMGUNetConfig:
    """Read the UNet architecture from the official state dict's shapes.

    Head count is not visible in shapes: ``num_heads`` if given, else the file's
    ``config_dict['model']['params']['num_heads']`` when present, else the official 8.
    """
    def get(key):
        if key not in model_sd:
            raise WeightsError(f"IAMG UNet: missing {key!r}; not an official IAMG 'model' state dict")
        return model_sd[key]

    conv_in = get("input_blocks.0.0.weight")
    C, in_ch = int(conv_in.shape[0]), int(conv_in.shape[1])
    out_ch = int(get("out.2.weight").shape[0])
    n_out = len(_indices(model_sd, r"output_blocks\.(\d+)\."))
    if n_out == 0:
        raise WeightsError("IAMG UNet: no output_blocks")
    # Up-sampling ResBlocks sit at output_blocks[u(R+1) + R] as the last sub-module with
    # in_layers (index 1 without attention, 2 with): the first one reveals R.
    up_at = [i for i in range(n_out)
             if any(f"output_blocks.{i}.{j}.in_layers.0.weight" in model_sd for j in (1, 2))]
    R = up_at[0] if up_at else n_out - 1
    if n_out % (R + 1):
        raise WeightsError(f"IAMG UNet: {n_out} output blocks do not form levels of {R + 1}")
    L = n_out // (R + 1)
    mult, attn = [], []
    for level in range(L):
        first = 1 + level * (R + 1)
        width = int(get(f"input_blocks.{first}.0.out_layers.3.weight").shape[0])
        if width % C:
            raise WeightsError(f"IAMG UNet: level {level} width {width} is not a multiple of {C}")
        mult.append(width // C)
        if f"input_blocks.{first}.1.qkv.weight" in model_sd:
            attn.append(2 ** level)
        if level < L - 1 and f"input_blocks.{first + R}.0.op.weight" in model_sd:
            raise WeightsError("IAMG UNet uses convolutional down-sampling (resblock_updown=False); "
                               "only the released resblock_updown=True architecture is supported")
    heads = num_heads or _num_heads_from_config_dict(config_dict) or OFFICIAL_NUM_HEADS
    try:
        return IAMGUNetConfig(in_channels=in_ch, out_channels=out_ch, model_channels=C,
                              channel_mult=tuple(mult), num_res_blocks=R,
                              attention_resolutions=tuple(sorted(attn, reverse=True)), num_heads=heads)
    except ValueError as e:
        raise WeightsError(f"IAMG UNet: detected an unusable architecture: {e}") from e


# --------------------------------------------------------------------------------------
# UNet key map
# --------------------------------------------------------------------------------------

def unet_module_map(cfg: IAMGUNetConfig) -> Iterator[tuple[str, str, str]]:
    """(official module prefix, our module prefix, kind) for every weight-holding module;
    kind is "resnet", "attention" or "plain" (parameters keep their names)."""
    R, L = cfg.num_res_blocks, len(cfg.channel_mult)
    yield "time_embed.0", "time_embedding.linear_1", "plain"
    yield "time_embed.2", "time_embedding.linear_2", "plain"
    yield "input_blocks.0.0", "conv_in", "plain"
    for level in range(L):
        for k in range(R):
            i = 1 + level * (R + 1) + k
            yield f"input_blocks.{i}.0", f"down_blocks.{level}.resnets.{k}", "resnet"
            if cfg.has_attention(level):
                yield f"input_blocks.{i}.1", f"down_blocks.{level}.attentions.{k}.self_attn", "attention"
        if level < L - 1:
            yield f"input_blocks.{(level + 1) * (R + 1)}.0", f"down_blocks.{level}.downsampler", "resnet"
    yield "middle_block.0", "mid_block.resnets.0", "resnet"
    yield "middle_block.1", "mid_block.attentions.0.self_attn", "attention"
    yield "middle_block.2", "mid_block.resnets.1", "resnet"
    for u in range(L):
        level = L - 1 - u
        for k in range(R + 1):
            i = u * (R + 1) + k
            yield f"output_blocks.{i}.0", f"up_blocks.{u}.resnets.{k}", "resnet"
            if cfg.has_attention(level):
                yield f"output_blocks.{i}.1", f"up_blocks.{u}.attentions.{k}.self_attn", "attention"
            if level > 0 and k == R:
                j = 2 if cfg.has_attention(level) else 1
                yield f"output_blocks.{i}.{j}", f"up_blocks.{u}.upsampler", "resnet"
    yield "out.0", "conv_norm_out", "plain"
    yield "out.2", "conv_out", "plain"


def _split_legacy_qkv(t: torch.Tensor, heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Official qkv rows are grouped per head, [q_h, k_h, v_h] for each head h."""
    rows = t.shape[0]
    per_head = rows // (3 * heads)
    grouped = t.reshape(heads, 3, per_head, *t.shape[1:])
    return tuple(grouped[:, j].reshape(heads * per_head, *t.shape[1:]).contiguous() for j in range(3))


def convert_official_unet(model_sd: Mapping[str, torch.Tensor], cfg: IAMGUNetConfig) -> dict[str, torch.Tensor]:
    """Official UNet state dict → `IAMGUNet` state dict (see the module table).

    Raises a `WeightsError` listing official keys the map does not account for.
    """
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()

    def take(key):
        used.add(key)
        return model_sd[key]

    for src, dst, kind in unet_module_map(cfg):
        present = [k for k in model_sd if k.startswith(src + ".")]
        for key in present:
            leaf = key[len(src) + 1:]
            if kind == "plain":
                out[f"{dst}.{leaf}"] = take(key)
            elif kind == "resnet":
                module, _, param = leaf.rpartition(".")
                if module not in _RESNET:
                    continue  # left unused → reported below
                out[f"{dst}.{_RESNET[module]}.{param}"] = take(key)
            else:  # attention
                module, _, param = leaf.rpartition(".")
                if module == "norm":
                    out[f"{dst}.group_norm.{param}"] = take(key)
                elif module == "proj_out":
                    t = take(key)
                    out[f"{dst}.to_out.0.{param}"] = t[..., 0] if param == "weight" else t
                elif module == "qkv":
                    t = take(key)
                    if param == "weight":
                        t = t[..., 0]
                    for name, part in zip(("to_q", "to_k", "to_v"), _split_legacy_qkv(t, cfg.num_heads)):
                        out[f"{dst}.{name}.{param}"] = part
    unused = sorted(set(model_sd) - used)
    if unused:
        more = f" … (+{len(unused) - 8} more)" if len(unused) > 8 else ""
        raise WeightsError(f"IAMG UNet: {len(unused)} unexpected key(s) for the detected architecture: "
                           f"{', '.join(unused[:8])}{more}. Refusing a partial load.")
    return out


# --------------------------------------------------------------------------------------
# Text encoder (transformers CLIPTextModel)
# --------------------------------------------------------------------------------------

def detect_text_encoder_config(te_sd: Mapping[str, torch.Tensor], *, num_heads: int | None = None) -> dict:
    """`transformers.CLIPTextConfig` kwargs from a ``transformer.text_model.*`` state dict.

    Head count is not visible in shapes: ``num_heads`` if given, else CLIP's 64-dim heads
    (ViT-L/14: 12). Widths that are not a multiple of 64 (reduced test models) need
    ``num_heads``; without it 1 head is assumed, with a warning — harmless for the
    released network, which never reads the text encoder's output.
    """
    p = "transformer.text_model."

    def get(key):
        if p + key not in te_sd:
            raise WeightsError(f"IAMG text encoder: missing {p + key!r}; expected CLIPTextModel weights")
        return te_sd[p + key]

    vocab, hidden = (int(s) for s in get("embeddings.token_embedding.weight").shape)
    layers = len(_indices(te_sd, r"transformer\.text_model\.encoder\.layers\.(\d+)\."))
    if num_heads is None:
        if hidden % CLIP_HEAD_DIM == 0:
            num_heads = hidden // CLIP_HEAD_DIM
        else:
            warnings.warn(f"IAMG text encoder width {hidden} is not a multiple of {CLIP_HEAD_DIM}; "
                          "assuming 1 attention head (pass num_heads to override)", stacklevel=2)
            num_heads = 1
    return {
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": int(get("encoder.layers.0.mlp.fc1.weight").shape[0]),
        "num_hidden_layers": layers,
        "num_attention_heads": int(num_heads),
        "max_position_embeddings": int(get("embeddings.position_embedding.weight").shape[0]),
        "hidden_act": "quick_gelu",  # OpenAI CLIP
        # CLIP's <|startoftext|>/<|endoftext|> ids; kept inside small test vocabularies.
        "bos_token_id": min(49406, vocab - 2),
        "eos_token_id": min(49407, vocab - 1),
        "pad_token_id": 1,
    }


def convert_text_encoder(te_sd: Mapping[str, torch.Tensor], text_model_prefix: str = "text_model.") -> dict[str, torch.Tensor]:
    """``transformer.text_model.*`` → CLIPTextModel keys. transformers 4.x names them
    ``text_model.*``, 5.x drops that prefix: pass the built module's prefix
    (`text_model_prefix_of`). The non-persistent ``position_ids`` buffer that older
    transformers saved is dropped."""
    src = TEXT_PREFIX + "text_model."
    out = {}
    for key, value in te_sd.items():
        if not key.startswith(src):
            raise WeightsError(f"IAMG text encoder: unexpected key {key!r} (expected '{src}*')")
        if key.endswith("embeddings.position_ids"):
            continue
        out[text_model_prefix + key[len(src):]] = value
    return out


def text_model_prefix_of(text_encoder: torch.nn.Module) -> str:
    """"text_model." when the CLIPTextModel nests its transformer (transformers 4.x), else ""."""
    return "text_model." if any(k.startswith("text_model.") for k in text_encoder.state_dict()) else ""


def build_text_encoder(config: Mapping):
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(**config))


# --------------------------------------------------------------------------------------
# Whole model
# --------------------------------------------------------------------------------------

def _build_on_meta(factory):
    # Skips random initialisation of hundreds of millions of parameters; the weights are
    # then attached with load_state_dict(assign=True).
    with torch.device("meta"):
        return factory()


def _load_assign(module: torch.nn.Module, sd: Mapping[str, torch.Tensor], what: str) -> torch.nn.Module:
    own = module.state_dict()
    bad = [f"{k} {tuple(sd[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
           if k in sd and tuple(sd[k].shape) != tuple(v.shape)]
    if bad:
        raise WeightsError(f"{what}: tensor shapes do not match the detected architecture: {', '.join(bad[:8])}")
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    if missing or unexpected:
        def show(keys):
            return ", ".join(keys[:8]) + (f" … (+{len(keys) - 8} more)" if len(keys) > 8 else "")
        parts = ([f"{len(missing)} missing: {show(missing)}"] if missing else []) + \
                ([f"{len(unexpected)} unexpected: {show(unexpected)}"] if unexpected else [])
        raise WeightsError(f"{what}: the weights do not match the model ({'; '.join(parts)}). "
                           "Refusing to continue with a partly loaded model.")
    module.load_state_dict(sd, strict=True, assign=True)
    return module


def unet_from_official(model_sd: Mapping[str, torch.Tensor], *, num_heads: int | None = None,
                       config_dict=None, dtype: torch.dtype | None = None) -> IAMGUNet:
    """Detect, convert and strictly load the official UNet state dict."""
    cfg = detect_unet_config(model_sd, num_heads=num_heads, config_dict=config_dict)
    sd = convert_official_unet(model_sd, cfg)
    if dtype is not None:
        sd = {k: v.to(dtype) for k, v in sd.items()}
    unet = _build_on_meta(lambda: IAMGUNet(cfg))
    return _load_assign(unet, sd, "IAMG UNet ('model')").eval()


def load_official_iamg(path_or_dict, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                       load_text_encoder: bool = True, num_heads: int | None = None,
                       text_encoder_num_heads: int | None = None, what: str | None = None) -> IAMGModel:
    """Load the official ``iamg.pth`` (a path, or the dict already read) as an `IAMGModel`.

    UNet and VAE are required; the text encoder is optional (the released network does
    not use it) and skipped with ``load_text_encoder=False``. The DDPM ᾱ table comes
    from the file's ``diffusion`` buffers when present. Strict: any key the maps do not
    account for, or any missing key, raises a `WeightsError` naming them; so does a NaN /
    Inf tensor (``what`` names a dict's source in that message).
    """
    if isinstance(path_or_dict, Mapping):
        ckpt, what = path_or_dict, what or "IAMG checkpoint"
        check_iamg_dict(ckpt)
    else:
        ckpt, what = read_official_iamg(path_or_dict), what or os.path.basename(str(path_or_dict))
    used = ("model", "autoencoder") + (("text_encoder",) if load_text_encoder else ())
    check_finite({k: ckpt[k] for k in used if isinstance(ckpt.get(k), Mapping)}, what)
    stored_config.check_official_iamg_settings(ckpt, what)  # its schedule table and head count

    unet = unet_from_official(ckpt["model"], num_heads=num_heads, config_dict=ckpt.get("config_dict"),
                              dtype=dtype)

    vae_sd = ckpt["autoencoder"]
    try:
        vae_cfg = detect_vae_config(vae_sd, scaling_factor=VAE_SCALE_FACTOR)
        vae_conv = convert_ldm_vae(vae_sd)
    except KeyError as e:  # VAEKeyError
        raise WeightsError(f"IAMG VAE ('autoencoder'): {e}") from e
    vae = _build_on_meta(lambda: build_vae(vae_cfg))
    _load_assign(vae, {k: v.to(dtype) for k, v in vae_conv.items()}, "IAMG VAE ('autoencoder')")

    text_encoder = None
    if load_text_encoder and isinstance(ckpt.get("text_encoder"), Mapping) and ckpt["text_encoder"]:
        te_sd = ckpt["text_encoder"]
        text_encoder = build_text_encoder(detect_text_encoder_config(te_sd, num_heads=text_encoder_num_heads))
        load_strict(text_encoder, convert_text_encoder(te_sd, text_model_prefix_of(text_encoder)),
                    "IAMG text encoder ('text_encoder')")
        text_encoder = text_encoder.to(dtype).eval()

    alphas_cumprod = None
    diffusion = ckpt.get("diffusion")
    if isinstance(diffusion, Mapping) and isinstance(diffusion.get("alphas_cumprod"), torch.Tensor):
        alphas_cumprod = diffusion["alphas_cumprod"].float()
    model = IAMGModel(unet, vae.eval(), text_encoder, alphas_cumprod=alphas_cumprod,
                      scale_factor=VAE_SCALE_FACTOR)
    return model.to(device).eval().requires_grad_(False)
