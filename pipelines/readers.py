"""Reading a user's image or mask into the arrays `pipelines/` works on: the one place
that says what a pixel value means, and the one mask threshold.

A source is a NumPy array (or anything ``np.asarray`` takes), a PIL image, a torch
tensor holding one image (not a batch) or the path of an image file.

- `as_image` -> ``H x W x 3`` RGB uint8. Arrays: uint8, integers in 0..255, or floats in
  [0, 1] (converted with ``round(x * 255)``). PIL images and files: converted to RGB,
  transparent ones (RGBA / LA / palette) flattened on white.
- `mask_values` -> ``H x W`` float in [0, 1], soft values kept: float32 / float64 arrays
  as they are, everything else as float64.
- `as_mask` -> ``H x W`` uint8 {0, 1}: the pixels above `MASK_THRESHOLD` of full scale.

Mask values: ``bool``; integer arrays ``{0, 1}`` (when no value exceeds 1) or ``0..255``;
floats in [0, 1]. PIL images and files are read as 8-bit grey (mode "L", 0..255), whatever
values they hold. A trailing channel axis of length 1 (``H x W x 1``) and leading axes of
length 1 (``1 x H x W``) are dropped.

ComfyUI's batched IMAGE / MASK tensors are converted by `nodes.tensors` (batches, memory
checks, ComfyUI's own error messages), which binarises with the same `MASK_THRESHOLD`.
"""
from __future__ import annotations

import os

import numpy as np
from PIL import Image

__all__ = ["MASK_THRESHOLD", "as_image", "as_mask", "mask_values"]

# A mask pixel is foreground when its value is above half of full scale: float > 0.5,
# 0..255 integers >= 128 -- the pixels a float copy ``v / 255`` (a ComfyUI MASK of the same
# file) selects. The official MGIG code's ``> 128`` on its mask files differs only on
# pixels of exactly 128; the reference vectors' masks are {0, 1}. Bool and {0, 1} masks
# are what they say.
MASK_THRESHOLD = 0.5


def _open(path, name: str) -> Image.Image:
    """The image file at ``path``, decoded; errors name ``name`` and the file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{name}: image file {os.fspath(path)} does not exist")
    try:
        with Image.open(path) as im:
            im.load()
            return im.copy()
    except (OSError, SyntaxError, ValueError) as exc:  # what PIL raises for a corrupt file
        raise ValueError(f"{name}: cannot read image file {os.fspath(path)}: {exc}") from exc


def _source(value, name: str):
    """A path opened as a PIL image; a torch tensor as a NumPy array; anything else as is."""
    if isinstance(value, (str, os.PathLike)):
        return _open(value, name)
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor (torch not imported here)
        value = value.detach().cpu()
        if value.is_floating_point() and value.element_size() < 4:  # half / bfloat16: no NumPy twin
            value = value.float()
        return value.numpy()
    return value


def as_image(image, name: str = "image") -> np.ndarray:
    """``image`` as an ``H x W x 3`` RGB uint8 array (rules in the module docstring).

    Raises ``ValueError``/``TypeError`` naming ``name`` for anything else (wrong rank, not
    3 channels, out-of-range values, an unreadable file).
    """
    image = _source(image, name)
    if isinstance(image, Image.Image):
        if image.mode in ("RGBA", "LA", "P"):
            # Transparent pixels carry no colour worth keeping; flattened on white, as the
            # MGIG preprocessing whitens everything outside a reference's mask.
            rgba = image.convert("RGBA")
            image = Image.new("RGB", rgba.size, (255, 255, 255))
            image.paste(rgba, mask=rgba.getchannel("A"))
        return np.asarray(image.convert("RGB")).copy()
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3:
        hint = " (a batch? pass one image)" if arr.ndim == 4 else ""
        raise ValueError(f"{name}: expected an H x W x 3 RGB image, got shape {arr.shape}{hint}")
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"{name}: image is empty (shape {arr.shape})")
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.bool_:
        raise TypeError(f"{name}: expected uint8 or float pixels, got bool")
    if np.issubdtype(arr.dtype, np.integer):
        if arr.min() < 0 or arr.max() > 255:
            raise ValueError(f"{name}: integer pixels must be in 0..255, got {arr.min()}..{arr.max()}")
        return arr.astype(np.uint8)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise ValueError(f"{name}: contains NaN or infinite values")
        if arr.min() < 0.0 or arr.max() > 1.0:
            raise ValueError(f"{name}: float pixels must be in [0, 1], got {arr.min():g}..{arr.max():g} "
                             "(pass uint8 for 0..255 data)")
        return np.rint(arr.astype(np.float64) * 255.0).astype(np.uint8)
    raise TypeError(f"{name}: unsupported dtype {arr.dtype}")


def _mask_array(mask, name: str, shape) -> tuple[np.ndarray, float]:
    """(the validated ``H x W`` array, its full scale: 1 or 255)."""
    mask = _source(mask, name)
    if isinstance(mask, Image.Image):
        arr, scale = np.asarray(mask.convert("L")), 255.0
    else:
        arr, scale = np.asarray(mask), None
        while arr.ndim > 2 and arr.shape[-1] == 1:
            arr = arr[..., 0]
        while arr.ndim > 2 and arr.shape[0] == 1:
            arr = arr[0]
    if arr.ndim != 2:
        raise ValueError(f"{name}: expected an H x W mask, got shape {arr.shape}")
    if shape is not None and arr.shape != tuple(shape[:2]):
        raise ValueError(f"{name}: size {arr.shape[0]}x{arr.shape[1]} (HxW) does not match its image, "
                         f"which is {shape[0]}x{shape[1]}")
    if arr.dtype == np.bool_:
        return arr, 1.0
    if np.issubdtype(arr.dtype, np.integer):
        lo, hi = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
        if lo < 0 or hi > 255:
            raise ValueError(f"{name}: integer masks must be {{0,1}} or 0..255, got {lo}..{hi}")
        return arr, scale or (255.0 if hi > 1 else 1.0)
    if np.issubdtype(arr.dtype, np.floating):
        if arr.size and (not np.isfinite(arr).all() or arr.min() < 0.0 or arr.max() > 1.0):
            raise ValueError(f"{name}: float masks must be in [0, 1]")
        return arr, 1.0
    raise TypeError(f"{name}: unsupported mask dtype {arr.dtype}")


def mask_values(mask, name: str = "mask", shape=None) -> np.ndarray:
    """``mask`` as an ``H x W`` float array in [0, 1], soft values kept (float32 / float64
    arrays in their own precision, everything else float64; 0..255 divided by 255).
    ``shape``: the (height, width) it must have. Raises ``ValueError``/``TypeError`` naming
    ``name`` for a wrong shape or values out of range."""
    arr, scale = _mask_array(mask, name, shape)
    if arr.dtype in (np.float32, np.float64):
        return arr
    return arr.astype(np.float64) / scale if scale != 1.0 else arr.astype(np.float64)


def as_mask(mask, name: str = "mask", shape=None, *, allow_empty: bool = False,
            threshold: float = MASK_THRESHOLD) -> np.ndarray:
    """``mask`` as an ``H x W`` uint8 {0, 1} array: the pixels above ``threshold`` of full
    scale (`MASK_THRESHOLD`: float > 0.5, 0..255 >= 128). ``shape``: the (height, width)
    it must have (e.g. its image's ``image.shape``). Raises ``ValueError`` naming ``name``
    for a wrong shape, values out of range or -- unless ``allow_empty`` -- a mask without
    foreground."""
    arr, scale = _mask_array(mask, name, shape)
    if arr.dtype == np.bool_:
        out = arr.astype(np.uint8)
    else:
        # Compared in the array's own precision / integers: no rounding moves the threshold.
        out = (arr > threshold * scale).astype(np.uint8)
    if not allow_empty and not out.any():
        raise ValueError(f"{name} is empty: it has no foreground pixels")
    return out
