"""IAMG — Interaction-Aware Mask Generation, cut like MGIG: `model` (network, configs,
presets), `inputs` (condition image in, mask out), `pipeline` (sampling, `generate_mask`).
The names below are its public API."""
from .inputs import (DEFAULT_THRESHOLD, IMAGE_SIZE, condition_image,
                     crop_square_padding, mask_from_decoded, soft_mask_from_decoded,
                     target_image, union_box)
from .model import (CLIP_L_TEXT, MODEL_PRESETS, PRESETS, VAE_SCALE_FACTOR, IAMGAttention, IAMGConfig, IAMGModel,
                    IAMGUNet, IAMGUNetConfig, build_iamg, model_preset, preset, preset_name_of,
                    with_cross_attention)
from .pipeline import (DEFAULT_CANVAS_HW, DEFAULT_GUIDANCE, DEFAULT_SAMPLER, DEFAULT_STEPS, BackgroundMasks,
                       MaskResult, generate_mask, generate_masks, masks_memory, sample_mask_latent)

__all__ = [
    "DEFAULT_THRESHOLD", "IMAGE_SIZE", "condition_image",
    "crop_square_padding", "mask_from_decoded", "soft_mask_from_decoded", "target_image",
    "union_box", "CLIP_L_TEXT", "MODEL_PRESETS", "PRESETS", "VAE_SCALE_FACTOR", "IAMGAttention", "IAMGConfig",
    "IAMGModel", "IAMGUNet", "IAMGUNetConfig", "build_iamg", "model_preset", "preset", "preset_name_of",
    "with_cross_attention", "DEFAULT_CANVAS_HW", "DEFAULT_GUIDANCE", "DEFAULT_SAMPLER", "DEFAULT_STEPS", "MaskResult",
    "BackgroundMasks", "generate_mask", "generate_masks", "masks_memory", "sample_mask_latent",
]
