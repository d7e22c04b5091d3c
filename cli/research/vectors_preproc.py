"""Checker for the ``preproc`` part of a test-vector folder (`verify`, tests/test_preprocess.py).

Recomputes every reference array of the official MGIG preprocessing with
:mod:`..pipelines.mgig.inputs`, `pipelines.geometry` and `pipelines.composite`: the
single-function cases (``fn_*``, with their inputs ``fn_*_in_*``), the full
``hico_process_pairs`` item (``pipe_*``, `prepare_mgig_inputs`) and its traced
intermediates (``trace_*``) from the stored scene (``scene_*``). The random choices the
generator pinned (box / crop expansion ratios, the perturbation draw) are read from the
folder's manifest, never assumed.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from ...pipelines import composite
from ...pipelines.geometry import Box, box_to_square, expand_box, official_box, official_mask_box
from ...pipelines.imgproc import pad_to_square
from ...pipelines.mgig import inputs as pp
from ...pipelines.readers import as_mask
from .training.augment import perturb_mask
from .vectors import Result, VectorFolder, compare, skipped, used_as_input

PART = "preproc"
# Threshold of the official mask perturbation draw: perturb if uniform(0, 1) < 0.7.
_PERTURB_PROBABILITY = 0.7


@dataclass(frozen=True)
class MGIGInputs:
    """Everything MGIG needs for one image (the official ``hico_process_pairs`` item).

    reference: (224, 224, 3) float32 in [0, 1] -- ID-encoder input (``item['ref']``).
    hint: (512, 512, 4) float32 -- ControlNet hint (``item['hint']``).
    target: (512, 512, 3) float32 in [-1, 1] -- background crop (``item['jpg']``).
    extra_sizes, crop_box: for `composite.crop_back`.
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
                        union_mask, *, box_ratio: float = pp.TARGET_BOX_RATIO,
                        crop_ratio: float = pp.CROP_RATIO, hflip: bool = False,
                        mask_channel: str = "box",
                        detail_threshold: float = pp.DETAIL_THRESHOLD) -> MGIGInputs:
    """All MGIG inputs for one image, as the official ``hico_process_pairs`` builds them
    at inference, without its randomness: the item the reference vectors hold, built from
    the `mgig.inputs` builders the runtime uses.

    human_image / human_mask: the reference person and its mask.
    object_image / object_mask: the reference object and its mask (the official code
        cuts the object from the HOI image itself: pass the background there).
    background: the image to generate into; union_mask: the interaction mask (human ∪
        object silhouette, e.g. from IAMG) in background coordinates.
    box_ratio, crop_ratio: target-box and crop expansion (official: 1.1 and a random
        1.3..2.9; 1.3 reproduces the reference vectors).
    hflip: apply the official augmentation's horizontal flip of the reference canvas.
    mask_channel: "box" (official inference) or "mask" (see `mgig.inputs.build_hint`).
    """
    canvas = pp.reference_canvas(human_image, human_mask, object_image, object_mask, hflip=hflip)
    detail = pp.detail_map(canvas.image, canvas.mask, thresh=detail_threshold)
    hint = pp.build_hint(background, union_mask, detail, box_ratio=box_ratio, crop_ratio=crop_ratio,
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


def _box(b: Box) -> np.ndarray:
    """A box as the official code stores it: (y1, y2, x1, x2)."""
    return np.asarray(b.yyxx, dtype=np.int64)


def _box_in_box(small_yyxx, big_yyxx) -> tuple[int, int, int, int]:
    # The official box_in_box: the small box relative to the big one's top-left corner.
    return Box.from_yyxx(*small_yyxx).relative_to(Box.from_yyxx(*big_yyxx)).yyxx


def _is_input(folder: VectorFolder, name: str) -> bool:
    """Inputs are the arrays the generator drew itself (scenes, ``fn_*_in*``)."""
    info = folder.part(PART).get("arrays", {}).get(name, {})
    return str(info.get("produced_by", "")).startswith("synthetic")


def pipeline_settings(folder: VectorFolder) -> dict:
    """Box ratio, crop ratio and mask-channel mode the folder's pipeline arrays were made
    with, from the manifest's pinned random choices (in the official draw order: target
    box ratio, crop ratio, perturbation draw) and its ``variant.crop_ratio``."""
    info = folder.part(PART)
    notes = info.get("notes", {})
    pinned = notes.get("pinned_random_choices", [])
    randints = [p for p in pinned if p.get("call") == "np.random.randint"]
    uniforms = [p for p in pinned if p.get("call") == "np.random.uniform"]
    box_ratio = randints[0]["returned"] / 10 if randints else pp.TARGET_BOX_RATIO
    crop_ratio = randints[1]["returned"] / 10 if len(randints) > 1 else pp.CROP_RATIO
    variant = info.get("variant") or notes.get("variant") or {}
    crop_ratio = float(variant.get("crop_ratio", crop_ratio))
    draw = uniforms[0]["returned"] if uniforms else 1.0
    return {"box_ratio": float(box_ratio), "crop_ratio": crop_ratio,
            "perturbed": draw < _PERTURB_PROBABILITY}


def _check_functions(folder: VectorFolder, A, names: list[str]) -> Iterator[Result]:
    for name in names:
        m = re.fullmatch(r"fn_sobel_out_t(\d+)", name)
        if m:
            ours = pp.detail_map(A["fn_sobel_in_image"], A["fn_sobel_in_mask"], thresh=int(m.group(1)))
            yield compare(name, ours, A[name])
            continue
        m = re.fullmatch(r"fn_bbox_out_(.+)", name)
        if m:
            yield compare(name, _box(official_mask_box(A[f"fn_bbox_in_{m.group(1)}"])), A[name])
            continue
        m = re.fullmatch(r"fn_pad_to_square_out_(.+)_pad(-?\d+)", name)
        if m:
            src = A[f"fn_pad_to_square_in_{m.group(1)}_pad{m.group(2)}"]
            yield compare(name, pad_to_square(src, int(m.group(2))), A[name])
            continue
        if name == "fn_expand_bbox_cases":
            rows = [list(r[:8]) + list(expand_box(Box.from_yyxx(*r[2:6]), r[6] / 10, (r[0], r[1]), min_crop=r[7]).yyxx)
                    for r in A[name].tolist()]
            yield compare(name, np.array(rows, dtype=np.int64), A[name], note="ratio*10 column used as ratio")
        elif name == "fn_box2squre_cases":
            rows = [list(r[:6]) + list(box_to_square(Box.from_yyxx(*r[2:6]), (r[0], r[1])).yyxx) for r in A[name].tolist()]
            yield compare(name, np.array(rows, dtype=np.int64), A[name])
        elif name == "fn_box_in_box_cases":
            rows = [list(r[:8]) + list(_box_in_box(r[:4], r[4:8])) for r in A[name].tolist()]
            yield compare(name, np.array(rows, dtype=np.int64), A[name])
        elif name == "fn_select_max_region_out":
            from ...pipelines.imgproc import largest_component
            yield compare(name, largest_component(A["fn_select_max_region_in"]), A[name])
        elif name == "fn_perturb_mask_out_npseed":
            seed = folder.part(PART)["arrays"][name].get("np_random_seed")
            if seed is None:
                yield skipped(name, "manifest gives no np_random_seed for the legacy-RNG draw")
            else:
                ours = perturb_mask(A["fn_perturb_mask_in"], np.random.RandomState(int(seed)))
                yield compare(name, ours, A[name], note=f"legacy numpy RNG, seed {seed}")


def _check_pipeline(folder: VectorFolder, A, names: list[str]) -> Iterator[Result]:
    wanted = [n for n in names if n.startswith(("pipe_", "trace_"))]
    if not wanted:
        return
    settings = pipeline_settings(folder)
    human, human_mask = A["scene_human_image"], A["scene_human_image_mask"]
    hoi, object_mask = A["scene_hoi_image"], A["scene_object_mask"]
    union = np.maximum(A["scene_human_mask_gt"], object_mask)
    ratios = {"box_ratio": settings["box_ratio"], "crop_ratio": settings["crop_ratio"]}

    canvas = pp.reference_canvas(human, human_mask, hoi, object_mask)
    detail = pp.detail_map(canvas.image, canvas.mask)
    hint = pp.build_hint(hoi, union, detail, mask_channel="box", **ratios)  # official inference
    inputs = prepare_mgig_inputs(human, human_mask, hoi, object_mask, hoi, union, **ratios)
    flipped = prepare_mgig_inputs(human, human_mask, hoi, object_mask, hoi, union, hflip=True, **ratios)
    masked_crop = pp.whiten_background(canvas.layout, canvas.layout_mask)[canvas.layout_box.slices]
    crop_expanded = expand_box(hint.target_box, settings["crop_ratio"], hoi.shape)

    ours = {
        "pipe_ref": inputs.reference,
        "pipe_jpg": inputs.target,
        "pipe_hint": inputs.hint,
        "pipe_extra_sizes": np.array(inputs.extra_sizes, dtype=np.int64),
        "pipe_tar_box_yyxx_crop": _box(inputs.crop_box),
        "pipe_hflip_ref": flipped.reference,
        "pipe_hflip_hint_collage_u8": np.rint((flipped.hint[..., :3] + 1) * 127.5).astype(np.uint8),
        "trace_obj_box": _box(canvas.object_box),
        "trace_human_box": _box(canvas.human_box),
        "trace_canvas_mask": canvas.layout_mask,
        "trace_canvas_box": _box(canvas.layout_box),
        "trace_tar_mask": as_mask(union, "union_mask"),
        "trace_tar_box": _box(official_box(union, "union_mask")),
        "trace_masked_canvas_crop": masked_crop,
        "trace_sobel_in_image": canvas.image,
        "trace_sobel_in_mask": canvas.mask / 255.0,
        "trace_sobel_out": detail,
        "trace_tar_box_expanded": _box(hint.target_box),
        "trace_crop_box_expanded": _box(crop_expanded),
        "trace_tar_box_in_crop": _box(hint.target_box_in_crop),
    }
    for name in wanted:
        if name not in ours:
            continue  # unknown array: verify reports it as not computed
        if settings["perturbed"] and name in ("pipe_hint", "pipe_hflip_hint_collage_u8"):
            yield skipped(name, "the official run drew the random mask perturbation (legacy RNG state "
                                "not recorded); inference never perturbs")
            continue
        yield compare(name, ours[name], A[name])


def check(folder: VectorFolder) -> Iterator[Result]:
    """One Result for every ``preproc`` array of ``folder`` that we know how to make."""
    A = folder.arrays(PART)
    names = folder.array_names(PART)
    for name in names:
        if _is_input(folder, name):
            yield used_as_input(name)
    yield from _check_functions(folder, A, names)
    yield from _check_pipeline(folder, A, names)
    if "fn_crop_back_out" in names:
        ours = composite.crop_back(A["fn_crop_back_in_pred"], A["scene_hoi_image"], A["pipe_extra_sizes"],
                            Box.from_yyxx(*A["pipe_tar_box_yyxx_crop"].tolist()))
        yield compare("fn_crop_back_out", ours, A["fn_crop_back_out"],
                      note="reference extra_sizes / crop box as inputs")
