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
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np


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

    def inside(self, height: int, width: int) -> bool:
        return 0 <= self.x0 and 0 <= self.y0 and self.x1 <= width and self.y1 <= height

    def mask(self, height: int, width: int, dtype=np.float32) -> np.ndarray:
        """A ``height`` x ``width`` array, 1 inside the box (clipped), 0 elsewhere."""
        out = np.zeros((height, width), dtype)
        out[self.clipped(height, width).slices] = 1
        return out


def mask_box(mask) -> Box | None:
    """The tight box of the non-zero pixels of ``mask`` (exclusive ends); None if empty."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask: expected an H x W mask, got shape {mask.shape}")
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
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
