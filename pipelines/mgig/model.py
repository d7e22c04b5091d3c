"""MGIG — Mask-Guided Image Generation (docs/METHOD.md §4): the AnyDoor ControlLDM assembled
from diffusers / transformers parts.

    identity   : reference canvas [B,3,224,224] in 0..1 -> ImageNet normalisation -> DINOv2
                 -> final LayerNorm over [CLS; patch tokens] -> Linear projector
                 -> context [B, 1+patches, context_dim]            (`encode_id`)
    ControlNet : hint [B,4,512,512] (detail-map collage + box/mask channel; ★ + 4 colour
                 planes with `MGIGConfig.colour_hint`) -> 13 residuals.
                 It never sees x_t: the embedded hint *replaces* its first conv's output.
    UNet       : eps = UNet(x_t, t, context) with the residuals added to skips / middle
    VAE        : SD kl-f8, latents scaled by 0.18215

This module holds the configuration and the model:
- `MGIGConfig`, the whole architecture as frozen plain data (kwargs for
  `UNet2DConditionModel`, `ControlNetModel`, `Dinov2Config`, `AutoencoderKL`, and the noise
  schedule); named ones in `MGIG_PRESETS` (`official`: the released checkpoint, `tiny`:
  test-sized, the shape of the reduced test vectors, `small`: the shipped default's
  architecture), looked up by `mgig_config`, recognised by `preset_name_of`, built with
  seeded random weights by `build_mgig`;
- `MGIGModel`: UNet + ControlNet + ID encoder + VAE (+ ★ refiner), with the few
  operations a pipeline needs (`encode_id`, `predict_eps`, `encode_latent`, `decode_latent`).

The official checkpoint is read by `weights_manager/official_mgig.py` (key maps there);
our safetensors format by `weights_manager/native_mgig.py` (`load_mgig` loads either).
"""
from __future__ import annotations

import copy
import json
import math
from dataclasses import asdict, dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import nn

from .. import samplers
from ..imgproc import IMAGENET_MEAN, IMAGENET_STD
from ..vae import build_vae, kl_vae_config
from .inputs import COLOUR_HINT_CHANNELS, HINT_CHANNELS
from .refiner import DEFAULT_WIDTH as DEFAULT_REFINER_WIDTH, SceneRefiner


# ControlLDM's noise schedule (anydoor.yaml): LDM "linear" = linspace(sqrt(start), sqrt(end))^2.
OFFICIAL_SCHEDULE = {"linear_start": samplers.LINEAR_START, "linear_end": samplers.LINEAR_END,
                     "num_train_timesteps": samplers.NUM_TRAIN_TIMESTEPS}

# The reference canvas is 224x224 (docs/METHOD.md §4.2); the unconditional context encodes an
# all-zero image of this size.
ID_IMAGE_SIZE = 224


# ---------------------------------------------------------------------------------------
# Configs (plain data)
# ---------------------------------------------------------------------------------------

def default_head_dim(width: int) -> int:
    """Attention head width, which cannot be read from weight shapes.

    SD-2.x UNets and every DINOv2 ViT use 64-channel heads; widths that are not multiples
    of 64 only occur in reduced test models, which use 16-channel heads.
    """
    return 64 if width % 64 == 0 else 16


def unet_kwargs(*, model_channels: int, channel_mult, num_res_blocks: int, attention_levels,
                context_dim: int, head_dim: int | None = None, transformer_depth: int = 1,
                linear_projection: bool = True, in_channels: int = 4, out_channels: int = 4,
                norm_num_groups: int = 32) -> dict:
    """`UNet2DConditionModel` kwargs for an LDM openaimodel UNet with SpatialTransformers.

    `attention_levels[i]` says whether level i (0 = full latent resolution) has
    cross-attention transformers; the middle block always has one. Time embedding
    [cos, sin] with no frequency shift, as LDM's `timestep_embedding`.
    """
    widths = [model_channels * m for m in channel_mult]
    head_dim = head_dim or default_head_dim(model_channels)
    if any(w % head_dim for w in widths):
        raise ValueError(f"UNet widths {widths} are not multiples of the head width {head_dim}")
    attention_levels = [bool(a) for a in attention_levels]
    if len(attention_levels) != len(widths):
        raise ValueError(f"attention_levels {attention_levels} must have one entry per level {widths}")
    return {
        "in_channels": in_channels,
        "out_channels": out_channels,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention_levels],
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "up_block_types": ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention_levels)],
        "block_out_channels": widths,
        "layers_per_block": num_res_blocks,
        "downsample_padding": 1,
        "act_fn": "silu",
        "norm_num_groups": norm_num_groups,
        "norm_eps": 1e-5,
        "cross_attention_dim": context_dim,
        "transformer_layers_per_block": transformer_depth,
        # diffusers' historical naming: for this UNet `attention_head_dim` is the number
        # of heads per level (LDM `num_head_channels` fixes the width instead).
        "attention_head_dim": [w // head_dim for w in widths],
        "use_linear_projection": linear_projection,
    }


def controlnet_kwargs(unet: dict, *, hint_channels: int = 4, hint_widths=(16, 32, 96, 256)) -> dict:
    """`ControlNetModel` kwargs: the UNet's encoder + middle, plus the hint embedding
    (convs hint->16->16->32(s2)->32->96(s2)->96->256(s2)->zero conv, SiLU between)."""
    keep = ("in_channels", "flip_sin_to_cos", "freq_shift", "down_block_types", "block_out_channels",
            "layers_per_block", "downsample_padding", "act_fn", "norm_num_groups", "norm_eps",
            "cross_attention_dim", "transformer_layers_per_block", "attention_head_dim",
            "use_linear_projection")
    cfg = {k: copy.deepcopy(unet[k]) for k in keep}
    cfg["conditioning_channels"] = hint_channels
    cfg["conditioning_embedding_out_channels"] = list(hint_widths)
    return cfg


def dinov2_kwargs(*, hidden_size: int, depth: int, num_heads: int | None = None, patch_size: int = 14,
                  image_size: int = 518, mlp_ratio: int = 4) -> dict:
    """`transformers.Dinov2Config` kwargs for DINOv2 with the fused SwiGLU FFN (ViT-g style):
    LayerScale, qkv bias, LayerNorm eps 1e-6, no register tokens. `image_size` fixes the
    stored position-embedding grid (518 -> 37x37 in the released model)."""
    return {
        "hidden_size": hidden_size,
        "num_hidden_layers": depth,
        "num_attention_heads": num_heads or hidden_size // default_head_dim(hidden_size),
        "mlp_ratio": mlp_ratio,
        "patch_size": patch_size,
        "image_size": image_size,
        "num_channels": 3,
        "qkv_bias": True,
        "layer_norm_eps": 1e-6,
        "layerscale_value": 1.0,
        "drop_path_rate": 0.0,
        "use_swiglu_ffn": True,
    }


@dataclass(frozen=True)
class MGIGConfig:
    """Everything needed to build an `MGIGModel`, as plain (JSON-able) data. Frozen: a
    changed config is a new one (`dataclasses.replace`)."""

    unet: dict
    controlnet: dict
    # {"dinov2": Dinov2Config kwargs, "context_dim": projector output width}
    id_encoder: dict
    vae: dict
    schedule: dict = field(default_factory=lambda: dict(OFFICIAL_SCHEDULE))
    # Side of the square the model generates (hint and target crop). The official model
    # works at `inputs.HINT_SIZE` (512); a smaller model trained at a smaller size gets
    # the official 512 hint resized to this and its output resized back
    # (`resize_hint`), exactly as its training data was made.
    image_size: int = 512
    # What the UNet predicts: "epsilon" (the official model) or ★ "v_prediction"
    # (`samplers.eps_from_v`). A small model trained from scratch learns the high-noise steps
    # far sooner with v: there ε̂ must be x_t almost exactly, and the x₀ it implies amplifies
    # every error by √((1−ᾱ)/ᾱ) (≈11× at t=950). Samplers always receive ε (`predict_eps`).
    prediction_type: str = "epsilon"
    # ★ The scene-aware refiner after the VAE decoder (`refiner.SceneRefiner` kwargs), or
    # None (the official model, and every file written before it existed).
    refiner: dict | None = None
    # ★ The hint also carries the references' low-passed colours (`inputs.colour_collage`):
    # the ControlNet reads `inputs.COLOUR_HINT_CHANNELS` more hint channels. False in the
    # official model and every file written before it existed.
    colour_hint: bool = False

    def __post_init__(self):
        samplers.check_prediction_type(self.prediction_type)
        if type(self.colour_hint) is not bool:
            raise ValueError(f"colour_hint: expected true or false, got {self.colour_hint!r}")
        if self.colour_hint and self.controlnet.get("conditioning_channels") != self.hint_channels:
            raise ValueError(f"colour_hint: a colour-hint ControlNet reads {self.hint_channels} hint channels, "
                             f"its config says {self.controlnet.get('conditioning_channels')!r}")

    @property
    def hint_channels(self) -> int:
        """Channels of the hint this model reads: the official 4, ★ plus the colour planes."""
        return HINT_CHANNELS + (COLOUR_HINT_CHANNELS if self.colour_hint else 0)

    def to_dict(self) -> dict:
        return copy.deepcopy(asdict(self))

    @classmethod
    def from_dict(cls, data: dict) -> "MGIGConfig":
        return cls(**copy.deepcopy(data))


def _preset(*, model_channels, channel_mult, attention_levels, context_dim, dino_dim, dino_depth,
            dino_image_size, vae_ch, vae_mult, vae_blocks=2, vae_groups=32, latent_channels=4, head_dim=None,
            dino_heads=None, norm_groups=32) -> MGIGConfig:
    unet = unet_kwargs(model_channels=model_channels, channel_mult=channel_mult, num_res_blocks=2,
                       attention_levels=attention_levels, context_dim=context_dim, head_dim=head_dim,
                       in_channels=latent_channels, out_channels=latent_channels, norm_num_groups=norm_groups)
    return MGIGConfig(
        unet=unet,
        controlnet=controlnet_kwargs(unet),
        id_encoder={"dinov2": dinov2_kwargs(hidden_size=dino_dim, depth=dino_depth, num_heads=dino_heads,
                                            image_size=dino_image_size),
                    "context_dim": context_dim},
        vae=kl_vae_config([vae_ch * m for m in vae_mult], vae_blocks, latent_channels=latent_channels,
                          norm_num_groups=vae_groups),
    )


MGIG_PRESETS: dict[str, MGIGConfig] = {
    # The released mgig.ckpt: SD-2.1-base UNet (320·[1,2,4,4], 64-channel heads, context
    # 1024) + ControlNet, DINOv2 ViT-g/14 (37² position grid) + projector, SD kl-f8 VAE.
    "official": _preset(model_channels=320, channel_mult=(1, 2, 4, 4), attention_levels=(1, 1, 1, 0),
                        context_dim=1024, dino_dim=1536, dino_depth=40, dino_image_size=518,
                        vae_ch=128, vae_mult=(1, 2, 4, 4)),
    # For tests: the shape of the reduced test vectors.
    "tiny": _preset(model_channels=32, channel_mult=(1, 1, 1, 2), attention_levels=(1, 1, 1, 0),
                    context_dim=64, dino_dim=48, dino_depth=2, dino_image_size=518,
                    vae_ch=32, vae_mult=(1, 1, 1, 2)),
    # The shipped default's architecture: a 16² position grid, so the 224 reference needs no
    # interpolation; the small VAE with an 8-channel latent (`vae.SMALL_VAE`, shared with
    # the small IAMG); GroupNorm with 8 groups in the UNet / ControlNet (4 channels per
    # group at the 32-wide level, not instance norm), one in the VAE (see `vae.SMALL_VAE`).
    "small": _preset(model_channels=32, channel_mult=(1, 1, 2, 2), attention_levels=(0, 1, 1, 0),
                     context_dim=96, dino_dim=96, dino_depth=4, dino_image_size=224,
                     vae_ch=32, vae_mult=(1, 2, 2, 2), vae_blocks=1, vae_groups=1, latent_channels=8,
                     norm_groups=8),
}


def mgig_config(name: str = "official") -> MGIGConfig:
    """The `MGIG_PRESETS` configuration ``name`` (a deep copy: its dicts are the caller's)."""
    if name not in MGIG_PRESETS:
        raise ValueError(f"unknown MGIG preset {name!r}; choose from {', '.join(MGIG_PRESETS)}")
    return copy.deepcopy(MGIG_PRESETS[name])


def preset_name_of(config: MGIGConfig) -> str:
    """The `MGIG_PRESETS` name whose architecture ``config``'s equals (whatever its working
    size, prediction type, latent scale, ★ refiner and ★ colour hint, which training sets),
    else "custom" (written to saved files; informative only)."""
    def arch(cfg: dict) -> dict:
        cfg.pop("refiner", None)
        if cfg.pop("colour_hint", False):
            cfg["controlnet"]["conditioning_channels"] = HINT_CHANNELS
        cfg.pop("image_size", None)
        cfg.pop("prediction_type", None)
        cfg["vae"].pop("scaling_factor", None)
        return cfg

    mine = arch(json.loads(json.dumps(config.to_dict())))
    for name, preset in MGIG_PRESETS.items():
        if arch(preset.to_dict()) == mine:
            return name
    return "custom"


def build_mgig(name: str | MGIGConfig, *, seed: int | None = 0, device: torch.device | str = "cpu",
               dtype: torch.dtype | None = None) -> "MGIGModel":
    """A randomly initialised MGIG model of a preset (`MGIG_PRESETS` name) or a config
    (training from scratch, tests, the embedded stand-in). ``seed`` makes the weights
    reproducible without touching the global RNG (None: the current global RNG state);
    ``dtype`` None keeps float32."""
    config = mgig_config(name) if isinstance(name, str) else name
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(int(seed))
        model = MGIGModel(config)
    return model.to(device=device, dtype=dtype).eval()


def resize_square(x: torch.Tensor, size: int, mode: str) -> torch.Tensor:
    """Resize the last two (square) dims of [C,H,W] or [B,C,H,W] to ``size``: "area"
    (bilinear when enlarging), "bilinear" or "nearest"."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    if mode == "area" and x.shape[-1] < size:
        mode = "bilinear"
    kwargs = {"align_corners": False} if mode == "bilinear" else {}
    batched = x if x.ndim == 4 else x[None]
    out = F.interpolate(batched, size=(size, size), mode=mode, **kwargs)
    return out if x.ndim == 4 else out[0]


def resize_hint(hint: torch.Tensor, size: int) -> torch.Tensor:
    """An official 512² hint ([C,S,S] or [B,C,S,S]) at a model's `MGIGConfig.image_size`:
    the RGB collage by area, the layout channel nearest (it stays binary), ★ colour planes
    (channels after the fourth) by area."""
    parts = [resize_square(hint[..., :3, :, :], size, "area"),
             resize_square(hint[..., 3:HINT_CHANNELS, :, :], size, "nearest")]
    if hint.shape[-3] > HINT_CHANNELS:
        parts.append(resize_square(hint[..., HINT_CHANNELS:, :, :], size, "area"))
    return torch.cat(parts, dim=-3)


def schedule_alphas_cumprod(schedule: dict) -> torch.Tensor:
    """ᾱ_t (float32) of an `MGIGConfig.schedule`, float64 maths then cast like the official buffers."""
    return samplers.ldm_alphas_cumprod(schedule["num_train_timesteps"], schedule["linear_start"],
                                       schedule["linear_end"])


# ---------------------------------------------------------------------------------------
# Modules
# ---------------------------------------------------------------------------------------

# The official code hands the ControlNet its hint as a permuted HWC view, i.e. in
# channels-last memory format, so the whole ControlNet runs channels-last, one sample per
# call. PyTorch's channels-last GroupNorm (CPU) rounds differently from the contiguous
# kernel on the nearly constant hint embedding, and its result even depends on the batch
# size, visibly in the residuals of the reduced test model (the contiguous result being
# the closer one to float64). Running the ControlNet channels-last, sample by sample,
# reproduces the official outputs and makes them independent of batching (docs/METHOD.md §10).
CONTROLNET_MEMORY_FORMAT = torch.channels_last


class LatentIgnored(nn.Module):
    """Stands in for the ControlNet's input conv: AnyDoor's ControlNet replaces that conv's
    output by the embedded hint, so x_t never enters it. Returning zeros makes diffusers'
    `conv_in(x_t) + hint_embedding` exactly the hint embedding, whatever x_t holds."""

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels

    def forward(self, x_t: torch.Tensor) -> torch.Tensor:
        zeros = x_t.new_zeros(x_t.shape[0], self.channels, *x_t.shape[2:])
        return zeros.contiguous(memory_format=CONTROLNET_MEMORY_FORMAT)


def build_controlnet(kwargs: dict):
    """A diffusers `ControlNetModel` that does not see x_t (see `LatentIgnored`)."""
    from diffusers import ControlNetModel

    controlnet = ControlNetModel(**_tuples(kwargs))
    controlnet.conv_in = LatentIgnored(kwargs["block_out_channels"][0])
    return controlnet


def official_embeddings_class():
    from transformers.models.dinov2.modeling_dinov2 import Dinov2Embeddings

    class OfficialPosEmbeddings(Dinov2Embeddings):
        """Dinov2 embeddings with the position-embedding resize of the DINOv2 code that
        AnyDoor ships: bicubic with `scale_factor = (grid + 0.1) / stored_grid` (37² -> 16²
        uses 16.1/37), not `size=16`. The two differ numerically, because the scale factor
        also sets where output pixels sample the input; transformers uses `size=`."""

        def interpolate_pos_encoding(self, embeddings: torch.Tensor, height: int, width: int) -> torch.Tensor:
            stored = self.position_embeddings
            num_stored = stored.shape[1] - 1
            if embeddings.shape[1] - 1 == num_stored and height == width:
                return stored
            side = int(math.sqrt(num_stored))
            dim = stored.shape[-1]
            grid = stored[:, 1:].float().reshape(1, side, side, dim).permute(0, 3, 1, 2)
            patch = self.patch_size
            grid = F.interpolate(grid, mode="bicubic",
                                 scale_factor=((height // patch + 0.1) / side, (width // patch + 0.1) / side))
            grid = grid.permute(0, 2, 3, 1).reshape(1, -1, dim)
            return torch.cat([stored[:, :1].float(), grid], dim=1).to(embeddings.dtype)

    return OfficialPosEmbeddings


class IDEncoder(nn.Module):
    """FrozenDinoV2Encoder: ImageNet-normalise, DINOv2, final-norm [CLS; patch tokens],
    Linear projector to the UNet context width."""

    def __init__(self, dinov2: dict, context_dim: int):
        super().__init__()
        from transformers import Dinov2Config, Dinov2Model

        config = Dinov2Config(**dinov2)
        self.dinov2 = Dinov2Model(config)
        self.dinov2.embeddings = official_embeddings_class()(config)
        self.projector = nn.Linear(config.hidden_size, context_dim)

    @staticmethod
    def normalize(images: torch.Tensor) -> torch.Tensor:
        """Images in 0..1 -> ImageNet-normalised ViT input."""
        mean = torch.tensor(IMAGENET_MEAN, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
        return (images - mean) / std

    def tokens(self, images: torch.Tensor) -> torch.Tensor:
        """DINOv2 tokens [B, 1+patches, dim] after the final LayerNorm (images 0..1)."""
        return self.dinov2(pixel_values=self.normalize(images)).last_hidden_state

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.projector(self.tokens(images))


def _tuples(kwargs: dict) -> dict:
    """diffusers configs want tuples where our plain-data configs hold lists."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}


class MGIGModel(nn.Module):
    """The MGIG ControlLDM: `unet`, `controlnet`, `id_encoder`, `vae`, and an optional ★
    `refiner` (`refiner.SceneRefiner`, None in official files)."""

    def __init__(self, config: MGIGConfig):
        super().__init__()
        from diffusers import UNet2DConditionModel

        self.config = config
        self.unet = UNet2DConditionModel(**_tuples(config.unet))
        self.controlnet = build_controlnet(config.controlnet)
        self.id_encoder = IDEncoder(**config.id_encoder)
        self.vae = build_vae(config.vae)
        self.refiner = SceneRefiner(**config.refiner) if config.refiner else None

    @property
    def config(self) -> MGIGConfig:
        """The architecture and training facts (frozen: set a changed copy, `dataclasses.replace`)."""
        return self._config

    @config.setter
    def config(self, config: MGIGConfig) -> None:
        self._config = config
        # ᾱ is computed once per config, not per denoiser call. Not a buffer (as IAMG's): a
        # fixed fact of the schedule, not a weight, and `model.to(torch.bfloat16)` would round
        # ᾱ_t ≈ 1 to exactly 1. On the CPU even while the model is built on the meta device.
        with torch.device("cpu"):
            self._alphas_cumprod = schedule_alphas_cumprod(config.schedule)

    # -- schedule ------------------------------------------------------------------------
    @property
    def alphas_cumprod(self) -> torch.Tensor:
        """ᾱ_t of the config's schedule [num_train_timesteps], float32 on the CPU whatever
        the model's dtype/device (float64 maths, then cast, like the official buffers)."""
        return self._alphas_cumprod

    @property
    def prediction_type(self) -> str:
        """What the UNet predicts (`MGIGConfig.prediction_type`), read as IAMG's attribute is."""
        return self.config.prediction_type

    @property
    def device(self) -> torch.device:
        """The denoiser's (UNet's) device."""
        return self.unet.device

    @property
    def dtype(self) -> torch.dtype:
        """The denoiser's (UNet's) dtype; other parts may differ (`_dtype(module)`)."""
        return self.unet.dtype

    @property
    def latent_channels(self) -> int:
        """Channels of the diffusion latent (the VAE's; SD's 4 for the official model)."""
        return int(self.vae.config.latent_channels)

    @property
    def latent_scale(self) -> float:
        return float(self.vae.config.scaling_factor)

    # -- identity ------------------------------------------------------------------------
    def encode_id(self, images: torch.Tensor) -> torch.Tensor:
        """Reference canvas [B,3,224,224] in 0..1 -> context [B, 1+patches, context_dim]."""
        return self.id_encoder(images.to(self._dtype(self.id_encoder)))

    def uncond_context(self, batch_size: int = 1) -> torch.Tensor:
        """Unconditional context: the encoder applied to an all-zero image (as official)."""
        device, dtype = self._device(self.id_encoder), self._dtype(self.id_encoder)
        zeros = torch.zeros(1, 3, ID_IMAGE_SIZE, ID_IMAGE_SIZE, device=device, dtype=dtype)
        return self.id_encoder(zeros).expand(batch_size, -1, -1)

    # -- denoiser ------------------------------------------------------------------------
    def predict_eps(self, x_t: torch.Tensor, t, context: torch.Tensor, hint: torch.Tensor | None,
                    control_scale: float = 1.0) -> torch.Tensor:
        """ε̂(x_t, t | context, hint). Batched: cond and uncond rows may be stacked in one
        call; `t`, `hint` with batch 1 (or a scalar t) are broadcast. `hint=None` runs the
        UNet without ControlNet residuals."""
        batch = x_t.shape[0]
        t = torch.as_tensor(t, device=x_t.device)
        t = t.expand(batch) if t.ndim == 0 or (t.shape[0] == 1 and batch > 1) else t
        context = context.to(x_t.dtype)
        if context.shape[0] == 1 and batch > 1:
            context = context.expand(batch, -1, -1)
        residuals = None
        if hint is not None:
            if hint.shape[0] == 1 and batch > 1:
                hint = hint.expand(batch, -1, -1, -1)
            residuals = self.control_residuals(x_t, t, context, hint, control_scale)
        return samplers.eps_from_prediction(self.config.prediction_type, self.unet_output(x_t, t, context, residuals),
                                            x_t, t, self.alphas_cumprod)

    def unet_output(self, x_t: torch.Tensor, t, context: torch.Tensor,
                    residuals: list[torch.Tensor] | None = None) -> torch.Tensor:
        """The UNet's prediction (ε or v, `MGIGConfig.prediction_type`) with
        `control_residuals` added to its skips and middle (none: no control)."""
        t = torch.as_tensor(t, device=x_t.device).expand(x_t.shape[0])
        down, mid = (residuals[:-1], residuals[-1]) if residuals is not None else (None, None)
        return self.unet(x_t, t, encoder_hidden_states=context.to(x_t.dtype),
                         down_block_additional_residuals=down, mid_block_additional_residual=mid,
                         return_dict=False)[0]

    def control_residuals(self, x_t: torch.Tensor, t, context: torch.Tensor, hint: torch.Tensor,
                          control_scale: float = 1.0) -> list[torch.Tensor]:
        """The 13 ControlNet outputs (12 skip residuals, then the middle one) × control_scale.
        Runs one sample at a time in channels-last layout (see CONTROLNET_MEMORY_FORMAT)."""
        batch = x_t.shape[0]
        t = torch.as_tensor(t, device=x_t.device).expand(batch)
        context, hint = context.to(x_t.dtype), hint.to(x_t.dtype)
        per_sample = []
        for i in range(batch):
            down, mid = self.controlnet(
                x_t[i:i + 1], t[i:i + 1], encoder_hidden_states=context[i:i + 1],
                controlnet_cond=hint[i:i + 1].clone(memory_format=CONTROLNET_MEMORY_FORMAT),
                conditioning_scale=control_scale, return_dict=False)
            per_sample.append([*down, mid])
        return [torch.cat(level) for level in zip(*per_sample)]

    # -- VAE -----------------------------------------------------------------------------
    def encode_latent(self, images_m11: torch.Tensor) -> torch.Tensor:
        """Images in [-1,1] -> posterior mean × scale (deterministic; the official code
        samples the posterior, a defect we do not reproduce, docs/METHOD.md §7)."""
        x = images_m11.to(self._dtype(self.vae))
        return self.vae.encode(x).latent_dist.mean * self.latent_scale

    def decode_latent(self, z: torch.Tensor, hint: torch.Tensor | None = None,
                      colours: torch.Tensor | None = None, scene: torch.Tensor | None = None) -> torch.Tensor:
        """Latent -> image ≈[-1,1] (unclamped). With a ★ refiner and the ``hint`` the
        latent was generated from (at the model's size, batch 1 or z's), the decoded crop
        is refined with it, the references' ``colours`` (`refiner.reference_colours`,
        [1 or B, 6]) and the ``scene`` plane (`inputs.MGIGHint.scene` at the hint's size,
        [1 or B, 1, S, S]); None = unknown. Without a refiner or a hint, the plain VAE decode."""
        decoded = self.vae.decode(z.to(self._dtype(self.vae)) / self.latent_scale).sample
        if self.refiner is None or hint is None:
            return decoded
        n = decoded.shape[0]
        # The refiner reads the official planes; ★ colour planes are the ControlNet's.
        hint = hint[:, :HINT_CHANNELS].to(device=decoded.device).expand(n, -1, -1, -1)
        if colours is not None:
            colours = colours.to(device=decoded.device).expand(n, -1)
        if scene is not None:
            scene = scene.to(device=decoded.device).expand(n, -1, -1, -1)
        return self.refiner(decoded.to(self._dtype(self.refiner)), hint, colours, scene)

    def add_refiner(self, width: int = DEFAULT_REFINER_WIDTH) -> None:
        """Give the model a fresh ★ refiner (the identity until trained)."""
        self.refiner = SceneRefiner(width).to(device=self._device(self.vae))
        self.config = replace(self.config, refiner=self.refiner.config())

    def add_colour_hint(self) -> None:
        """Let the ControlNet read the ★ colour hint (`MGIGConfig.colour_hint`): its first
        hint conv gets `inputs.COLOUR_HINT_CHANNELS` more input channels with zero weights,
        so until trained the model computes exactly what it did without them."""
        if self.config.colour_hint:
            return
        old = self.controlnet.controlnet_cond_embedding.conv_in
        new = nn.Conv2d(old.in_channels + COLOUR_HINT_CHANNELS, old.out_channels, old.kernel_size,
                        stride=old.stride, padding=old.padding, device=old.weight.device, dtype=old.weight.dtype)
        with torch.no_grad():
            new.weight.zero_()
            new.weight[:, :old.in_channels] = old.weight
            new.bias.copy_(old.bias)
        new.requires_grad_(old.weight.requires_grad)
        self.controlnet.controlnet_cond_embedding.conv_in = new
        self.controlnet.register_to_config(conditioning_channels=new.in_channels)
        controlnet = {**self.config.controlnet, "conditioning_channels": new.in_channels}
        self.config = replace(self.config, controlnet=controlnet, colour_hint=True)

    @staticmethod
    def _dtype(module: nn.Module) -> torch.dtype:
        return next(module.parameters()).dtype

    @staticmethod
    def _device(module: nn.Module) -> torch.device:
        return next(module.parameters()).device
