"""The on-disk CHOI dataset format: one folder, one ``index.jsonl``, PNG files per sample.

A CHOI training sample (paper §4) is a target image of a human interacting with an
object, the human and object masks in that image, and reference images of the *same*
human and the *same* object in a *different* pose / placement (with their masks), so a
model can learn to separate identity from interaction pose. Optionally the sample also
carries the target scene without the pair (the background) and the box of the pair in it.

Layout::

    <root>/
      index.jsonl                      one JSON object per line, one line per sample
      samples/<id>/target.png          RGB   H×W    the interaction image (ground truth)
      samples/<id>/human_mask.png      L     H×W    0 / 255, the human in target.png
      samples/<id>/object_mask.png     L     H×W    0 / 255, the object in target.png
      samples/<id>/human_ref.png       RGB   h1×w1  the same human, another pose
      samples/<id>/human_ref_mask.png  L     h1×w1  0 / 255, the human in human_ref.png
      samples/<id>/object_ref.png      RGB   h2×w2  the same object, another placement
      samples/<id>/object_ref_mask.png L     h2×w2  0 / 255, the object in object_ref.png
      samples/<id>/background.png      RGB   H×W    optional: target scene without the pair

Each line of ``index.jsonl``::

    {"id": "000042",                       # unique; letters, digits, "_", "-", "." only
     "split": "train",                     # optional, default "train"; any name ("val", "test")
     "caption": "a person is kicking the ball",   # the interaction prompt
     "verb": "kick",                       # interaction category (HICO-DET style: "sit_on")
     "object": "ball",                     # object category
     "box": [x, y, w, h],                  # optional (absent or null): the pair's box in
                                           #   target/background pixels, x/y = left/top,
                                           #   covering columns x..x+w-1, rows y..y+h-1
     "files": {"target": "samples/000042/target.png", "human_mask": ..., "object_mask": ...,
               "human_ref": ..., "human_ref_mask": ..., "object_ref": ...,
               "object_ref_mask": ..., "background": ...},   # "background" optional
     ...}                                  # any other keys are kept verbatim (`extra`)

Rules: file paths are relative to ``<root>``, use "/" and may not leave the folder (any
relative location is allowed, so samples may share files); a reference image and its
mask have the same size, which may differ from the target's; ``target``, both target
masks and ``background`` share one size. Readers convert images to RGB / L and binarise
masks as `pipelines.readers` does (>= 128), so anti-aliased masks are accepted (RGBA / palette images are flattened
on white); writers store exactly RGB and 0/255 L.

`ChoiWriter` / `write_sample` write this format (every file atomically: a temporary
name, then ``os.replace``; nothing existing is overwritten unless asked); `ChoiDataset`
reads it into `ChoiSample`s of uint8 numpy arrays. Errors name the file and the sample.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Iterator

import numpy as np
from PIL import Image

from ....pipelines.files import atomic_path
from ....pipelines.geometry import Box
from ....pipelines.readers import as_image, as_mask

INDEX_NAME = "index.jsonl"
SAMPLES_DIR = "samples"

# Every sample has these files; "background" is optional.
REQUIRED_PARTS = ("target", "human_mask", "object_mask",
                  "human_ref", "human_ref_mask", "object_ref", "object_ref_mask")
OPTIONAL_PARTS = ("background",)
ALL_PARTS = REQUIRED_PARTS + OPTIONAL_PARTS
RGB_PARTS = frozenset({"target", "human_ref", "object_ref", "background"})
MASK_PARTS = frozenset({"human_mask", "object_mask", "human_ref_mask", "object_ref_mask"})
# Index keys with a meaning of their own; anything else is carried in `ChoiSample.extra`.
CORE_KEYS = ("id", "split", "caption", "verb", "object", "box", "files")

_ID_RE = re.compile(r"^[A-Za-z0-9_\-][A-Za-z0-9_.\-]*$")


class DatasetError(ValueError):
    """A CHOI dataset entry is malformed (the message names the file / line)."""


@dataclass
class ChoiSample:
    """One CHOI sample, images as uint8 numpy arrays (RGB H×W×3, masks H×W in {0, 255})."""

    id: str
    caption: str
    verb: str
    object: str
    split: str
    target: np.ndarray
    human_mask: np.ndarray
    object_mask: np.ndarray
    human_ref: np.ndarray
    human_ref_mask: np.ndarray
    object_ref: np.ndarray
    object_ref_mask: np.ndarray
    background: np.ndarray | None = None
    box: tuple[int, int, int, int] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def interaction_mask(self) -> np.ndarray:
        """Union of the human and object masks of the target (what IAMG generates)."""
        return np.maximum(self.human_mask, self.object_mask)


# ----------------------------------------------------------------------------- files


def save_png(path: Path, image: Image.Image, overwrite: bool) -> None:
    """Save `image` as PNG at `path` via a temporary file and ``os.replace``, so a reader
    never sees a half-written file and an interrupted write leaves the old one intact."""
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True to replace it")
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


def _load_png(path: Path, part: str, where: str) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"{where}: {part} file {path} does not exist")
    try:
        with Image.open(path) as im:
            im.load()
            if part in MASK_PARTS:
                return as_mask(im, f"{where}: {part}", allow_empty=True) * np.uint8(255)
            return as_image(im, f"{where}: {part}")
    except (OSError, SyntaxError, ValueError) as exc:  # PIL raises these for corrupt data
        raise DatasetError(f"{where}: cannot read {part} file {path}: {exc}") from exc


def _as_rgb(name: str, arr: Any) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise DatasetError(f"{name}: expected a uint8 H×W×3 RGB array, got {arr.dtype} {arr.shape}")
    return arr


def _as_mask(name: str, arr: Any) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.ndim != 2:
        raise DatasetError(f"{name}: expected an H×W mask, got shape {arr.shape}")
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    if arr.dtype != np.uint8 or not np.isin(arr, (0, 255)).all():
        raise DatasetError(f"{name}: expected a bool mask or a uint8 mask of 0/255 values, "
                           f"got {arr.dtype} with values {np.unique(arr)[:6].tolist()}")
    return arr


def _check_box(box: Any, width: int, height: int, where: str) -> tuple[int, int, int, int] | None:
    if box is None:
        return None
    if (not isinstance(box, (list, tuple)) or len(box) != 4
            or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in box)):
        raise DatasetError(f"{where}: box must be [x, y, w, h] integers in pixels, got {box!r}")
    x, y, w, h = (int(v) for v in box)
    if w <= 0 or h <= 0 or not Box.from_xywh(x, y, w, h).inside(height, width):
        raise DatasetError(f"{where}: box {[x, y, w, h]} is empty or outside the "
                           f"{width}×{height} image")
    return x, y, w, h


def _safe_relpath(root: Path, rel: Any, where: str) -> Path:
    if not isinstance(rel, str) or not rel:
        raise DatasetError(f"{where}: file path must be a non-empty string, got {rel!r}")
    p = PurePosixPath(rel)
    if p.is_absolute() or ".." in p.parts or "\\" in rel:
        raise DatasetError(f"{where}: file path {rel!r} must be relative to the dataset folder, "
                           "use '/' and stay inside it")
    return root.joinpath(*p.parts)


# ----------------------------------------------------------------------------- index


def iter_json_lines(path: Path, error: type[Exception] = ValueError) -> Iterator[tuple[int, str, dict[str, Any]]]:
    """(line number, "<path> line N", object) for every non-blank line of a JSONL file;
    a line that is not a JSON object raises ``error`` naming the file and line."""
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path} line {n}"
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise error(f"{where}: not valid JSON ({exc})") from exc
            if not isinstance(rec, dict):
                raise error(f"{where}: expected a JSON object, got {type(rec).__name__}")
            yield n, where, rec


def read_index(root: str | os.PathLike) -> list[dict[str, Any]]:
    """Parse and validate ``<root>/index.jsonl``; returns the records in file order.

    Each record gets a private ``"_line"`` key (1-based line number) for error messages.
    """
    root = Path(root)
    index = root / INDEX_NAME
    if not index.is_file():
        raise FileNotFoundError(f"{root} is not a CHOI dataset: {index} does not exist")
    records: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for n, where, rec in iter_json_lines(index, DatasetError):
        for key in ("id", "caption", "verb", "object", "files"):
            if key not in rec:
                raise DatasetError(f"{where}: missing key {key!r}")
        sid = rec["id"]
        if not isinstance(sid, str) or not _ID_RE.match(sid):
            raise DatasetError(f"{where}: id {sid!r} must be letters, digits, '_', '-', '.'")
        if sid in seen:
            raise DatasetError(f"{where}: id {sid!r} already used on line {seen[sid]}")
        seen[sid] = n
        files = rec["files"]
        if not isinstance(files, dict):
            raise DatasetError(f"{where}: 'files' must be an object of part -> path")
        missing = [p for p in REQUIRED_PARTS if p not in files]
        unknown = [p for p in files if p not in ALL_PARTS]
        if missing or unknown:
            raise DatasetError(f"{where}: 'files' lacks {missing} / has unknown parts {unknown}; "
                               f"expected {list(REQUIRED_PARTS)} plus optional {list(OPTIONAL_PARTS)}")
        for part, rel in files.items():
            _safe_relpath(root, rel, f"{where} ({part})")
        rec.setdefault("split", "train")
        rec["_line"] = n
        records.append(rec)
    return records


class ChoiDataset:
    """Read a CHOI dataset folder (format in this module's docstring).

    ``ChoiDataset(root, split="val")`` keeps only that split. The index is parsed up front
    (so malformed lines fail at once, naming the line); images are read lazily by
    ``dataset[i]``, which raises FileNotFoundError / DatasetError naming the file.
    """

    def __init__(self, root: str | os.PathLike, split: str | None = None):
        self.root = Path(root)
        records = read_index(self.root)
        self.splits = sorted({r["split"] for r in records})
        if split is not None:
            records = [r for r in records if r["split"] == split]
        self.split = split
        self.records = records

    def __len__(self) -> int:
        return len(self.records)

    @property
    def ids(self) -> list[str]:
        return [r["id"] for r in self.records]

    def record(self, i: int) -> dict[str, Any]:
        """The index entry of sample `i` (metadata only, nothing is read)."""
        return self.records[i]

    def _where(self, rec: dict[str, Any]) -> str:
        return f"CHOI dataset {self.root}, sample {rec['id']!r} ({INDEX_NAME} line {rec['_line']})"

    def path(self, i: int, part: str) -> Path | None:
        """Absolute path of one part of sample `i` (None for an absent optional part)."""
        if part not in ALL_PARTS:
            raise KeyError(f"unknown part {part!r}; expected one of {list(ALL_PARTS)}")
        rec = self.records[i]
        rel = rec["files"].get(part)
        return None if rel is None else _safe_relpath(self.root, rel, self._where(rec))

    def load_part(self, i: int, part: str) -> np.ndarray | None:
        """Read one image of sample `i` (e.g. only ``"human_mask"`` for a mask bank)."""
        p = self.path(i, part)
        return None if p is None else _load_png(p, part, self._where(self.records[i]))

    def __getitem__(self, i: int) -> ChoiSample:
        if not -len(self) <= i < len(self):
            raise IndexError(f"sample index {i} out of range for {len(self)} samples")
        rec = self.records[i]
        where = self._where(rec)
        arrays = {part: self.load_part(i, part) for part in ALL_PARTS}
        h, w = arrays["target"].shape[:2]
        for part in ("human_mask", "object_mask", "background"):
            a = arrays[part]
            if a is not None and a.shape[:2] != (h, w):
                raise DatasetError(f"{where}: {part} is {a.shape[1]}×{a.shape[0]} but target is {w}×{h} "
                                   f"({self.path(i, part)})")
        for ref in ("human_ref", "object_ref"):
            img, mask = arrays[ref], arrays[ref + "_mask"]
            if img.shape[:2] != mask.shape:
                raise DatasetError(f"{where}: {ref}_mask is {mask.shape[1]}×{mask.shape[0]} but {ref} is "
                                   f"{img.shape[1]}×{img.shape[0]} ({self.path(i, ref + '_mask')})")
        box = _check_box(rec.get("box"), w, h, where)
        extra = {k: v for k, v in rec.items() if k not in CORE_KEYS and k != "_line"}
        return ChoiSample(id=rec["id"], caption=rec["caption"], verb=rec["verb"], object=rec["object"],
                          split=rec["split"], box=box, extra=extra, **arrays)

    def __iter__(self) -> Iterator[ChoiSample]:
        for i in range(len(self)):
            yield self[i]


# ----------------------------------------------------------------------------- writing


def _record_line(rec: dict[str, Any]) -> str:
    return json.dumps({k: v for k, v in rec.items() if k != "_line"}, ensure_ascii=False) + "\n"


class ChoiWriter:
    """Write samples into a CHOI dataset folder.

    ``append=False`` (default) refuses a folder that already has an index unless
    ``overwrite=True``, which starts a new index (files of other samples are left alone).
    ``append=True`` adds to an existing index. Sample files that already exist are
    replaced only with ``overwrite=True``. The index is streamed to a temporary file and
    moved into place by `close()` (also on an exception inside ``with``, so it always
    lists exactly the samples whose files were completely written).
    """

    def __init__(self, root: str | os.PathLike, *, append: bool = False, overwrite: bool = False):
        self.root = Path(root)
        self.overwrite = overwrite
        self.root.mkdir(parents=True, exist_ok=True)
        self._index = self.root / INDEX_NAME
        existing: list[dict[str, Any]] = []
        if self._index.exists():
            if append:
                existing = read_index(self.root)
            elif not overwrite:
                raise FileExistsError(f"{self._index} already exists; pass append=True to add samples "
                                      "or overwrite=True to replace the index")
        self._tmp = self._index.with_name(f".{INDEX_NAME}.{os.getpid()}.tmp")
        self._file = open(self._tmp, "w", encoding="utf-8")
        self._ids = {r["id"]: r for r in existing}
        self._existing = existing
        self._new: dict[str, dict[str, Any]] = {}
        self.closed = False

    def __enter__(self) -> "ChoiWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def add(self, sample_id: str, *, caption: str, verb: str, object_category: str,
            target: np.ndarray, human_mask: np.ndarray, object_mask: np.ndarray,
            human_ref: np.ndarray, human_ref_mask: np.ndarray,
            object_ref: np.ndarray, object_ref_mask: np.ndarray,
            background: np.ndarray | None = None, box: tuple[int, int, int, int] | None = None,
            split: str = "train", extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Validate and write one sample's files (``samples/<id>/<part>.png``); returns its
        index record. Arrays: RGB uint8 H×W×3; masks bool or uint8 0/255, H×W."""
        if self.closed:
            raise RuntimeError("ChoiWriter is closed")
        where = f"sample {sample_id!r}"
        if not isinstance(sample_id, str) or not _ID_RE.match(sample_id):
            raise DatasetError(f"{where}: id must be letters, digits, '_', '-', '.' (not starting with '.')")
        if sample_id in self._new or (sample_id in self._ids and not self.overwrite):
            raise FileExistsError(f"{where} is already in {self._index}; pass overwrite=True to replace it")
        arrays: dict[str, np.ndarray] = {
            "target": _as_rgb(f"{where} target", target),
            "human_mask": _as_mask(f"{where} human_mask", human_mask),
            "object_mask": _as_mask(f"{where} object_mask", object_mask),
            "human_ref": _as_rgb(f"{where} human_ref", human_ref),
            "human_ref_mask": _as_mask(f"{where} human_ref_mask", human_ref_mask),
            "object_ref": _as_rgb(f"{where} object_ref", object_ref),
            "object_ref_mask": _as_mask(f"{where} object_ref_mask", object_ref_mask),
        }
        if background is not None:
            arrays["background"] = _as_rgb(f"{where} background", background)
        h, w = arrays["target"].shape[:2]
        for part in ("human_mask", "object_mask", "background"):
            if part in arrays and arrays[part].shape[:2] != (h, w):
                raise DatasetError(f"{where}: {part} shape {arrays[part].shape} does not match target {(h, w)}")
        for ref in ("human_ref", "object_ref"):
            if arrays[ref].shape[:2] != arrays[ref + "_mask"].shape:
                raise DatasetError(f"{where}: {ref}_mask shape {arrays[ref + '_mask'].shape} does not "
                                   f"match {ref} {arrays[ref].shape[:2]}")
        for part in ("human_mask", "object_mask", "human_ref_mask", "object_ref_mask"):
            if not arrays[part].any():
                raise DatasetError(f"{where}: {part} is empty; a CHOI sample needs both a human and an object")
        box = _check_box(None if box is None else list(box), w, h, where)

        files = {part: f"{SAMPLES_DIR}/{sample_id}/{part}.png" for part in arrays}
        if not self.overwrite:
            for rel in files.values():
                if (self.root / rel).exists():
                    raise FileExistsError(f"{where}: {self.root / rel} already exists; "
                                          "pass overwrite=True to replace it")
        for part, arr in arrays.items():
            mode = "RGB" if part in RGB_PARTS else "L"
            save_png(self.root / files[part], Image.fromarray(arr, mode), self.overwrite)

        rec: dict[str, Any] = {"id": sample_id, "split": split, "caption": caption, "verb": verb,
                               "object": object_category}
        if box is not None:
            rec["box"] = list(box)
        rec["files"] = files
        for k, v in (extra or {}).items():
            if k in CORE_KEYS:
                raise DatasetError(f"{where}: extra key {k!r} clashes with a core index key")
            rec[k] = v
        self._new[sample_id] = rec
        if sample_id not in self._ids:
            self._file.write(_record_line(rec))
            self._file.flush()
        return rec

    def close(self) -> None:
        """Write the final index (existing records, replaced ones in place, then new ones)."""
        if self.closed:
            return
        self.closed = True
        self._file.close()
        if self._existing:
            # Rewrite with previous records first (in their order, replaced where re-added).
            with open(self._tmp, "w", encoding="utf-8") as f:
                for r in self._existing:
                    f.write(_record_line(self._new.get(r["id"], r)))
                for sid, r in self._new.items():
                    if sid not in self._ids:
                        f.write(_record_line(r))
        os.replace(self._tmp, self._index)


def write_sample(root: str | os.PathLike, sample_id: str, *, overwrite: bool = False,
                 **fields: Any) -> dict[str, Any]:
    """Add one sample to the dataset at `root` (created if needed); see `ChoiWriter.add`
    for the fields. Refuses an existing id or file unless ``overwrite=True``. Rewrites the
    index each call: for many samples use one `ChoiWriter`."""
    with ChoiWriter(root, append=True, overwrite=overwrite) as writer:
        return writer.add(sample_id, **fields)
