"""Evaluation of generated CHOI images (docs/METHOD.md §8, paper Tables 2-4).

``python -m interact_custom evaluate --dataset DATA --generated GEN --out REPORT
[--clip MODEL] [--dino MODEL] [--pred-masks DIR | --interaction-masks DIR]
[--synthetic | --no-synthetic] [--split S] [--limit N] [--device D] [--overwrite]``

Inputs
------
* ``--dataset``: a CHOI dataset (`cli.research.data.dataset` format). Its ``target`` is the
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
* Models, from local files only (nothing is downloaded; `cli.research.evaluation.eval_models`
  reads them): ``--clip`` a transformers
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
  record of `cli.research.data.synth`; ``--synthetic`` / ``--no-synthetic`` force it):
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
  - ``mask_iou_mirror``: ``mask_iou`` against the ground truth or its mirror image in the
    box, whichever is higher: how well the pose fits, whichever way the figure faces. The
    synthetic data mirrors every pair at random and nothing IAMG sees (caption,
    background, box) says which way, so a model that draws the right pose facing the
    other way loses half its ``mask_iou``. The report gives, for reference, both measures
    for a model that draws a right pose but not the sample's own (`metrics.pose_reference`:
    the other samples' true masks of the same verb and object, fitted to the box).
  - ``confinement_box`` / ``confinement_mask``: of the pixels the generation changed
    (ΔE76 > ``CHANGE_DELTA_E`` = 10 against the sample's ``background``), the share inside
    the box / inside the mask (the generated mask when given, else the ground-truth union
    mask; the report says which). 1 when nothing changed.
* Interaction accuracy (an HOI judge such as LLaVA / FGAHOI in the paper) is not computed:
  no such model runs offline here. `HOIJudge` is the interface for one; the Python API
  (`evaluate(judge=...)`) calls it and reports ``interaction`` = mean score.

Output: ``REPORT/metrics.json`` (settings, per-sample values, aggregates, skipped metrics
with reasons) and ``REPORT/metrics.md`` (a table); the table is also printed.

Where the pieces are: the measures themselves in `cli.research.evaluation.metrics` (pure
numpy) and `cli.research.evaluation.encoders` (CLIP / DINOv2 around built models); reading
the model files in `cli.research.evaluation.eval_models`; the command in `cli.evaluate`. This
module runs them over a dataset (`evaluate`, given loaded encoders) and writes the report.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np
from PIL import Image

from ..data.dataset import ChoiDataset
from ....pipelines.files import write_text_atomic
from ....pipelines.readers import as_image, as_mask
from .encoders import DINO_SIZE, CLIPImageEncoder, DINOEncoder, clip_score, dino_scores
from .metrics import (CHANGE_DELTA_E, COLOUR_BIN, COLOUR_ERODE, KL_EPS, MASK_GRID, SHAPE_K, box_mask,
                      changed_pixels, colour_distance, confinement, mask_in_box, mask_iou, mask_iou_mirror,
                      mask_shape, mean_colour_distance, nearest_verb, pose_reference, region_pixels,
                      resize_image, resize_mask, spatial_kl, verb_accuracy_of_ground_truth, verb_references)

GENERATED_SUFFIX = ".png"       # generated image / mask of sample <id>: <folder>/<id>.png
REPORT_JSON, REPORT_MD = "metrics.json", "metrics.md"

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
    Metric("mask_iou_mirror", True, "mask_iou against the GT union mask or its mirror image in the box, "
                                    "whichever is higher (the pose's fit, whichever way the figure faces)"),
    Metric("interaction", True, "mean HOI-judge score (only with a judge)"),
)}
GROUPS = {
    "clip": ("clip_score",),
    "dino": ("dino_human", "dino_object", "dino_pair"),
    "mask": ("mask_kl", "mask_iou"),
    "synthetic": ("mask_in_box", "mask_verb", "mask_iou_mirror", "colour_human", "colour_object",
                  "colour_mean_human", "colour_mean_object", "confinement_box", "confinement_mask"),
}


class EvaluationError(ValueError):
    """Inputs of an evaluation that cannot be used (the message names the file / option)."""


# ----------------------------------------------------------------------------- images


def load_rgb(path: str | os.PathLike, what: str = "image") -> np.ndarray:
    """Read an RGB uint8 image (`readers.as_image`: RGBA / LA / palette flattened on white)."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            return as_image(im, f"{what} {path}")
    except (OSError, SyntaxError, ValueError) as exc:
        raise EvaluationError(f"cannot read {what} {path}: {exc}") from exc


def load_mask(path: str | os.PathLike, what: str = "mask") -> np.ndarray:
    """Read a mask as bool (`readers.as_mask`: grey level >= 128 is foreground, as the dataset reader)."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            return as_mask(im, f"{what} {path}", allow_empty=True).astype(bool)
    except (OSError, SyntaxError, ValueError) as exc:
        raise EvaluationError(f"cannot read {what} {path}: {exc}") from exc


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
    """Whether every sample carries the ``synth`` record of `cli.research.data.synth`."""
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


# The columns of the per-verb table: which interactions a model draws well.
BY_VERB_METRICS = ("mask_verb", "mask_iou", "mask_iou_mirror", "colour_mean_human", "colour_mean_object",
                   "confinement_mask")


def by_verb(samples: Sequence[Mapping[str, Any]], names: Iterable[str] = BY_VERB_METRICS) -> dict[str, dict[str, Any]]:
    """Per-verb means of `names` (samples with a ``verb``; None values left out), verbs
    sorted by name: ``{verb: {"n": count, name: mean, ...}}``."""
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for s in samples:
        if s.get("verb"):
            groups.setdefault(str(s["verb"]), []).append(s)
    out = {}
    for verb in sorted(groups):
        rows = groups[verb]
        entry: dict[str, Any] = {"n": len(rows)}
        for name in names:
            values = [r[name] for r in rows if r.get(name) is not None]
            if values:
                entry[name] = float(np.mean(values))
        out[verb] = entry
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
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise EvaluationError(f"limit: expected None or a whole number >= 1, got {limit!r}")
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
        indices = indices[:limit]
    if not indices:
        raise EvaluationError(f"no generated image matches a sample of {data.root}"
                              f"{'' if split is None else f' (split {split!r})'}: expected files "
                              f"{gen_dir}/<id>{GENERATED_SUFFIX}, e.g. {data.ids[0] if data.ids else '000000'}"
                              f"{GENERATED_SUFFIX}")
    missing_masks: list[str] = []
    samples: list[dict[str, Any]] = []
    # The dataset's true union masks, read once: what mask_verb and mask_iou_mirror compare with.
    truths = ([(s.id, s.verb, s.object, s.interaction_mask > 0, s.box) for s in data]
              if synthetic and mask_dir is not None else [])
    shapes = verb_references((sid, union, verb) for sid, verb, _, union, _ in truths)
    for n, i in enumerate(indices, start=1):
        s = data[i]
        h, w = s.target.shape[:2]
        generated = load_rgb(gen_dir / f"{s.id}{GENERATED_SUFFIX}", "generated image")
        gen = resize_image(generated, (h, w))
        hm, om = s.human_mask > 0, s.object_mask > 0
        gt_union = hm | om
        row: dict[str, Any] = {"id": s.id, "caption": s.caption, "verb": s.verb}
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
                if s.box is not None:
                    row["mask_iou_mirror"] = mask_iou_mirror(gen_mask, gt_union, s.box)
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
        "mask_iou_reference": None if not shapes else pose_reference(
            [(verb, obj, union, box) for _, verb, obj, union, box in truths if box is not None]),
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
        "by_verb": by_verb(samples, [m for m in BY_VERB_METRICS if m in metrics]),
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
    pose = report.get("mask_iou_reference")
    if pose and "mask_iou" in report["metrics"]:
        lines += ["", f"mask_iou for reference: another sample's true mask of the same verb and object, fitted "
                      f"to the box (a right pose, not this one), scores {pose['mask_iou']:.4f}, "
                      f"mask_iou_mirror {pose['mask_iou_mirror']:.4f} ({pose['pairs']} pairs)."]
    verbs = report.get("by_verb") or {}
    columns = [m for m in BY_VERB_METRICS if any(m in v for v in verbs.values())]
    if len(verbs) > 1 and columns:
        lines += ["", "Per verb (means):", "", "| verb | n | " + " | ".join(columns) + " |",
                  "|---|---:|" + "---:|" * len(columns)]
        for verb, v in verbs.items():
            cells = [f"{v[c]:.3f}" if c in v else "" for c in columns]
            lines.append(f"| {verb} | {v['n']} | " + " | ".join(cells) + " |")
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
