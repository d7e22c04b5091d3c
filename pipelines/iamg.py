"""IAMG — Interaction-Aware Mask Generation (DESIGN.md §1).

A latent-diffusion model whose "image" is the interaction mask (human ∪ object
silhouette, drawn white on black) and whose condition is the background with the target
box blanked out, VAE-encoded and concatenated to the noisy latent (8 input channels).

This module holds
- the denoising UNet (`IAMGUNet`, configured by plain data `IAMGUNetConfig`, presets in
  `PRESETS`), built from diffusers blocks: `ResnetBlock2D` (also for the resblock
  up/down-sampling), `Timesteps`/`TimestepEmbedding`, `Attention`;
- `IAMGModel`: UNet + VAE (diffusers `AutoencoderKL`) + optional CLIP text encoder, with
  the few operations a pipeline needs (`predict_eps`, `encode_condition`, `decode`);
- the data path as pure functions: `condition_image`, `target_image` (inputs) and
  `mask_from_decoded` (output), plus `sample_mask_latent`, the sampling loop.

The released network has **no cross-attention** (it ignores the prompt). The paper's
text-conditioned variant (★) is the same UNet with ``cross_attention_dim`` set: a
cross-attention to the CLIP text tokens after every self-attention, its output
projection zero-initialised so that it starts as exactly the official model.

The official checkpoint is read by `weights_manager/official_iamg.py` (key maps there).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import samplers

# Square side of the IAMG image space (condition and mask); the latent is 1/8 of it.
IMAGE_SIZE = 256
# The SD kl-f8 latent scale used by the official IAMG autoencoder config.
VAE_SCALE_FACTOR = 0.18215
# Official sampling settings (test_demo.py: PLMS, 50 steps, guidance 5 with an empty
# prompt as the unconditional input — an exact no-op for the released network).
DEFAULT_STEPS = 50
DEFAULT_GUIDANCE = 5.0
# Foreground = soft mask above this (DESIGN §1: decoded → clamp → [0,1] → > 0.5).
DEFAULT_THRESHOLD = 0.5
# What the official two-stage script effectively uses instead: torchvision's save_image
# writes round(clamp(x, 0, 1)·255) of the decoded x ∈ [-1, 1], and MGIG reads that PNG
# with `> 128`, i.e. x ≥ 128.5/255, which is soft = (x + 1)/2 ≥ this value.
OFFICIAL_PNG_THRESHOLD = (1.0 + 128.5 / 255.0) / 2.0


# --------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class IAMGUNetConfig:
    """Architecture of the IAMG UNet (plain data; `to_dict`/`from_dict` round-trip).

    Field names follow the official `openaimodel.UNetModel` arguments.
    ``attention_resolutions`` are *downsampling factors* (1 = the first level), as in
    the official config; the middle block always has self-attention.
    ``in_channels`` counts the noisy latent *and* the condition latent (official
    `CondModel` doubles its configured 4).
    """

    in_channels: int = 8
    out_channels: int = 4
    model_channels: int = 320
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (4, 2, 1)
    num_heads: int = 8
    # None = the released model (no text input). An int = the ★ text-conditioned
    # variant: cross-attention to context tokens of this width (768 for CLIP ViT-L/14).
    cross_attention_dim: int | None = None
    norm_num_groups: int = 32

    def __post_init__(self):
        object.__setattr__(self, "channel_mult", tuple(int(m) for m in self.channel_mult))
        object.__setattr__(self, "attention_resolutions", tuple(int(r) for r in self.attention_resolutions))
        for level_mult in self.channel_mult:
            width = self.model_channels * level_mult
            if width % self.norm_num_groups:
                raise ValueError(f"IAMGUNetConfig: width {width} is not divisible by "
                                 f"norm_num_groups={self.norm_num_groups}")
            if width % self.num_heads:
                raise ValueError(f"IAMGUNetConfig: width {width} is not divisible by num_heads={self.num_heads}")

    @property
    def time_embed_dim(self) -> int:
        return 4 * self.model_channels

    @property
    def latent_channels(self) -> int:
        """Channels of x_t (and of the condition latent)."""
        return self.out_channels

    def has_attention(self, level: int) -> bool:
        return 2 ** level in self.attention_resolutions

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channel_mult"] = list(self.channel_mult)
        d["attention_resolutions"] = list(self.attention_resolutions)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "IAMGUNetConfig":
        return cls(**d)


PRESETS: dict[str, IAMGUNetConfig] = {
    # The released iamg.pth (701.5 M parameters).
    "official": IAMGUNetConfig(),
    # The shape of the shared reduced test vectors.
    "reduced": IAMGUNetConfig(model_channels=32, channel_mult=(1, 1, 1, 2)),
    # Smallest useful network, for unit tests and smoke runs.
    "tiny": IAMGUNetConfig(model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                           attention_resolutions=(2,), num_heads=2),
}


def preset(name: str, **overrides) -> IAMGUNetConfig:
    """A named configuration, optionally with fields replaced (e.g.
    ``preset("official", cross_attention_dim=768)`` for the ★ text variant)."""
    if name not in PRESETS:
        raise ValueError(f"unknown IAMG preset {name!r}; choose from {', '.join(PRESETS)}")
    return replace(PRESETS[name], **overrides)


# --------------------------------------------------------------------------------------
# Network
# --------------------------------------------------------------------------------------

def _resnet(cfg: IAMGUNetConfig, in_ch: int, out_ch: int, *, up: bool = False, down: bool = False):
    from diffusers.models.resnet import ResnetBlock2D

    # Official ResBlock: GroupNorm(32, eps 1e-5) → SiLU → [nearest ×2 | 2×2 avg-pool] →
    # conv; + Linear(SiLU(emb)) added (no scale-shift); → norm → SiLU → conv; 1×1 skip
    # conv when the width changes. diffusers' default eps is 1e-6, hence explicit.
    return ResnetBlock2D(in_channels=in_ch, out_channels=out_ch, temb_channels=cfg.time_embed_dim,
                         groups=cfg.norm_num_groups, eps=1e-5, non_linearity="silu",
                         time_embedding_norm="default", up=up, down=down)


class IAMGAttention(nn.Module):
    """Self-attention over all latent positions (the official legacy `AttentionBlock`:
    GroupNorm → q,k,v → heads → output projection → residual), optionally followed by
    cross-attention to text tokens (★ variant)."""

    def __init__(self, cfg: IAMGUNetConfig, channels: int):
        super().__init__()
        from diffusers.models.attention_processor import Attention

        head_dim = channels // cfg.num_heads
        self.self_attn = Attention(query_dim=channels, heads=cfg.num_heads, dim_head=head_dim,
                                   norm_num_groups=cfg.norm_num_groups, eps=1e-5, bias=True,
                                   upcast_softmax=True, residual_connection=True)
        self.cross_attn = None
        if cfg.cross_attention_dim is not None:
            self.cross_attn = Attention(query_dim=channels, cross_attention_dim=cfg.cross_attention_dim,
                                        heads=cfg.num_heads, dim_head=head_dim,
                                        norm_num_groups=cfg.norm_num_groups, eps=1e-5, bias=True,
                                        upcast_softmax=True, residual_connection=True)
            # Zero output projection: a fresh text variant initialised from the official
            # weights computes exactly the official function until it is trained.
            nn.init.zeros_(self.cross_attn.to_out[0].weight)
            nn.init.zeros_(self.cross_attn.to_out[0].bias)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        x = self.self_attn(x)
        if self.cross_attn is not None:
            if context is None:
                raise ValueError("this IAMG UNet has cross-attention: pass `context` "
                                 "(text tokens [B, L, cross_attention_dim])")
            x = self.cross_attn(x, encoder_hidden_states=context)
        return x


class _Level(nn.Module):
    """One resolution level (or the middle block): resnets, their attentions (if any),
    and at most one resampling ResNet."""

    def __init__(self, resnets: list[nn.Module], attentions: list[nn.Module] | None = None, *,
                 downsampler: nn.Module | None = None, upsampler: nn.Module | None = None):
        super().__init__()
        self.resnets = nn.ModuleList(resnets)
        self.attentions = nn.ModuleList(attentions) if attentions else None
        self.downsampler = downsampler
        self.upsampler = upsampler


class IAMGUNet(nn.Module):
    """The IAMG denoiser ε_θ([x_t, c_bg], t[, text]) — the official LDM openaimodel UNet
    with `resblock_updown` and legacy self-attention, rebuilt from diffusers blocks.

    Layout (diffusers naming): ``conv_in``; ``down_blocks[l]`` with ``resnets``,
    ``attentions`` and a down-sampling ResNet ``downsampler``; ``mid_block``;
    ``up_blocks[u]`` (u = 0 is the deepest level) with ``resnets`` (one more, taking the
    skips), ``attentions`` and an up-sampling ResNet ``upsampler``; ``conv_norm_out``,
    ``conv_out``.
    """

    def __init__(self, config: IAMGUNetConfig):
        super().__init__()
        from diffusers.models.embeddings import TimestepEmbedding, Timesteps

        self.config = cfg = config
        C = cfg.model_channels
        # Official timestep_embedding: [cos, sin], frequencies exp(-ln(1e4)·i/half).
        self.time_proj = Timesteps(C, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(C, cfg.time_embed_dim, act_fn="silu")
        self.conv_in = nn.Conv2d(cfg.in_channels, C, 3, padding=1)

        levels = len(cfg.channel_mult)
        skip_channels = [C]
        ch = C
        self.down_blocks = nn.ModuleList()
        for level, mult in enumerate(cfg.channel_mult):
            resnets, attentions = [], []
            for _ in range(cfg.num_res_blocks):
                resnets.append(_resnet(cfg, ch, C * mult))
                ch = C * mult
                if cfg.has_attention(level):
                    attentions.append(IAMGAttention(cfg, ch))
                skip_channels.append(ch)
            down = None
            if level != levels - 1:
                down = _resnet(cfg, ch, ch, down=True)
                skip_channels.append(ch)
            self.down_blocks.append(_Level(resnets, attentions, downsampler=down))

        self.mid_block = _Level([_resnet(cfg, ch, ch), _resnet(cfg, ch, ch)], [IAMGAttention(cfg, ch)])

        self.up_blocks = nn.ModuleList()
        for level in reversed(range(levels)):
            mult = cfg.channel_mult[level]
            resnets, attentions = [], []
            for _ in range(cfg.num_res_blocks + 1):
                resnets.append(_resnet(cfg, ch + skip_channels.pop(), C * mult))
                ch = C * mult
                if cfg.has_attention(level):
                    attentions.append(IAMGAttention(cfg, ch))
            up = _resnet(cfg, ch, ch, up=True) if level > 0 else None
            self.up_blocks.append(_Level(resnets, attentions, upsampler=up))

        self.conv_norm_out = nn.GroupNorm(cfg.norm_num_groups, ch, eps=1e-5)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(ch, cfg.out_channels, 3, padding=1)

    @property
    def dtype(self) -> torch.dtype:
        return self.conv_in.weight.dtype

    def time_embed(self, t: torch.Tensor, batch: int) -> torch.Tensor:
        t = torch.as_tensor(t, device=self.conv_in.weight.device)
        if t.ndim == 0:
            t = t.expand(batch)
        # Timesteps computes in float32 (as the official embedding); cast for the MLP.
        return self.time_embedding(self.time_proj(t).to(self.dtype))

    def forward(self, x: torch.Tensor, t: torch.Tensor | int, context: torch.Tensor | None = None) -> torch.Tensor:
        """ε prediction. ``x``: [B, in_channels, h, w] (noisy latent ‖ condition latent),
        ``t``: DDPM timesteps [B] (or a scalar), ``context``: text tokens for the ★
        variant — ignored when the network has no cross-attention (the released model)."""
        if x.shape[1] != self.config.in_channels:
            raise ValueError(f"IAMG UNet expects {self.config.in_channels} input channels "
                             f"(noisy latent ‖ condition latent), got {tuple(x.shape)}")
        if self.config.cross_attention_dim is None:
            context = None
        emb = self.time_embed(t, x.shape[0])
        h = self.conv_in(x.to(self.dtype))
        skips = [h]
        for block in self.down_blocks:
            for i, resnet in enumerate(block.resnets):
                h = resnet(h, emb)
                if block.attentions is not None:
                    h = block.attentions[i](h, context)
                skips.append(h)
            if block.downsampler is not None:
                h = block.downsampler(h, emb)
                skips.append(h)
        mid = self.mid_block
        h = mid.resnets[0](h, emb)
        h = mid.attentions[0](h, context)
        h = mid.resnets[1](h, emb)
        for block in self.up_blocks:
            for i, resnet in enumerate(block.resnets):
                h = resnet(torch.cat([h, skips.pop()], dim=1), emb)
                if block.attentions is not None:
                    h = block.attentions[i](h, context)
            if block.upsampler is not None:
                h = block.upsampler(h, emb)
        return self.conv_out(self.conv_act(self.conv_norm_out(h)))


# --------------------------------------------------------------------------------------
# The model: UNet + VAE (+ text encoder)
# --------------------------------------------------------------------------------------

class IAMGModel(nn.Module):
    """IAMG as one module: ``unet`` (IAMGUNet), ``vae`` (diffusers AutoencoderKL),
    optional ``text_encoder`` (transformers CLIPTextModel; in the official file but unused
    by the released network) and the DDPM ``alphas_cumprod`` table the samplers need."""

    def __init__(self, unet: IAMGUNet, vae: nn.Module, text_encoder: nn.Module | None = None, *,
                 alphas_cumprod: torch.Tensor | None = None, scale_factor: float = VAE_SCALE_FACTOR):
        super().__init__()
        self.unet = unet
        self.vae = vae
        self.text_encoder = text_encoder
        self.scale_factor = float(scale_factor)
        if alphas_cumprod is None:
            alphas_cumprod = samplers.ldm_alphas_cumprod()
        # float32 like the official `diffusion` buffers. Non-persistent: the schedule is a
        # fixed fact of the method (`samplers.ldm_alphas_cumprod`), not a weight.
        self.register_buffer("alphas_cumprod", alphas_cumprod.detach().float().clone(), persistent=False)

    @property
    def uses_text(self) -> bool:
        """True for the ★ variant; False for the released network (prompt ignored)."""
        return self.unet.config.cross_attention_dim is not None

    @property
    def device(self) -> torch.device:
        return self.unet.conv_in.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    def predict_eps(self, x_t: torch.Tensor, t: torch.Tensor | int, cond_latent: torch.Tensor,
                    context: torch.Tensor | None = None) -> torch.Tensor:
        """ε_θ(x_t, t | condition latent[, text context]) — official `CondModel.forward`
        (the condition latent is concatenated after x_t on channels)."""
        if cond_latent.shape != x_t.shape:
            raise ValueError(f"condition latent {tuple(cond_latent.shape)} must match x_t {tuple(x_t.shape)}")
        return self.unet(torch.cat([x_t, cond_latent], dim=1), t, context)

    def posterior(self, image: torch.Tensor | np.ndarray):
        """The VAE posterior q(z | image) (diffusers DiagonalGaussianDistribution) of an
        image in [-1, 1], [B, 3, H, W] (or one [3, H, W], e.g. from `condition_image`);
        unscaled."""
        vae_param = next(self.vae.parameters())
        image = torch.as_tensor(image)
        if image.ndim == 3:
            image = image[None]
        return self.vae.encode(image.to(vae_param.device, vae_param.dtype)).latent_dist

    def encode_condition(self, image: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Condition (or target) latent: posterior MEAN × scale_factor.

        The official `AutoencoderKL.encode` draws a posterior *sample*; at inference we
        use the mean (deterministic; DESIGN §5). [B,3,256,256] in [-1,1] → [B,4,32,32].
        """
        return self.posterior(image).mean * self.scale_factor

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """Latent → image (unclamped, nominally [-1, 1]), official `decode`."""
        vae_param = next(self.vae.parameters())
        # Multiply by the reciprocal as the official code does (bit-level parity).
        z = latent.to(vae_param.device, vae_param.dtype) * (1.0 / self.scale_factor)
        return self.vae.decode(z).sample

    def encode_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        """CLIP text tokens (last hidden state, as the official FrozenCLIPEmbedder) for
        the ★ variant. ``input_ids``: [B, 77] from a CLIP tokenizer."""
        if self.text_encoder is None:
            raise ValueError("this IAMG model has no text encoder")
        return self.text_encoder(input_ids=input_ids.to(self.device)).last_hidden_state


def sample_mask_latent(model: IAMGModel, cond_latent: torch.Tensor, *, steps: int = DEFAULT_STEPS,
                       sampler: str = "plms", seed: int = 0, x_T: torch.Tensor | None = None,
                       context: torch.Tensor | None = None, uncond_context: torch.Tensor | None = None,
                       guidance: float = DEFAULT_GUIDANCE,
                       callback: samplers.Callback | None = None) -> torch.Tensor:
    """Sample a mask latent given the condition latent (official: PLMS, 50 steps).

    Classifier-free guidance applies to the text only. For the released network (no
    cross-attention) it is an exact no-op, so no unconditional pass runs: 51 UNet calls
    instead of 102, identical result. For the ★ variant pass ``context`` and
    ``uncond_context`` (CLIP of the prompt and of "").
    """
    if x_T is None:
        x_T = samplers.initial_noise(tuple(cond_latent.shape), seed, device=cond_latent.device,
                                     dtype=cond_latent.dtype)
    uncond = None
    if model.uses_text:
        if context is None:
            raise ValueError("the text-conditioned IAMG needs `context` (encoded prompt)")
        if uncond_context is not None and guidance != 1.0:
            uncond = {"cond_latent": cond_latent, "context": uncond_context}
    cond = {"cond_latent": cond_latent, "context": context if model.uses_text else None}
    eps_fn = samplers.guided_eps(model.predict_eps, cond, uncond, guidance)
    return samplers.sample(eps_fn, x_T, model.alphas_cumprod, steps, sampler, callback)


# --------------------------------------------------------------------------------------
# Data path: condition / target images (numpy, HWC in → CHW float32 in [-1, 1] out)
# --------------------------------------------------------------------------------------

Box = tuple[int, int, int, int]  # (y1, y2, x1, x2), used as image[y1:y2, x1:x2]


def union_box(union_mask: np.ndarray) -> Box:
    """Box of the human ∪ object mask as the official `get_bbox_from_mask`.

    y2/x2 are the *last* foreground row/column (inclusive) but are used as exclusive
    slice ends, so the blanked region is 1 px short on the bottom/right — kept, the
    released model was trained with it (DESIGN §5). A mask with fewer than 10 foreground
    pixels gives the whole image.
    """
    mask = np.asarray(union_mask)
    if mask.ndim != 2:
        raise ValueError(f"union_mask: expected an HxW mask, got shape {mask.shape}")
    fg = mask > 0.5
    h, w = fg.shape
    if fg.sum() < 10:
        return 0, h, 0, w
    rows = np.flatnonzero(fg.any(axis=1))
    cols = np.flatnonzero(fg.any(axis=0))
    return int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])


def box_from_fractions(height: int, width: int, fractions: Sequence[float]) -> Box:
    """The demo's ``--position [h_start, h_end, w_start, w_end]`` (fractions of the image
    height/width) → pixel box, truncated like the official `demo_process`."""
    if len(fractions) != 4:
        raise ValueError(f"box fractions: expected [h_start, h_end, w_start, w_end], got {list(fractions)}")
    hs, he, ws, we = (float(f) for f in fractions)
    if not (0.0 <= hs <= he <= 1.0 and 0.0 <= ws <= we <= 1.0):
        raise ValueError(f"box fractions: expected 0 <= start <= end <= 1 on both axes, got {list(fractions)}")
    return int(height * hs), int(height * he), int(width * ws), int(width * we)


def _check_box(box: Sequence[int], height: int, width: int) -> Box:
    if len(box) != 4:
        raise ValueError(f"box: expected (y1, y2, x1, x2) in pixels, got {box!r}")
    y1, y2, x1, x2 = (int(v) for v in box)
    if not (0 <= y1 <= y2 <= height and 0 <= x1 <= x2 <= width):
        raise ValueError(f"box: (y1, y2, x1, x2) = {(y1, y2, x1, x2)} is not inside the "
                         f"{height}x{width} image with y1 <= y2 and x1 <= x2")
    return y1, y2, x1, x2


def pad_to_square(image: np.ndarray, pad_value: float) -> np.ndarray:
    """Centre an HxW[xC] image in a square (official `pad_to_square(random=False)`: the
    first side gets ``int(d / 2)``, the second the rest)."""
    h, w = image.shape[:2]
    if h == w:
        return image
    d = abs(h - w)
    before, after = d // 2, d - d // 2
    widths = [(0, 0)] * image.ndim
    widths[1 if h > w else 0] = (before, after)
    return np.pad(image, widths, mode="constant", constant_values=pad_value)


def _to_model_range(image_u8: np.ndarray, size: int) -> np.ndarray:
    from .imgproc import resize_linear

    # cv2.resize (INTER_LINEAR, uint8 fixed point) reproduced bit-exactly by imgproc.
    resized = resize_linear(image_u8, (size, size))
    return (resized.astype(np.float32) / np.float32(127.5) - np.float32(1.0)).transpose(2, 0, 1).copy()


def condition_image(background: np.ndarray, box: Sequence[int] | None, size: int = IMAGE_SIZE) -> np.ndarray:
    """IAMG condition C_bg: the RGB background with the box filled black (0), padded to a
    square with white (255), resized to ``size``, scaled to [-1, 1] → float32 [3, size,
    size]. ``box`` = (y1, y2, x1, x2) in pixels (`union_box`, `box_from_fractions`);
    None keeps the whole background. The input is not modified (the official code blanks
    the caller's array in place)."""
    img = np.asarray(background)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"background: expected an HxWx3 uint8 RGB image, got {img.dtype} {img.shape}")
    img = img.copy()
    if box is not None:
        y1, y2, x1, x2 = _check_box(box, *img.shape[:2])
        img[y1:y2, x1:x2] = 0
    return _to_model_range(pad_to_square(img, 255), size)


def target_image(union_mask: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    """IAMG training target: the union mask drawn white on black as a 3-channel image,
    padded to a square with 0, resized to ``size``, [-1, 1] → float32 [3, size, size]."""
    mask = np.asarray(union_mask)
    if mask.ndim != 2:
        raise ValueError(f"union_mask: expected an HxW mask, got shape {mask.shape}")
    drawn = np.repeat(((mask > 0.5).astype(np.uint8) * 255)[:, :, None], 3, axis=2)
    return _to_model_range(pad_to_square(drawn, 0), size)


# --------------------------------------------------------------------------------------
# Mask post-processing (torch)
# --------------------------------------------------------------------------------------

def soft_mask_from_decoded(decoded: torch.Tensor) -> torch.Tensor:
    """Decoded mask image [B, 3, S, S] → soft mask [B, S, S] in [0, 1]: clamp to
    [-1, 1] (official), map to [0, 1], average the (nearly equal) RGB channels."""
    if decoded.ndim != 4 or decoded.shape[1] != 3:
        raise ValueError(f"decoded: expected [B, 3, S, S], got {tuple(decoded.shape)}")
    return ((decoded.float().clamp(-1.0, 1.0) + 1.0) / 2.0).mean(dim=1)


def crop_square_padding(square: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Undo `pad_to_square` + resize: [B, S, S] (any S) → [B, height, width].

    The square is first resized to the padded side max(height, width), then the
    centred padding is cut off along the axis that was padded — the *width* for
    portrait images, the height for landscape ones. (The official `resize_forward` always
    crops the height, in 256² space with rounded offsets: wrong for portrait images.)
    """
    if square.ndim != 3 or square.shape[-1] != square.shape[-2]:
        raise ValueError(f"square: expected [B, S, S], got {tuple(square.shape)}")
    height, width = int(height), int(width)
    if height < 1 or width < 1:
        raise ValueError(f"image size: expected positive height and width, got {(height, width)}")
    side = max(height, width)
    x = square.float()[:, None]
    if x.shape[-1] != side:
        x = F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False,
                          antialias=side < x.shape[-1])
    x = x[:, 0]
    before = abs(height - width) // 2
    if height > width:
        return x[:, :, before:before + width]
    return x[:, before:before + height, :]


def mask_from_decoded(decoded: torch.Tensor, height: int, width: int,
                      threshold: float = DEFAULT_THRESHOLD) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoded IAMG output [B, 3, S, S] → (soft mask [B, H, W] float in [0, 1], binary
    mask [B, H, W] bool = soft > threshold) at the background's size."""
    soft = crop_square_padding(soft_mask_from_decoded(decoded), height, width)
    return soft, soft > threshold


def official_mask_png(decoded: torch.Tensor) -> torch.Tensor:
    """What the official demo saves as the mask PNG: torchvision `save_image` of the
    clamped decode *without* mapping [-1, 1] to [0, 1], i.e. uint8(clamp(x·255 + 0.5,
    0, 255)) — negative values become 0. [B, 3, S, S] → uint8 [B, S, S, 3]."""
    x = decoded.float().clamp(-1.0, 1.0)
    return (x * 255.0 + 0.5).clamp(0.0, 255.0).to(torch.uint8).permute(0, 2, 3, 1)
