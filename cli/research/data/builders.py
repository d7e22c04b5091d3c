"""Build CHOI training datasets from real data: video clips (paper §4.2) and HOI images (§4.1).

A CHOI sample (format: `cli.research.data.dataset`) needs the *same* human and object in a
*different* pose than the target, so a model learns to separate identity from interaction
pose. The paper gets such pairs two ways; this module implements both as builders that
write the `cli.research.data.dataset` format through `ChoiWriter`.

**From video clips** (§4.2, `build_video_dataset`). A clip shows one human-object pair
without a camera change. For two frames f_r, f_t of a clip the human and object of f_r
are the references and f_t is the target (with its masks, verb and caption). A pair of
frames is used only if it shows enough change (the criterion, `select_frame_pairs`):

* both frames are *usable*: the human mask and the object mask each cover at least
  ``min_area`` (a fraction of the frame's pixels, and at least 1 pixel); other frames are
  skipped and counted by reason (empty / tiny human / object mask);
* ``|t - r| >= min_gap`` frames apart, and
* IoU(human mask of f_t, human mask of f_r) ``<= max_iou`` (the camera is static, so a
  low IoU of the silhouettes means the person moved or changed pose).

Ordered pairs (t, r) meeting the criterion are drawn without replacement, in a random order
seeded by ``(seed, crc32(clip_id))``, until ``pairs_per_clip`` are found, so a clip's
pairs do not depend on the other clips. (t, r) and (r, t) are different samples.

**From an HOI image dataset with masks** (§4.1, `build_hoi_dataset`). Each image (human
mask, object mask, verb, object category, ``person_id``) becomes the target of one
sample. The human reference is, in this order of preference: an explicit per-image
reference (``human_ref`` + ``human_ref_mask``); the output of a ``pose_change`` callable
on the target's human crop (what the paper does: AnyDoor re-poses the HICO-DET human to a
random human mask of the dataset; the callable may return None to fall back); another
image of the *same* ``person_id`` (never the same image file, preferring a different
verb, chosen with a generator seeded by ``(seed, crc32(sample id))``). The object
reference comes from another image with the same ``object_id`` when one is given,
otherwise it is the object crop of the target image itself. That is what the paper does:
"the shape divergence within each object category harms the quality of pose-transferred
objects, so we only adopt the pose-changed humans ... with the pose-changed human and
original object image as the model input" (§4.1). Targets without a usable human
reference are skipped and counted.

**Shared rules.** References are cropped from their image to the mask's bounding box
grown by ``margin`` × its longer side on every side (clipped to the image), with the mask
cropped alike; the crop box is recorded. The sample's ``box`` is the bounding box of the
union mask in the target, scaled about its centre by ``box_expand`` (>= 1) and clipped.
The background is the annotated one (HOI only), else ``inpaint(target, union_mask)``
when an inpainting callable is given, else absent. The caption is the annotated one, else
``captioner(target, verb, object)``, else `default_caption` ("a person is riding the
bicycle"). Masks are annotated, or come from ``segment(image, prompt)`` with prompt
"person" or the object category ("_" read as a space). Models are never bundled or
downloaded: every callable is the user's. Each index line carries ``source`` (where the
target and references came from, the crop boxes, frame gap and IoU). With ``val_fraction``
> 0 whole clips / whole identities (``person_id``) go to the "val" split, so validation
identities are unseen in training. ``<out>/build_report.json`` records the parameters and
the counts. The output folder must be empty unless ``overwrite=True``.

Images and masks from files and callables are read by `pipelines.readers` (`read_rgb`,
`to_mask`): arrays, PIL images or files; masks bool, integers 0/1 or 0..255 (>= 128 is
foreground), floats in [0, 1] (> 0.5); leading singleton axes (1×H×W) are dropped.

**Folder layouts** (the CLI)::

    <clips>/<clip_id>/frames/*.png|jpg|jpeg|webp   frames in natural name order (2 < 10)
    <clips>/<clip_id>/human_masks/<frame stem>.png  one per frame (or none: --segmenter)
    <clips>/<clip_id>/object_masks/<frame stem>.png one per frame (or none: --segmenter)
    <clips>/<clip_id>/clip.json   {"verb": "ride" or ["ride", "push", ...] (one per frame),
                                   "object": "bicycle",
                                   "caption": optional, a string or one (or null) per frame,
                                   "meta": optional, anything; copied into each sample}

    annotations.jsonl, one JSON object per line (paths relative to the file's folder):
      {"image": "images/0001.jpg", "human_mask": "masks/0001_h.png",
       "object_mask": "masks/0001_o.png",           # both optional with --segmenter
       "verb": "ride", "object": "bicycle", "person_id": "p17",   # person_id may be null
       "object_id": "bike3",                        # optional: same physical object
       "caption": "...", "background": "bg/0001.png",            # optional
       "human_ref": "...", "human_ref_mask": "...",  # optional explicit reference
       "id": "0001",                                # optional sample id (default: line no.)
       "meta": {...}}                               # optional, copied into the sample

CLI (``cli/build.py``): ``python -m interact_custom build video --clips DIR --out DIR
[--min-gap N] [--max-iou X] [--pairs-per-clip K] [--seed S] [--segmenter mod:fn]
[--captioner mod:fn] [--inpainter mod:fn] [--split-val F] [--overwrite]`` and
``python -m interact_custom build hoi --annotations FILE --out DIR [--pose-changer mod:fn]
[...]``. A callable is named ``module:function`` (importable; the current folder is
searched first) or ``path/to/file.py:function`` (`load_callable`).
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import math
import os
import re
import sys
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
from PIL import Image

from .dataset import ChoiWriter, iter_json_lines
from ....pipelines.files import write_text_atomic
from ....pipelines.geometry import mask_box
from ....pipelines.readers import as_image, as_mask
from ....pipelines.vocabulary import CAPTION_TEMPLATE, INTERACTIONS

# An image is a uint8 H×W×3 array, a PIL image, or a path read when needed.
ImageSource = Any
MaskSource = Any
Segmenter = Callable[[np.ndarray, str], Any]            # (RGB image, prompt) -> mask
Captioner = Callable[[np.ndarray, str, str], str]       # (target RGB, verb, object) -> caption
Inpainter = Callable[[np.ndarray, np.ndarray], Any]     # (target RGB, bool union mask) -> RGB
PoseChanger = Callable[[np.ndarray, np.ndarray], Any]   # (human crop, bool mask) -> (RGB, mask) | None

HUMAN_PROMPT = "person"
FRAME_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
CLIP_JSON = "clip.json"
CLIP_KEYS = ("verb", "object", "caption", "meta")
HOI_KEYS = ("id", "image", "human_mask", "object_mask", "verb", "object", "person_id", "object_id",
            "caption", "background", "human_ref", "human_ref_mask", "meta")
BUILD_REPORT = "build_report.json"

# Defaults (one place; the API and the CLI share them).
DEFAULT_MIN_GAP = 10        # frames (0.4 s at 25 fps)
DEFAULT_MAX_IOU = 0.75      # human-silhouette IoU above this = too little change
DEFAULT_PAIRS_PER_CLIP = 4
DEFAULT_MIN_AREA = 0.002    # share of the frame's pixels a human / object mask must cover
DEFAULT_MARGIN = 0.1        # reference crop margin, share of the mask box's longer side
DEFAULT_BOX_EXPAND = 1.0

# Skip reasons (keys of `BuildReport.skipped`).
EMPTY_HUMAN = "empty human mask"
TINY_HUMAN = "human mask below min-area"
EMPTY_OBJECT = "empty object mask"
TINY_OBJECT = "object mask below min-area"
FEW_FRAMES = "clip with fewer than 2 usable frames"
NO_PAIR = "clip with no frame pair meeting min-gap / max-iou"
NO_IDENTITY = "no other usable image of the same person_id"
NO_PERSON_ID = "no person_id and no explicit or pose-changed reference"
EMPTY_POSE_CHANGE = "pose_change returned an empty mask"


class BuildError(ValueError):
    """Input for a dataset builder is malformed (the message names the clip / file / line)."""


# ----------------------------------------------------------------------------- captions

# HICO-DET verbs whose -ing form the spelling rules below get wrong.
_IRREGULAR_ING = {"control": "controlling", "lie": "lying", "tie": "tying", "die": "dying",
                  "be": "being", "see": "seeing", "ski": "skiing", "no_interaction": "near"}
_VOWELS = set("aeiou")


def _gerund(word: str) -> str:
    if word in _IRREGULAR_ING:
        return _IRREGULAR_ING[word]
    if word.endswith("ing") and _VOWELS & set(word[:-3]):
        return word  # already a gerund ("riding"); "swing" / "bring" have no vowel before -ing
    if word.endswith("ie"):
        return word[:-2] + "ying"
    if word.endswith("e") and not word.endswith(("ee", "oe", "ye")) and len(word) > 2:
        return word[:-1] + "ing"
    groups = re.findall(r"[aeiou]+", word)
    if (len(groups) == 1 and len(word) >= 3 and word[-1] not in _VOWELS | set("wxy")
            and word[-2] in _VOWELS and word[-3] not in _VOWELS):
        return word + word[-1] + "ing"  # one-syllable consonant-vowel-consonant: sit -> sitting
    return word + "ing"


def verb_phrase(verb: str) -> str:
    """The caption phrase of a HICO-DET style verb: ``"sit_on"`` -> ``"sitting on"``,
    ``"ride"`` -> ``"riding"``. Uses the synthetic vocabulary's phrases where it has the verb
    (`vocabulary.INTERACTIONS`), else English spelling rules on the first word."""
    verb = verb.strip().lower()
    if verb in INTERACTIONS:
        return INTERACTIONS[verb]
    if verb in _IRREGULAR_ING:
        return _IRREGULAR_ING[verb]
    first, *rest = [w for w in re.split(r"[_\s]+", verb) if w]
    return " ".join([_gerund(first), *rest])


def default_caption(verb: str, object_category: str) -> str:
    """The paper's template "A person is verbing the object" (§4.2), lower case like the
    synthetic data and the shipped word tokenizer: ``("sit_on", "dining_table")`` ->
    "a person is sitting on the dining table"."""
    return CAPTION_TEMPLATE.format(phrase=verb_phrase(verb), object=_readable(object_category))


def _readable(category: str) -> str:
    return category.replace("_", " ").strip()


# ----------------------------------------------------------------------------- callables


def load_callable(spec: str, option: str = "callable") -> Callable:
    """Resolve ``module:function`` (``module:obj.attr`` allowed) or ``path/file.py:function``.

    The current folder is searched first for modules. Errors name `option` and the
    string and say what was expected."""
    expected = "expected 'module:function' or 'path/to/file.py:function'"
    if not isinstance(spec, str) or spec.count(":") < 1:
        raise BuildError(f"{option} {spec!r}: {expected}")
    target, _, attr = spec.rpartition(":")
    if not target or not attr or not all(p.isidentifier() for p in attr.split(".")):
        raise BuildError(f"{option} {spec!r}: {expected}")
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise BuildError(f"{option} {spec!r}: file {path} does not exist")
        name = f"_interact_custom_user_{hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]}"
        module_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(module_spec)
        try:
            module_spec.loader.exec_module(module)
        except Exception as exc:
            raise BuildError(f"{option} {spec!r}: importing {path} failed: {exc!r}") from exc
    else:
        cwd = os.getcwd()
        added = cwd not in sys.path
        if added:
            sys.path.insert(0, cwd)
        try:
            module = importlib.import_module(target)
        except Exception as exc:
            raise BuildError(f"{option} {spec!r}: cannot import module {target!r}: {exc!r}") from exc
        finally:
            if added:
                sys.path.remove(cwd)
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise BuildError(f"{option} {spec!r}: {target} has no attribute {part!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise BuildError(f"{option} {spec!r}: {attr} is a {type(obj).__name__}, not a callable")
    return obj


def _call(fn: Callable, what: str, where: str, *args):
    try:
        return fn(*args)
    except Exception as exc:
        raise RuntimeError(f"{where}: the {what} {getattr(fn, '__name__', fn)!r} failed: {exc!r}") from exc


# ----------------------------------------------------------------------------- arrays


def _is_path(src: Any) -> bool:
    return isinstance(src, (str, os.PathLike))


def _describe(src: Any) -> str:
    return str(src) if _is_path(src) else "array"


def read_rgb(src: ImageSource, where: str) -> np.ndarray:
    """An RGB uint8 H×W×3 array from an array, a PIL image or an image file (`readers.as_image`)."""
    try:
        return as_image(src, where)
    except (ValueError, TypeError) as exc:
        raise BuildError(str(exc)) from exc


def to_mask(src: MaskSource, where: str) -> np.ndarray:
    """A bool H×W mask from a file, a PIL image or an array (`readers.as_mask`)."""
    try:
        return as_mask(src, where, allow_empty=True).astype(bool)
    except (ValueError, TypeError) as exc:
        raise BuildError(str(exc)) from exc


def _image_size(src: ImageSource, where: str) -> tuple[int, int]:
    """(height, width) without decoding a file's pixels."""
    if _is_path(src):
        path = Path(src)
        if not path.is_file():
            raise FileNotFoundError(f"{where}: file {path} does not exist")
        try:
            with Image.open(path) as im:
                return im.size[1], im.size[0]
        except (OSError, SyntaxError, ValueError) as exc:
            raise BuildError(f"{where}: cannot read {path}: {exc}") from exc
    if isinstance(src, Image.Image):
        return src.size[1], src.size[0]
    return tuple(np.asarray(src).shape[:2])


def _check_same_size(mask: np.ndarray, shape: tuple[int, int], what: str, src: Any, where: str) -> np.ndarray:
    if mask.shape != tuple(shape):
        raise BuildError(f"{where}: {what} {_describe(src)} is {mask.shape[1]}×{mask.shape[0]} "
                         f"but its image is {shape[1]}×{shape[0]}; expected the same size")
    return mask


def crop_reference(image: np.ndarray, mask: np.ndarray, margin: float = DEFAULT_MARGIN
                   ) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int, int]]:
    """Crop a reference to its mask's box grown by ``margin`` × the box's longer side on
    each side (clipped to the image). Returns (RGB crop, bool mask crop, [x, y, w, h])."""
    box = mask_box(mask, "reference mask")
    crop = box.grown(round(margin * max(box.width, box.height))).clipped(*mask.shape[:2])
    return image[crop.slices].copy(), mask[crop.slices].copy(), crop.xywh


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two bool masks (0 when both are empty)."""
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else 0.0


def _min_pixels(min_area: float, shape: tuple[int, int]) -> int:
    return max(1, math.ceil(min_area * shape[0] * shape[1]))


def _unusable(human: np.ndarray, obj: np.ndarray, min_px: int) -> str | None:
    """The skip reason of a (human, object) mask pair, None when both are large enough."""
    for m, empty, tiny in ((human, EMPTY_HUMAN, TINY_HUMAN), (obj, EMPTY_OBJECT, TINY_OBJECT)):
        n = int(np.count_nonzero(m))
        if n == 0:
            return empty
        if n < min_px:
            return tiny
    return None


def _safe_id(text: str) -> str:
    s = re.sub(r"[^A-Za-z0-9_.\-]", "_", str(text))
    return "_" + s[1:] if s.startswith(".") else (s or "_")


def _seed_of(seed: int, key: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(key.encode("utf-8"))])


def choose_val_groups(groups: Iterable[str], fraction: float, seed: int) -> set[str]:
    """The groups (clips / identities) of the "val" split: ``round(n × fraction)`` of them
    (at least one when fraction > 0 and n >= 2, never all), drawn with ``seed``."""
    if not 0.0 <= fraction < 1.0:
        raise BuildError(f"val fraction must be in [0, 1), got {fraction}")
    names = sorted(set(groups))
    n_val = round(len(names) * fraction)
    if fraction > 0 and len(names) >= 2:
        n_val = max(1, n_val)
    n_val = min(n_val, max(0, len(names) - 1))
    order = np.random.default_rng([seed, 7]).permutation(len(names))
    return {names[i] for i in order[:n_val]}


# ----------------------------------------------------------------------------- report


@dataclass
class BuildReport:
    """What a builder did: samples written per split, items skipped per reason (`notes`
    names each skipped frame / image / clip, the first `MAX_NOTES`)."""

    kind: str
    out: str
    written: int = 0
    splits: dict[str, int] = field(default_factory=dict)
    skipped: Counter = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)

    MAX_NOTES = 1000

    def skip(self, reason: str, note: str) -> None:
        self.skipped[reason] += 1
        if len(self.notes) < self.MAX_NOTES:
            self.notes.append(f"{note}: {reason}")

    def wrote(self, split: str) -> None:
        self.written += 1
        self.splits[split] = self.splits.get(split, 0) + 1

    def summary(self) -> str:
        splits = ", ".join(f"{n} {s}" for s, n in sorted(self.splits.items())) or "none"
        lines = [f"wrote {self.written} samples ({splits}) to {self.out}"]
        if self.skipped:
            lines.append("skipped: " + "; ".join(f"{n} × {r}" for r, n in sorted(self.skipped.items())))
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "written": self.written, "splits": self.splits,
                "skipped": dict(self.skipped), "params": self.params, "notes": self.notes}


def prepare_out(out: str | os.PathLike, overwrite: bool) -> Path:
    """Check that ``out`` can receive a dataset (absent or an empty folder, unless
    ``overwrite``); the builders and the CLI (before reading any input) call it."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"--out {out} is not empty; choose an empty folder or pass --overwrite")
    return out


def _check_params(min_area: float, margin: float, box_expand: float) -> None:
    if not 0.0 <= min_area < 1.0:
        raise BuildError(f"min_area must be a fraction of the image in [0, 1), got {min_area}")
    if margin < 0:
        raise BuildError(f"margin must be >= 0, got {margin}")
    if box_expand < 1.0:
        raise BuildError(f"box_expand must be >= 1, got {box_expand}")


def _background(inpaint: Inpainter | None, target: np.ndarray, union: np.ndarray, where: str):
    if inpaint is None:
        return None
    bg = read_rgb(_call(inpaint, "inpainter", where, target, union), f"{where}: inpainter output")
    if bg.shape != target.shape:
        raise BuildError(f"{where}: the inpainter returned a {bg.shape[1]}×{bg.shape[0]} image for a "
                         f"{target.shape[1]}×{target.shape[0]} target; expected the same size")
    return bg


def _caption(given: str | None, captioner: Captioner | None, target: np.ndarray, verb: str, obj: str,
             where: str) -> str:
    if given:
        return given
    if captioner is None:
        return default_caption(verb, obj)
    text = _call(captioner, "captioner", where, target, verb, obj)
    if not isinstance(text, str) or not text.strip():
        raise BuildError(f"{where}: the captioner returned {text!r}; expected a non-empty string")
    return text.strip()


# ----------------------------------------------------------------------------- video (§4.2)


@dataclass
class VideoClip:
    """One clip of the same human-object pair, static camera (paper §4.2).

    ``frames``: RGB uint8 H×W×3 arrays, PIL images or image paths, all one size.
    ``human_masks`` / ``object_masks``: one mask per frame (arrays / paths), or None to
    segment every frame with the builder's ``segment`` callable. ``verb``: one for the
    clip or one per frame. ``caption``: None (use the captioner / template), one string,
    or one (or None) per frame. ``clip_id`` default: ``clip<index>``.
    """

    frames: Sequence[ImageSource]
    human_masks: Sequence[MaskSource] | None
    object_masks: Sequence[MaskSource] | None
    verb: str | Sequence[str]
    object: str
    caption: str | Sequence[str | None] | None = None
    clip_id: str | None = None
    frame_names: Sequence[str] | None = None
    meta: Any = None


def select_frame_pairs(human_masks: Sequence[np.ndarray | None], min_gap: int, max_iou: float, count: int,
                       rng: np.random.Generator) -> list[tuple[int, int, float]]:
    """Pick up to `count` ordered (target, reference, human IoU) frame pairs of one clip.

    ``human_masks[i]`` is None for an unusable frame. A pair qualifies when both frames
    are usable, ``|t - r| >= min_gap`` and the human-mask IoU is ``<= max_iou``. The
    qualifying pairs are visited in the random order of `rng` (IoUs computed lazily)."""
    usable = [i for i, m in enumerate(human_masks) if m is not None]
    cands = np.array([(t, r) for t in usable for r in usable if t != r and abs(t - r) >= max(1, min_gap)],
                     dtype=np.int64).reshape(-1, 2)
    chosen: list[tuple[int, int, float]] = []
    ious: dict[tuple[int, int], float] = {}
    for k in rng.permutation(len(cands)):
        if len(chosen) >= count:
            break
        t, r = (int(v) for v in cands[k])
        key = (min(t, r), max(t, r))
        if key not in ious:
            ious[key] = mask_iou(human_masks[t], human_masks[r])
        if ious[key] <= max_iou:
            chosen.append((t, r, ious[key]))
    return chosen


def _per_frame(value: Any, n: int, what: str, where: str, allow_none: bool = False) -> list:
    if value is None and allow_none:
        return [None] * n
    if isinstance(value, str):
        return [value] * n
    values = list(value)
    if len(values) != n:
        raise BuildError(f"{where}: {len(values)} {what} values for {n} frames; expected one for the "
                         "clip or one per frame")
    for v in values:
        if not (isinstance(v, str) or (allow_none and v is None)):
            raise BuildError(f"{where}: {what} entries must be strings, got {v!r}")
    return values


def _clip_masks(clip: VideoClip, kind: str, prompt: str, frames: list, shape: tuple[int, int],
                names: list[str], segment: Segmenter | None, where: str) -> list[np.ndarray]:
    masks = getattr(clip, f"{kind}_masks")
    if masks is None:
        if segment is None:
            raise BuildError(f"{where}: no {kind} masks and no segmenter; give {kind}_masks "
                             f"(folder {kind}_masks/) or a segment(frame, prompt) callable")
        out = []
        for name, frame in zip(names, frames):
            fw = f"{where} frame {name}"
            out.append(_check_same_size(to_mask(_call(segment, "segmenter", fw, read_rgb(frame, fw), prompt),
                                                f"{fw}: segmenter output"),
                                        shape, f"segmented {kind} mask", "array", fw))
        return out
    masks = list(masks)
    if len(masks) != len(frames):
        raise BuildError(f"{where}: {len(masks)} {kind} masks for {len(frames)} frames; expected one per frame")
    return [_check_same_size(to_mask(m, f"{where} frame {name}"), shape, f"{kind} mask", m,
                             f"{where} frame {name}") for m, name in zip(masks, names)]


def build_video_dataset(clips: Iterable[VideoClip], out: str | os.PathLike, *,
                        min_gap: int = DEFAULT_MIN_GAP, max_iou: float = DEFAULT_MAX_IOU,
                        pairs_per_clip: int = DEFAULT_PAIRS_PER_CLIP, min_area: float = DEFAULT_MIN_AREA,
                        margin: float = DEFAULT_MARGIN, box_expand: float = DEFAULT_BOX_EXPAND, seed: int = 0,
                        segment: Segmenter | None = None, captioner: Captioner | None = None,
                        inpaint: Inpainter | None = None, val_fraction: float = 0.0, overwrite: bool = False,
                        progress: Callable[[int, int, str, int], None] | None = None) -> BuildReport:
    """Write CHOI samples made of frame pairs of video clips (paper §4.2) to `out`.

    For each clip: masks (given or segmented), usable frames (``min_area``), up to
    ``pairs_per_clip`` (target, reference) frame pairs by `select_frame_pairs`; each pair
    is one sample: target frame + its masks, verb and caption; references cropped from the
    other frame. Deterministic for a given `seed`. `progress(done, total, clip_id,
    samples_of_clip)` is called after each clip. Returns the `BuildReport`.
    """
    if min_gap < 1 or pairs_per_clip < 1:
        raise BuildError(f"min_gap and pairs_per_clip must be >= 1, got {min_gap} and {pairs_per_clip}")
    if not 0.0 <= max_iou <= 1.0:
        raise BuildError(f"max_iou must be in [0, 1], got {max_iou}")
    _check_params(min_area, margin, box_expand)
    clips = list(clips)
    ids = [_safe_id(c.clip_id) if c.clip_id is not None else f"clip{i:04d}" for i, c in enumerate(clips)]
    dup = [i for i in set(ids) if ids.count(i) > 1]
    if dup:
        raise BuildError(f"clip ids must be unique; repeated: {sorted(dup)}")
    val = choose_val_groups(ids, val_fraction, seed)
    out = prepare_out(out, overwrite)
    report = BuildReport("video", str(out), params=dict(
        min_gap=min_gap, max_iou=max_iou, pairs_per_clip=pairs_per_clip, min_area=min_area, margin=margin,
        box_expand=box_expand, seed=seed, val_fraction=val_fraction, clips=len(clips),
        segmenter=_name(segment), captioner=_name(captioner), inpainter=_name(inpaint)))
    with ChoiWriter(out, overwrite=overwrite) as writer:
        for done, (clip, clip_id) in enumerate(zip(clips, ids), start=1):
            n = _video_clip_samples(writer, report, clip, clip_id, "val" if clip_id in val else "train",
                                    min_gap, max_iou, pairs_per_clip, min_area, margin, box_expand, seed,
                                    segment, captioner, inpaint)
            if progress is not None:
                progress(done, len(clips), clip_id, n)
    write_text_atomic(out / BUILD_REPORT, json.dumps(report.as_dict(), indent=1) + "\n")
    return report


def _name(fn: Callable | None) -> str | None:
    if fn is None:
        return None
    return f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', type(fn).__name__)}"


def _video_clip_samples(writer: ChoiWriter, report: BuildReport, clip: VideoClip, clip_id: str, split: str,
                        min_gap, max_iou, pairs_per_clip, min_area, margin, box_expand, seed,
                        segment, captioner, inpaint) -> int:
    where = f"clip {clip_id!r}"
    frames = list(clip.frames)
    n = len(frames)
    if n == 0:
        raise BuildError(f"{where}: no frames")
    names = ([str(s) for s in clip.frame_names] if clip.frame_names is not None else
             [Path(f).name if _is_path(f) else f"{i:04d}" for i, f in enumerate(frames)])
    if len(names) != n:
        raise BuildError(f"{where}: {len(names)} frame names for {n} frames")
    verbs = _per_frame(clip.verb, n, "verb", where)
    captions = _per_frame(clip.caption, n, "caption", where, allow_none=True)
    if not isinstance(clip.object, str) or not clip.object:
        raise BuildError(f"{where}: object must be a non-empty category name, got {clip.object!r}")
    shape = _image_size(frames[0], f"{where} frame {names[0]}")
    for f, name in zip(frames[1:], names[1:]):
        s = _image_size(f, f"{where} frame {name}")
        if s != shape:
            raise BuildError(f"{where}: frame {name} ({_describe(f)}) is {s[1]}×{s[0]} but frame {names[0]} is "
                             f"{shape[1]}×{shape[0]}; a clip's frames must share one size")
    human = _clip_masks(clip, "human", HUMAN_PROMPT, frames, shape, names, segment, where)
    obj = _clip_masks(clip, "object", _readable(clip.object), frames, shape, names, segment, where)

    min_px = _min_pixels(min_area, shape)
    usable: list[np.ndarray | None] = []
    for i in range(n):
        reason = _unusable(human[i], obj[i], min_px)
        if reason:
            report.skip(reason, f"{where} frame {names[i]}")
        usable.append(None if reason else human[i])
    if sum(m is not None for m in usable) < 2:
        report.skip(FEW_FRAMES, where)
        return 0
    pairs = select_frame_pairs(usable, min_gap, max_iou, pairs_per_clip, _seed_of(seed, clip_id))
    if not pairs:
        report.skip(NO_PAIR, where)
        return 0
    cache: dict[int, np.ndarray] = {}

    def frame(i: int) -> np.ndarray:
        if i not in cache:
            cache[i] = read_rgb(frames[i], f"{where} frame {names[i]}")
        return cache[i]

    width = max(4, len(str(n - 1)))
    for t, r, iou in pairs:
        sw = f"{where} target frame {names[t]}"
        target, ref = frame(t), frame(r)
        union = human[t] | obj[t]
        h_ref, h_ref_mask, h_box = crop_reference(ref, human[r], margin)
        o_ref, o_ref_mask, o_box = crop_reference(ref, obj[r], margin)
        writer.add(
            f"{clip_id}-{t:0{width}d}-{r:0{width}d}", split=split,
            caption=_caption(captions[t], captioner, target, verbs[t], clip.object, sw),
            verb=verbs[t], object_category=clip.object,
            target=target, human_mask=human[t], object_mask=obj[t],
            human_ref=h_ref, human_ref_mask=h_ref_mask, object_ref=o_ref, object_ref_mask=o_ref_mask,
            background=_background(inpaint, target, union, sw),
            box=mask_box(union, "union mask").scaled(box_expand).clipped(shape[0], shape[1]).xywh,
            extra={"source": {"kind": "video", "clip": clip_id, "target_frame": names[t],
                              "reference_frame": names[r], "target_index": t, "reference_index": r,
                              "frame_gap": abs(t - r), "human_iou": round(float(iou), 4),
                              "reference_verb": verbs[r], "human_ref_box": list(h_box),
                              "object_ref_box": list(o_box), **({"meta": clip.meta} if clip.meta is not None else {})}})
        report.wrote(split)
    return len(pairs)


# ----------------------------------------------------------------------------- video folders


def _natural_key(name: str):
    return [int(p) if p.isdigit() else p.lower() for p in re.split(r"(\d+)", name)]


def list_clip_folders(root: str | os.PathLike) -> list[Path]:
    """The clip folders of a `<clips>` root (sub-folders with a ``frames/`` folder), sorted."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"--clips {root} is not a folder")
    found = sorted((p for p in root.iterdir() if p.is_dir() and (p / "frames").is_dir()),
                   key=lambda p: _natural_key(p.name))
    if not found:
        raise BuildError(f"--clips {root}: no clip folders found; expected <clips>/<clip_id>/frames/*.png "
                         f"with human_masks/, object_masks/ and {CLIP_JSON}")
    return found


def read_clip_folder(path: str | os.PathLike, *, need_masks: bool = True) -> VideoClip:
    """A `VideoClip` of paths (read lazily) from one clip folder (layout in the module
    docstring). Checks up front that every frame has its masks and that they have the
    frame's size; ``need_masks=False`` allows absent mask folders (a segmenter fills them)."""
    path = Path(path)
    where = f"clip {path.name!r} ({path})"
    meta_file = path / CLIP_JSON
    if not meta_file.is_file():
        raise FileNotFoundError(f"{where}: {meta_file} does not exist; expected "
                                '{"verb": ..., "object": ..., "caption": optional}')
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise BuildError(f"{where}: {meta_file} is not valid JSON ({exc})") from exc
    if not isinstance(meta, dict):
        raise BuildError(f"{where}: {meta_file} must hold a JSON object")
    unknown = sorted(set(meta) - set(CLIP_KEYS))
    if unknown:
        raise BuildError(f"{where}: {meta_file} has unknown keys {unknown}; expected {list(CLIP_KEYS)}")
    for key in ("verb", "object"):
        if key not in meta:
            raise BuildError(f"{where}: {meta_file} lacks {key!r}")
    frames = sorted((p for p in (path / "frames").iterdir() if p.suffix.lower() in FRAME_EXTENSIONS),
                    key=lambda p: _natural_key(p.name))
    if not frames:
        raise BuildError(f"{where}: no frames in {path / 'frames'}; expected {'/'.join(FRAME_EXTENSIONS)} files")
    masks: dict[str, list[Path] | None] = {}
    for kind in ("human", "object"):
        folder = path / f"{kind}_masks"
        if not folder.is_dir():
            if need_masks:
                raise FileNotFoundError(f"{where}: no {kind}_masks/ folder ({folder}) and no segmenter; "
                                        f"expected {kind}_masks/<frame stem>.png for every frame")
            masks[kind] = None
            continue
        files = [folder / f"{f.stem}.png" for f in frames]
        for f, m in zip(frames, files):
            if not m.is_file():
                raise FileNotFoundError(f"{where}: missing {kind} mask for frame {f.name}: expected {m}")
            fs, ms = _image_size(f, where), _image_size(m, where)
            if fs != ms:
                raise BuildError(f"{where}: {kind} mask {m} is {ms[1]}×{ms[0]} but frame {f} is {fs[1]}×{fs[0]}; "
                                 "expected the same size")
        masks[kind] = files
    n = len(frames)
    _per_frame(meta["verb"], n, "verb", f"{where} ({meta_file})")
    _per_frame(meta.get("caption"), n, "caption", f"{where} ({meta_file})", allow_none=True)
    return VideoClip(frames=frames, human_masks=masks["human"], object_masks=masks["object"], verb=meta["verb"],
                     object=meta["object"], caption=meta.get("caption"), clip_id=path.name,
                     frame_names=[f.name for f in frames], meta=meta.get("meta"))


# ----------------------------------------------------------------------------- HOI images (§4.1)


@dataclass
class HoiImage:
    """One annotated HOI image (paper §4.1): image + human / object masks (arrays or paths;
    None to segment), verb, object category, the human's identity ``person_id`` (None:
    unknown) and optionally the object's ``object_id``, caption, background and an
    explicit human reference (image + mask)."""

    image: ImageSource
    human_mask: MaskSource | None
    object_mask: MaskSource | None
    verb: str
    object: str
    person_id: str | int | None
    object_id: str | int | None = None
    caption: str | None = None
    background: ImageSource | None = None
    human_ref: ImageSource | None = None
    human_ref_mask: MaskSource | None = None
    image_id: str | None = None
    meta: Any = None


def read_hoi_annotations(path: str | os.PathLike, *, need_masks: bool = True) -> list[HoiImage]:
    """Parse ``annotations.jsonl`` (format in the module docstring) into `HoiImage`s of
    paths; every referenced file must exist (errors name the line and the file)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--annotations {path} does not exist")
    base = path.parent
    items: list[HoiImage] = []
    for n, where, rec in iter_json_lines(path, BuildError):
        unknown = sorted(set(rec) - set(HOI_KEYS))
        if unknown:
            raise BuildError(f"{where}: unknown keys {unknown}; expected {list(HOI_KEYS)}")
        required = ["image", "verb", "object"] + (["human_mask", "object_mask"] if need_masks else [])
        missing = [k for k in required if rec.get(k) in (None, "")]
        if missing:
            raise BuildError(f"{where}: missing {missing}" + (
                " (or give a segmenter)" if set(missing) & {"human_mask", "object_mask"} else ""))
        if (rec.get("human_ref") is None) != (rec.get("human_ref_mask") is None):
            raise BuildError(f"{where}: human_ref and human_ref_mask go together; got only one")
        files = {}
        for key in ("image", "human_mask", "object_mask", "background", "human_ref", "human_ref_mask"):
            rel = rec.get(key)
            if rel is None:
                files[key] = None
                continue
            if not isinstance(rel, str):
                raise BuildError(f"{where}: {key} must be a path string, got {rel!r}")
            p = base / rel
            if not p.is_file():
                raise FileNotFoundError(f"{where}: {key} file {p} does not exist")
            files[key] = p
        for key in ("verb", "object"):
            if not isinstance(rec[key], str):
                raise BuildError(f"{where}: {key} must be a string, got {rec[key]!r}")
        items.append(HoiImage(verb=rec["verb"], object=rec["object"], person_id=rec.get("person_id"),
                              object_id=rec.get("object_id"), caption=rec.get("caption"),
                              image_id=str(rec["id"]) if rec.get("id") is not None else f"{n:06d}",
                              meta=rec.get("meta"), **files))
    if not items:
        raise BuildError(f"{path}: no annotations")
    return items


class _HoiSource:
    """Lazy access to the images and masks of a list of `HoiImage`s (segmentations cached,
    bit-packed, so a segmenter runs once per image and prompt)."""

    def __init__(self, items: list[HoiImage], ids: list[str], segment: Segmenter | None, min_area: float):
        self.items, self.ids, self.segment, self.min_area = items, ids, segment, min_area
        self._packed: dict[tuple[int, str], tuple[bytes, tuple[int, int]]] = {}
        self._reason: dict[int, str | None] = {}
        self._key: dict[int, str] = {}

    def where(self, i: int) -> str:
        it = self.items[i]
        src = f" ({it.image})" if _is_path(it.image) else ""
        return f"image {self.ids[i]!r}{src}"

    def image(self, i: int) -> np.ndarray:
        return read_rgb(self.items[i].image, self.where(i))

    def key(self, i: int) -> str:
        """What makes two entries the *same* image (HICO-DET lists several pairs per file)."""
        if i not in self._key:
            src = self.items[i].image
            self._key[i] = ("file:" + str(Path(src).resolve()) if _is_path(src) else
                            "array:" + hashlib.sha1(read_rgb(src, self.where(i)).tobytes()).hexdigest())
        return self._key[i]

    def mask(self, i: int, kind: str) -> np.ndarray:
        it, where = self.items[i], self.where(i)
        src = getattr(it, f"{kind}_mask")
        shape = _image_size(it.image, where)
        if src is not None:
            return _check_same_size(to_mask(src, where), shape, f"{kind} mask", src, where)
        if self.segment is None:
            raise BuildError(f"{where}: no {kind} mask and no segmenter; give {kind}_mask or a segmenter")
        prompt = HUMAN_PROMPT if kind == "human" else _readable(it.object)
        if (i, kind) not in self._packed:
            m = to_mask(_call(self.segment, "segmenter", where, self.image(i), prompt), f"{where}: segmenter output")
            _check_same_size(m, shape, f"segmented {kind} mask", "array", where)
            self._packed[(i, kind)] = (np.packbits(m).tobytes(), m.shape)
        data, mshape = self._packed[(i, kind)]
        bits = np.unpackbits(np.frombuffer(data, np.uint8), count=mshape[0] * mshape[1])
        return bits.reshape(mshape).astype(bool)

    def unusable(self, i: int) -> str | None:
        if i not in self._reason:
            h, o = self.mask(i, "human"), self.mask(i, "object")
            self._reason[i] = _unusable(h, o, _min_pixels(self.min_area, h.shape))
        return self._reason[i]


def _pick_other(src: _HoiSource, i: int, candidates: list[int], rng: np.random.Generator) -> int | None:
    """The first usable candidate that is a different image, different-verb candidates first,
    each group in the order of `rng`."""
    mine = src.key(i)
    verb = src.items[i].verb
    order = [candidates[k] for k in rng.permutation(len(candidates))]
    for j in sorted(order, key=lambda j: src.items[j].verb == verb):  # stable: keeps rng order
        if j != i and src.key(j) != mine and src.unusable(j) is None:
            return j
    return None


def build_hoi_dataset(images: Iterable[HoiImage], out: str | os.PathLike, *, seed: int = 0,
                      min_area: float = DEFAULT_MIN_AREA, margin: float = DEFAULT_MARGIN,
                      box_expand: float = DEFAULT_BOX_EXPAND, segment: Segmenter | None = None,
                      captioner: Captioner | None = None, inpaint: Inpainter | None = None,
                      pose_change: PoseChanger | None = None, val_fraction: float = 0.0, overwrite: bool = False,
                      progress: Callable[[int, int, str, int], None] | None = None) -> BuildReport:
    """Write one CHOI sample per usable HOI image (paper §4.1) to `out`.

    Human reference: explicit > ``pose_change(human_crop, mask)`` (None falls through) >
    another image of the same ``person_id``; object reference: another image with the
    same ``object_id``, else the target's own object crop (the paper's choice). Images
    without a usable human reference are skipped and counted. Deterministic for a `seed`.
    """
    _check_params(min_area, margin, box_expand)
    items = list(images)
    ids = [_safe_id(it.image_id) if it.image_id is not None else f"{i:06d}" for i, it in enumerate(items)]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise BuildError(f"image ids must be unique; repeated: {dup[:10]}")
    for i, it in enumerate(items):
        if it.verb is None or it.object is None:
            raise BuildError(f"image {ids[i]!r}: verb and object are required")
    group = [f"person:{it.person_id}" if it.person_id is not None else f"image:{ids[i]}"
             for i, it in enumerate(items)]
    val = choose_val_groups(group, val_fraction, seed)
    by_person: dict[str, list[int]] = {}
    by_object: dict[str, list[int]] = {}
    for i, it in enumerate(items):
        if it.person_id is not None:
            by_person.setdefault(str(it.person_id), []).append(i)
        if it.object_id is not None:
            by_object.setdefault(str(it.object_id), []).append(i)
    out = prepare_out(out, overwrite)
    src = _HoiSource(items, ids, segment, min_area)
    report = BuildReport("hoi", str(out), params=dict(
        seed=seed, min_area=min_area, margin=margin, box_expand=box_expand, val_fraction=val_fraction,
        images=len(items), segmenter=_name(segment), captioner=_name(captioner), inpainter=_name(inpaint),
        pose_changer=_name(pose_change)))
    with ChoiWriter(out, overwrite=overwrite) as writer:
        for i, it in enumerate(items):
            ok = _hoi_sample(writer, report, src, i, "val" if group[i] in val else "train", by_person, by_object,
                             seed, margin, box_expand, captioner, inpaint, pose_change)
            if progress is not None:
                progress(i + 1, len(items), ids[i], int(ok))
    write_text_atomic(out / BUILD_REPORT, json.dumps(report.as_dict(), indent=1) + "\n")
    return report


def _hoi_sample(writer, report, src: _HoiSource, i, split, by_person, by_object, seed, margin, box_expand,
                captioner, inpaint, pose_change) -> bool:
    it, where, sid = src.items[i], src.where(i), src.ids[i]
    reason = src.unusable(i)
    if reason:
        report.skip(reason, where)
        return False
    image, hm, om = src.image(i), src.mask(i, "human"), src.mask(i, "object")
    rng = _seed_of(seed, sid)
    info: dict[str, Any] = {"kind": "hoi", "image": str(it.image) if _is_path(it.image) else sid,
                            "person_id": it.person_id}

    human_ref = None
    if it.human_ref is not None:
        ref_img = read_rgb(it.human_ref, f"{where} human_ref")
        ref_mask = _check_same_size(to_mask(it.human_ref_mask, f"{where} human_ref_mask"), ref_img.shape[:2],
                                    "human_ref_mask", it.human_ref_mask, where)
        if not ref_mask.any():
            raise BuildError(f"{where}: human_ref_mask {_describe(it.human_ref_mask)} is empty")
        human_ref = crop_reference(ref_img, ref_mask, margin)
        info["human_ref_from"] = "explicit"
    elif pose_change is not None:
        crop, crop_mask, _ = crop_reference(image, hm, margin)
        result = _call(pose_change, "pose changer", where, crop, crop_mask)
        if result is not None:
            if not isinstance(result, (tuple, list)) or len(result) != 2:
                raise BuildError(f"{where}: the pose changer returned {type(result).__name__}; "
                                 "expected (image, mask) or None")
            ref_img = read_rgb(result[0], f"{where}: pose changer image")
            ref_mask = _check_same_size(to_mask(result[1], f"{where}: pose changer mask"), ref_img.shape[:2],
                                        "pose changer mask", "array", where)
            if not ref_mask.any():
                report.skip(EMPTY_POSE_CHANGE, where)
                return False
            human_ref = crop_reference(ref_img, ref_mask, margin)
            info["human_ref_from"] = "pose_change"
    if human_ref is None:
        if it.person_id is None:
            report.skip(NO_PERSON_ID, where)
            return False
        j = _pick_other(src, i, by_person[str(it.person_id)], rng)
        if j is None:
            report.skip(NO_IDENTITY, f"{where} (person_id {it.person_id!r})")
            return False
        human_ref = crop_reference(src.image(j), src.mask(j, "human"), margin)
        info.update(human_ref_from="image", human_ref_image=src.ids[j], human_ref_verb=src.items[j].verb)
    info["human_ref_box"] = list(human_ref[2])

    j = None
    if it.object_id is not None:
        j = _pick_other(src, i, by_object[str(it.object_id)], rng)
    if j is None:
        object_ref = crop_reference(image, om, margin)
        info["object_ref_from"] = "same_image"
    else:
        object_ref = crop_reference(src.image(j), src.mask(j, "object"), margin)
        info.update(object_ref_from="image", object_ref_image=src.ids[j])
    info["object_ref_box"] = list(object_ref[2])
    if it.meta is not None:
        info["meta"] = it.meta

    union = hm | om
    background = None
    if it.background is not None:
        background = read_rgb(it.background, f"{where} background")
        if background.shape != image.shape:
            raise BuildError(f"{where}: background {_describe(it.background)} is {background.shape[1]}×"
                             f"{background.shape[0]} but the image is {image.shape[1]}×{image.shape[0]}")
    else:
        background = _background(inpaint, image, union, where)
    writer.add(sid, split=split, caption=_caption(it.caption, captioner, image, it.verb, it.object, where),
               verb=it.verb, object_category=it.object, target=image, human_mask=hm, object_mask=om,
               human_ref=human_ref[0], human_ref_mask=human_ref[1],
               object_ref=object_ref[0], object_ref_mask=object_ref[1], background=background,
               box=mask_box(union, "union mask").scaled(box_expand).clipped(*image.shape[:2]).xywh,
               extra={"source": info})
    report.wrote(split)
    return True
