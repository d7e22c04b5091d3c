"""ComfyUI IMAGE / MASK tensors <-> the numpy arrays `pipelines/` works on.

IMAGE = float32 [B,H,W,C] in 0..1; MASK = float32 [B,H,W] (or [H,W]) in 0..1. No ComfyUI
imports here, so these conversions are tested standalone.
"""
from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F

log = logging.getLogger("interact_custom")

# LoadImage's mask for an image without alpha (COMFYUI.md): recognise it to explain it.
LOADIMAGE_EMPTY_MASK_SIZE = (64, 64)
# IMAGE/MASK values are 0..1. Slight overshoot (resamplers, upscalers) is clamped; a
# maximum above this means 0..255 data was passed as a tensor, which clamping would turn
# white (the identity lost).
MAX_UNIT_VALUE = 2.0
# A human/object mask covering this fraction of its image is most likely inverted.
WHOLE_IMAGE_FRACTION = 0.98


def _check_values(t: torch.Tensor, name: str, kind: str) -> None:
    finite = torch.isfinite(t)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        raise ValueError(f"{name}: {bad} of {t.numel()} {kind} values are NaN or infinite; check the node that "
                         "produced it (e.g. a math or blend node dividing by zero)")
    top = float(t.max()) if t.numel() else 0.0
    if top > MAX_UNIT_VALUE:
        raise ValueError(f"{name}: values go up to {top:g}, but a ComfyUI {kind} holds 0..1; it looks like "
                         "0..255 data — divide it by 255 (or load the file with Load Image / Load Image Mask)")


def image_batch(image: torch.Tensor, name: str) -> list[np.ndarray]:
    """IMAGE → list of uint8 HxWx3 arrays (alpha dropped)."""
    if not isinstance(image, torch.Tensor) or image.ndim not in (3, 4):
        raise ValueError(f"{name}: expected an IMAGE tensor [batch, height, width, channels], "
                         f"got {getattr(image, 'shape', type(image).__name__)}")
    if image.ndim == 3:
        image = image[None]
    if image.shape[-1] not in (1, 3, 4):
        raise ValueError(f"{name}: expected 1, 3 or 4 channels in the last dimension, got {image.shape[-1]}")
    _check_values(image[..., :3].float(), name, "IMAGE")
    arr = (image[..., :3].float().clamp(0, 1).cpu().numpy() * 255.0).round().astype(np.uint8)
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    return list(arr)


def to_image(arrays: list[np.ndarray]) -> torch.Tensor:
    """uint8 HxWx3 arrays (same size) → IMAGE [B,H,W,3]."""
    return torch.from_numpy(np.stack([np.asarray(a, dtype=np.uint8) for a in arrays])).float() / 255.0


def to_mask(arrays: list[np.ndarray]) -> torch.Tensor:
    """HxW arrays in 0..1 (or bool) → MASK [B,H,W] float32."""
    return torch.from_numpy(np.stack([np.asarray(a, dtype=np.float32) for a in arrays]))


def mask_batch(mask: torch.Tensor, name: str, size_hw: tuple[int, int] | None = None,
               threshold: float | None = None) -> list[np.ndarray]:
    """MASK ([H,W] or [B,H,W]) → list of float32 HxW arrays in 0..1.

    Resized (bilinear) to ``size_hw`` when given and different — logged, since it usually
    means the mask came from another image. An all-zero mask is an error that explains
    how to make one (LoadImage's 64×64 zero mask for images without alpha included).
    """
    if not isinstance(mask, torch.Tensor) or mask.ndim not in (2, 3):
        raise ValueError(f"{name}: expected a MASK tensor [height, width] or [batch, height, width], "
                         f"got {getattr(mask, 'shape', type(mask).__name__)}")
    m = mask.float().cpu()
    if m.ndim == 2:
        m = m[None]
    _check_values(m, name, "MASK")
    out = []
    for i, item in enumerate(m):
        if float(item.max()) <= 0.0:
            raise ValueError(empty_mask_message(name, tuple(item.shape), i, len(m)))
        if size_hw is not None and tuple(item.shape) != tuple(size_hw):
            log.info("%s: resizing mask %dx%d to the image size %dx%d", name, item.shape[1], item.shape[0],
                     size_hw[1], size_hw[0])
            item = F.interpolate(item[None, None], size=tuple(size_hw), mode="bilinear", align_corners=False)[0, 0]
        arr = item.clamp(0, 1).numpy()
        if threshold is not None:
            arr = (arr >= threshold).astype(np.float32)
            if not arr.any():
                raise ValueError(f"{name}: no pixel reaches {threshold} after resizing; the mask is too faint "
                                 "or too small for this image")
        out.append(arr)
    return out


def empty_mask_message(name: str, shape_hw: tuple[int, int], index: int = 0, count: int = 1) -> str:
    which = f" (batch item {index + 1} of {count})" if count > 1 else ""
    msg = f"{name}{which} is empty (all zero), so there is nothing to use. "
    if shape_hw == LOADIMAGE_EMPTY_MASK_SIZE:
        msg += ("This is the 64x64 placeholder LoadImage outputs for an image WITHOUT an alpha channel. "
                "Right-click the Load Image node > 'Open in MaskEditor' and paint the region, load a "
                "transparent cut-out PNG (then add InvertMask: LoadImage's mask is 1 - alpha), or load a "
                "black/white mask with LoadImageMask.")
    else:
        msg += ("Paint it in the mask editor (right-click Load Image > 'Open in MaskEditor'), load one with "
                "LoadImageMask, or check the threshold/GrowMask settings that produced it.")
    return msg


def inverted_mask_warning(name: str, mask: np.ndarray) -> str | None:
    """A warning when a person/object mask covers (nearly) its whole image or touches all
    four borders — what an inverted mask looks like (a Load Image alpha mask without
    InvertMask, an inverted 64x64 placeholder); None otherwise."""
    m = np.asarray(mask) >= 0.5
    if not m.any():
        return None
    whole = m.mean() >= WHOLE_IMAGE_FRACTION
    borders = m[0].any() and m[-1].any() and m[:, 0].any() and m[:, -1].any()
    if not (whole or borders):
        return None
    what = f"covers {m.mean():.0%} of the image" if whole else "touches all four borders of the image"
    return (f"{name} {what}: it is probably inverted, so the cut-out is the background. A mask from Load Image "
            "is 1 - alpha: add InvertMask for a transparent cut-out (and check an inverted placeholder); "
            "1 must mark the person/object")


def pair_batches(name_a: str, a: list, name_b: str, b: list) -> tuple[list, list]:
    """Broadcast a batch of 1 against a batch of N; anything else must match exactly."""
    if len(a) == len(b):
        return a, b
    if len(a) == 1:
        return a * len(b), b
    if len(b) == 1:
        return a, b * len(a)
    raise ValueError(f"{name_a} has a batch of {len(a)} but {name_b} has {len(b)}; give both the same "
                     "batch size, or a batch of 1 for one of them")


def overlay(image: np.ndarray, mask: np.ndarray, color=(255, 64, 64), alpha: float = 0.5) -> np.ndarray:
    """Preview: ``mask`` (0..1) tinted over ``image`` (uint8 HxWx3)."""
    m = np.clip(mask, 0, 1)[..., None] * alpha
    return (image * (1 - m) + np.asarray(color, np.float32) * m).round().astype(np.uint8)


def latent_preview(latent: torch.Tensor, size: int = 256):
    """A free preview of a latent [B,4,h,w]: its first three channels, each stretched to
    0..255 (no VAE decode per step — too costly at full size on a CPU)."""
    from PIL import Image

    x = latent[0, :3].float().cpu()
    lo, hi = x.amin(dim=(1, 2), keepdim=True), x.amax(dim=(1, 2), keepdim=True)
    x = ((x - lo) / (hi - lo).clamp_min(1e-6) * 255).byte().permute(1, 2, 0).numpy()
    return Image.fromarray(x).resize((size, size), Image.NEAREST)
