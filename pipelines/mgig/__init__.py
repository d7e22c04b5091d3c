"""MGIG — Mask-Guided Image Generation, cut like IAMG: `model` (the ControlLDM, its
config and presets), `inputs` (reference canvas, detail map, hint: the official
preprocessing; the crop-back is `pipelines.composite`), `refiner` (the ★ scene-aware
decoding after the VAE), `pipeline` (`id_features`, `generate`, `reconstruct`). The model's names are
re-exported here; use the submodules for the rest (`from ..mgig import inputs, pipeline`)."""
from .model import (CONTROLNET_MEMORY_FORMAT, ID_IMAGE_SIZE, MGIG_PRESETS, OFFICIAL_SCHEDULE, IDEncoder,
                    LatentIgnored, MGIGConfig, MGIGModel, official_embeddings_class, build_controlnet, build_mgig,
                    controlnet_kwargs, default_head_dim, dinov2_kwargs, mgig_config, preset_name_of, resize_hint,
                    resize_square, schedule_alphas_cumprod, unet_kwargs)

__all__ = [
    "CONTROLNET_MEMORY_FORMAT", "ID_IMAGE_SIZE", "MGIG_PRESETS", "OFFICIAL_SCHEDULE", "IDEncoder", "LatentIgnored",
    "MGIGConfig", "MGIGModel", "build_controlnet", "build_mgig", "official_embeddings_class", "controlnet_kwargs",
    "default_head_dim", "dinov2_kwargs", "mgig_config", "preset_name_of", "resize_hint", "resize_square",
    "schedule_alphas_cumprod", "unet_kwargs",
]
