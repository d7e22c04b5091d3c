"""IAMG — Interaction-Aware Mask Generation (docs/METHOD.md §2).

A latent-diffusion model whose "image" is the interaction mask (human ∪ object
silhouette, drawn white on black) and whose condition is the background with the target
box blanked out, VAE-encoded and concatenated to the noisy latent (8 input channels).

This module holds the network and the model:
- the denoising UNet (`IAMGUNet`, configured by plain data `IAMGUNetConfig`, presets in
  `PRESETS`), built from diffusers blocks: `ResnetBlock2D` (also for the resblock
  up/down-sampling), `Timesteps`/`TimestepEmbedding`, `Attention`;
- `IAMGModel`: UNet + VAE (diffusers `AutoencoderKL`) + optional CLIP text encoder, with
  the few operations a pipeline needs (`predict_eps`, `encode_condition`, `decode`);
- `IAMGConfig`, the whole architecture as plain data (UNet config, VAE and text-encoder
  configs, tokenizer kind); named ones in `MODEL_PRESETS`, built by `build_iamg`;
  `with_cross_attention` (★ text variant initialised from official weights).

Its inputs (`inputs.py`: condition / target images, decoded mask → mask) and generation
(`pipeline.py`: `sample_mask_latent`, `generate_mask`) live beside it; the prompt
tokenizers in `pipelines/text.py`; the training objective in `cli/research/training/losses.py`.

The released network has **no cross-attention** (it ignores the prompt). The paper's
text-conditioned variant (★) is the same UNet with ``cross_attention_dim`` set: a
cross-attention to the CLIP text tokens after every self-attention, its output
projection zero-initialised so that it starts as exactly the official model.

Without a background the condition is the **empty condition**: an all-zero condition
latent (`empty_condition`). The ★ variant learns it through condition dropout
(`training.losses.iamg_training_loss` zeroes the condition latent of a random 10 % of
the samples), so it generates from the prompt alone; the released network never saw it (pass a background).

The official checkpoint is read by `weights_manager/official_iamg.py` (key maps there);
our safetensors format by `weights_manager/native_iamg.py` (`load_iamg` loads either).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from .. import samplers
from ..text import (CLIP_VOCAB_SIZE, WORDS_VOCAB_CAPACITY, PromptTokenizer, clip_text_config,
                    resolve_prompt_tokenizer, words_tokenizer)
from ..vae import SD_VAE, SD_VAE_SCALE, SMALL_LATENT_CHANNELS, SMALL_VAE, build_vae, kl_vae_config
from .inputs import IMAGE_SIZE

# The SD kl-f8 latent scale used by the official IAMG autoencoder config.
VAE_SCALE_FACTOR = SD_VAE_SCALE


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
        # model). A small VAE trained from scratch has latents far from zero mean
        # (docs/METHOD.md §11.4), which ε-prediction samples badly: the
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
        use the mean (deterministic; docs/METHOD.md §7). [B,3,256,256] in [-1,1] → [B,4,32,32].
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


# --------------------------------------------------------------------------------------
# ★ Whole-model presets and random initialisation
# --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class IAMGConfig:
    """A whole IAMG architecture: UNet config, VAE (`kl_vae_config`), text encoder
    (`clip_text_config`, None = none) and the tokenizer kind it is used with
    ("clip_bpe": resolved by `resolve_prompt_tokenizer`; "words": `words_tokenizer`)."""

    unet: IAMGUNetConfig
    vae: dict
    text_encoder: dict | None = None
    tokenizer: str | None = None
    note: str = field(default="", compare=False)


CLIP_L_TEXT = clip_text_config(vocab_size=CLIP_VOCAB_SIZE, hidden_size=768, intermediate_size=3072,
                               num_hidden_layers=12, num_attention_heads=12, bos_token_id=49406,
                               eos_token_id=49407)

MODEL_PRESETS: dict[str, IAMGConfig] = {
    "official": IAMGConfig(PRESETS["official"], SD_VAE, CLIP_L_TEXT, "clip_bpe",
                                note="the released iamg.pth (the text encoder is unused)"),
    "official_text": IAMGConfig(
        preset("official", cross_attention_dim=768), SD_VAE, CLIP_L_TEXT, "clip_bpe",
        note="★ paper variant at full size: cross-attention to CLIP ViT-L/14 text tokens "
             "(initialise from iamg.pth with `with_cross_attention`)"),
    "small_text": IAMGConfig(
        IAMGUNetConfig(in_channels=2 * SMALL_LATENT_CHANNELS, out_channels=SMALL_LATENT_CHANNELS,
                       model_channels=64, channel_mult=(1, 1, 2), num_res_blocks=1,
                       attention_resolutions=(2, 4), num_heads=4, cross_attention_dim=128),
        # The small MGIG's VAE architecture: one small VAE is trained for both models.
        SMALL_VAE,
        clip_text_config(vocab_size=WORDS_VOCAB_CAPACITY, hidden_size=128, intermediate_size=512,
                         num_hidden_layers=2, num_attention_heads=4, bos_token_id=0, eos_token_id=1),
        "words", note="★ small trainable variant with the shipped word-level tokenizer (default model)"),
    "tiny_text": IAMGConfig(
        preset("tiny", cross_attention_dim=32), kl_vae_config((32, 32, 32, 32), 1, mid_attention=False),
        clip_text_config(vocab_size=WORDS_VOCAB_CAPACITY, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=2, bos_token_id=0, eos_token_id=1),
        "words", note="★ smallest text variant, for tests and smoke runs"),
}


def model_preset(name: str) -> IAMGConfig:
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


def build_iamg(name: str | IAMGConfig, *, seed: int | None = 0, device: torch.device | str = "cpu",
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


