"""MGIG — Mask-Guided Image Generation, cut like IAMG: `model` (the ControlLDM, its
config and presets), `inputs` (reference canvas, detail map, hint, crop-back: the
official preprocessing), `refiner` (the ★ scene-aware decoding after the VAE),
`pipeline` (`id_features`, `generate`, `reconstruct`). The model's names are
re-exported here; use the submodules for the rest (`from ..mgig import inputs, pipeline`)."""
from .model import (CONTROLNET_MEMORY_FORMAT, ID_IMAGE_SIZE, MGIG_PRESETS, OFFICIAL_SCHEDULE, IDEncoder,
                    LatentIgnored, MGIGConfig, MGIGModel, official_embeddings_class, build_controlnet,
                    controlnet_kwargs, default_head_dim, dinov2_kwargs, mgig_config, resize_hint, resize_square,
                    schedule_alphas_cumprod, unet_kwargs)

__all__ = [
    "CONTROLNET_MEMORY_FORMAT", "ID_IMAGE_SIZE", "MGIG_PRESETS", "OFFICIAL_SCHEDULE", "IDEncoder", "LatentIgnored",
    "MGIGConfig", "MGIGModel", "build_controlnet", "official_embeddings_class", "controlnet_kwargs", "default_head_dim", "dinov2_kwargs",
    "mgig_config", "resize_hint", "resize_square", "schedule_alphas_cumprod", "unet_kwargs",
]
