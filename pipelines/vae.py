"""The KL autoencoder both stages use: its configurations and its one builder.

A config is plain data: `diffusers.AutoencoderKL` keyword arguments, the form
`weights_manager.ldm_vae` detects from a checkpoint's tensor shapes. `build_vae` is the
only place a VAE is constructed (IAMG, MGIG, training, loaders).
"""
from __future__ import annotations

from typing import Mapping, Sequence

# The SD kl-f8 latent scale (LDM `scale_factor`); both official models use it.
SD_VAE_SCALE = 0.18215


def kl_vae_config(block_out_channels: Sequence[int], layers_per_block: int, *, latent_channels: int = 4,
                  mid_attention: bool = True, norm_num_groups: int = 32,
                  scaling_factor: float = SD_VAE_SCALE) -> dict:
    """diffusers `AutoencoderKL` kwargs of an LDM kl VAE without per-level attention (the
    SD kl-f8 layout; 2^(levels-1) down-sampling)."""
    levels = len(block_out_channels)
    return {
        "in_channels": 3, "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D"] * levels,
        "up_block_types": ["UpDecoderBlock2D"] * levels,
        "block_out_channels": [int(c) for c in block_out_channels],
        "layers_per_block": int(layers_per_block), "act_fn": "silu",
        "latent_channels": int(latent_channels), "norm_num_groups": int(norm_num_groups),
        "scaling_factor": scaling_factor, "mid_block_add_attention": bool(mid_attention),
    }


# SD's kl-f8 VAE (both official checkpoints).
SD_VAE = kl_vae_config((128, 256, 512, 512), 2)
# The small presets' VAE (trained from scratch; shared by the small IAMG and MGIG). Eight
# latent channels instead of SD's four: at the same 8x down-sampling a VAE this small
# reconstructs colours and thin parts far better (and learns far faster) with the wider
# bottleneck, while the diffusion networks' cost barely changes. GroupNorm with ONE group
# (normalise over all channels): with SD's 32 groups a 32-wide level is instance
# normalisation and even 8 groups of 4 channels removed each group's per-image mean,
# i.e. the colour: such VAEs decoded every colour as grey (docs/METHOD.md §12).
# One group keeps the differences between channels, so chroma survives.
SMALL_LATENT_CHANNELS = 8
SMALL_VAE = kl_vae_config((32, 64, 64, 64), 1, latent_channels=SMALL_LATENT_CHANNELS, norm_num_groups=1)


def build_vae(config: Mapping) -> "AutoencoderKL":  # noqa: F821 - diffusers imported lazily
    """A randomly initialised diffusers `AutoencoderKL` from a config (`kl_vae_config`, a
    preset above, or one detected from a checkpoint)."""
    from diffusers import AutoencoderKL

    cfg = dict(config)
    for k in ("down_block_types", "up_block_types", "block_out_channels"):
        cfg[k] = tuple(cfg[k])
    return AutoencoderKL(**cfg)
