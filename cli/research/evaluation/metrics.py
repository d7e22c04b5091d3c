"""The pure metrics of the CHOI evaluation: numpy in, numbers out (no models, no files).

Masks and pixels: mask IoU, the spatial KL of mask occupancy maps, mask-in-box, the verb
read off a mask's shape (k nearest ground-truth shapes), changed pixels and confinement,
CIELAB conversion and the colour distances, plus the resizing / masking helpers they
share and the constants that define them. What each measure means and why it is built
this way: `cli.research.evaluation.evaluate` (module notes), which runs them over a dataset.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
from PIL import Image

from ....pipelines import imgproc
from ....pipelines.geometry import Box

MASK_GRID = 64                  # occupancy-map resolution of mask_kl
KL_EPS = 1e-3                   # per-cell mass added before normalising (finite KL)
CHANGE_DELTA_E = 10.0           # ΔE76 above which a pixel counts as changed (clearly visible)
COLOUR_BIN = 8                  # RGB bin width for colour_* (bin centres differ by ≤ 4 levels)
COLOUR_ERODE = 1                # px of mask erosion before colour_* (drops blended edges)
SHAPE_SIDE = 32                 # mask_verb: masks compared as their bounding box resized to 32²
SHAPE_K = 5                     # mask_verb: k nearest ground-truth shapes vote


# ----------------------------------------------------------------------------- images


def resize_image(image: np.ndarray, shape_hw: Sequence[int]) -> np.ndarray:
    """Bilinear resize of a uint8 RGB image to (height, width), as ``cv2.resize`` does in
    the official evaluation (no-op at the same size)."""
    h, w = int(shape_hw[0]), int(shape_hw[1])
    return image if image.shape[:2] == (h, w) else imgproc.resize_linear(image, (h, w))


def resize_mask(mask: np.ndarray, shape_hw: Sequence[int]) -> np.ndarray:
    """Nearest-neighbour resize of a bool mask to (height, width)."""
    h, w = int(shape_hw[0]), int(shape_hw[1])
    return mask if mask.shape == (h, w) else imgproc.resize_nearest(mask, (h, w))


def on_white(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The image where `mask` is set, white elsewhere (the DINO-Score input)."""
    return np.where(np.asarray(mask, bool)[..., None], image, np.uint8(255)).astype(np.uint8)


def box_mask(box_xywh: Sequence[int], shape_hw: Sequence[int]) -> np.ndarray:
    """Bool mask of an ``[x, y, w, h]`` box (columns x..x+w-1, rows y..y+h-1), clipped."""
    return _box_in(box_xywh, shape_hw).mask(int(shape_hw[0]), int(shape_hw[1]), dtype=bool)


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB (uint8, or float in 0..255) -> CIELAB (D65 white), float64, same leading shape."""
    c = np.asarray(rgb, np.float64) / 255.0
    lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    m = np.array([[0.4124564, 0.3575761, 0.1804375],
                  [0.2126729, 0.7151522, 0.0721750],
                  [0.0193339, 0.1191920, 0.9503041]])
    xyz = lin @ m.T / np.array([0.95047, 1.0, 1.08883])
    d = 6.0 / 29.0
    f = np.where(xyz > d ** 3, np.cbrt(xyz), xyz / (3 * d * d) + 4.0 / 29.0)
    return np.stack([116.0 * f[..., 1] - 16.0, 500.0 * (f[..., 0] - f[..., 1]),
                     200.0 * (f[..., 1] - f[..., 2])], axis=-1)


# ----------------------------------------------------------------------------- mask measures


def occupancy(mask: np.ndarray, grid: int = MASK_GRID) -> np.ndarray:
    """Area fraction of `mask` in each cell of a grid × grid map (exact box filter)."""
    m = np.asarray(mask, bool)
    if m.ndim != 2 or m.size == 0:
        raise ValueError(f"mask: expected a non-empty H×W array, got shape {m.shape}")
    img = Image.fromarray(m.astype(np.float32), "F")
    return np.asarray(img.resize((grid, grid), Image.BOX), np.float64).clip(0.0, 1.0)


def mask_distribution(mask: np.ndarray, grid: int = MASK_GRID, eps: float = KL_EPS) -> np.ndarray:
    """The mask's spatial distribution: ``(occupancy + eps) / sum`` over a grid × grid map."""
    o = occupancy(mask, grid) + eps
    return o / o.sum()


def spatial_kl(gt_mask: np.ndarray, gen_mask: np.ndarray, grid: int = MASK_GRID, eps: float = KL_EPS) -> float:
    """``KL(P_gt || P_gen)`` in nats of the two masks' `mask_distribution`s (module notes)."""
    p, q = mask_distribution(gt_mask, grid, eps), mask_distribution(gen_mask, grid, eps)
    return float(np.sum(p * (np.log(p) - np.log(q))))


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two same-size masks (1.0 for two empty masks)."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    if a.shape != b.shape:
        raise ValueError(f"mask_iou: masks differ in size, {a.shape} vs {b.shape}")
    union = np.count_nonzero(a | b)
    return 1.0 if union == 0 else float(np.count_nonzero(a & b) / union)


def mask_in_box(mask: np.ndarray, box_xywh: Sequence[int]) -> float | None:
    """Share of the mask's pixels inside the ``[x, y, w, h]`` box (None for an empty mask)."""
    m = np.asarray(mask, bool)
    total = np.count_nonzero(m)
    return None if total == 0 else float(np.count_nonzero(m & box_mask(box_xywh, m.shape)) / total)


def mask_shape(mask: np.ndarray, side: int = SHAPE_SIDE) -> np.ndarray | None:
    """A mask's shape, free of position and scale: its bounding box resized to side²
    (bilinear, then > 0.5), bool; None for an empty mask."""
    ys, xs = np.nonzero(mask)
    if not len(ys):
        return None
    crop = (mask[ys.min():ys.max() + 1, xs.min():xs.max() + 1] > 0).astype(np.float32)
    resized = Image.fromarray(crop, mode="F").resize((side, side), Image.BILINEAR)
    return np.asarray(resized) > 0.5


def shape_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two `mask_shape`s, the better of ``b`` and its mirror image (a person
    may face either way)."""
    return max(mask_iou(a, b), mask_iou(a, b[:, ::-1]))


def nearest_verb(shape: np.ndarray | None, references: Sequence[tuple[np.ndarray, str]],
                 k: int = SHAPE_K) -> str | None:
    """The verb the k most similar reference shapes vote for (ties: the most similar
    one's); None for an empty mask or no references."""
    if shape is None or not references:
        return None
    scored = sorted(((shape_similarity(shape, ref), verb) for ref, verb in references), key=lambda s: -s[0])[:k]
    votes: dict[str, int] = {}
    for _, verb in scored:
        votes[verb] = votes.get(verb, 0) + 1
    best = max(votes.values())
    return next(verb for _, verb in scored if votes[verb] == best)


def verb_references(truths: Iterable[tuple[str, np.ndarray, str]]) -> list[tuple[str, np.ndarray, str]]:
    """(sample id, shape, verb) of every non-empty ground-truth union mask in ``truths``,
    (sample id, union mask, verb) triples."""
    out = []
    for sid, union, verb in truths:
        shape = mask_shape(np.asarray(union) > 0)
        if shape is not None:
            out.append((sid, shape, verb))
    return out


def verb_accuracy_of_ground_truth(references: Sequence[tuple[str, np.ndarray, str]], k: int = SHAPE_K) -> float | None:
    """Leave-one-out accuracy of `nearest_verb` on the ground-truth masks themselves: the
    ceiling ``mask_verb`` can reach on this dataset."""
    if len(references) < 2:
        return None
    hits = [nearest_verb(shape, [(r, v) for j, (_, r, v) in enumerate(references) if j != i], k) == verb
            for i, (_, shape, verb) in enumerate(references)]
    return float(np.mean(hits))


# mask_iou_mirror and the pose reference: the synthetic data mirrors every pair at random
# (`synth.make_scene`), and nothing IAMG sees (caption, background, box) tells which way.
POSE_REFERENCE_OTHERS = 16      # pose reference: at most this many other samples per sample


def _box_in(box_xywh: Sequence[int], shape_hw: Sequence[int]) -> Box:
    """The ``[x, y, w, h]`` of a record as a `Box`, clipped to a ``shape_hw`` image."""
    return Box.from_xywh(*(int(v) for v in box_xywh)).clipped(int(shape_hw[0]), int(shape_hw[1]))


def mirror_in_box(mask: np.ndarray, box_xywh: Sequence[int]) -> np.ndarray:
    """``mask`` (bool) with its part inside the ``[x, y, w, h]`` box mirrored left to right:
    the same figure facing the other way."""
    m = np.asarray(mask, bool).copy()
    box = _box_in(box_xywh, m.shape)
    m[box.slices] = m[box.slices][:, ::-1]
    return m


def mask_iou_mirror(generated: np.ndarray, truth: np.ndarray, box_xywh: Sequence[int]) -> float:
    """The better of the IoU with ``truth`` and with ``truth`` mirrored in its box: how
    well the pose fits, whichever way the figure faces."""
    return max(mask_iou(generated, truth), mask_iou(generated, mirror_in_box(truth, box_xywh)))


def fit_to_box(mask: np.ndarray, box_xywh: Sequence[int], target_box_xywh: Sequence[int],
               shape_hw: Sequence[int]) -> np.ndarray:
    """The part of ``mask`` inside ``box_xywh`` resized (nearest) into ``target_box_xywh``
    of an empty ``shape_hw`` mask: another sample's figure placed where this one goes."""
    m = np.asarray(mask, bool)
    src, dst = _box_in(box_xywh, m.shape), _box_in(target_box_xywh, shape_hw)
    out = np.zeros((int(shape_hw[0]), int(shape_hw[1])), bool)
    if not (src.is_empty or dst.is_empty):
        out[dst.slices] = imgproc.resize_nearest(m[src.slices], (dst.height, dst.width))
    return out


def pose_reference(samples: Sequence[tuple[str, str, np.ndarray, Sequence[int]]],
                   others: int = POSE_REFERENCE_OTHERS) -> dict | None:
    """What ``mask_iou`` / ``mask_iou_mirror`` a model scores when it draws a *right* pose
    that is not the sample's own: each sample's true union mask against the true masks of
    up to ``others`` other samples with the same verb and object (in dataset order), each
    fitted to this sample's box (`fit_to_box`). ``samples``: (verb, object, union mask,
    box) per sample. Returns the means over all such pairs, ``{"mask_iou", "mask_iou_mirror",
    "pairs"}``, or None when no two samples share a verb and object."""
    iou, mirrored = [], []
    for i, (verb, obj, truth, box) in enumerate(samples):
        truth = np.asarray(truth, bool)
        peers = [(m, b) for j, (v, o, m, b) in enumerate(samples) if j != i and (v, o) == (verb, obj)][:others]
        for mask, peer_box in peers:
            fitted = fit_to_box(mask, peer_box, box, truth.shape)
            iou.append(mask_iou(fitted, truth))
            mirrored.append(mask_iou_mirror(fitted, truth, box))
    if not iou:
        return None
    return {"mask_iou": float(np.mean(iou)), "mask_iou_mirror": float(np.mean(mirrored)), "pairs": len(iou)}


def changed_pixels(image: np.ndarray, background: np.ndarray, threshold: float = CHANGE_DELTA_E) -> np.ndarray:
    """Pixels where `image` differs from `background` by more than `threshold` ΔE76."""
    if image.shape != background.shape:
        raise ValueError(f"changed_pixels: image {image.shape} and background {background.shape} differ in size")
    return np.linalg.norm(rgb_to_lab(image) - rgb_to_lab(background), axis=-1) > threshold


def confinement(changed: np.ndarray, region: np.ndarray) -> float:
    """Share of the changed pixels that lie inside `region` (1.0 when nothing changed)."""
    changed, region = np.asarray(changed, bool), np.asarray(region, bool)
    total = np.count_nonzero(changed)
    return 1.0 if total == 0 else float(np.count_nonzero(changed & region) / total)


def _colour_bins(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    binned = (np.asarray(pixels, np.int64).reshape(-1, 3) // COLOUR_BIN) * COLOUR_BIN + COLOUR_BIN // 2
    colours, counts = np.unique(binned, axis=0, return_counts=True)
    return rgb_to_lab(colours), counts.astype(np.float64)


def _mean_nearest(src: tuple[np.ndarray, np.ndarray], dst: tuple[np.ndarray, np.ndarray]) -> float:
    (lab_s, w_s), (lab_d, _) = src, dst
    nearest = np.empty(len(lab_s))
    for i in range(0, len(lab_s), 1024):  # chunks keep the distance matrix small
        d = np.linalg.norm(lab_s[i:i + 1024, None, :] - lab_d[None, :, :], axis=-1)
        nearest[i:i + 1024] = d.min(axis=1)
    return float(np.sum(nearest * w_s) / np.sum(w_s))


def colour_distance(reference_pixels: np.ndarray, generated_pixels: np.ndarray) -> float | None:
    """Symmetric nearest-colour distance (ΔE76, CIELAB) between two sets of RGB pixels
    (N×3): the mean over generated pixels of the distance to the nearest reference colour,
    averaged with the mean from reference to generated. None if either set is empty."""
    ref, gen = np.asarray(reference_pixels).reshape(-1, 3), np.asarray(generated_pixels).reshape(-1, 3)
    if len(ref) == 0 or len(gen) == 0:
        return None
    r, g = _colour_bins(ref), _colour_bins(gen)
    return 0.5 * (_mean_nearest(g, r) + _mean_nearest(r, g))


def mean_colour_distance(truth_pixels: np.ndarray, generated_pixels: np.ndarray) -> float | None:
    """ΔE76 between the mean CIELAB colours of two sets of RGB pixels (N×3); None if
    either is empty."""
    truth, gen = np.asarray(truth_pixels).reshape(-1, 3), np.asarray(generated_pixels).reshape(-1, 3)
    if len(truth) == 0 or len(gen) == 0:
        return None
    return float(np.linalg.norm(rgb_to_lab(truth).mean(0) - rgb_to_lab(gen).mean(0)))


def region_pixels(image: np.ndarray, mask: np.ndarray, erode_px: int = COLOUR_ERODE) -> np.ndarray:
    """RGB pixels of `image` under `mask` eroded by `erode_px`, as N×3. A thin part that
    erosion would mostly remove (less than half its pixels left) is used uneroded."""
    m = np.asarray(mask, bool)
    if erode_px > 0:
        eroded = imgproc.erode(m.astype(np.uint8), 2 * erode_px + 1).astype(bool)
        if 2 * np.count_nonzero(eroded) >= np.count_nonzero(m):
            m = eroded
    return image[m]



def blend_border_step(image: np.ndarray, alpha: np.ndarray) -> float | None:
    """Mean |Δ| (0..255, averaged over RGB) between 4-neighbour pixels on either side of the
    outer border of a paste, where ``alpha`` goes from 0 (kept background) to > 0 (pasted
    or blended). Compared with the same number on the untouched background it measures the
    seam a paste leaves: a seamless paste steps no more than the scene itself. None when
    ``alpha`` has no such border."""
    img = np.asarray(image, np.float32)
    out = np.asarray(alpha) <= 0
    steps = []
    for a, b, oa, ob in ((img[:, :-1], img[:, 1:], out[:, :-1], out[:, 1:]),
                         (img[:-1], img[1:], out[:-1], out[1:])):
        border = oa != ob
        if border.any():
            steps.append(np.abs(a[border] - b[border]).mean(axis=-1))
    if not steps:
        return None
    return float(np.concatenate(steps).mean())
