"""Putting MGIG's generation back into the user's scene: the one module for the paste.

- The official crop-back (`decoded_to_prediction`, `crop_back`, `pasted_box`): the
  generated square, enlarged to the crop, replaces the whole crop around the pair except a
  `CROP_MARGIN`-pixel band along its inside (``paste="crop"``).
- ★ ``paste="mask"`` (our default): every pixel of that crop changes under the official
  crop-back, and a small or undertrained model leaves a visible rectangle (AnyDoor users
  ask for a blend instead). Here the user's background is kept everywhere except the
  generated figure: the interaction mask grown by ``grow`` pixels (the soft edge MGIG paints
  just outside the silhouette), then a ``feather``-pixel soft edge (`figure_alpha`,
  `blend`). Beyond ``grow + 2·feather`` pixels (Chebyshev) from the mask the background is
  kept exactly.

`paste` puts the generations of one crop back, either way: the one place the choice is
made. ``grow`` and ``feather`` are given in the model's working pixels (`paste_pixels`):
the generated square is enlarged to the crop before it is pasted, and its soft edges and
the pale rim it paints around a figure grow with it. The defaults and what they were chosen against are in docs/TRAINING.md.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

from . import imgproc
from .geometry import Box
from .readers import as_image, as_mask

if TYPE_CHECKING:  # the crop record `paste` reads (annotation only: no MGIG import at run time)
    from .mgig.inputs import MGIGHint

PASTE_MODES = ("mask", "crop")
DEFAULT_PASTE = "mask"
PASTE_GROW = 2  # the model's working pixels (`paste_pixels`)
PASTE_FEATHER = 2  # the model's working pixels
CROP_MARGIN = 5  # crop_back keeps the background in a 5-px band inside the crop (official)


def check_paste(paste: str, grow: int = PASTE_GROW, feather: int = PASTE_FEATHER) -> None:
    if paste not in PASTE_MODES:
        raise ValueError(f"paste: expected one of {', '.join(PASTE_MODES)}, got {paste!r}")
    for name, value in (("paste grow", grow), ("paste feather", feather)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{name}: expected a whole number of pixels >= 0, got {value!r}")


def paste_pixels(grow: int, feather: int, scale: float) -> tuple[int, int]:
    """``grow`` and ``feather`` given in the model's working pixels, in background pixels
    for a generation enlarged ``scale`` times (crop side / working size) before the paste.
    A feather never rounds to 0 (that would be a hard cut)."""
    check_paste("mask", grow, feather)
    if not scale > 0:
        raise ValueError(f"paste scale: expected a positive number, got {scale!r}")
    return round(grow * scale), (max(1, round(feather * scale)) if feather else 0)


def _grow_square(mask: np.ndarray, radius: int) -> np.ndarray:
    """Dilation by a (2r+1)² square, as two 1-D passes (r² → r work per pixel)."""
    if radius <= 0:
        return mask
    k = 2 * radius + 1
    return imgproc.dilate(imgproc.dilate(mask, np.ones((1, k), np.uint8)), np.ones((k, 1), np.uint8))


def _box_mean(mask01: np.ndarray, radius: int) -> np.ndarray:
    """Mean over a (2r+1)² window (zero outside the image), from integer prefix sums, so
    a window with no mask pixel gives exactly 0 and a full one exactly 1."""
    k = 2 * radius + 1
    padded = np.pad(mask01.astype(np.int64), radius + 1)[:-1, :-1]
    s = padded.cumsum(0).cumsum(1)
    window = s[k:, k:] - s[:-k, k:] - s[k:, :-k] + s[:-k, :-k]
    return (window / float(k * k)).astype(np.float32)


def figure_alpha(interaction_mask: np.ndarray, region: np.ndarray, *, grow: int = PASTE_GROW,
                 feather: int = PASTE_FEATHER) -> np.ndarray:
    """float32 HxW alpha in [0, 1]: 1 on the mask grown by ``grow`` px, falling to 0 over
    the next 2·``feather`` px, and 0 outside ``region`` (what the crop-back pasted)."""
    check_paste("mask", grow, feather)
    inside = as_mask(interaction_mask, "interaction_mask", allow_empty=True)
    grown = _grow_square(inside, grow + feather)
    alpha = _box_mean(grown, feather) if feather else grown.astype(np.float32)
    return alpha * (np.asarray(region) > 0.5)


def blend(generated: np.ndarray, background: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """uint8 ``alpha·generated + (1 − alpha)·background``; exactly ``background`` where
    alpha is 0 and exactly ``generated`` where it is 1."""
    a = alpha[..., None].astype(np.float32)
    out = np.rint(a * generated.astype(np.float32) + (1.0 - a) * background.astype(np.float32))
    return np.clip(out, 0, 255).astype(np.uint8)


# -------------------------------------------------------------- the official crop-back

def decoded_to_prediction(decoded) -> np.ndarray:
    """Official post-processing of the VAE output before :func:`crop_back`: ``decoded``
    is one ``512 x 512 x 3`` (HWC) image in [-1, 1]; returns float32
    ``clip(x * 127.5 + 127.5, 0, 255)`` without its first row (the official code drops
    it, giving 511 x 512)."""
    x = np.asarray(decoded, dtype=np.float32)
    if x.ndim != 3 or x.shape[2] != 3:
        raise ValueError(f"decoded: expected one H x W x 3 image (HWC), got shape {x.shape}")
    return np.clip(x * np.float32(127.5) + np.float32(127.5), 0, 255)[1:]


def crop_back(pred, background, extra_sizes, crop_box: Box, margin: int = CROP_MARGIN) -> np.ndarray:
    """Paste the generated crop back into the background (official ``crop_back``).

    pred: the generated square, ``H x W x 3`` float in [0, 255] (see
        :func:`decoded_to_prediction`; the official 511 x 512 is accepted as is and
        stretched like the official code does).
    background: the full background image the hint was built from.
    extra_sizes, crop_box: from `mgig.inputs.build_hint` (``MGIGHint``).
    margin: background pixels kept along the inside of the crop border.

    ``pred`` is resized to the padded crop size, the padding is stripped, and the part
    ``margin`` pixels inside the crop replaces the background (float -> uint8 by
    truncation, as the official assignment does). Returns a new uint8 image; the
    background is left untouched (the official code modified it in place for square
    crops).
    """
    background = as_image(background, "background")
    pred = np.asarray(pred)
    if pred.ndim != 3 or pred.shape[2] != 3:
        raise ValueError(f"pred: expected an H x W x 3 image, got shape {pred.shape}")
    if pred.dtype not in (np.float32, np.float64):
        pred = pred.astype(np.float32)
    h1, w1, h2, w2 = (int(v) for v in extra_sizes)
    if (crop_box.height, crop_box.width) != (h1, w1) or (h2, w2) != (max(h1, w1),) * 2:
        raise ValueError(f"extra_sizes {tuple(extra_sizes)} do not match crop_box {crop_box}: "
                         "pass the pair returned by build_hint")
    bh, bw = background.shape[:2]
    if not crop_box.inside(bh, bw):
        raise ValueError(f"crop_box {crop_box} lies outside the background ({bh}x{bw}): "
                         "pass the background the hint was built from")
    if margin < 0:
        raise ValueError(f"margin: expected >= 0, got {margin}")
    pred = imgproc.resize_linear(pred, (h2, w2))
    if w1 < w2:
        before = (w2 - w1) // 2
        pred = pred[:, before:before + w1]
    elif h1 < h2:
        before = (h2 - h1) // 2
        pred = pred[before:before + h1]
    # The pasted part in background and in crop coordinates, from the same Box. The
    # official ``y1 + m : y2 - m`` slices break for a crop at the top / left border
    # thinner than ``m`` px (``y2 - m < 0`` wraps around: a broadcast error); the inset
    # box is empty there instead.
    pasted = pasted_box(crop_box, margin)
    out = background.copy()
    inner = pred[pasted.relative_to(crop_box).slices]
    out[pasted.slices] = np.clip(inner, 0, 255).astype(np.uint8)
    return out


def pasted_box(crop_box: Box, margin: int = CROP_MARGIN) -> Box:
    """The part of the background :func:`crop_back` replaces: the crop minus its
    ``margin``-pixel inner band."""
    return crop_box.inset(margin)


def paste(mode: str, generated: Sequence[np.ndarray], background, interaction_mask, crop: MGIGHint,
          scale: float) -> tuple[list[np.ndarray], np.ndarray]:
    """MGIG's generations of one crop put back into ``background``: the one place the
    paste choice is made. ``generated``: the predictions (`decoded_to_prediction`);
    ``crop``: the hint they were generated for (its ``crop_box`` and ``extra_sizes``);
    ``scale``: background pixels per working pixel of the model (crop side / working size).

    mode "crop": the official :func:`crop_back`, the whole crop replaced. ★ "mask": only the
    figure, ``interaction_mask`` grown by `PASTE_GROW` and feathered over `PASTE_FEATHER`
    working pixels (`paste_pixels`, `figure_alpha`), the background kept elsewhere.
    Returns the images and the alpha they were pasted with (1 = generated pixel, 0 = the
    background kept)."""
    background = as_image(background, "background")
    region = pasted_box(crop.crop_box).mask(*background.shape[:2])
    if mode == "crop":
        alpha = region
    elif mode == "mask":
        grow, feather = paste_pixels(PASTE_GROW, PASTE_FEATHER, scale)
        alpha = figure_alpha(interaction_mask, region, grow=grow, feather=feather)
    else:
        raise ValueError(f"paste: expected one of {', '.join(PASTE_MODES)}, got {mode!r}")
    images = []
    for pred in generated:
        pasted = crop_back(pred, background, crop.extra_sizes, crop.crop_box)
        images.append(pasted if mode == "crop" else blend(pasted, background, alpha))
    return images, alpha
