"""MGIG's input builders: the reference (ID) canvas, the detail map, the ★ colour collage
and the hint, reproducing the official AnyDoor / Inter-custom arrays (docs/METHOD.md §4, §7).
Their counterpart after generation, the crop-back into the background, is
`pipelines.composite`; reading the user's images and masks is `pipelines.readers`; the
official box arithmetic is `pipelines.geometry`.

The released MGIG checkpoint was trained on what ``hico_process_pairs`` (Inter-custom
``mgig/datasets/hico_dataset.py``) produces, so these functions reproduce it exactly --
including the 1-pixel-short crops (boxes carry *inclusive* end indices that are then
used as exclusive slice ends) -- but deterministically: the official code draws the box
expansion ratios at random and applies random flips / brightness at inference; here the
ratios are arguments and the flip is a flag.

Conventions
-----------
- Boxes are `geometry.Box` (exclusive ends). Boxes of masks come from
  `geometry.official_box`: their far edges are the last foreground row/column, the
  official 1-px-short crop; the official arithmetic (`geometry.expand_box`,
  `geometry.box_to_square`: ``size = far - near + 1``) is written for exactly those boxes.
- Images and masks are anything `readers.as_image` / `readers.as_mask` read: images
  become ``H x W x 3`` RGB ``uint8``, masks ``H x W`` {0, 1} (foreground above
  `readers.MASK_THRESHOLD`).
- Sizes are ``(height, width)``.

Pipeline (the official item: `cli.research.vectors_preproc.prepare_mgig_inputs`)::

    reference_canvas -> detail_map -> build_hint --(sampler, VAE decode)--> composite.crop_back
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import imgproc
from ..geometry import Box, box_to_square, expand_box, mask_box, official_box, official_crop, official_mask_box
from ..imgproc import pad_to_square
from ..readers import as_image, as_mask, mask_values

__all__ = [
    "REFERENCE_SIZE", "REFERENCE_TILE", "HINT_SIZE", "DETAIL_THRESHOLD", "TARGET_BOX_RATIO", "CROP_RATIO",
    "confine_to_box", "whiten_background", "ReferenceCanvas", "reference_canvas", "detail_map", "colour_collage",
    "MGIGHint", "hint_boxes", "build_hint",
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
COLLAGES = ("box", "figure")  # build_hint: where the detail map covers the scene
MASK_CHANNELS = ("box", "mask")  # build_hint: what the hint's 4th channel holds (official inference: box)
DEFAULT_COLLAGE = "box"     # generate / the sampler node unless told: the official collage
COLLAGE_GROW = 4            # ★ collage "figure": the mask grown by this many hint (512-px) pixels
PAD_MASK_VALUE = 2          # hint mask channel: padding marked 2 before resizing, then -1
HINT_CHANNELS = 4           # the official hint: collage RGB + layout channel
COLOUR_HINT_CHANNELS = 4    # ★ colour hint: the references' low-passed RGB + their coverage
COLOUR_CELL = 16            # ★ colour_collage averages the 224-px canvas over 16-px cells (14 x 14)
WHITE = 255


# -------------------------------------------------------------------- mask helpers

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
        (`geometry.official_box`: the official box for masks of 10 pixels or more).
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
    layout[:REFERENCE_TILE, :REFERENCE_TILE] = imgproc.resize_linear(official_crop(human_image, human_box), tile)
    layout[REFERENCE_TILE:, REFERENCE_TILE:] = imgproc.resize_linear(official_crop(object_image, object_box), tile)
    # Masks stay {0, 1} through the bilinear resize (uint8 rounding of values in [0, 1]).
    layout_mask[:REFERENCE_TILE, :REFERENCE_TILE] = imgproc.resize_linear(official_crop(human_mask, human_box), tile)
    layout_mask[REFERENCE_TILE:, REFERENCE_TILE:] = imgproc.resize_linear(official_crop(object_mask, object_box), tile)

    layout_box = official_mask_box(layout_mask)
    size = (REFERENCE_SIZE, REFERENCE_SIZE)
    image = official_crop(whiten_background(layout, layout_mask), layout_box)
    image = imgproc.resize_linear(pad_to_square(image, WHITE), size)
    mask = official_crop(layout_mask * np.uint8(255), layout_box)
    mask = imgproc.resize_linear(pad_to_square(mask, 0), size)
    if hflip:
        image, mask = image[:, ::-1].copy(), mask[:, ::-1].copy()
    return ReferenceCanvas(image, mask, layout, layout_mask, layout_box, human_box, object_box)


# ------------------------------------------------------------------------- detail map

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
    # As float64 (the official call passes its 0..255 canvas mask / 255), float masks in
    # their own precision: they are resized so, as cv2 does.
    weight = mask_values(mask, "mask")
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
    weight = mask_values(mask, "mask").astype(np.float32)
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
    return target_box, crop_box.union(mask_box(union_mask))


def build_hint(background, union_mask, detail, *, mask_channel: str, box_ratio: float = TARGET_BOX_RATIO,
               crop_ratio: float = CROP_RATIO, mask=None, collage: str = DEFAULT_COLLAGE,
               colour=None) -> MGIGHint:
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

    mask_channel (no default: each caller says which; a generation's comes with its
        `MGIGSettings`): "box" (official inference: 1 inside the target box) or "mask" (the
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
    if mask_channel not in MASK_CHANNELS:
        raise ValueError(f"mask_channel: expected one of {', '.join(MASK_CHANNELS)}, got {mask_channel!r}")
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
