"""The official MGIG training-time mask augmentation (Inter-custom ``perturb_mask``): the
interaction mask in the hint's layout channel is randomly grown and eroded, so the model
learns to follow a rough mask (`data.MGIGTrainData`). Inference never perturbs.
"""
from __future__ import annotations

import numpy as np

from ....pipelines import imgproc
from ....pipelines.readers import as_mask


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
    Returns a uint8 {0, 1} mask. Training only: inference never perturbs (docs/METHOD.md §7).
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
