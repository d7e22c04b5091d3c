"""Boxes: one type, `Box`, for every pixel rectangle in the package.

A `Box` holds pixel edges with **exclusive** far ends, as NumPy slices them: rows
``y0 <= y < y1``, columns ``x0 <= x < x1``, so ``image[box.slices]`` is the box and
``box.width == x1 - x0``. The other spellings users and the official code use are
conversions, named as such:

- ``xywh`` — ``(x, y, width, height)``: the nodes' BOX, dataset records, the IAMG API;
- ``yyxx`` — ``(y1, y2, x1, x2)``: the official AnyDoor / Inter-custom tuple order.

The official ``get_bbox_from_mask`` stores the *last* foreground row/column as the far
edge and then slices with it as an exclusive end, so its crops are one pixel short on
the bottom and right. The released checkpoints were trained on those crops, so
`official_mask_box` reproduces it exactly (a `Box` whose far edges are the last
foreground row/column) and the MGIG/IAMG preprocessing that needs parity uses it; every
other caller uses `mask_box`, the tight box.

Also here: the official box arithmetic the MGIG preprocessing reproduces on such boxes
(`official_box`, `official_crop`, `expand_box`, `box_to_square`), and `check_xywh`, the
validation of a user's ``(x, y, w, h)``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .imgproc import check_size


@dataclass(frozen=True)
class Box:
    """A pixel rectangle, rows ``y0..y1-1`` and columns ``x0..x1-1`` (exclusive ends)."""

    x0: int
    y0: int
    x1: int
    y1: int

    def __post_init__(self):
        for name in ("x0", "y0", "x1", "y1"):
            value = getattr(self, name)
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
                raise TypeError(f"Box.{name}: expected whole pixels (int), got {value!r}")
            object.__setattr__(self, name, int(value))
        if self.x1 < self.x0 or self.y1 < self.y0:
            raise ValueError(f"box: far edge before near edge in {self}")

    # -- conversions ------------------------------------------------------------------
    @classmethod
    def from_xywh(cls, x: int, y: int, width: int, height: int) -> "Box":
        return cls(x, y, x + width, y + height)

    @classmethod
    def from_yyxx(cls, y1: int, y2: int, x1: int, x2: int) -> "Box":
        """From the official ``(y1, y2, x1, x2)`` tuple (its ends used as slice ends)."""
        return cls(x1, y1, x2, y2)

    @property
    def xywh(self) -> tuple[int, int, int, int]:
        return (self.x0, self.y0, self.width, self.height)

    @property
    def yyxx(self) -> tuple[int, int, int, int]:
        """The official ``(y1, y2, x1, x2)`` order."""
        return (self.y0, self.y1, self.x0, self.x1)

    # -- measures ---------------------------------------------------------------------
    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    @property
    def is_empty(self) -> bool:
        return self.width == 0 or self.height == 0

    @property
    def slices(self) -> tuple[slice, slice]:
        """``array[box.slices]`` is the box's pixels."""
        return (slice(self.y0, self.y1), slice(self.x0, self.x1))

    # -- operations -------------------------------------------------------------------
    def shifted(self, dx: int, dy: int) -> "Box":
        return Box(self.x0 + dx, self.y0 + dy, self.x1 + dx, self.y1 + dy)

    def relative_to(self, outer: "Box") -> "Box":
        """This box in the coordinates of ``outer``'s top-left corner (may extend past it)."""
        return self.shifted(-outer.x0, -outer.y0)

    def clipped(self, height: int, width: int) -> "Box":
        """The part inside a ``height`` x ``width`` image (possibly empty)."""
        x0, y0 = min(max(self.x0, 0), width), min(max(self.y0, 0), height)
        return Box(x0, y0, max(x0, min(self.x1, width)), max(y0, min(self.y1, height)))

    def grown(self, margin: int) -> "Box":
        """``margin`` pixels added on every side (unclipped: `clipped` keeps it in an image)."""
        return Box(self.x0 - margin, self.y0 - margin, self.x1 + margin, self.y1 + margin)

    def inset(self, margin: int) -> "Box":
        """``margin`` pixels taken off every side (empty, at the near corner, if too small)."""
        x0, y0 = self.x0 + margin, self.y0 + margin
        return Box(x0, y0, max(x0, self.x1 - margin), max(y0, self.y1 - margin))

    def union(self, other: "Box") -> "Box":
        """The smallest box holding this box and ``other``."""
        return Box(min(self.x0, other.x0), min(self.y0, other.y0), max(self.x1, other.x1), max(self.y1, other.y1))

    def scaled(self, factor: float) -> "Box":
        """Grown about its centre to ``factor`` times its width and height (``factor`` >= 0),
        the edges rounded outwards to whole pixels (unclipped: `clipped` keeps it in an image)."""
        cx, cy = self.x0 + self.width / 2, self.y0 + self.height / 2
        half_w, half_h = self.width * factor / 2, self.height * factor / 2
        return Box(math.floor(cx - half_w), math.floor(cy - half_h), math.ceil(cx + half_w), math.ceil(cy + half_h))

    def inside(self, height: int, width: int) -> bool:
        return 0 <= self.x0 and 0 <= self.y0 and self.x1 <= width and self.y1 <= height

    def mask(self, height: int, width: int, dtype=np.float32) -> np.ndarray:
        """A ``height`` x ``width`` array, 1 inside the box (clipped), 0 elsewhere."""
        out = np.zeros((height, width), dtype)
        out[self.clipped(height, width).slices] = 1
        return out


def mask_box(mask, name: str | None = None) -> Box | None:
    """The tight box of the non-zero pixels of ``mask`` (exclusive ends); None if empty,
    or -- given the mask's ``name`` -- a ValueError naming it."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"{name or 'mask'}: expected an H x W mask, got shape {mask.shape}")
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        if name is not None:
            raise ValueError(f"{name} is empty: it has no foreground pixels")
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return Box(int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)


def official_mask_box(mask, *, min_pixels: float = 10) -> Box:
    """The official ``get_bbox_from_mask``: far edges are the last foreground row/column,
    so used as slice ends the box is 1 px short on the bottom and right (kept for parity:
    the released models were trained on it). As in the official code, a mask whose *sum*
    is below ``min_pixels`` gives the whole image."""
    mask = np.asarray(mask)
    h, w = mask.shape[:2]
    if float(np.sum(mask)) < min_pixels:
        return Box(0, 0, w, h)
    rows = np.flatnonzero(np.any(mask, axis=1))
    cols = np.flatnonzero(np.any(mask, axis=0))
    return Box(int(cols[0]), int(rows[0]), int(cols[-1]), int(rows[-1]))


def official_box(mask, name: str = "mask") -> Box:
    """`official_mask_box` (far edges = last foreground row/column) that raises
    ``ValueError`` naming ``name`` for an empty mask and returns the box of tiny
    (< 10 pixel) masks instead of the whole image. Identical to the official box for
    every mask of 10 pixels or more."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"{name}: expected an H x W mask, got shape {mask.shape}")
    if not np.any(mask):
        raise ValueError(f"{name} is empty: it has no foreground pixels")
    return official_mask_box(mask, min_pixels=0)


def official_crop(array: np.ndarray, box: Box) -> np.ndarray:
    """``array[box.slices]`` as the official code slices an official box, but never empty:
    a box with ``y1 == y0`` (a one-row mask, whose far edge is its last row) keeps one row,
    where the official code would hand an empty crop to cv2.resize and fail."""
    return array[box.y0:max(box.y1, box.y0 + 1), box.x0:max(box.x1, box.x0 + 1)]


# -- the official box arithmetic (AnyDoor / Inter-custom ``data_utils``) --------------

def _shape_hw(shape) -> tuple[int, int]:
    """The (height, width) leading an image shape."""
    try:
        leading = tuple(shape[:2])
    except TypeError:
        raise ValueError(f"shape: expected (height, width, ...), got {shape!r}") from None
    return check_size(leading, "shape")


def _is_finite_number(value) -> bool:
    try:
        return math.isfinite(value)
    except TypeError:
        return False


def expand_box(box: Box, ratio: float, shape, min_crop: float = 0) -> Box:
    """Grow ``box`` about its centre by ``ratio`` (at least ``min_crop`` pixels per side)
    and clip it to ``shape = (height, width, ...)`` (so ``image.shape`` works).

    The official ``expand_bbox`` with its ratio passed in instead of drawn at random
    (``randint(10 * lo, 10 * hi) / 10``): written for official boxes (`official_box`), the
    size is ``ratio * (y1 - y0 + 1)``, the new edges are truncated towards zero with
    ``int()``. One addition: where that arithmetic yields an empty box (a one-pixel mask on
    the image's top or left edge), the box keeps one pixel instead.

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
    at the border leaves it non-square (the MGIG hint pads it square afterwards). A
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


def check_xywh(box: Sequence[float], height: int, width: int, what: str = "background") -> Box:
    """Validate a user's pixel box ``(x, y, w, h)`` (values rounded to whole pixels):
    positive size, inside the ``height`` x ``width`` image. Raises ValueError naming
    ``what`` and what was expected; values all in [0, 1] and not all whole numbers are
    refused as fractions of the image (not silently rounded to a box without area)."""
    try:
        values = [float(v) for v in box]
    except (TypeError, ValueError):
        raise ValueError(f"box: expected (x, y, w, h) in {what} pixels, got {box!r}") from None
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise ValueError(f"box: expected 4 finite numbers (x, y, w, h) in {what} pixels, got {box!r}")
    if all(0.0 <= v <= 1.0 for v in values) and not all(v.is_integer() for v in values):
        # (0.1, 0.2, 0.5, 0.5) would round to a box with no area; say what it looks like.
        shown = "(" + ", ".join(f"{v:g}" for v in values) + ")"
        raise ValueError(f"box must be in pixels; {shown} looks like fractions of the image — multiply by "
                         f"the width/height (this {what} is {width}x{height} pixels)")
    x, y, w, h = (int(round(v)) for v in values)
    if w < 1 or h < 1:
        raise ValueError(f"box has no area (width {w}, height {h}); give a positive width and height")
    if x < 0 or y < 0 or x + w > width or y + h > height:
        raise ValueError(f"box (x={x}, y={y}, width={w}, height={h}) lies outside the {width}x{height} {what}; "
                         f"it must satisfy 0 <= x, x+width <= {width}, 0 <= y and y+height <= {height}")
    return Box.from_xywh(x, y, w, h)
