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
  `mask_from_decoded` (output), plus `sample_mask_latent`, the sampling loop;
- ★ the text-conditioned variant: prompt tokenizers (`PromptTokenizer`), whole-model
  presets (`MODEL_PRESETS`, `build_iamg`), `with_cross_attention` (text variant
  initialised from official weights) and its training objective (`iamg_training_loss`);
- `generate_mask`, the user-facing function (background + box + prompt → `MaskResult`).

The released network has **no cross-attention** (it ignores the prompt). The paper's
text-conditioned variant (★) is the same UNet with ``cross_attention_dim`` set: a
cross-attention to the CLIP text tokens after every self-attention, its output
projection zero-initialised so that it starts as exactly the official model.

Without a background the condition is the **empty condition**: an all-zero condition
latent (`empty_condition`). The ★ variant learns it through condition dropout
(`iamg_training_loss` zeroes the condition latent of a random 10 % of the samples), so it
generates from the prompt alone; the released network never saw it (pass a background).

The official checkpoint is read by `weights_manager/official_iamg.py` (key maps there);
our safetensors format by `weights_manager/native_iamg.py` (`load_iamg` loads either).
"""
from __future__ import annotations

import os
import sys
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import preprocess, samplers
from .paths import WORDS_TOKENIZER_FILE
from .sampling_settings import OFFICIAL

# Square side of the IAMG image space (condition and mask); the latent is 1/8 of it.
IMAGE_SIZE = 256
# The SD kl-f8 latent scale used by the official IAMG autoencoder config.
VAE_SCALE_FACTOR = 0.18215
# Official sampling settings (test_demo.py: PLMS, 50 steps, guidance 5 with an empty
# prompt as the unconditional input — an exact no-op for the released network); one
# source with the recommended ones: `sampling_settings`.
DEFAULT_STEPS = OFFICIAL["iamg"].steps
DEFAULT_GUIDANCE = OFFICIAL["iamg"].guidance
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
        # A set of down-sampling rates: one order (largest first), so configs compare equal.
        object.__setattr__(self, "attention_resolutions",
                           tuple(sorted({int(r) for r in self.attention_resolutions}, reverse=True)))
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
        elif context is not None:
            context = context.to(self.dtype)
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
    by the released network) and the DDPM ``alphas_cumprod`` table the samplers need.

    ``tokenizer`` (a `PromptTokenizer`, not a module) turns prompts into the text
    encoder's token ids for the ★ variant; when None it is resolved on first use
    (`resolve_prompt_tokenizer`). ``preset`` names the architecture when it is a known
    one (`MODEL_PRESETS`); it is written to saved files."""

    def __init__(self, unet: IAMGUNet, vae: nn.Module, text_encoder: nn.Module | None = None, *,
                 alphas_cumprod: torch.Tensor | None = None, scale_factor: float = VAE_SCALE_FACTOR,
                 tokenizer: "PromptTokenizer | None" = None, preset: str | None = None,
                 image_size: int = IMAGE_SIZE, latent_shift: Sequence[float] | None = None,
                 prediction_type: str = "epsilon"):
        super().__init__()
        self.unet = unet
        self.vae = vae
        self.text_encoder = text_encoder
        self.scale_factor = float(scale_factor)
        # Per-channel latent mean subtracted before scaling (None: none, as the official
        # model). A small VAE trained from scratch has latents far from zero mean (mask
        # latents: channel means up to ±1.4 std), which ε-prediction samples badly: the
        # mean must come out of the noisiest steps, where ε errors are amplified ~15x.
        self.latent_shift = None if latent_shift is None else [float(v) for v in latent_shift]
        self.tokenizer = tokenizer
        self.preset = preset
        # Side of the square image space the model works in (condition and mask): the
        # official 256, or the size a small model was trained at (saved with its weights).
        self.image_size = int(image_size)
        # What the UNet predicts: "epsilon" (official) or ★ "v_prediction" (saved with the
        # weights; `predict_eps` converts, see `mgig.MGIGConfig.prediction_type` for why).
        self.prediction_type = samplers.check_prediction_type(prediction_type)
        if alphas_cumprod is None:
            alphas_cumprod = samplers.ldm_alphas_cumprod()
        # float32 like the official `diffusion` buffers, on the CPU (samplers move what they
        # use). Not a buffer: the schedule is a fixed fact of the method, not a weight, and
        # `model.to(torch.bfloat16)` would round ᾱ_t ≈ 1 to exactly 1 (σ_t = 0).
        self._alphas_cumprod = alphas_cumprod.detach().float().cpu().clone()

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        """The DDPM ᾱ table [1000], float32 on the CPU whatever the model's dtype/device."""
        return self._alphas_cumprod

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
        return samplers.eps_from_prediction(self.prediction_type, self.unet_output(x_t, t, cond_latent, context),
                                            x_t, t, self.alphas_cumprod)

    def unet_output(self, x_t: torch.Tensor, t: torch.Tensor | int, cond_latent: torch.Tensor,
                    context: torch.Tensor | None = None) -> torch.Tensor:
        """The UNet's prediction (ε, or v for a ★ v_prediction model)."""
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
        return self.to_latent(self.posterior(image).mean)

    def to_latent(self, z: torch.Tensor) -> torch.Tensor:
        """VAE latent → diffusion latent: (z − latent_shift) × scale_factor."""
        if self.latent_shift is not None:
            z = z - torch.tensor(self.latent_shift, device=z.device, dtype=z.dtype).view(1, -1, 1, 1)
        return z * self.scale_factor

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """Latent → image (unclamped, nominally [-1, 1]), official `decode`."""
        vae_param = next(self.vae.parameters())
        # Multiply by the reciprocal as the official code does (bit-level parity).
        z = latent.to(vae_param.device, vae_param.dtype) * (1.0 / self.scale_factor)
        if self.latent_shift is not None:
            z = z + torch.tensor(self.latent_shift, device=z.device, dtype=z.dtype).view(1, -1, 1, 1)
        return self.vae.decode(z).sample

    def encode_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        """CLIP text tokens (last hidden state, as the official FrozenCLIPEmbedder) for
        the ★ variant. ``input_ids``: [B, 77] from a CLIP tokenizer."""
        if self.text_encoder is None:
            raise ValueError("this IAMG model has no text encoder")
        device = next(self.text_encoder.parameters()).device
        return self.text_encoder(input_ids=input_ids.to(device)).last_hidden_state

    def tokenize(self, prompts: Sequence[str]) -> torch.Tensor:
        """Prompts → token ids [B, 77] with the model's tokenizer (resolved on first use:
        see `resolve_prompt_tokenizer`)."""
        if self.text_encoder is None:
            raise ValueError("this IAMG model has no text encoder to tokenize prompts for")
        if self.tokenizer is None:
            self.tokenizer = resolve_prompt_tokenizer(vocab_size=self.text_vocab_size)
        return self.tokenizer(prompts)

    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        """Text context [B, 77, D] of the prompts (tokenize + `encode_text`), in the UNet's
        dtype. The unconditional context of classifier-free guidance is ``[""]``."""
        return self.encode_text(self.tokenize(prompts)).to(self.dtype)

    @property
    def text_vocab_size(self) -> int | None:
        """Rows of the text encoder's token embedding (None without a text encoder)."""
        if self.text_encoder is None:
            return None
        return int(self.text_encoder.get_input_embeddings().weight.shape[0])

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(channels, h, w) of the mask latent for the `image_size`² image space."""
        factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        side = self.image_size // factor
        return self.unet.config.latent_channels, side, side

    def empty_condition(self, batch: int = 1) -> torch.Tensor:
        """The condition latent meaning "no background": all zeros (see module docstring)."""
        return torch.zeros((batch, *self.latent_shape), device=self.device, dtype=torch.float32)


def sample_mask_latent(model: IAMGModel, cond_latent: torch.Tensor, *, steps: int = DEFAULT_STEPS,
                       sampler: str = "plms", seed: int = 0, x_T: torch.Tensor | None = None,
                       context: torch.Tensor | None = None, uncond_context: torch.Tensor | None = None,
                       guidance: float = DEFAULT_GUIDANCE,
                       callback: samplers.Callback | None = None,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """Sample a mask latent given the condition latent (official: PLMS, 50 steps).

    Classifier-free guidance applies to the text only. For the released network (no
    cross-attention) it is an exact no-op, so no unconditional pass runs: 51 UNet calls
    instead of 102, identical result. For the ★ variant pass ``context`` and
    ``uncond_context`` (CLIP of the prompt and of ""); cond and uncond then run as one
    batch of 2B. ``generator`` feeds the stochastic diffusers samplers (e.g. euler_a).
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
    return samplers.sample(eps_fn, x_T, model.alphas_cumprod, steps, sampler, callback, generator)


# --------------------------------------------------------------------------------------
# Data path: condition / target images (numpy, HWC in → CHW float32 in [-1, 1] out)
# --------------------------------------------------------------------------------------

Box = tuple[int, int, int, int]  # (y1, y2, x1, x2), used as image[y1:y2, x1:x2]


def union_box(union_mask: np.ndarray) -> Box:
    """Box of the human ∪ object mask as the official `get_bbox_from_mask`
    (`preprocess.bbox_from_mask`): y2/x2 are the *last* foreground row/column (inclusive)
    but are used as exclusive slice ends, so the blanked region is 1 px short on the
    bottom/right — kept, the released model was trained with it (DESIGN §5). A mask with
    fewer than 10 foreground pixels gives the whole image.
    """
    mask = np.asarray(union_mask)
    if mask.ndim != 2:
        raise ValueError(f"union_mask: expected an HxW mask, got shape {mask.shape}")
    return preprocess.bbox_from_mask(mask > 0.5)


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
    return _to_model_range(preprocess.pad_to_square(img, 255), size)


def target_image(union_mask: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    """IAMG training target: the union mask drawn white on black as a 3-channel image,
    padded to a square with 0, resized to ``size``, [-1, 1] → float32 [3, size, size]."""
    mask = np.asarray(union_mask)
    if mask.ndim != 2:
        raise ValueError(f"union_mask: expected an HxW mask, got shape {mask.shape}")
    drawn = np.repeat(((mask > 0.5).astype(np.uint8) * 255)[:, :, None], 3, axis=2)
    return _to_model_range(preprocess.pad_to_square(drawn, 0), size)


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


# --------------------------------------------------------------------------------------
# ★ Text: prompt tokenizers
# --------------------------------------------------------------------------------------

# CLIP's context length: the official FrozenCLIPEmbedder truncates/pads to 77 tokens.
TEXT_MAX_LENGTH = 77
# Token-embedding rows of CLIP ViT-L/14's text model (the BPE vocabulary).
CLIP_VOCAB_SIZE = 49408
# The word-level tokenizer shipped with the package (small presets). Its vocabulary is
# FROZEN: trained weights index its rows, so words may only ever be appended.
# Token-embedding rows of the small presets: the shipped vocabulary (~840 words) with
# room to append words without changing the weights' shapes.
WORDS_VOCAB_CAPACITY = 1024


class PromptTokenizer:
    """Prompt → token ids [B, 77] the way the official FrozenCLIPEmbedder tokenises:
    start token, the prompt's tokens, end token; truncated to 77 (the end token kept) and
    padded with the end token. Two kinds, each fully defined by its files (``files``:
    name → text, so a saved model can carry its tokenizer, see `native_iamg`):

    - ``"clip_bpe"``: ``vocab.json`` + ``merges.txt`` — CLIP ViT-L/14's BPE (49 408
      tokens, e.g. ComfyUI's ``comfy/sd1_tokenizer``), run by transformers'
      CLIPTokenizer; for the full-size presets.
    - ``"words"``: ``tokenizer.json``, a `tokenizers` WordLevel tokenizer (NFKC, lower
      case, split on whitespace and punctuation, unknown words → ``<|unk|>``,
      ``<|startoftext|>`` = 0, ``<|endoftext|>`` = 1). The package ships one
      (`words_tokenizer`) so the small presets work and train without any download.
    """

    CLIP_FILES = ("vocab.json", "merges.txt")
    WORDS_FILE = "tokenizer.json"

    def __init__(self, files: Mapping[str, str], *, source: str = "", max_length: int = TEXT_MAX_LENGTH,
                 _clip=None):
        self.files = {str(k): str(v) for k, v in files.items()}
        self.source = source or "embedded files"
        self.max_length = int(max_length)
        if all(n in self.files for n in self.CLIP_FILES):
            self.kind = "clip_bpe"
            if _clip is None:
                from .retrieval import load_clip_tokenizer

                with tempfile.TemporaryDirectory(prefix="iamg_tok_") as tmp:
                    for name in self.CLIP_FILES:
                        Path(tmp, name).write_text(self.files[name], encoding="utf-8")
                    _clip = load_clip_tokenizer(tmp)
            self._tok = _clip
            self.vocab_size = len(_clip)
        elif self.WORDS_FILE in self.files:
            from tokenizers import Tokenizer

            self.kind = "words"
            try:
                tok = Tokenizer.from_str(self.files[self.WORDS_FILE])
            except Exception as e:  # tokenizers raises its own exception type
                raise ValueError(f"tokenizer ({self.source}): {self.WORDS_FILE} is not a `tokenizers` "
                                 f"JSON file: {e}") from e
            start, end = tok.token_to_id("<|startoftext|>"), tok.token_to_id("<|endoftext|>")
            if start is None or end is None:
                raise ValueError(f"tokenizer ({self.source}): {self.WORDS_FILE} lacks the "
                                 "<|startoftext|>/<|endoftext|> tokens of a prompt tokenizer")
            # Set here, not trusted from the file: the behaviour must match CLIP's.
            tok.enable_truncation(self.max_length)
            tok.enable_padding(length=self.max_length, pad_id=end, pad_token="<|endoftext|>")
            self._tok = tok
            self.vocab_size = tok.get_vocab_size()
        else:
            raise ValueError(f"tokenizer ({self.source}): expected {' + '.join(self.CLIP_FILES)} "
                             f"(CLIP BPE) or {self.WORDS_FILE} (word level); found {sorted(self.files) or 'nothing'}")

    @classmethod
    def from_folder(cls, folder: str | os.PathLike, *, max_length: int = TEXT_MAX_LENGTH) -> "PromptTokenizer":
        """A tokenizer folder: ``vocab.json`` + ``merges.txt`` (CLIP) or ``tokenizer.json``
        (word level). Nothing is downloaded."""
        d = Path(folder)
        if not d.is_dir():
            raise FileNotFoundError(f"tokenizer folder {d} does not exist")
        if all((d / n).is_file() for n in cls.CLIP_FILES):
            from .retrieval import load_clip_tokenizer

            files = {n: (d / n).read_text(encoding="utf-8") for n in cls.CLIP_FILES}
            return cls(files, source=str(d), max_length=max_length, _clip=load_clip_tokenizer(d))
        if (d / cls.WORDS_FILE).is_file():
            return cls({cls.WORDS_FILE: (d / cls.WORDS_FILE).read_text(encoding="utf-8")}, source=str(d),
                       max_length=max_length)
        raise FileNotFoundError(f"tokenizer folder {d} holds neither {' + '.join(cls.CLIP_FILES)} (CLIP BPE) "
                                f"nor {cls.WORDS_FILE} (word level)")

    def __call__(self, prompts: Sequence[str]) -> torch.Tensor:
        if isinstance(prompts, str):
            prompts = [prompts]
        prompts = [str(p) for p in prompts]
        if self.kind == "clip_bpe":
            return self._tok(prompts, truncation=True, max_length=self.max_length, padding="max_length",
                             return_tensors="pt")["input_ids"]
        return torch.tensor([e.ids for e in self._tok.encode_batch(prompts)], dtype=torch.long)

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        return f"PromptTokenizer({self.kind}, {self.vocab_size} tokens, from {self.source})"


def words_tokenizer() -> PromptTokenizer:
    """The word-level prompt tokenizer shipped with the package (small presets)."""
    return PromptTokenizer({PromptTokenizer.WORDS_FILE: WORDS_TOKENIZER_FILE.read_text(encoding="utf-8")},
                           source=f"the package's {WORDS_TOKENIZER_FILE.name}")


def _comfy_root_if_running() -> Path | None:
    # ComfyUI is detected from modules it has already loaded, never imported from here.
    comfy = sys.modules.get("comfy")
    paths = list(getattr(comfy, "__path__", None) or []) if comfy is not None else []
    if paths:
        return Path(paths[0]).resolve().parent
    base = getattr(sys.modules.get("folder_paths"), "base_path", None)
    return Path(base) if base else None


def resolve_prompt_tokenizer(tokenizer_dir: str | os.PathLike | None = None, *,
                             embedded: Mapping[str, str] | None = None, vocab_size: int | None = None,
                             what: str = "IAMG text encoder") -> PromptTokenizer:
    """Find the tokenizer for a text encoder with ``vocab_size`` token rows, in order:

    1. ``tokenizer_dir``, an explicit folder (`PromptTokenizer.from_folder`);
    2. ``embedded``, the files stored with our safetensors (metadata ``tokenizer``);
    3. for a CLIP-vocabulary encoder, ComfyUI's ``comfy/sd1_tokenizer`` when running
       inside ComfyUI (the same CLIP ViT-L/14 BPE files);
    4. otherwise a `FileNotFoundError` saying what to pass.

    The tokenizer must not produce ids beyond the embedding (checked).
    """
    tok = None
    if tokenizer_dir is not None:
        tok = PromptTokenizer.from_folder(tokenizer_dir)
    elif embedded:
        tok = PromptTokenizer(embedded, source="the weight file's metadata")
    elif vocab_size == CLIP_VOCAB_SIZE and (root := _comfy_root_if_running()) is not None:
        from .retrieval import comfy_sd1_tokenizer_dir

        tok = PromptTokenizer.from_folder(comfy_sd1_tokenizer_dir(root))
    if tok is None:
        kind = ("a CLIP BPE folder (vocab.json + merges.txt, e.g. ComfyUI's comfy/sd1_tokenizer)"
                if vocab_size in (None, CLIP_VOCAB_SIZE) else
                "the tokenizer folder it was trained with (tokenizer.json or vocab.json + merges.txt)")
        raise FileNotFoundError(f"{what}: no prompt tokenizer found — the weights carry none and this is "
                                f"not running inside ComfyUI. Pass tokenizer_dir= {kind}.")
    if vocab_size is not None and len(tok) > vocab_size:
        raise ValueError(f"{what}: tokenizer from {tok.source} has {len(tok)} tokens but the text encoder "
                         f"embeds only {vocab_size}: they do not belong together")
    return tok


# --------------------------------------------------------------------------------------
# ★ Whole-model presets and random initialisation
# --------------------------------------------------------------------------------------

def kl_vae_config(block_out_channels: Sequence[int], layers_per_block: int, *, latent_channels: int = 4,
                  mid_attention: bool = True, norm_num_groups: int = 32) -> dict:
    """diffusers `AutoencoderKL` kwargs of an LDM kl VAE without per-level attention (the
    SD kl-f8 layout; 2^(levels-1) down-sampling), in the form `ldm_vae` detects."""
    levels = len(block_out_channels)
    return {
        "in_channels": 3, "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D"] * levels,
        "up_block_types": ["UpDecoderBlock2D"] * levels,
        "block_out_channels": [int(c) for c in block_out_channels],
        "layers_per_block": int(layers_per_block), "act_fn": "silu",
        "latent_channels": int(latent_channels), "norm_num_groups": int(norm_num_groups),
        "scaling_factor": VAE_SCALE_FACTOR, "mid_block_add_attention": bool(mid_attention),
    }


def clip_text_config(*, vocab_size: int, hidden_size: int, intermediate_size: int, num_hidden_layers: int,
                     num_attention_heads: int, bos_token_id: int, eos_token_id: int) -> dict:
    """transformers `CLIPTextConfig` kwargs (OpenAI CLIP: quick-GELU, 77 positions, the
    end token doubles as padding)."""
    return {"vocab_size": vocab_size, "hidden_size": hidden_size, "intermediate_size": intermediate_size,
            "num_hidden_layers": num_hidden_layers, "num_attention_heads": num_attention_heads,
            "max_position_embeddings": TEXT_MAX_LENGTH, "hidden_act": "quick_gelu",
            "bos_token_id": bos_token_id, "eos_token_id": eos_token_id, "pad_token_id": eos_token_id}


@dataclass(frozen=True)
class IAMGModelPreset:
    """A whole IAMG architecture: UNet config, VAE (`kl_vae_config`), text encoder
    (`clip_text_config`, None = none) and the tokenizer kind it is used with
    ("clip_bpe": resolved by `resolve_prompt_tokenizer`; "words": `words_tokenizer`)."""

    unet: IAMGUNetConfig
    vae: dict
    text_encoder: dict | None = None
    tokenizer: str | None = None
    note: str = field(default="", compare=False)


SD_VAE = kl_vae_config((128, 256, 512, 512), 2)
# The small presets' VAE (trained from scratch; shared by the small IAMG and MGIG). Eight
# latent channels instead of SD's four: at the same 8x down-sampling a VAE this small
# reconstructs colours and thin parts far better (and learns far faster) with the wider
# bottleneck, while the diffusion networks' cost barely changes. GroupNorm with ONE group
# (normalise over all channels): with SD's 32 groups a 32-wide level is instance
# normalisation and even 8 groups of 4 channels removed each group's per-image mean,
# i.e. the colour — measured: after 500 steps such VAEs decoded every colour as grey.
# One group keeps the differences between channels, so chroma survives.
SMALL_LATENT_CHANNELS = 8
SMALL_VAE = kl_vae_config((32, 64, 64, 64), 1, latent_channels=SMALL_LATENT_CHANNELS, norm_num_groups=1)
CLIP_L_TEXT = clip_text_config(vocab_size=CLIP_VOCAB_SIZE, hidden_size=768, intermediate_size=3072,
                               num_hidden_layers=12, num_attention_heads=12, bos_token_id=49406,
                               eos_token_id=49407)

MODEL_PRESETS: dict[str, IAMGModelPreset] = {
    "official": IAMGModelPreset(PRESETS["official"], SD_VAE, CLIP_L_TEXT, "clip_bpe",
                                note="the released iamg.pth (the text encoder is unused)"),
    "official_text": IAMGModelPreset(
        preset("official", cross_attention_dim=768), SD_VAE, CLIP_L_TEXT, "clip_bpe",
        note="★ paper variant at full size: cross-attention to CLIP ViT-L/14 text tokens "
             "(initialise from iamg.pth with `with_cross_attention`)"),
    "small_text": IAMGModelPreset(
        IAMGUNetConfig(in_channels=2 * SMALL_LATENT_CHANNELS, out_channels=SMALL_LATENT_CHANNELS,
                       model_channels=64, channel_mult=(1, 1, 2), num_res_blocks=1,
                       attention_resolutions=(2, 4), num_heads=4, cross_attention_dim=128),
        # The small MGIG's VAE architecture: one small VAE is trained for both models.
        SMALL_VAE,
        clip_text_config(vocab_size=WORDS_VOCAB_CAPACITY, hidden_size=128, intermediate_size=512,
                         num_hidden_layers=2, num_attention_heads=4, bos_token_id=0, eos_token_id=1),
        "words", note="★ small trainable variant with the shipped word-level tokenizer (default model)"),
    "tiny_text": IAMGModelPreset(
        preset("tiny", cross_attention_dim=32), kl_vae_config((32, 32, 32, 32), 1, mid_attention=False),
        clip_text_config(vocab_size=WORDS_VOCAB_CAPACITY, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=2, bos_token_id=0, eos_token_id=1),
        "words", note="★ smallest text variant, for tests and smoke runs"),
}


def model_preset(name: str) -> IAMGModelPreset:
    """A named whole-model preset (`MODEL_PRESETS`)."""
    if name not in MODEL_PRESETS:
        raise ValueError(f"unknown IAMG model preset {name!r}; choose from {', '.join(MODEL_PRESETS)}")
    return MODEL_PRESETS[name]


def preset_name_of(unet: IAMGUNetConfig, vae: Mapping | None = None, text_encoder: Mapping | None = None) -> str:
    """The `MODEL_PRESETS` name of an architecture, else the UNet's `PRESETS` name, else
    "custom" (written to saved files; informative only)."""
    for name, p in MODEL_PRESETS.items():
        # Text encoders compare by shape only (special-token ids differ between sources).
        text_shape = {k: v for k, v in (p.text_encoder or {}).items() if k in _TEXT_SHAPE_KEYS}
        if p.unet == unet and (vae is None or _same_config(p.vae, vae)) and \
                (text_encoder is None or _same_config(text_shape, text_encoder)):
            return name
    for name, cfg in PRESETS.items():
        if cfg == unet:
            return name
    return "custom"


_TEXT_SHAPE_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                    "max_position_embeddings")


def _same_config(ref: Mapping, other: Mapping) -> bool:
    # Every key of the reference config must agree (lists and tuples alike).
    norm = lambda v: list(v) if isinstance(v, (list, tuple)) else v  # noqa: E731
    return all(k in other and norm(other[k]) == norm(v) for k, v in ref.items())


def build_iamg(name: str | IAMGModelPreset, *, seed: int | None = 0, device: torch.device | str = "cpu",
               dtype: torch.dtype = torch.float32, tokenizer: PromptTokenizer | None = None,
               zero_init_cross_attention: bool = True) -> IAMGModel:
    """A randomly initialised IAMG model of a preset (training from scratch, tests, the
    embedded stand-in). ``seed`` makes the weights reproducible without touching the
    global RNG (None: the current global RNG state).

    ``zero_init_cross_attention`` keeps the cross-attention output projections at zero
    (the network then ignores the prompt until trained, as an initialisation from
    official weights must); False gives them ordinary random weights, so an untrained
    model already responds to the prompt. The tokenizer: ``tokenizer`` if given, the
    shipped one for "words" presets, else `resolve_prompt_tokenizer` on first use.
    """
    from transformers import CLIPTextConfig, CLIPTextModel

    from ..weights_manager.ldm_vae import build_vae

    p = model_preset(name) if isinstance(name, str) else name
    preset_label = name if isinstance(name, str) else preset_name_of(p.unet, p.vae, p.text_encoder)
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(int(seed))
        unet = IAMGUNet(p.unet)
        if not zero_init_cross_attention:
            for m in unet.modules():
                if isinstance(m, IAMGAttention) and m.cross_attn is not None:
                    m.cross_attn.to_out[0].reset_parameters()
        vae = build_vae(p.vae)
        text_encoder = CLIPTextModel(CLIPTextConfig(**p.text_encoder)) if p.text_encoder else None
    if tokenizer is None and p.tokenizer == "words" and p.unet.cross_attention_dim is not None:
        tokenizer = words_tokenizer()
    model = IAMGModel(unet, vae.eval(), text_encoder.eval() if text_encoder is not None else None,
                      tokenizer=tokenizer, preset=preset_label)
    return model.to(device=device, dtype=dtype).eval()


def with_cross_attention(model: IAMGModel, cross_attention_dim: int | None = None) -> IAMGModel:
    """The ★ text variant initialised from a released (no cross-attention) model: the
    same weights plus zero-output cross-attention after every self-attention, so it
    computes exactly the released function until trained. ``cross_attention_dim``
    defaults to the model's text-encoder width (768 for iamg.pth's CLIP ViT-L/14)."""
    if model.uses_text:
        raise ValueError("this IAMG model already has cross-attention")
    if cross_attention_dim is None:
        if model.text_encoder is None:
            raise ValueError("pass cross_attention_dim: the model has no text encoder to read it from")
        cross_attention_dim = int(model.text_encoder.config.hidden_size)
    base = model.unet
    cfg = replace(base.config, cross_attention_dim=int(cross_attention_dim))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet = IAMGUNet(cfg)
    missing, unexpected = unet.load_state_dict(base.state_dict(), strict=False)
    if unexpected or any(".cross_attn." not in k for k in missing):
        raise RuntimeError(f"with_cross_attention: unexpected key mismatch {missing[:4]} {unexpected[:4]}")
    unet = unet.to(device=base.conv_in.weight.device, dtype=base.dtype)
    return IAMGModel(unet, model.vae, model.text_encoder, alphas_cumprod=model.alphas_cumprod,
                     scale_factor=model.scale_factor, latent_shift=model.latent_shift, tokenizer=model.tokenizer,
                     preset=preset_name_of(cfg), image_size=model.image_size,
                     prediction_type=model.prediction_type).eval()


# --------------------------------------------------------------------------------------
# generate_mask: the user-facing function
# --------------------------------------------------------------------------------------

# Mask canvas without a background (height, width).
DEFAULT_CANVAS_HW = (512, 512)


@dataclass
class MaskResult:
    """Output of `generate_mask` (CPU tensors).

    ``soft`` [B, H, W] float32 in [0, 1] and ``binary`` [B, H, W] float32 in {0, 1}
    (soft > threshold), at the background's (or canvas's) size with the square padding
    removed; ``square`` [B, S, S] the soft mask in the model's square image space;
    ``latent`` [B, 4, h, w] the sampled mask latent; ``seeds`` the per-sample seeds;
    ``box`` the validated (x, y, w, h) or None; ``used_text``: whether the prompt
    conditioned the network (False for the released model, which ignores it).
    """

    soft: torch.Tensor
    binary: torch.Tensor
    square: torch.Tensor
    latent: torch.Tensor
    seeds: list[int]
    prompt: str
    box: tuple[int, int, int, int] | None
    used_text: bool


def _canvas_size(size_hw) -> tuple[int, int]:
    if size_hw is None:
        return DEFAULT_CANVAS_HW
    try:
        h, w = (int(v) for v in size_hw)
    except (TypeError, ValueError):
        raise ValueError(f"size_hw: expected (height, width) in pixels, got {size_hw!r}") from None
    if h < 1 or w < 1 or (h, w) != tuple(size_hw):
        raise ValueError(f"size_hw: expected positive integer (height, width), got {tuple(size_hw)!r}")
    return h, w


def check_box_xywh(box: Sequence[float], height: int, width: int, what: str = "background") -> tuple[int, int, int, int]:
    """Validate a pixel box (x, y, w, h) (values rounded to whole pixels): positive size,
    inside the ``height``×``width`` image. Returns it as ints."""
    try:
        values = [float(v) for v in box]
    except (TypeError, ValueError):
        raise ValueError(f"box: expected (x, y, w, h) in {what} pixels, got {box!r}") from None
    if len(values) != 4 or not all(np.isfinite(values)):
        raise ValueError(f"box: expected 4 finite numbers (x, y, w, h) in {what} pixels, got {box!r}")
    x, y, w, h = (int(round(v)) for v in values)
    if w < 1 or h < 1:
        raise ValueError(f"box: width and height must be positive, got (x, y, w, h) = {(x, y, w, h)}")
    if x < 0 or y < 0 or x + w > width or y + h > height:
        raise ValueError(f"box: (x, y, w, h) = {(x, y, w, h)} is not inside the {what} "
                         f"(width {width}, height {height}): need 0 <= x, x + w <= {width}, 0 <= y, "
                         f"y + h <= {height}")
    return x, y, w, h


def generate_mask(model: IAMGModel, *, prompt: str = "", background: np.ndarray | None = None,
                  box: Sequence[float] | None = None, size_hw: Sequence[int] | None = None,
                  steps: int = DEFAULT_STEPS, sampler: str = "plms", guidance: float = DEFAULT_GUIDANCE,
                  seed: int = 0, batch: int = 1, threshold: float = DEFAULT_THRESHOLD,
                  clip_to_box: bool = True, callback: samplers.Callback | None = None) -> MaskResult:
    """Generate interaction masks (human ∪ object silhouettes) with IAMG.

    - ``clip_to_box``: zero the mask outside ``box`` (a trained model already puts the pair
      in the box; this guarantees it, so the pair never spills over the user's scene).

    - ``background``: optional HxWx3 uint8 RGB image; ``box`` (x, y, w, h) in its pixels
      is blanked out (where the interaction goes) to form the condition C_bg. Masks come
      back at the background's size.
    - Without a background, masks are ``size_hw`` (height, width) (default 512×512).
      A ``box`` then refers to that canvas, and the condition is a white canvas with the
      box blanked; with no box either it is the empty condition (`empty_condition`).
    - ``prompt`` conditions the ★ text variant, with classifier-free guidance
      ``guidance`` against the empty prompt "" (cond and uncond in one batch). The
      released network has no cross-attention: the prompt is not even encoded and no
      unconditional pass runs (an exact no-op in the official sampler).
    - ``batch`` masks use seeds ``seed, seed + 1, …`` (sample i equals a single run with
      seed + i). ``sampler``: "plms" (official), "ddim" or a diffusers name
      (`samplers.SAMPLER_NAMES`). ``callback(i, total, x, pred_x0)`` after every step.
    """
    samplers.check_settings(sampler, steps, guidance)
    if int(batch) < 1 or int(batch) != batch:
        raise ValueError(f"batch: expected a positive integer, got {batch!r}")
    if not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(f"threshold: expected a value in [0, 1], got {threshold!r}")
    batch = int(batch)
    if background is not None:
        img = np.asarray(background)
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise ValueError(f"background: expected an HxWx3 uint8 RGB image, got {img.dtype} {img.shape}")
        height, width = img.shape[:2]
        if size_hw is not None and _canvas_size(size_hw) != (height, width):
            raise ValueError(f"size_hw {tuple(size_hw)} differs from the background's size {(height, width)}; "
                             "masks are made at the background's size (leave size_hw unset)")
        what = "background"
    else:
        img = None
        height, width = _canvas_size(size_hw)
        what = "mask canvas (size_hw)"
    box_xywh = check_box_xywh(box, height, width, what) if box is not None else None

    with torch.inference_mode():
        if img is None and box_xywh is None:
            cond = model.empty_condition(1)
        else:
            if img is None:  # a box alone: a plain white canvas (the padding colour) with the box blanked
                img = np.full((height, width, 3), 255, np.uint8)
            blank = None
            if box_xywh is not None:
                x, y, w, h = box_xywh
                blank = (y, y + h, x, x + w)  # condition_image's (y1, y2, x1, x2)
            cond = model.encode_condition(condition_image(img, blank, model.image_size)).float()
        cond = cond.expand(batch, *cond.shape[1:])

        context = uncond = None
        if model.uses_text:
            context = model.encode_prompts([prompt]).expand(batch, -1, -1)
            if guidance != 1.0:
                uncond = model.encode_prompts([""]).expand(batch, -1, -1)

        seeds = [int(seed) + i for i in range(batch)]
        x_T = torch.cat([samplers.initial_noise((1, *cond.shape[1:]), s, device=model.device) for s in seeds])
        generator = samplers.step_generator(seed)
        latent = sample_mask_latent(model, cond, steps=steps, sampler=sampler, x_T=x_T, context=context,
                                    uncond_context=uncond, guidance=guidance, callback=callback,
                                    generator=generator)
        decoded = model.decode(latent)
        square = soft_mask_from_decoded(decoded)
        soft, binary = mask_from_decoded(decoded, height, width, threshold)
        if clip_to_box and box_xywh is not None:
            x, y, w, h = box_xywh
            inside = torch.zeros_like(soft)
            inside[..., y:y + h, x:x + w] = 1
            soft, binary = soft * inside, binary * inside
    return MaskResult(soft=soft.float().cpu(), binary=binary.float().cpu(), square=square.float().cpu(),
                      latent=latent.float().cpu(), seeds=seeds, prompt=str(prompt), box=box_xywh,
                      used_text=model.uses_text)


# --------------------------------------------------------------------------------------
# ★ Training objective of the text variant
# --------------------------------------------------------------------------------------

def _draw(fn, generator: torch.Generator | None, device: torch.device, *args, **kwargs) -> torch.Tensor:
    # Random numbers come from the generator's device (CPU by default), then move, so one
    # seed gives the same batch whatever device trains.
    gen_device = generator.device if generator is not None else torch.device("cpu")
    return fn(*args, generator=generator, device=gen_device, **kwargs).to(device)


def iamg_training_loss(model: IAMGModel, batch: Mapping, *, cond_dropout: float = 0.1,
                       text_dropout: float = 0.1, generator: torch.Generator | None = None) -> torch.Tensor:
    """One ε-prediction loss of (the ★ text variant of) IAMG: MSE(ε_θ(x_t, t | c, text), ε)
    with t uniform in [0, T), the official objective, plus the paper's condition dropout.

    ``batch`` keys:
    - ``target_latent`` [B, 4, h, w], or ``target`` images [B, 3, S, S] in [-1, 1]
      (`target_image`), encoded with a posterior *sample* like the official trainer;
    - ``cond_latent`` or ``condition`` images (`condition_image`, encoded with the
      posterior mean as at inference); absent = every sample has the empty condition;
    - ``input_ids`` [B, 77] or ``prompts`` (list of str), for models with text.

    Each sample's condition is replaced by the empty (all-zero) condition with probability
    ``cond_dropout`` and its prompt by "" with probability ``text_dropout`` — what lets
    the model run without a background and enables classifier-free guidance. Gradients
    reach whatever parameters require them (the VAE encodes under no_grad).
    """
    device = model.device
    with torch.no_grad():
        if "target_latent" in batch:
            x0 = torch.as_tensor(batch["target_latent"]).to(device=device, dtype=torch.float32)
        elif "target" in batch:
            x0 = model.to_latent(model.posterior(batch["target"]).sample(generator)).float()
        else:
            raise ValueError("batch: needs 'target_latent' [B, 4, h, w] or 'target' images [B, 3, S, S]")
        n = x0.shape[0]
        if "cond_latent" in batch:
            cond = torch.as_tensor(batch["cond_latent"]).to(device=device, dtype=torch.float32)
        elif "condition" in batch:
            cond = model.encode_condition(batch["condition"]).float()
        else:
            cond = model.empty_condition(n)
        if cond.shape != x0.shape:
            raise ValueError(f"batch: condition latent {tuple(cond.shape)} does not match the target latent "
                             f"{tuple(x0.shape)}")

    t = _draw(torch.randint, generator, device, 0, len(model.alphas_cumprod), (n,))
    noise = _draw(torch.randn, generator, device, x0.shape)
    drop_cond = _draw(torch.rand, generator, device, (n,)) < cond_dropout
    cond = torch.where(drop_cond[:, None, None, None], torch.zeros_like(cond), cond)

    context = None
    if model.uses_text:
        if "input_ids" in batch:
            ids = torch.as_tensor(batch["input_ids"]).long()
        elif "prompts" in batch:
            ids = model.tokenize(list(batch["prompts"]))
        else:
            raise ValueError("batch: the text-conditioned IAMG needs 'input_ids' or 'prompts'")
        if ids.shape[0] != n:
            raise ValueError(f"batch: {ids.shape[0]} prompts for {n} targets")
        drop_text = _draw(torch.rand, generator, device, (n,)) < text_dropout
        ids = torch.where(drop_text[:, None].to(ids.device), model.tokenize([""]).to(ids.device), ids)
        context = model.encode_text(ids)

    a = model.alphas_cumprod.to(device)[t].view(n, 1, 1, 1)
    x_t = a.sqrt() * x0 + (1.0 - a).sqrt() * noise
    output = model.unet_output(x_t, t, cond, context)
    return F.mse_loss(output.float(), samplers.training_target(model.prediction_type, x0, noise, a))
