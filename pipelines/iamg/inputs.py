"""IAMG's data path as pure functions: the condition image C_bg and the training target
(numpy HWC in -> CHW float32 in [-1, 1] out), and the decoded mask back at the
background's size (torch).
"""
from __future__ import annotations


import numpy as np
import torch
import torch.nn.functional as F

from ..geometry import Box, official_mask_box
from ..imgproc import pad_to_square
from ..readers import as_mask

# Square side of the IAMG image space (condition and mask); the latent is 1/8 of it.
IMAGE_SIZE = 256
# ★ Context crop: the models this package trains saw square scenes in which the
# interaction box takes a large share of the side (docs/METHOD.md §12). A box that is
# small in a large photo is far outside that: the mask lands elsewhere and the box
# clip leaves fragments. IAMG then runs on a square crop around the box in which the box
# has this share, and the mask is placed back.
CONTEXT_FRACTION = 0.6
CONTEXT_MODES = ("auto", "box", "full")
# ★ Islands of the binary mask smaller than this share of its largest part are dropped
# (specks of a small model); parts of comparable size (an object held apart) stay.
DESPECKLE_FRACTION = 0.05

# Foreground = soft mask above this (docs/METHOD.md §2.4: decoded → clamp → [0,1] → > 0.5).
DEFAULT_THRESHOLD = 0.5


def union_box(union_mask: np.ndarray) -> Box:
    """Box of the human ∪ object mask as the official `get_bbox_from_mask`
    (`geometry.official_mask_box`): its far edges are the *last* foreground row/column,
    used as exclusive slice ends, so the blanked region is 1 px short on the
    bottom/right — kept, the released model was trained with it (docs/METHOD.md §7). A mask with
    fewer than 10 foreground pixels gives the whole image. Foreground: `readers.as_mask`.
    """
    return official_mask_box(as_mask(union_mask, "union_mask", allow_empty=True))


def _check_box(box: Box, height: int, width: int) -> Box:
    if not isinstance(box, Box):
        raise TypeError(f"box: expected a geometry.Box, got {box!r}")
    if not box.inside(height, width):
        raise ValueError(f"box: {box} is not inside the {height}x{width} image")
    return box


def _to_model_range(image_u8: np.ndarray, size: int) -> np.ndarray:
    from ..imgproc import resize_linear

    # cv2.resize (INTER_LINEAR, uint8 fixed point) reproduced bit-exactly by imgproc.
    resized = resize_linear(image_u8, (size, size))
    return (resized.astype(np.float32) / np.float32(127.5) - np.float32(1.0)).transpose(2, 0, 1).copy()


def condition_image(background: np.ndarray, box: Box | None, size: int = IMAGE_SIZE) -> np.ndarray:
    """IAMG condition C_bg: the RGB background with the box filled black (0), padded to a
    square with white (255), resized to ``size``, scaled to [-1, 1] → float32 [3, size,
    size]. ``box``: a `Box` in background pixels (e.g. `union_box`);
    None keeps the whole background. The input is not modified (the official code blanks
    the caller's array in place)."""
    img = np.asarray(background)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"background: expected an HxWx3 uint8 RGB image, got {img.dtype} {img.shape}")
    img = img.copy()
    if box is not None:
        img[_check_box(box, *img.shape[:2]).slices] = 0
    return _to_model_range(pad_to_square(img, 255), size)


def target_image(union_mask: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    """IAMG training target: the union mask drawn white on black as a 3-channel image,
    padded to a square with 0, resized to ``size``, [-1, 1] → float32 [3, size, size]."""
    mask = as_mask(union_mask, "union_mask", allow_empty=True)  # foreground: `readers.as_mask`
    drawn = np.repeat((mask * np.uint8(255))[:, :, None], 3, axis=2)
    return _to_model_range(pad_to_square(drawn, 0), size)


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


def context_box(box: Box, height: int, width: int, fraction: float = CONTEXT_FRACTION) -> Box:
    """The square crop of a ``height`` x ``width`` image in which ``box``'s long side is
    ``fraction`` of the side: centred on the box, shifted to lie inside the image, and cut
    to the image where the square is larger than it (then no longer square)."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction: expected a value in (0, 1], got {fraction!r}")
    side = max(box.width, box.height, int(np.ceil(max(box.width, box.height) / fraction)))
    cx, cy = (box.x0 + box.x1) / 2.0, (box.y0 + box.y1) / 2.0

    def span(centre: float, length: int) -> tuple[int, int]:
        start = int(round(centre - side / 2.0))
        start = min(max(start, 0), max(length - side, 0))
        return start, min(start + side, length)

    (x0, x1), (y0, y1) = span(cx, width), span(cy, height)
    return Box(x0, y0, x1, y1)
