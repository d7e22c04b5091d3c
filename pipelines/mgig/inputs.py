"""MGIG preprocessing: the reference (ID) canvas, the detail map, the hint and the
crop-back, reproducing the official AnyDoor / Inter-custom arrays (DESIGN.md §3, §5).

The released MGIG checkpoint was trained on what ``hico_process_pairs`` (Inter-custom
``mgig/datasets/hico_dataset.py``) produces, so these functions reproduce it exactly --
including the 1-pixel-short crops (boxes carry *inclusive* end indices that are then
used as exclusive slice ends) -- but deterministically: the official code draws the box
expansion ratios at random and applies random flips / brightness at inference; here the
ratios are arguments and the flip is a flag.

Conventions
-----------
- Boxes are `geometry.Box` (exclusive ends). Boxes of masks come from
  `geometry.official_mask_box` (via :func:`official_box`): their far edges are the last
  foreground row/column, the official 1-px-short crop; the official arithmetic below
  (``size = far - near + 1``) is written for exactly those boxes.
- Images are ``H x W x 3`` RGB ``uint8`` arrays. Float images in ``[0, 1]`` are accepted
  and converted with ``round(x * 255)``.
- Masks are ``H x W`` (or ``H x W x 1``): ``bool``; integer ``{0, 1}`` or ``0..255``
  (foreground ``> 128``, as the official code thresholds its mask files); or float in
  ``[0, 1]`` (foreground ``> 0.5``).
- Sizes are ``(height, width)``.

Pipeline (what :func:`prepare_mgig_inputs` runs)::

    reference_canvas -> detail_map -> build_hint --(sampler, VAE decode)--> crop_back
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .. import imgproc
from ..geometry import Box, mask_box, official_mask_box
from ..imgproc import pad_to_square  # shared with IAMG; part of this module's API

__all__ = [
    "Box", "REFERENCE_SIZE", "REFERENCE_TILE", "HINT_SIZE", "DETAIL_THRESHOLD",
    "TARGET_BOX_RATIO", "CROP_RATIO", "CROP_MARGIN",
    "as_image", "as_mask", "official_box", "expand_box", "box_to_square", "pad_to_square", "confine_to_box", "whiten_background", "ReferenceCanvas",
    "reference_canvas", "detail_map", "colour_collage", "MGIGHint", "hint_boxes", "build_hint", "decoded_to_prediction",
    "crop_back", "MGIGInputs", "prepare_mgig_inputs", "perturb_mask",
]

# Sizes and constants fixed by the released MGIG checkpoint / official code.
REFERENCE_SIZE = 224        # ID-encoder (DINOv2) input canvas
REFERENCE_TILE = 112        # human tile (top-left) and object tile (bottom-right)
DETAIL_WORK_SIZE = 256      # the official sobel() works at 256 x 256
DETAIL_ERODE_KERNEL = 5     # ... erodes the mask with a 5x5 ones kernel ...
DETAIL_ERODE_ITERATIONS = 2  # ... twice
DETAIL_THRESHOLD = 50       # edge strengths below this are dropped
HINT_SIZE = 512             # ControlNet hint / target crop size
TARGET_BOX_RATIO = 1.1      # union-mask box grown x1.1 (official: randint(11, 12) / 10)
CROP_RATIO = 1.3            # crop box grown from the target box; official draws 1.3..2.9
CROP_MARGIN = 5             # crop_back keeps the background in a 5-px band inside the crop
COLLAGES = ("box", "figure")  # build_hint: where the detail map covers the scene
DEFAULT_COLLAGE = "box"     # generate / the sampler node unless told: the official collage
COLLAGE_GROW = 4            # ★ collage "figure": the mask grown by this many hint (512-px) pixels
PAD_MASK_VALUE = 2          # hint mask channel: padding marked 2 before resizing, then -1
HINT_CHANNELS = 4           # the official hint: collage RGB + layout channel
COLOUR_HINT_CHANNELS = 4    # ★ colour hint: the references' low-passed RGB + their coverage
COLOUR_CELL = 16            # ★ colour_collage averages the 224-px canvas over 16-px cells (14 x 14)
WHITE = 255


# ----------------------------------------------------------------------------- inputs

def as_image(image, name: str = "image") -> np.ndarray:
    """Validate an RGB image and return it as ``H x W x 3`` uint8.

    Accepts uint8 (or other integer arrays within 0..255) and float arrays in [0, 1]
    (converted with ``round(x * 255)``). Raises ``ValueError``/``TypeError`` naming
    ``name`` for anything else (wrong rank, not 3 channels, out-of-range values).
    """
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


def as_mask(mask, name: str = "mask", shape=None, *, allow_empty: bool = False) -> np.ndarray:
    """Validate a mask and return it as an ``H x W`` uint8 {0, 1} array.

    ``bool``; integer ``{0,1}`` or ``0..255`` (foreground ``> 128``); float in [0, 1]
    (foreground ``> 0.5``). ``shape``: the (height, width) it must have (e.g. its image's
    ``image.shape``). Raises ``ValueError`` naming ``name`` for a wrong shape, values out
    of range or -- unless ``allow_empty`` -- a mask without foreground.
    """
    arr = np.asarray(mask)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim != 2:
        raise ValueError(f"{name}: expected an H x W mask, got shape {arr.shape}")
    if shape is not None and arr.shape != tuple(shape[:2]):
        raise ValueError(f"{name}: size {arr.shape[0]}x{arr.shape[1]} (HxW) does not match its image, "
                         f"which is {shape[0]}x{shape[1]}")
    if arr.dtype == np.bool_:
        out = arr.astype(np.uint8)
    elif np.issubdtype(arr.dtype, np.integer):
        lo, hi = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
        if lo < 0 or hi > 255:
            raise ValueError(f"{name}: integer masks must be {{0,1}} or 0..255, got {lo}..{hi}")
        out = (arr > 128).astype(np.uint8) if hi > 1 else arr.astype(np.uint8)
    elif np.issubdtype(arr.dtype, np.floating):
        if arr.size and (not np.isfinite(arr).all() or arr.min() < 0.0 or arr.max() > 1.0):
            raise ValueError(f"{name}: float masks must be in [0, 1]")
        out = (arr > 0.5).astype(np.uint8)
    else:
        raise TypeError(f"{name}: unsupported mask dtype {arr.dtype}")
    if not allow_empty and not out.any():
        raise ValueError(f"{name} is empty: it has no foreground pixels")
    return out


# ------------------------------------------------------------------------------ boxes

def official_box(mask, name: str = "mask") -> Box:
    """`geometry.official_mask_box` (far edges = last foreground row/column) that raises
    ``ValueError`` naming ``name`` for an empty mask and returns the box of tiny
    (< 10 pixel) masks instead of the whole image. Identical to the official box for
    every mask of 10 pixels or more."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"{name}: expected an H x W mask, got shape {mask.shape}")
    if not np.any(mask):
        raise ValueError(f"{name} is empty: it has no foreground pixels")
    return official_mask_box(mask, min_pixels=0)


def _crop(array: np.ndarray, box: Box) -> np.ndarray:
    """``array[box.slices]`` as the official code slices, but never empty: an official box
    with ``y1 == y0`` (a one-row mask, whose far edge is its last row) keeps one row,
    where the official code would hand an empty crop to cv2.resize and fail."""
    return array[box.y0:max(box.y1, box.y0 + 1), box.x0:max(box.x1, box.x0 + 1)]


def _shape_hw(shape) -> tuple[int, int]:
    """The (height, width) leading an image shape."""
    try:
        leading = tuple(shape[:2])
    except TypeError:
        raise ValueError(f"shape: expected (height, width, ...), got {shape!r}") from None
    return imgproc.check_size(leading, "shape")


def _is_finite_number(value) -> bool:
    try:
        return math.isfinite(value)
    except TypeError:
        return False


def expand_box(box: Box, ratio: float, shape, min_crop: float = 0) -> Box:
    """Grow ``box`` about its centre by ``ratio`` (at least ``min_crop`` pixels per side)
    and clip it to ``shape = (height, width, ...)`` (so ``image.shape`` works).

    The official ``expand_bbox`` with its ratio passed in instead of drawn at random
    (``randint(10 * lo, 10 * hi) / 10``): the size is ``ratio * (y1 - y0 + 1)``, the new
    edges are truncated towards zero with ``int()``. One addition: where that arithmetic
    yields an empty box (a one-pixel mask on the image's top or left edge), the box keeps
    one pixel instead.

    Raises ``ValueError`` naming ``ratio`` / ``min_crop`` for a ratio that is not a
    positive finite number (``inf`` would overflow ``int()``) or a non-finite min_crop.
    """
    if not _is_finite_number(ratio) or not ratio > 0:
        raise ValueError(f"ratio: expected a positive finite number, got {ratio!r}")
    if not _is_finite_number(min_crop):
        raise ValueError(f"min_crop: expected a finite number of pixels, got {min_crop!r}")
    height, width = _shape_hw(shape)
    y1, y2, x1, x2 = box.yyxx
    xc, yc = 0.5 * (x1 + x2), 0.5 * (y1 + y2)
    h = max(ratio * (y2 - y1 + 1), min_crop)
    w = max(ratio * (x2 - x1 + 1), min_crop)
    x1, x2 = max(0, int(xc - w * 0.5)), min(width, int(xc + w * 0.5))
    y1, y2 = max(0, int(yc - h * 0.5)), min(height, int(yc + h * 0.5))
    if y2 <= y1:
        y1, y2 = min(y1, height - 1), min(y1, height - 1) + 1
    if x2 <= x1:
        x1, x2 = min(x1, width - 1), min(x1, width - 1) + 1
    return Box.from_yyxx(y1, y2, x1, x2)


def box_to_square(box: Box, shape) -> Box:
    """Grow the short side of ``box`` to its long side about the centre, then clip to
    ``shape = (height, width, ...)`` (the official ``box2squre``). Integer halves, as in
    the official code: an odd long side gives a square one pixel smaller, and clipping
    at the border leaves it non-square -- the hint pads it square afterwards. A
    one-pixel box stays one pixel (the official arithmetic would empty it).

    The result always lies inside the image (``0 <= x0 <= x1 <= width``, same for y).
    A box that does not intersect the image raises ``ValueError``; an official box
    whose far edge is its near edge (a one-row / one-column mask) counts as that row /
    column."""
    height, width = _shape_hw(shape)
    by1, by2, bx1, bx2 = box.yyxx
    if not (bx1 < width and max(bx2, bx1 + 1) > 0 and by1 < height and max(by2, by1 + 1) > 0):
        raise ValueError(f"box_to_square: box {box} does not intersect the {height}x{width} image")
    y1, y2, x1, x2 = box.yyxx
    cx, cy = (x1 + x2) // 2, (y1 + y2) // 2
    h, w = y2 - y1, x2 - x1
    if h >= w:
        x1, x2 = cx - h // 2, cx + h // 2
    else:
        y1, y2 = cy - w // 2, cy + w // 2
    # A one-pixel side would become empty (2 * (1 // 2) = 0); keep it as it was.
    if x2 <= x1:
        x1, x2 = bx1, bx2
    if y2 <= y1:
        y1, y2 = by1, by2
    # Clip (as the official code) -- the squared box can reach past the border.
    y1, x1 = min(max(0, y1), height), min(max(0, x1), width)
    return Box.from_yyxx(y1, max(y1, min(height, y2)), x1, max(x1, min(width, x2)))


def confine_to_box(mask: np.ndarray, box: Box, name: str = "interaction_mask") -> np.ndarray:
    """``mask`` with everything outside ``box`` zeroed (the pair is generated in the box);
    ValueError naming ``name`` when no pixel of it is left."""
    inside = mask * box.mask(*mask.shape[:2], dtype=mask.dtype)
    if not inside.any():
        raise ValueError(f"{name} has no pixels inside the box {box.xywh}; move the box, or place the mask "
                         "inside it (e.g. with Fit Mask To Box)")
    return inside


def whiten_background(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``image`` with every pixel outside ``mask`` (non-zero = foreground) set to white."""
    return np.where(np.asarray(mask)[:, :, None] != 0, image, np.uint8(WHITE)).astype(np.uint8)


# ------------------------------------------------------------------- reference canvas

@dataclass(frozen=True)
class ReferenceCanvas:
    """The ID-encoder input of MGIG and how it was laid out.

    image: (224, 224, 3) uint8 -- the canvas the encoder sees (``item['ref'] * 255``).
    mask: (224, 224) uint8, 0..255 -- its foreground (input of :func:`detail_map`).
    layout / layout_mask: the 224 x 224 collage before cropping -- human tile top-left,
        object tile bottom-right, white elsewhere -- and its {0, 1} mask.
    layout_box: official box of ``layout_mask`` (`geometry.official_mask_box`); the
        canvas is ``layout`` whitened outside the mask, cropped to it, padded square, resized.
    human_box, object_box: official boxes of the two masks in their own images
        (:func:`official_box`: the official box for masks of 10 pixels or more).
    """

    image: np.ndarray
    mask: np.ndarray
    layout: np.ndarray
    layout_mask: np.ndarray
    layout_box: Box
    human_box: Box
    object_box: Box


def reference_canvas(human_image, human_mask, object_image, object_mask, *,
                     hflip: bool = False) -> ReferenceCanvas:
    """Build MGIG's reference canvas (the first half of ``hico_process_pairs``).

    The human crop (to its mask box) is resized to 112 x 112 at the top-left of a white
    224 x 224 collage, the object crop to 112 x 112 at the bottom-right; pixels outside
    the two masks are whitened; the collage is cropped to its mask box, padded square
    with white and resized to 224. ``hflip=True`` applies the horizontal flip the
    official augmentation applies with p = 0.5 (to image and mask alike).

    Raises ``ValueError`` naming the input for an empty mask or a mask whose size does
    not match its image.
    """
    human_image = as_image(human_image, "human_image")
    object_image = as_image(object_image, "object_image")
    human_mask = as_mask(human_mask, "human_mask", human_image.shape)
    object_mask = as_mask(object_mask, "object_mask", object_image.shape)

    tile = (REFERENCE_TILE, REFERENCE_TILE)
    human_box = official_box(human_mask, "human_mask")
    object_box = official_box(object_mask, "object_mask")
    layout = np.full((REFERENCE_SIZE, REFERENCE_SIZE, 3), WHITE, dtype=np.uint8)
    layout_mask = np.zeros((REFERENCE_SIZE, REFERENCE_SIZE), dtype=np.uint8)
    layout[:REFERENCE_TILE, :REFERENCE_TILE] = imgproc.resize_linear(_crop(human_image, human_box), tile)
    layout[REFERENCE_TILE:, REFERENCE_TILE:] = imgproc.resize_linear(_crop(object_image, object_box), tile)
    # Masks stay {0, 1} through the bilinear resize (uint8 rounding of values in [0, 1]).
    layout_mask[:REFERENCE_TILE, :REFERENCE_TILE] = imgproc.resize_linear(_crop(human_mask, human_box), tile)
    layout_mask[REFERENCE_TILE:, REFERENCE_TILE:] = imgproc.resize_linear(_crop(object_mask, object_box), tile)

    layout_box = official_mask_box(layout_mask)
    size = (REFERENCE_SIZE, REFERENCE_SIZE)
    image = _crop(whiten_background(layout, layout_mask), layout_box)
    image = imgproc.resize_linear(pad_to_square(image, WHITE), size)
    mask = _crop(layout_mask * np.uint8(255), layout_box)
    mask = imgproc.resize_linear(pad_to_square(mask, 0), size)
    if hflip:
        image, mask = image[:, ::-1].copy(), mask[:, ::-1].copy()
    return ReferenceCanvas(image, mask, layout, layout_mask, layout_box, human_box, object_box)


# ------------------------------------------------------------------------- detail map

def _detail_weight_mask(mask) -> np.ndarray:
    arr = np.asarray(mask)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim != 2:
        raise ValueError(f"mask: expected an H x W mask, got shape {arr.shape}")
    if arr.dtype == np.bool_:
        return arr.astype(np.float64)
    if np.issubdtype(arr.dtype, np.integer):
        # The official pipeline passes its 0..255 canvas mask divided by 255 (float64).
        return arr.astype(np.float64) / (255.0 if arr.max(initial=0) > 1 else 1.0)
    if arr.dtype in (np.float32, np.float64):
        return arr  # resized in its own precision, as cv2 does
    return arr.astype(np.float64)


def detail_map(image, mask, thresh: float = DETAIL_THRESHOLD) -> np.ndarray:
    """The high-frequency detail map of MGIG (the official ``sobel``), same size as
    ``image``, uint8 ``H x W x 3``.

    At 256 x 256: the mask is binarised (> 0.5) and eroded twice with a 5 x 5 kernel;
    per RGB channel ``0.5 |Sobel_x| + 0.5 |Sobel_y|`` (saturated to uint8), maximum over
    channels, times the eroded mask, strengths below ``thresh`` dropped; the output is
    the image weighted by edge strength ``uint8(edge / 255 * image)``, resized back.

    ``mask``: float in [0, 1] (soft values allowed, as the official call passes
    ``mask / 255``), bool, or integer {0, 1} / 0..255 (divided by 255).
    """
    image = as_image(image, "image")
    weight = _detail_weight_mask(mask)
    if weight.shape != image.shape[:2]:
        raise ValueError(f"mask: size {weight.shape} does not match image {image.shape[:2]}")
    h, w = image.shape[:2]
    work = (DETAIL_WORK_SIZE, DETAIL_WORK_SIZE)
    img = imgproc.resize_linear(image, work)
    fg = (imgproc.resize_linear(weight, work) > 0.5).astype(np.uint8)
    fg = imgproc.erode(fg, DETAIL_ERODE_KERNEL, iterations=DETAIL_ERODE_ITERATIONS)
    grad_x = imgproc.convert_scale_abs(imgproc.sobel(img, 1, 0))
    grad_y = imgproc.convert_scale_abs(imgproc.sobel(img, 0, 1))
    edge = imgproc.add_weighted(grad_x, 0.5, grad_y, 0.5, 0).max(axis=-1) * fg
    edge[edge < thresh] = 0
    # float32 arithmetic and truncation exactly as the official expression.
    out = (edge[:, :, None].astype(np.float32) / 255 * img.astype(np.float32)).astype(np.uint8)
    return imgproc.resize_linear(out, (h, w))


def colour_collage(image, mask, cell: int = COLOUR_CELL) -> np.ndarray:
    """★ The references' colours without their detail: the reference canvas (the one
    :func:`detail_map` is taken from) averaged over its foreground in ``cell`` x ``cell``
    squares, enlarged back bilinearly. ``H x W x 4`` float32: RGB in [-1, 1] (0 in squares
    without foreground) and the foreground share in [0, 1].

    Why: a flat-coloured reference has no edges, so its detail map is black inside and
    only the ID tokens could carry its colour; these planes carry it to the ControlNet
    (`build_hint` ``colour``, a model with ``MGIGConfig.colour_hint``).
    """
    image = as_image(image, "image")
    weight = _detail_weight_mask(mask).astype(np.float32)
    if weight.shape != image.shape[:2]:
        raise ValueError(f"mask: size {weight.shape} does not match image {image.shape[:2]}")
    if type(cell) is not int or cell < 1:
        raise ValueError(f"cell: expected a whole number of pixels >= 1, got {cell!r}")
    h, w = image.shape[:2]
    gh, gw = -(-h // cell), -(-w // cell)
    # Zero-pad to whole cells: padded pixels carry no weight.
    img = np.zeros((gh * cell, gw * cell, 3), np.float32)
    img[:h, :w] = image
    wgt = np.zeros((gh * cell, gw * cell), np.float32)
    wgt[:h, :w] = weight
    weighted = (img * wgt[:, :, None]).reshape(gh, cell, gw, cell, 3).sum(axis=(1, 3))
    total = wgt.reshape(gh, cell, gw, cell).sum(axis=(1, 3))
    colour = np.where(total[:, :, None] > 0, weighted / np.maximum(total, 1e-6)[:, :, None] / 127.5 - 1.0, 0.0)
    cells = np.concatenate([colour, (total / (cell * cell))[:, :, None]], axis=-1).astype(np.float32)
    return imgproc.resize_linear(cells, (h, w))


# ------------------------------------------------------------------------------- hint

@dataclass(frozen=True)
class MGIGHint:
    """The ControlNet hint of MGIG and the geometry needed to paste the result back.

    hint: (512, 512, 4) float32 -- RGB collage in [-1, 1] (the background crop with the
        detail map pasted over the target box) + mask channel: 1 inside the target box
        (or the interaction mask), 0 elsewhere in the crop, -1 on the square padding;
        ★ with a ``colour`` collage 4 more: its planes where the detail map lies, else 0.
    target: (512, 512, 3) float32 in [-1, 1] -- the background crop (``item['jpg']``).
    extra_sizes: (H1, W1, H2, W2) -- crop size before / after padding to square.
    crop_box: the crop in background coordinates (``tar_box_yyxx_crop``).
    target_box: the expanded target box in background coordinates.
    target_box_in_crop: the same box relative to the crop.
    scene: (512, 512) float32 -- ★ 1 where the hint's RGB is the background itself (the
        crop outside the target box; with the ★ "figure" collage also the box off the grown
        mask), 0 under the detail map and on the padding: what a ★ refiner (`refiner`) may copy.
    """

    hint: np.ndarray
    target: np.ndarray
    extra_sizes: tuple[int, int, int, int]
    crop_box: Box
    target_box: Box
    target_box_in_crop: Box
    scene: np.ndarray


def _cover(box: Box, inner: Box) -> Box:
    """The smallest box holding ``box`` and ``inner``."""
    return Box(min(box.x0, inner.x0), min(box.y0, inner.y0), max(box.x1, inner.x1), max(box.y1, inner.y1))


def hint_boxes(union_mask, shape, box_ratio: float = TARGET_BOX_RATIO,
               crop_ratio: float = CROP_RATIO) -> tuple[Box, Box]:
    """``(target_box, crop_box)`` of :func:`build_hint` for ``union_mask`` in an image of
    ``shape``: the official box grown by ``box_ratio``; that grown by ``crop_ratio``,
    squared, clipped -- and widened to hold every mask pixel where it does not."""
    union_mask = as_mask(union_mask, "union_mask", shape)
    target_box = expand_box(official_box(union_mask, "union_mask"), box_ratio, shape)
    crop_box = box_to_square(expand_box(target_box, crop_ratio, shape), shape)
    # The official 1-px-short box grown by 1.1 and 1.3 (and squared) can miss the last
    # row / column of a mask under ~10 px; widen the crop to the mask there. A crop that
    # already holds the mask (every official-size case) is unchanged.
    return target_box, _cover(crop_box, mask_box(union_mask))


def build_hint(background, union_mask, detail, *, box_ratio: float = TARGET_BOX_RATIO,
               crop_ratio: float = CROP_RATIO, mask_channel: str = "box",
               mask=None, collage: str = "box", colour=None) -> MGIGHint:
    """Build the MGIG hint around the interaction (the second half of
    ``hico_process_pairs``).

    Target box = box of ``union_mask`` (human ∪ object) grown by ``box_ratio``; crop box
    = target box grown by ``crop_ratio`` (official: random in 1.3..2.9), squared and
    clipped to the background, and widened to hold every ``union_mask`` pixel where it
    does not (masks under ~10 px, whose official 1-px-short box loses its last row /
    column; larger masks get the official crop). ``detail`` (any size, uint8 H x W x 3, e.g.
    :func:`detail_map` of the reference canvas) is resized to the target box and
    replaces the background there. The crop is padded square (0; mask channel 2 -> -1)
    and resized to 512 (bilinear; mask nearest).

    mask_channel: "box" (official inference: 1 inside the target box) or "mask" (the
        interaction mask: ``mask``, by default ``union_mask``, cut to the crop -- what the
        official training feeds, there randomly perturbed).
    collage: "box" (official: the detail map covers the whole target box) or ★ "figure":
        only where ``mask`` (by default ``union_mask``) grown by `COLLAGE_GROW` hint pixels
        lies in the box; elsewhere in the box the hint shows the scene itself, as it does
        outside the box, and ``scene`` says so.
    colour: None (the official 4-channel hint) or ★ the :func:`colour_collage` of the same
        reference canvas: resized and placed exactly as the detail map, it adds
        `COLOUR_HINT_CHANNELS` channels (0 where the detail map does not lie and on the padding).
    """
    background = as_image(background, "background")
    union_mask = as_mask(union_mask, "union_mask", background.shape)
    detail = as_image(detail, "detail")
    if mask_channel not in ("box", "mask"):
        raise ValueError(f"mask_channel: expected 'box' or 'mask', got {mask_channel!r}")
    if collage not in COLLAGES:
        raise ValueError(f"collage: expected one of {', '.join(COLLAGES)}, got {collage!r}")
    channel_mask = union_mask if mask is None else as_mask(mask, "mask", background.shape)
    if colour is not None:
        colour = np.asarray(colour)
        if colour.ndim != 3 or colour.shape[2] != COLOUR_HINT_CHANNELS or colour.dtype != np.float32:
            raise ValueError(f"colour: expected the float32 H x W x {COLOUR_HINT_CHANNELS} colour_collage of the "
                             f"reference canvas, got {colour.dtype} {colour.shape}")

    target_box, crop_box = hint_boxes(union_mask, background.shape, box_ratio, crop_ratio)
    crop = background[crop_box.slices]
    crop_h, crop_w = crop.shape[:2]
    # box_to_square can shave one pixel off an odd-sized square; keep the target box
    # inside the crop (the official code would fail there on a shape mismatch).
    target_box_in_crop = target_box.relative_to(crop_box).clipped(crop_h, crop_w)
    ty1, ty2, tx1, tx2 = target_box_in_crop.yyxx

    covered = np.zeros((crop_h, crop_w), dtype=bool)  # where the detail map replaces the scene
    covered[ty1:ty2, tx1:tx2] = True
    if collage == "figure":
        grow = max(1, round(COLLAGE_GROW * max(crop_h, crop_w) / HINT_SIZE))
        covered &= imgproc.dilate(channel_mask[crop_box.slices].astype(np.uint8), 2 * grow + 1) > 0
    collage_img = crop.copy()
    detail_in_box = imgproc.resize_linear(detail, (ty2 - ty1, tx2 - tx1))
    in_box = covered[ty1:ty2, tx1:tx2]
    collage_img[ty1:ty2, tx1:tx2][in_box] = detail_in_box[in_box]
    if mask_channel == "box":
        collage_mask = np.zeros((crop_h, crop_w), dtype=np.uint8)
        collage_mask[ty1:ty2, tx1:tx2] = 1
    else:
        collage_mask = channel_mask[crop_box.slices].copy()

    size = (HINT_SIZE, HINT_SIZE)
    target = imgproc.resize_linear(pad_to_square(crop, 0), size).astype(np.float32)
    collage_img = imgproc.resize_linear(pad_to_square(collage_img, 0), size).astype(np.float32)
    collage_mask = imgproc.resize_nearest(pad_to_square(collage_mask, PAD_MASK_VALUE), size)
    collage_mask = collage_mask.astype(np.float32)
    collage_mask[collage_mask == PAD_MASK_VALUE] = -1.0
    scene = imgproc.resize_nearest(pad_to_square((~covered).astype(np.uint8), 0), size).astype(np.float32)
    side = max(crop_h, crop_w)
    planes = [collage_img / 127.5 - 1.0, collage_mask[:, :, None]]
    if colour is not None:
        colour_img = np.zeros((crop_h, crop_w, COLOUR_HINT_CHANNELS), np.float32)
        colour_in_box = imgproc.resize_linear(colour, (ty2 - ty1, tx2 - tx1))
        colour_img[ty1:ty2, tx1:tx2][in_box] = colour_in_box[in_box]
        planes.append(imgproc.resize_linear(pad_to_square(colour_img, 0), size))
    hint = np.concatenate(planes, axis=-1)
    return MGIGHint(
        hint=hint.astype(np.float32),
        target=(target / 127.5 - 1.0).astype(np.float32),
        extra_sizes=(crop_h, crop_w, side, side),
        crop_box=crop_box,
        target_box=target_box,
        target_box_in_crop=target_box_in_crop,
        scene=scene,
    )


# -------------------------------------------------------------------------- crop back

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
    extra_sizes, crop_box: from :func:`build_hint` / :func:`prepare_mgig_inputs`.
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
                         "pass the pair returned by build_hint / prepare_mgig_inputs")
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


# ------------------------------------------------------------------------- all inputs

@dataclass(frozen=True)
class MGIGInputs:
    """Everything MGIG needs for one image (the official ``hico_process_pairs`` item).

    reference: (224, 224, 3) float32 in [0, 1] -- ID-encoder input (``item['ref']``).
    hint: (512, 512, 4) float32 -- ControlNet hint (``item['hint']``).
    target: (512, 512, 3) float32 in [-1, 1] -- background crop (``item['jpg']``).
    extra_sizes, crop_box: for :func:`crop_back`.
    target_box: the expanded target box in background coordinates.
    reference_image / reference_mask / detail: uint8 previews of the canvas, its mask
        and the detail map pasted into the hint.
    """

    reference: np.ndarray
    hint: np.ndarray
    target: np.ndarray
    extra_sizes: tuple[int, int, int, int]
    crop_box: Box
    target_box: Box
    reference_image: np.ndarray
    reference_mask: np.ndarray
    detail: np.ndarray


def prepare_mgig_inputs(human_image, human_mask, object_image, object_mask, background,
                        union_mask, *, box_ratio: float = TARGET_BOX_RATIO,
                        crop_ratio: float = CROP_RATIO, hflip: bool = False,
                        mask_channel: str = "box",
                        detail_threshold: float = DETAIL_THRESHOLD) -> MGIGInputs:
    """All MGIG inputs for one image, as the official ``hico_process_pairs`` builds them
    at inference, without its randomness.

    human_image / human_mask: the reference person and its mask.
    object_image / object_mask: the reference object and its mask (the official code
        cuts the object from the HOI image itself: pass the background there).
    background: the image to generate into; union_mask: the interaction mask (human ∪
        object silhouette, e.g. from IAMG) in background coordinates.
    box_ratio, crop_ratio: target-box and crop expansion (official: 1.1 and a random
        1.3..2.9; 1.3 reproduces the reference vectors).
    hflip: apply the official augmentation's horizontal flip of the reference canvas.
    mask_channel: "box" (official inference) or "mask" (see :func:`build_hint`).
    """
    canvas = reference_canvas(human_image, human_mask, object_image, object_mask, hflip=hflip)
    detail = detail_map(canvas.image, canvas.mask, thresh=detail_threshold)
    hint = build_hint(background, union_mask, detail, box_ratio=box_ratio, crop_ratio=crop_ratio,
                      mask_channel=mask_channel)
    return MGIGInputs(
        reference=(canvas.image.astype(np.float32) / 255.0).astype(np.float32),
        hint=hint.hint,
        target=hint.target,
        extra_sizes=hint.extra_sizes,
        crop_box=hint.crop_box,
        target_box=hint.target_box,
        reference_image=canvas.image,
        reference_mask=canvas.mask,
        detail=detail,
    )


# ------------------------------------------------------------------ training augment

def _random_structure(rng: np.random.RandomState, size: int) -> np.ndarray:
    # Official get_random_structure: rect, ellipse, flat ellipse, tall ellipse
    # (cv2 sizes are (width, height); ours are (height, width)).
    choice = rng.randint(1, 5)
    if choice == 1:
        return imgproc.structuring_element("rect", (size, size))
    if choice == 2:
        return imgproc.structuring_element("ellipse", (size, size))
    if choice == 3:
        return imgproc.structuring_element("ellipse", (size // 2, size))
    return imgproc.structuring_element("ellipse", (size, size // 2))


def perturb_mask(mask, rng: np.random.RandomState, *, min_iou: float = 0.3,
                 max_iou: float = 0.99) -> np.ndarray:
    """The official training-time ``perturb_mask``: random dilations / erosions of
    sub-rectangles (never removing the original foreground) until the IoU with the
    original drops below a random target, then the largest 8-connected component.

    ``rng`` is a legacy ``np.random.RandomState``; it is consumed in the official draw
    order, so ``RandomState(s)`` reproduces the official result after ``np.random.seed(s)``.
    Returns a uint8 {0, 1} mask. Training only: inference never perturbs (DESIGN §5).
    """
    gt = as_mask(mask, "mask", allow_empty=True)
    iou_target = rng.uniform(min_iou, max_iou)
    h, w = gt.shape
    seg = gt.copy()
    if h <= 2 or w <= 2:
        return seg
    for _ in range(250):
        for _ in range(4):
            lx, ly = rng.randint(w), rng.randint(h)
            lw, lh = rng.randint(lx + 1, w + 1), rng.randint(ly + 1, h + 1)
            if rng.rand() < 0.1:
                seg[(ly + lh) // 2, (lx + lw) // 2] = rng.randint(2) * 255
            grow = rng.rand() < 0.5
            size = rng.randint(3, 10)
            kernel = _random_structure(rng, size)
            op = imgproc.dilate if grow else imgproc.erode
            seg[ly:lh, lx:lw] = op(seg[ly:lh, lx:lw], kernel)
            seg = np.logical_or(seg, gt).astype(np.uint8)
        inter = np.count_nonzero(seg & gt)
        union = np.count_nonzero(seg | gt)
        if (inter + 1e-6) / (union + 1e-6) < iou_target:
            break
    return imgproc.largest_component(seg)
