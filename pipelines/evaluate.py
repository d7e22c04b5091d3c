"""Evaluation of generated CHOI images (DESIGN.md §4, paper Tables 2-4).

``python -m interact_custom evaluate --dataset DATA --generated GEN --out REPORT
[--clip MODEL] [--dino MODEL] [--pred-masks DIR | --interaction-masks DIR]
[--synthetic | --no-synthetic] [--split S] [--limit N] [--device D] [--overwrite]``

Inputs
------
* ``--dataset``: a CHOI dataset (`pipelines.dataset` format). Its ``target`` is the
  ground truth; its human / object masks are the ground-truth masks.
* ``--generated``: one image per sample, matched by sample id: **``GEN/<id>.png``**
  (RGB; RGBA / palette flattened on white). Samples without that file are listed as
  missing and not scored; files that match no sample are ignored. A generated image of
  another size is resized (bilinear, as the official evaluation's ``cv2.resize``) to the
  target's size for every measure that compares pixels or uses the ground-truth masks.
* Masks of the generated images, for the spatial measures, also ``<id>.png`` (L, binarised
  at 128, nearest-resized to the target size): ``--pred-masks`` = masks predicted from
  the generated images (a segmenter run by the user), or ``--interaction-masks`` = the
  interaction mask each image was generated from (IAMG / IAMG-R output; the synthetic
  benchmark). The report records which.
* Models, from local files only (nothing is downloaded): ``--clip`` a transformers
  ``CLIPVisionModelWithProjection`` folder (``config.json`` + weights; a ``CLIPModel``
  folder works too) or one ``.safetensors`` / ``.bin`` file with its tensors in
  transformers naming; ``--dino`` a transformers ``Dinov2Model`` folder or one file in the
  original DINOv2 naming (``dinov2_vitg14_pretrain.pth``, what the official evaluation
  loads; an MGIG/AnyDoor checkpoint's ``cond_stage_model.model.*`` also works). A metric
  whose model is not given is skipped and reported as such; a given path that does not
  exist is an error naming it.

Metrics (per sample, then mean / population std / count over the samples that have them)
------------------------------------------------------------------------------------------
* ``clip_score``: cosine of the CLIP image embeddings (``image_embeds``) of the generated
  image and the target, each preprocessed like OpenAI CLIP (bicubic resize of the short
  side, centre crop, CLIP mean/std). ★ The official ``eval_clip.py`` takes the
  *unnormalised* dot product; we use the cosine (in [-1, 1], 1 = identical).
* ``dino_human`` / ``dino_object`` / ``dino_pair``: both images masked with the
  ground-truth human / object / union mask on white, resized to 224² (bilinear), ImageNet
  normalised, DINOv2 with the official position-embedding interpolation; feature = the CLS
  token after the final LayerNorm; cosine. ★ The official ``eval_dino.py`` projects all
  tokens with an untrained, unseeded ``nn.Linear`` first, so its numbers change from run to
  run; ours are deterministic.
* ``mask_kl``: spatial-configuration alignment (no official code). Each binary mask is
  area-averaged to a ``MASK_GRID`` × ``MASK_GRID`` (64²) occupancy map ``o`` in [0, 1];
  its distribution is ``P = (o + KL_EPS) / sum(o + KL_EPS)`` with ``KL_EPS = 1e-3`` (so
  an empty cell keeps a small mass and the divergence stays finite);
  ``mask_kl = KL(P_gt || P_gen) = sum P_gt log(P_gt / P_gen)`` in nats, ground truth =
  union of the target's human and object masks. 0 = same layout; two disjoint masks of
  equal area give ``log((1 + eps) / eps) / (1 + 2 eps)`` (6.89 nats); an empty generated
  mask gives at most ``log(64²)`` (8.32).
* ``mask_iou``: intersection over union of the generated mask and the ground-truth union
  mask at the target's resolution.
* Synthetic-benchmark measures (on by default when every sample carries the ``synth``
  record of `pipelines.synth`; ``--synthetic`` / ``--no-synthetic`` force it):
  - ``mask_in_box``: share of the generated mask's pixels inside the sample's box.
  - ``colour_human`` / ``colour_object``: colour preservation, CIE ΔE76 in CIELAB (D65),
    lower is better: the symmetric nearest-colour (chamfer) distance between the
    reference's pixels (inside its mask) and the generated image's pixels inside the
    ground-truth mask: mean over generated pixels of the distance to the nearest
    reference colour, averaged with the same from reference to generated. Poses differ
    between reference and target, so pixels cannot be paired; nearest colours are robust
    to patterns and to how much of each part is visible. Both masks are eroded by
    ``COLOUR_ERODE`` px first (edge pixels blend with the background; a thin part that
    erosion would mostly remove is used as is), and colours are binned to ``COLOUR_BIN``
    RGB levels (each channel within 4 levels of its bin centre) to keep it fast. Perfect
    generation does not give exactly 0: a target shows shading / parts the reference may
    not (e.g. a racket's strings seen from another side), most of all at low resolution.
  - ``colour_mean_human`` / ``colour_mean_object``: is the part the right colour overall?
    ΔE76 between the mean CIELAB colour of the generated image and of the ground-truth
    target under the same (eroded) ground-truth mask. The chamfer measure above forgives
    a region of many colours that happens to contain the reference's; this one does not
    (an output in the dataset's average colour scores badly whatever its spread).
  - ``mask_verb``: does the generated mask's *shape* express the requested interaction?
    Every mask is reduced to its shape (`mask_shape`: its bounding box resized to
    ``SHAPE_SIDE``², so position and size do not count) and classified by the
    ``SHAPE_K`` most similar ground-truth union masks of the *other* samples of the
    dataset (similarity = IoU, the better of the shape and its mirror image); 1 when
    their vote is the sample's verb. The report gives the same classifier's
    leave-one-out accuracy on the ground-truth masks (the ceiling) and chance.
  - ``confinement_box`` / ``confinement_mask``: of the pixels the generation changed
    (ΔE76 > ``CHANGE_DELTA_E`` = 10 against the sample's ``background``), the share inside
    the box / inside the mask (the generated mask when given, else the ground-truth union
    mask; the report says which). 1 when nothing changed.
* Interaction accuracy (an HOI judge such as LLaVA / FGAHOI in the paper) is not computed:
  no such model runs offline here. `HOIJudge` is the interface for one; the Python API
  (`evaluate(judge=...)`) calls it and reports ``interaction`` = mean score.

Output: ``REPORT/metrics.json`` (settings, per-sample values, aggregates, skipped metrics
with reasons) and ``REPORT/metrics.md`` (a table); the table is also printed.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np
from PIL import Image

from . import imgproc
from .dataset import ChoiDataset, DatasetError
from ..weights_manager.files import write_text_atomic

GENERATED_SUFFIX = ".png"       # generated image / mask of sample <id>: <folder>/<id>.png
REPORT_JSON, REPORT_MD = "metrics.json", "metrics.md"
DINO_SIZE = 224                 # the official eval_dino.py resizes masked images to 224²
MASK_GRID = 64                  # occupancy-map resolution of mask_kl
KL_EPS = 1e-3                   # per-cell mass added before normalising (finite KL)
CHANGE_DELTA_E = 10.0           # ΔE76 above which a pixel counts as changed (clearly visible)
COLOUR_BIN = 8                  # RGB bin width for colour_* (bin centres differ by ≤ 4 levels)
COLOUR_ERODE = 1                # px of mask erosion before colour_* (drops blended edges)
SHAPE_SIDE = 32                 # mask_verb: masks compared as their bounding box resized to 32²
SHAPE_K = 5                     # mask_verb: k nearest ground-truth shapes vote
# OpenAI CLIP preprocessing statistics (clip.load's Normalize; transformers' OPENAI_CLIP_MEAN).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# FrozenDinoV2Encoder's ImageNet statistics.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

INTERACTION_NOTE = ("interaction accuracy not computed: it needs an HOI judge (LLaVA / FGAHOI in the paper), "
                    "which is out of reach offline; pass an HOIJudge to evaluate() to add it")


@dataclass(frozen=True)
class Metric:
    """What a metric key means (one source for the JSON, the table and the docs)."""

    name: str
    higher_is_better: bool
    description: str


METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("clip_score", True, "CLIP image-embedding cosine, generated vs target"),
    Metric("dino_human", True, "DINOv2 CLS cosine, both images masked by the GT human mask on white"),
    Metric("dino_object", True, "DINOv2 CLS cosine, both images masked by the GT object mask on white"),
    Metric("dino_pair", True, "DINOv2 CLS cosine, both images masked by the GT union mask on white"),
    Metric("mask_kl", False, f"KL(GT || generated) of {MASK_GRID}² mask occupancy distributions, nats"),
    Metric("mask_iou", True, "IoU of the generated mask and the GT union mask"),
    Metric("mask_in_box", True, "share of the generated mask inside the box"),
    Metric("colour_human", False, "ΔE76 nearest-colour distance, human reference vs generated human region"),
    Metric("colour_object", False, "ΔE76 nearest-colour distance, object reference vs generated object region"),
    Metric("colour_mean_human", False, "ΔE76 between mean CIELAB colours, generated vs GT human region"),
    Metric("colour_mean_object", False, "ΔE76 between mean CIELAB colours, generated vs GT object region"),
    Metric("confinement_box", True, "share of changed pixels (vs background) inside the box"),
    Metric("confinement_mask", True, "share of changed pixels (vs background) inside the mask"),
    Metric("mask_verb", True, f"the generated mask's shape reads as the requested verb ({SHAPE_K}-NN over the "
                              "dataset's other GT masks, box-normalised, flip-invariant)"),
    Metric("interaction", True, "mean HOI-judge score (only with a judge)"),
)}
GROUPS = {
    "clip": ("clip_score",),
    "dino": ("dino_human", "dino_object", "dino_pair"),
    "mask": ("mask_kl", "mask_iou"),
    "synthetic": ("mask_in_box", "mask_verb", "colour_human", "colour_object", "colour_mean_human",
                  "colour_mean_object", "confinement_box",
                  "confinement_mask"),
}


class EvaluationError(ValueError):
    """Inputs of an evaluation that cannot be used (the message names the file / option)."""


# ----------------------------------------------------------------------------- images


def load_rgb(path: str | os.PathLike, what: str = "image") -> np.ndarray:
    """Read an RGB uint8 image (RGBA / LA / palette flattened on white)."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("RGBA", "LA", "P"):
                im = im.convert("RGBA")
                flat = Image.new("RGB", im.size, (255, 255, 255))
                flat.paste(im, mask=im.getchannel("A"))
                im = flat
            return np.asarray(im.convert("RGB")).copy()
    except (OSError, SyntaxError, ValueError) as exc:
        raise EvaluationError(f"cannot read {what} {path}: {exc}") from exc


def load_mask(path: str | os.PathLike, what: str = "mask") -> np.ndarray:
    """Read a mask as bool (grey level >= 128 is foreground, as the dataset reader)."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("L")) >= 128
    except (OSError, SyntaxError, ValueError) as exc:
        raise EvaluationError(f"cannot read {what} {path}: {exc}") from exc


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
    """Bool mask of an ``[x, y, w, h]`` box (columns x..x+w-1, rows y..y+h-1)."""
    x, y, w, h = (int(v) for v in box_xywh)
    out = np.zeros((int(shape_hw[0]), int(shape_hw[1])), bool)
    out[max(y, 0):max(y + h, 0), max(x, 0):max(x + w, 0)] = True
    return out


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


def verb_references(dataset: ChoiDataset) -> list[tuple[str, np.ndarray, str]]:
    """(sample id, shape, verb) of every ground-truth union mask of ``dataset``."""
    out = []
    for s in dataset:
        shape = mask_shape((s.human_mask > 0) | (s.object_mask > 0))
        if shape is not None:
            out.append((s.id, shape, s.verb))
    return out


def verb_accuracy_of_ground_truth(references: Sequence[tuple[str, np.ndarray, str]], k: int = SHAPE_K) -> float | None:
    """Leave-one-out accuracy of `nearest_verb` on the ground-truth masks themselves: the
    ceiling ``mask_verb`` can reach on this dataset."""
    if len(references) < 2:
        return None
    hits = [nearest_verb(shape, [(r, v) for j, (_, r, v) in enumerate(references) if j != i], k) == verb
            for i, (_, shape, verb) in enumerate(references)]
    return float(np.mean(hits))


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


# ----------------------------------------------------------------------------- models


def _require_path(path: str | os.PathLike, what: str, option: str) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"{what} model {p} does not exist ({option} takes a local transformers "
                                "model folder or a weight file; nothing is downloaded)")
    return p


def _count_layers(keys: Iterable[str], pattern: str) -> int:
    found = [int(m.group(1)) for k in keys if (m := re.match(pattern, k))]
    return 1 + max(found) if found else 0


class CLIPImageEncoder:
    """CLIP image embeddings (transformers ``CLIPVisionModelWithProjection``) with OpenAI
    CLIP's preprocessing: bicubic resize of the short side to the model's image size
    (PIL, like torchvision's ``Resize`` on PIL images), centre crop, normalise."""

    def __init__(self, model, *, mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD,
                 device="cpu", source: str = ""):
        import torch
        self.device = torch.device(device)
        self.model = model.to(self.device, torch.float32).eval()
        self.image_size = int(model.config.image_size)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self.source = source

    @classmethod
    def from_path(cls, path: str | os.PathLike, device="cpu") -> "CLIPImageEncoder":
        """Load from a local folder (``config.json`` + weights; mean/std from its
        ``preprocessor_config.json`` when present) or one weight file in transformers
        naming (``vision_model.*`` + ``visual_projection.weight``, e.g. a ComfyUI
        clip_vision file); for a file the architecture is read from the tensor shapes
        (64-wide heads; activation quick_gelu as OpenAI CLIP, gelu for the OpenCLIP
        ViT-H/-bigG widths 1280/1664)."""
        from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

        p = _require_path(path, "CLIP", "--clip")
        mean, std = CLIP_MEAN, CLIP_STD
        if p.is_dir():
            if not (p / "config.json").is_file():
                raise FileNotFoundError(f"CLIP model folder {p} has no config.json (expected a transformers "
                                        "CLIPVisionModelWithProjection / CLIPModel folder)")
            pre = p / "preprocessor_config.json"
            if pre.is_file():
                cfg = json.loads(pre.read_text(encoding="utf-8"))
                mean, std = tuple(cfg.get("image_mean", mean)), tuple(cfg.get("image_std", std))
            try:
                model = CLIPVisionModelWithProjection.from_pretrained(str(p), local_files_only=True)
            except (OSError, ValueError) as exc:
                raise EvaluationError(f"cannot load a CLIPVisionModelWithProjection from {p}: {exc}") from exc
            return cls(model, mean=mean, std=std, device=device, source=str(p))

        from ..weights_manager.files import load_strict, read_weights
        sd, _ = read_weights(p)
        vision = {k[k.index("vision_model."):]: v for k, v in sd.items() if "vision_model." in k}
        proj = next((v for k, v in sd.items() if k.endswith("visual_projection.weight")), None)
        if not vision or proj is None:
            raise EvaluationError(f"{p}: expected CLIP vision tensors in transformers naming ('vision_model.*' "
                                  "and 'visual_projection.weight'); for other formats pass a transformers folder")
        hidden, _, patch, _ = vision["vision_model.embeddings.patch_embedding.weight"].shape
        positions = vision["vision_model.embeddings.position_embedding.weight"].shape[0] - 1
        config = CLIPVisionConfig(
            hidden_size=hidden, patch_size=patch, image_size=math.isqrt(positions) * patch,
            intermediate_size=vision["vision_model.encoder.layers.0.mlp.fc1.weight"].shape[0],
            num_hidden_layers=_count_layers(vision, r"vision_model\.encoder\.layers\.(\d+)\."),
            num_attention_heads=max(1, hidden // 64), projection_dim=proj.shape[0],
            hidden_act="gelu" if hidden in (1280, 1664) else "quick_gelu")
        model = CLIPVisionModelWithProjection(config)
        load_strict(model, {**{k: v for k, v in vision.items() if not k.endswith("position_ids")},
                            "visual_projection.weight": proj}, f"CLIP vision weights {p}")
        return cls(model, device=device, source=str(p))

    def preprocess(self, image: np.ndarray):
        """uint8 RGB H×W×3 -> normalised float tensor 3×S×S (S = the model's image size)."""
        import torch
        s = self.image_size
        h, w = image.shape[:2]
        # torchvision Resize(int): the short side becomes s, the long side int(s * long / short).
        nh, nw = (s, int(s * w / h)) if h <= w else (int(s * h / w), s)
        resized = np.asarray(Image.fromarray(image).resize((nw, nh), Image.BICUBIC))
        top, left = int(round((nh - s) / 2.0)), int(round((nw - s) / 2.0))
        crop = resized[top:top + s, left:left + s]
        x = torch.from_numpy(np.array(crop)).permute(2, 0, 1).float() / 255.0
        return (x - self.mean) / self.std

    def features(self, images: Sequence[np.ndarray]):
        """Unit-length image embeddings [N, projection_dim] (float32, CPU)."""
        import torch
        batch = torch.stack([self.preprocess(im) for im in images]).to(self.device)
        with torch.inference_mode():
            emb = self.model(pixel_values=batch).image_embeds.float()
        return torch.nn.functional.normalize(emb, dim=-1).cpu()


def _dinov2_config_from_original(sd: Mapping[str, Any], where: str):
    from transformers import Dinov2Config

    from .mgig import dinov2_kwargs

    if any(k.startswith("register_tokens") for k in sd):
        raise EvaluationError(f"{where}: DINOv2 with register tokens is not supported; use a plain DINOv2")
    hidden = sd["cls_token"].shape[-1]
    patch = sd["patch_embed.proj.weight"].shape[-1]
    grid = math.isqrt(sd["pos_embed"].shape[1] - 1)
    swiglu = "blocks.0.mlp.w12.weight" in sd
    if swiglu:
        # transformers derives the SwiGLU width from mlp_ratio like DINOv2's SwiGLUFFNFused.
        width = sd["blocks.0.mlp.w12.weight"].shape[0] // 2
        ratios = [r for r in range(1, 9) if (int(hidden * r * 2 / 3) + 7) // 8 * 8 == width]
        if not ratios:
            raise EvaluationError(f"{where}: DINOv2 SwiGLU width {width} matches no mlp_ratio for width {hidden}")
        mlp_ratio = 4 if 4 in ratios else ratios[0]
    else:
        width = sd["blocks.0.mlp.fc1.weight"].shape[0]
        if width % hidden:
            raise EvaluationError(f"{where}: DINOv2 MLP width {width} is not a multiple of the width {hidden}")
        mlp_ratio = width // hidden
    kwargs = dinov2_kwargs(hidden_size=hidden, depth=_count_layers(sd, r"blocks\.(?:\d+\.)?(\d+)\."),
                           patch_size=patch, image_size=grid * patch, mlp_ratio=mlp_ratio)
    kwargs["use_swiglu_ffn"] = swiglu
    return Dinov2Config(**kwargs)


class DINOEncoder:
    """DINOv2 CLS features (transformers ``Dinov2Model``): ImageNet normalisation, the
    official DINOv2 position-embedding interpolation (``pipelines.mgig``), CLS token after
    the final LayerNorm."""

    def __init__(self, model, device="cpu", source: str = ""):
        """`model`: a transformers ``Dinov2Model``; its embeddings module is replaced (in
        place) by one with the official interpolation, same weights."""
        import torch

        from .mgig import _official_embeddings_class

        # Swap in the official interpolation (bicubic with a +0.1 scale factor): the
        # official evaluation runs the original DINOv2 code at 224² (37² grid -> 16²).
        embeddings = _official_embeddings_class()(model.config)
        embeddings.load_state_dict(model.embeddings.state_dict())
        model.embeddings = embeddings
        self.device = torch.device(device)
        self.model = model.to(self.device, torch.float32).eval()
        self.mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(1, 3, 1, 1)
        self.source = source

    @classmethod
    def from_path(cls, path: str | os.PathLike, device="cpu") -> "DINOEncoder":
        """Load from a local transformers ``Dinov2Model`` folder, or one weight file in the
        original DINOv2 naming (``cls_token``, ``blocks.N.*``, optionally under a prefix
        such as an MGIG checkpoint's ``cond_stage_model.model.``)."""
        from transformers import Dinov2Model

        p = _require_path(path, "DINOv2", "--dino")
        if p.is_dir():
            if not (p / "config.json").is_file():
                raise FileNotFoundError(f"DINOv2 model folder {p} has no config.json (expected a transformers "
                                        "Dinov2Model folder)")
            try:
                model = Dinov2Model.from_pretrained(str(p), local_files_only=True)
            except (OSError, ValueError) as exc:
                raise EvaluationError(f"cannot load a Dinov2Model from {p}: {exc}") from exc
            return cls(model, device=device, source=str(p))

        from ..weights_manager.files import load_strict, read_weights
        from ..weights_manager.official_mgig import dinov2_official_to_hf
        obj, _ = read_weights(p)
        if isinstance(obj.get("state_dict"), Mapping):
            obj = obj["state_dict"]
        cls_keys = [k for k in obj if k == "cls_token" or k.endswith(".cls_token")]
        if len(cls_keys) != 1 or cls_keys[0].endswith("embeddings.cls_token"):
            raise EvaluationError(f"{p}: expected one DINOv2 in the original naming ('cls_token', 'blocks.N.*'); "
                                  "for a transformers-format model pass its folder")
        prefix = cls_keys[0][:-len("cls_token")]
        sd = {k[len(prefix):]: v for k, v in obj.items() if k.startswith(prefix)}
        config = _dinov2_config_from_original(sd, str(p))
        hf, left = dinov2_official_to_hf(sd)
        for key in left:  # plain-MLP blocks (ViT-S/B/L): same names in transformers
            m = re.match(r"blocks\.(?:\d+\.)?(\d+)\.mlp\.(fc[12])\.(weight|bias)$", key)
            if m is None:
                raise EvaluationError(f"{p}: unexpected DINOv2 tensor {prefix}{key}")
            hf[f"encoder.layer.{m.group(1)}.mlp.{m.group(2)}.{m.group(3)}"] = sd[key]
        model = Dinov2Model(config)
        hf.setdefault("embeddings.mask_token", model.embeddings.mask_token.detach().clone())  # unused here
        load_strict(model, hf, f"DINOv2 weights {p}")
        return cls(model, device=device, source=str(p))

    def features(self, images: Sequence[np.ndarray]):
        """Unit-length CLS features [N, hidden] of uint8 RGB images, each resized to 224²."""
        import torch
        arr = np.stack([resize_image(im, (DINO_SIZE, DINO_SIZE)) for im in images])
        x = torch.from_numpy(arr).permute(0, 3, 1, 2).float().div(255.0)
        x = ((x - self.mean) / self.std).to(self.device)
        with torch.inference_mode():
            cls_token = self.model(pixel_values=x).pooler_output.float()
        return torch.nn.functional.normalize(cls_token, dim=-1).cpu()


def clip_score(encoder: CLIPImageEncoder, generated: np.ndarray, target: np.ndarray) -> float:
    """Cosine of the CLIP image embeddings of two uint8 RGB images."""
    f = encoder.features([generated, target])
    return float((f[0] * f[1]).sum())


def dino_scores(encoder: DINOEncoder, generated: np.ndarray, target: np.ndarray,
                human_mask: np.ndarray, object_mask: np.ndarray) -> dict[str, float]:
    """DINO-Score human / object / pair: cosine of the CLS features of both images masked
    on white by the ground-truth masks. `generated` must already be the target's size."""
    if generated.shape != target.shape:
        raise ValueError(f"dino_scores: generated {generated.shape} and target {target.shape} differ in size")
    masks = {"dino_human": human_mask, "dino_object": object_mask,
             "dino_pair": np.logical_or(human_mask, object_mask)}
    images = [on_white(im, m) for m in masks.values() for im in (generated, target)]
    f = encoder.features(images)
    return {name: float((f[2 * i] * f[2 * i + 1]).sum()) for i, name in enumerate(masks)}


# ----------------------------------------------------------------------------- HOI judge


@runtime_checkable
class HOIJudge(Protocol):
    """Judges whether an image shows an interaction: ``score(image, caption)`` -> a value
    in [0, 1] (1 = the caption's interaction is shown). The paper uses LLaVA (yes/no
    question) and FGAHOI (detected HOI triplet matches); plug either in behind this."""

    def score(self, image: np.ndarray, caption: str) -> float:
        ...


class UnavailableHOIJudge:
    """Placeholder documenting the interface; never called by default. Implement
    `HOIJudge.score` with a local VLM / HOI detector to measure interaction accuracy."""

    def score(self, image: np.ndarray, caption: str) -> float:
        raise NotImplementedError(INTERACTION_NOTE)


# ----------------------------------------------------------------------------- evaluation


def is_synthetic(dataset: ChoiDataset) -> bool:
    """Whether every sample carries the ``synth`` record of `pipelines.synth`."""
    return len(dataset) > 0 and all(isinstance(r.get("synth"), dict) for r in dataset.records)


def summarise(samples: Sequence[Mapping[str, Any]], names: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Aggregate per-sample values: mean, population std, count (None values left out)."""
    out = {}
    for name in names:
        values = np.array([s[name] for s in samples if s.get(name) is not None], np.float64)
        if len(values):
            out[name] = {"mean": float(values.mean()), "std": float(values.std()), "n": int(len(values)),
                         "higher_is_better": METRICS[name].higher_is_better,
                         "description": METRICS[name].description}
    return out


def evaluate(dataset: ChoiDataset | str | os.PathLike, generated_dir: str | os.PathLike, *,
             split: str | None = None, clip: CLIPImageEncoder | None = None, dino: DINOEncoder | None = None,
             masks_dir: str | os.PathLike | None = None, mask_source: str = "predicted",
             synthetic: bool | None = None, judge: HOIJudge | None = None, limit: int | None = None,
             progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Score the generated images ``generated_dir/<id>.png`` against a CHOI dataset.

    `clip` / `dino`: loaded encoders, or None to skip those metrics. `masks_dir`: masks of
    the generated images (``<id>.png``), `mask_source` "predicted" or "interaction" (see
    the module notes); None skips the mask measures. `synthetic`: compute the synthetic
    benchmark measures (None = when the dataset is synthetic). `judge`: an optional
    `HOIJudge`. Returns the report (see `write_report`).
    """
    if mask_source not in ("predicted", "interaction"):
        raise ValueError(f"mask_source must be 'predicted' or 'interaction', got {mask_source!r}")
    data = dataset if isinstance(dataset, ChoiDataset) else ChoiDataset(dataset, split=split)
    gen_dir = Path(generated_dir)
    if not gen_dir.is_dir():
        raise FileNotFoundError(f"generated-image folder {gen_dir} does not exist")
    mask_dir = None if masks_dir is None else Path(masks_dir)
    if mask_dir is not None and not mask_dir.is_dir():
        raise FileNotFoundError(f"mask folder {mask_dir} does not exist")
    synthetic = is_synthetic(data) if synthetic is None else bool(synthetic)

    skipped: dict[str, str] = {}
    for name in GROUPS["clip"] if clip is None else ():
        skipped[name] = "skipped: no CLIP model given (--clip)"
    for name in GROUPS["dino"] if dino is None else ():
        skipped[name] = "skipped: no DINOv2 model given (--dino)"
    if mask_dir is None:
        for name in GROUPS["mask"] + ("mask_in_box",):
            skipped[name] = "skipped: no masks of the generated images given (--pred-masks / --interaction-masks)"
    if not synthetic:
        for name in GROUPS["synthetic"]:
            skipped.setdefault(name, "skipped: not a synthetic dataset (force with --synthetic)")
    skipped["interaction"] = INTERACTION_NOTE if judge is None else ""
    skipped = {k: v for k, v in skipped.items() if v}

    indices = [i for i, sid in enumerate(data.ids) if (gen_dir / f"{sid}{GENERATED_SUFFIX}").is_file()]
    missing = [sid for sid in data.ids if not (gen_dir / f"{sid}{GENERATED_SUFFIX}").is_file()]
    if limit is not None:
        indices = indices[:max(0, int(limit))]
    if not indices:
        raise EvaluationError(f"no generated image matches a sample of {data.root}"
                              f"{'' if split is None else f' (split {split!r})'}: expected files "
                              f"{gen_dir}/<id>{GENERATED_SUFFIX}, e.g. {data.ids[0] if data.ids else '000000'}"
                              f"{GENERATED_SUFFIX}")
    missing_masks: list[str] = []
    samples: list[dict[str, Any]] = []
    shapes = verb_references(data) if synthetic and mask_dir is not None else []
    for n, i in enumerate(indices, start=1):
        s = data[i]
        h, w = s.target.shape[:2]
        generated = load_rgb(gen_dir / f"{s.id}{GENERATED_SUFFIX}", "generated image")
        gen = resize_image(generated, (h, w))
        hm, om = s.human_mask > 0, s.object_mask > 0
        gt_union = hm | om
        row: dict[str, Any] = {"id": s.id, "caption": s.caption}
        if clip is not None:
            # Each image gets CLIP's own preprocessing at its own size, as clip.load's.
            row["clip_score"] = clip_score(clip, generated, s.target)
        if dino is not None:
            row.update(dino_scores(dino, gen, s.target, hm, om))
        gen_mask = None
        if mask_dir is not None:
            mpath = mask_dir / f"{s.id}{GENERATED_SUFFIX}"
            if mpath.is_file():
                gen_mask = resize_mask(load_mask(mpath, f"{mask_source} mask"), (h, w))
                row["mask_kl"] = spatial_kl(gt_union, gen_mask)
                row["mask_iou"] = mask_iou(gen_mask, gt_union)
            else:
                missing_masks.append(s.id)
        if synthetic:
            if gen_mask is not None and s.box is not None:
                row["mask_in_box"] = mask_in_box(gen_mask, s.box)
            if gen_mask is not None:
                others = [(shape, verb) for sid, shape, verb in shapes if sid != s.id]
                row["mask_verb"] = float(nearest_verb(mask_shape(gen_mask), others) == s.verb)
            row["colour_human"] = colour_distance(region_pixels(s.human_ref, s.human_ref_mask > 0),
                                                  region_pixels(gen, hm))
            row["colour_object"] = colour_distance(region_pixels(s.object_ref, s.object_ref_mask > 0),
                                                   region_pixels(gen, om))
            row["colour_mean_human"] = mean_colour_distance(region_pixels(s.target, hm), region_pixels(gen, hm))
            row["colour_mean_object"] = mean_colour_distance(region_pixels(s.target, om), region_pixels(gen, om))
            if s.background is not None:
                changed = changed_pixels(gen, s.background)
                if s.box is not None:
                    row["confinement_box"] = confinement(changed, box_mask(s.box, (h, w)))
                row["confinement_mask"] = confinement(changed, gt_union if gen_mask is None else gen_mask)
        if judge is not None:
            row["interaction"] = float(judge.score(generated, s.caption))
        samples.append(row)
        if progress is not None:
            progress(n, len(indices))

    names = [m for m in METRICS if m not in skipped]
    metrics = summarise(samples, names)
    for name in names:
        if name not in metrics:  # requested but undefined for every sample (e.g. no box, no background)
            skipped[name] = "skipped: not defined for any evaluated sample (missing box / background / masks)"
    return {
        "dataset": str(data.root), "split": data.split, "generated": str(gen_dir),
        "matching": f"generated image = <generated>/<sample id>{GENERATED_SUFFIX}",
        "samples_in_dataset": len(data), "evaluated": len(samples), "missing_generated": missing,
        "masks": None if mask_dir is None else str(mask_dir),
        "mask_source": None if mask_dir is None else mask_source, "missing_masks": missing_masks,
        "synthetic": synthetic,
        "mask_verb_reference": None if not shapes else {
            "ground_truth_masks": verb_accuracy_of_ground_truth(shapes),
            "chance": 1.0 / len({verb for _, _, verb in shapes}),
            "note": "mask_verb of the dataset's own ground-truth masks (leave-one-out: the ceiling) and of "
                    "guessing"},
        "models": {"clip": None if clip is None else clip.source, "dino": None if dino is None else dino.source},
        "settings": {"dino_size": DINO_SIZE, "mask_grid": MASK_GRID, "kl_eps": KL_EPS,
                     "kl_direction": "KL(gt || generated), nats", "change_delta_e": CHANGE_DELTA_E,
                     "colour_space": "CIELAB D65, ΔE76", "colour_bin": COLOUR_BIN, "colour_erode_px": COLOUR_ERODE,
                     "confinement_mask_region": "generated mask" if mask_dir is not None else "GT union mask",
                     "std": "population (ddof=0)"},
        "metrics": metrics,
        "skipped": skipped,
        "interaction_accuracy": "computed with the given judge" if judge is not None else INTERACTION_NOTE,
        "samples": samples,
    }


def markdown_report(report: Mapping[str, Any]) -> str:
    """The report as a markdown table (metric, mean, std, n, better) plus skipped metrics."""
    lines = [f"# CHOI evaluation: {report['evaluated']} of {report['samples_in_dataset']} samples",
             "", f"- dataset: `{report['dataset']}`" + (f" (split {report['split']})" if report["split"] else ""),
             f"- generated: `{report['generated']}` ({report['matching']})"]
    if report["missing_generated"]:
        lines.append(f"- missing generated images: {len(report['missing_generated'])}")
    if report["masks"]:
        lines.append(f"- masks ({report['mask_source']}): `{report['masks']}`"
                     + (f", {len(report['missing_masks'])} missing" if report["missing_masks"] else ""))
    lines += ["", "| metric | mean | std | n | better |", "|---|---:|---:|---:|:---:|"]
    for name, m in report["metrics"].items():
        lines.append(f"| {name} | {m['mean']:.4f} | {m['std']:.4f} | {m['n']} | "
                     f"{'↑' if m['higher_is_better'] else '↓'} |")
    ref = report.get("mask_verb_reference")
    if ref and "mask_verb" in report["metrics"]:
        ceiling = ref["ground_truth_masks"]
        lines += ["", f"mask_verb for reference: the ground-truth masks themselves score "
                      f"{'n/a' if ceiling is None else f'{ceiling:.4f}'} (leave-one-out), guessing {ref['chance']:.4f}."]
    if report["skipped"]:
        lines += ["", "Not computed:", ""]
        lines += [f"- {name}: {reason}" for name, reason in report["skipped"].items()]
    return "\n".join(lines) + "\n"


def write_report(report: Mapping[str, Any], out_dir: str | os.PathLike, overwrite: bool = False) -> tuple[Path, Path]:
    """Write ``metrics.json`` and ``metrics.md`` into `out_dir` (created if needed);
    refuses to replace existing ones unless ``overwrite=True``. Returns both paths."""
    out = Path(out_dir)
    paths = out / REPORT_JSON, out / REPORT_MD
    if not overwrite:
        taken = [str(p) for p in paths if p.exists()]
        if taken:
            raise FileExistsError(f"{', '.join(taken)} already exist; pass --overwrite to replace them")
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(paths[0], json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    write_text_atomic(paths[1], markdown_report(report))
    return paths


# ----------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``python -m interact_custom evaluate``."""
    parser.add_argument("--dataset", type=Path, required=True, help="CHOI dataset folder (ground truth)")
    parser.add_argument("--generated", type=Path, required=True,
                        help=f"folder of generated images named <sample id>{GENERATED_SUFFIX}")
    parser.add_argument("--out", type=Path, required=True, help=f"folder for {REPORT_JSON} and {REPORT_MD}")
    parser.add_argument("--split", default=None, help="evaluate only this split of the dataset (e.g. val)")
    parser.add_argument("--clip", type=Path, default=None,
                        help="local CLIP vision model (transformers folder or weight file); omit to skip CLIP-Score")
    parser.add_argument("--dino", type=Path, default=None,
                        help="local DINOv2 (transformers Dinov2Model folder or original-format weight file); "
                             "omit to skip DINO-Score")
    masks = parser.add_mutually_exclusive_group()
    masks.add_argument("--pred-masks", type=Path, default=None,
                       help="folder of masks predicted from the generated images (<id>.png)")
    masks.add_argument("--interaction-masks", type=Path, default=None,
                       help="folder of the interaction masks the images were generated from (<id>.png)")
    parser.add_argument("--synthetic", action=argparse.BooleanOptionalAction, default=None,
                        help="synthetic-benchmark measures (default: on for a dataset made by `synth`)")
    parser.add_argument("--limit", type=int, default=None, help="evaluate at most this many samples")
    parser.add_argument("--device", default="cpu", help="torch device for the CLIP / DINOv2 models (default cpu)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing report")


def run(args: argparse.Namespace) -> int:
    """Entry point of ``python -m interact_custom evaluate``."""
    from ..weights_manager.files import WeightsError

    out_paths = [args.out / REPORT_JSON, args.out / REPORT_MD]
    if not args.overwrite and any(p.exists() for p in out_paths):
        print(f"evaluate: {args.out} already holds a report; pass --overwrite to replace it", file=sys.stderr)
        return 2
    try:
        clip = None if args.clip is None else CLIPImageEncoder.from_path(args.clip, device=args.device)
        dino = None if args.dino is None else DINOEncoder.from_path(args.dino, device=args.device)
        masks_dir = args.pred_masks if args.pred_masks is not None else args.interaction_masks
        source = "predicted" if args.pred_masks is not None else "interaction"

        def progress(i: int, n: int) -> None:
            if i == n or i % max(1, n // 10) == 0:
                print(f"evaluate: {i}/{n} samples", file=sys.stderr, flush=True)

        report = evaluate(args.dataset, args.generated, split=args.split, clip=clip, dino=dino,
                          masks_dir=masks_dir, mask_source=source, synthetic=args.synthetic,
                          limit=args.limit, progress=progress)
        json_path, md_path = write_report(report, args.out, overwrite=args.overwrite)
    except (FileNotFoundError, FileExistsError, EvaluationError, DatasetError, WeightsError) as exc:
        print(f"evaluate: {exc}", file=sys.stderr)
        return 2
    print(markdown_report(report), end="")
    print(f"wrote {json_path} and {md_path}")
    return 0
