"""ComfyUI IMAGE / MASK tensors <-> the numpy arrays `pipelines/` works on.

IMAGE = float32 [B,H,W,C] in 0..1; MASK = float32 [B,H,W] (or [H,W]) in 0..1. No ComfyUI
imports here, so these conversions are tested standalone.
"""
from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..pipelines import memory
from ..pipelines.readers import MASK_THRESHOLD, as_mask

log = logging.getLogger("interact_custom")

# LoadImage gives an image without alpha an all-zero 64x64 mask: recognise it to explain it.
LOADIMAGE_EMPTY_MASK_SIZE = (64, 64)
# IMAGE/MASK values are 0..1. Slight overshoot (resamplers, upscalers) is clamped; a
# maximum above this means 0..255 data was passed as a tensor, which clamping would turn
# white (the identity lost).
MAX_UNIT_VALUE = 2.0
# A human/object mask covering this fraction of its image is most likely inverted.
WHOLE_IMAGE_FRACTION = 0.98


def _count_bad(t: torch.Tensor) -> tuple[int, float]:
    """(non-finite values, largest value: counted only when all are finite) of a tensor."""
    bad = int(t.numel() - int(torch.isfinite(t).sum()))
    return bad, (float(t.max()) if t.numel() and not bad else 0.0)


def _raise_bad_values(name: str, kind: str, bad: int, total: int, top: float) -> None:
    if bad:
        raise ValueError(f"{name}: {bad} of {total} {kind} values are NaN or infinite; check the node that "
                         "produced it (e.g. a math or blend node dividing by zero)")
    if top > MAX_UNIT_VALUE:
        raise ValueError(f"{name}: values go up to {top:g}, but a ComfyUI {kind} holds 0..1; it looks like "
                         "0..255 data — divide it by 255 (or load the file with Load Image / Load Image Mask)")


def _check_batch(t: torch.Tensor, name: str, kind: str) -> None:
    """An empty batch, or items without pixels, as an error naming the input."""
    what = "images" if kind == "IMAGE" else "masks"
    if t.shape[0] == 0:
        raise ValueError(f"{name}: the {kind} batch is empty (0 {what}); connect a node that outputs at least "
                         "one (a batch, filter or crop node before it may have removed them all)")
    if t.shape[1] == 0 or t.shape[2] == 0:
        raise ValueError(f"{name}: the {kind} has no pixels ({t.shape[2]}x{t.shape[1]}); check the crop or "
                         "resize node before it")


def image_size(image: torch.Tensor, name: str) -> tuple[int, int, int]:
    """(batch, height, width) of an IMAGE input, checked (no conversion)."""
    if not isinstance(image, torch.Tensor) or image.ndim not in (3, 4):
        raise ValueError(f"{name}: expected an IMAGE tensor [batch, height, width, channels], "
                         f"got {getattr(image, 'shape', type(image).__name__)}")
    if image.ndim == 3:
        image = image[None]
    if image.shape[-1] not in (1, 3, 4):
        raise ValueError(f"{name}: expected 1, 3 or 4 channels in the last dimension, got {image.shape[-1]}")
    _check_batch(image, name, "IMAGE")
    return int(image.shape[0]), int(image.shape[1]), int(image.shape[2])


def image_batch(image: torch.Tensor, name: str) -> list[np.ndarray]:
    """IMAGE → list of uint8 HxWx3 arrays (alpha dropped). Converted a block of rows at a
    time, so the only full-size memory is the uint8 result (`memory` checks it fits)."""
    count, height, width = image_size(image, name)
    if image.ndim == 3:
        image = image[None]
    memory.check("image_input", height, width, count, f"{name}: {count} image(s) of {width}x{height}",
                 "use a smaller image (e.g. Upscale Image By < 1) or a smaller batch")
    rows = max(1, memory.CONVERSION_BLOCK_PIXELS // width)
    out = np.empty((count, height, width, 3), np.uint8)
    bad = total = 0
    top = 0.0
    for i in range(count):
        for r in range(0, height, rows):
            block = image[i, r:r + rows, :, :3].float().cpu()
            b, t = _count_bad(block)
            bad, top, total = bad + b, max(top, t), total + block.numel()
            if bad:  # an error once counted: nothing to convert
                continue
            arr = block.clamp(0, 1).numpy() * 255.0
            out[i, r:r + rows] = arr.round().astype(np.uint8)  # broadcasts 1 channel to 3
    _raise_bad_values(name, "IMAGE", bad, total, top)
    return list(out)


def to_image(arrays: list[np.ndarray]) -> torch.Tensor:
    """uint8 HxWx3 arrays (same size) → IMAGE [B,H,W,3], filled item by item (no stacked copy)."""
    first = np.asarray(arrays[0])
    out = torch.empty((len(arrays), *first.shape[:2], 3), dtype=torch.float32)
    for i, a in enumerate(arrays):
        out[i] = torch.from_numpy(np.ascontiguousarray(a, dtype=np.uint8))
    return out.div_(255.0)


def to_mask(arrays: list[np.ndarray]) -> torch.Tensor:
    """HxW arrays in 0..1 (or bool) → MASK [B,H,W] float32, filled item by item."""
    first = np.asarray(arrays[0])
    out = torch.empty((len(arrays), *first.shape[:2]), dtype=torch.float32)
    for i, a in enumerate(arrays):
        out[i] = torch.as_tensor(np.asarray(a))
    return out


def mask_size(mask: torch.Tensor, name: str) -> tuple[int, int, int]:
    """(batch, height, width) of a MASK input, checked (no conversion)."""
    if not isinstance(mask, torch.Tensor) or mask.ndim not in (2, 3):
        raise ValueError(f"{name}: expected a MASK tensor [height, width] or [batch, height, width], "
                         f"got {getattr(mask, 'shape', type(mask).__name__)}")
    m = mask[None] if mask.ndim == 2 else mask
    _check_batch(m, name, "MASK")
    return int(m.shape[0]), int(m.shape[1]), int(m.shape[2])


def mask_batch(mask: torch.Tensor, name: str, size_hw: tuple[int, int] | None = None,
               binary: bool = False) -> list[np.ndarray]:
    """MASK ([H,W] or [B,H,W]) → list of float32 HxW arrays in 0..1; with ``binary``, 0 / 1:
    the pixels above `readers.MASK_THRESHOLD` (`readers.as_mask`), after the resize.

    Resized (bilinear) to ``size_hw`` when given and different — logged, since it usually
    means the mask came from another image. An all-zero mask is an error that explains
    how to make one (LoadImage's 64×64 zero mask for images without alpha included).
    """
    count, height, width = mask_size(mask, name)
    m = mask[None] if mask.ndim == 2 else mask
    out_h, out_w = size_hw if size_hw is not None else (height, width)
    memory.check("mask_input", max(height, out_h), max(width, out_w), count,
                 f"{name}: {count} mask(s) of {max(width, out_w)}x{max(height, out_h)}",
                 "use a smaller mask or image, or a smaller batch")
    bad = total = 0
    top = 0.0
    for item in m:  # checked before any conversion
        b, t = _count_bad(item.float())
        bad, top, total = bad + b, max(top, t), total + item.numel()
    _raise_bad_values(name, "MASK", bad, total, top)
    out = []
    for i, item in enumerate(m):
        item = item.float().cpu()
        if float(item.max()) <= 0.0:
            raise ValueError(empty_mask_message(name, tuple(item.shape), i, len(m)))
        if size_hw is not None and tuple(item.shape) != tuple(size_hw):
            log.info("%s: resizing mask %dx%d to the image size %dx%d", name, item.shape[1], item.shape[0],
                     size_hw[1], size_hw[0])
            item = F.interpolate(item[None, None], size=tuple(size_hw), mode="bilinear", align_corners=False)[0, 0]
        arr = item.clamp(0, 1).numpy()
        if binary:
            arr = as_mask(arr, name, allow_empty=True).astype(np.float32)
            if not arr.any():
                raise ValueError(f"{name}: no pixel is above {MASK_THRESHOLD} after resizing; the mask is too faint "
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
    m = np.asarray(mask) > MASK_THRESHOLD
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
    """Preview: ``mask`` (0..1) tinted over ``image`` (uint8 HxWx3), blended in place in
    one float32 copy (previews are made at a photo's size)."""
    weight = np.clip(np.asarray(mask, dtype=np.float32), 0, 1) * np.float32(alpha)
    out = np.asarray(image).astype(np.float32)
    out *= (1 - weight)[..., None]
    for c in range(3):
        out[..., c] += np.float32(color[c]) * weight
    return np.rint(out, out=out).astype(np.uint8)


def latent_preview(latent: torch.Tensor, size: int = 256):
    """A free preview of a latent [B,4,h,w]: its first three channels, each stretched to
    0..255 (no VAE decode per step — too costly at full size on a CPU)."""
    x = latent[0, :3].float().cpu()
    lo, hi = x.amin(dim=(1, 2), keepdim=True), x.amax(dim=(1, 2), keepdim=True)
    x = ((x - lo) / (hi - lo).clamp_min(1e-6) * 255).byte().permute(1, 2, 0).numpy()
    return Image.fromarray(x).resize((size, size), Image.NEAREST)
