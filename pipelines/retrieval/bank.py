"""IAMG-R mask banks: the folder format, reading and writing it, building one from a dataset.

A **mask bank** is a folder: ``bank.json`` (or ``bank.jsonl``) plus PNG masks. Each
entry has an ``id``, a ``caption``, an HOI ``category`` ("ride bicycle"), its ``verb``
and ``object``, the union ``mask`` (cropped to its own bounding box, so it can be fitted
into any box later) and optionally ``human_mask`` / ``object_mask`` (cropped with the
same box) and the source ``image``. Paths are relative to the bank folder.

Holds :class:`BankEntry`, :class:`MaskBank` (loading and checking a bank), the index
reader/writer (:func:`write_index`), mask PNG IO (:func:`load_mask_png`,
:func:`save_mask_png`) and the builder (:class:`BankSource`, :func:`dataset_sources`,
:func:`build_bank`). Embedding and ranking live in `.ranking`, the text encoders in
`.encoders`, the ``bank`` command in ``cli/bank.py``.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
from PIL import Image

from ..files import write_text_atomic
from ..geometry import mask_box

INDEX_NAMES = ("bank.json", "bank.jsonl")
BANK_FORMAT = "interact_custom.mask_bank"
BANK_VERSION = 1


# --------------------------------------------------------------------------------------
# The bank
# --------------------------------------------------------------------------------------

def normalize_category(name: str) -> str:
    """Canonical spelling of an HOI category: lower case, '_' as space, single spaces."""
    return " ".join(str(name).lower().replace("_", " ").split())


@dataclass(frozen=True)
class BankEntry:
    """One captioned interaction mask. Mask paths are relative to the bank folder."""

    id: str
    caption: str
    category: str
    verb: str
    object: str
    mask: str
    human_mask: str | None = None
    object_mask: str | None = None
    image: str | None = None

    @classmethod
    def from_record(cls, record: Mapping[str, Any], where: str) -> "BankEntry":
        if not isinstance(record, Mapping):
            raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
        missing = [k for k in ("id", "caption", "mask") if not record.get(k)]
        if missing:
            raise ValueError(f"{where}: entry is missing {', '.join(missing)} "
                             "(required: id, caption, mask; and category or verb+object)")
        verb = str(record.get("verb") or "").strip()
        obj = str(record.get("object") or "").strip()
        category = record.get("category") or (f"{verb} {obj}" if verb and obj else "")
        if not category:
            raise ValueError(f"{where}: entry {record['id']!r} has no category and no verb+object")
        category = normalize_category(category)
        if not (verb and obj):
            # "ride bicycle" -> verb "ride", object "bicycle"; multi-word objects stay whole.
            verb, _, obj = category.partition(" ")
        return cls(id=str(record["id"]), caption=str(record["caption"]), category=category,
                   verb=verb, object=obj, mask=str(record["mask"]),
                   human_mask=record.get("human_mask") or None,
                   object_mask=record.get("object_mask") or None,
                   image=record.get("image") or None)

    def to_record(self) -> dict:
        rec = {"id": self.id, "caption": self.caption, "category": self.category,
               "verb": self.verb, "object": self.object, "mask": self.mask}
        for k in ("human_mask", "object_mask", "image"):
            if getattr(self, k):
                rec[k] = getattr(self, k)
        return rec


@dataclass
class MaskBank:
    """A folder of captioned interaction masks (see the module docstring for the layout)."""

    root: Path
    entries: list[BankEntry]
    index_path: Path | None = None

    @classmethod
    def load(cls, root: str | os.PathLike) -> "MaskBank":
        """Read ``bank.json`` / ``bank.jsonl`` from ``root`` and check every mask file exists."""
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"mask bank folder {root} does not exist")
        index_path = next((root / n for n in INDEX_NAMES if (root / n).is_file()), None)
        if index_path is None:
            raise FileNotFoundError(
                f"mask bank folder {root} has no index: expected {' or '.join(INDEX_NAMES)} "
                "(build one with `python -m interact_custom bank build`)")
        records = _read_index(index_path)
        entries = [BankEntry.from_record(r, f"{index_path.name} entry {i}") for i, r in enumerate(records)]
        if not entries:
            raise ValueError(f"mask bank {index_path} is empty: it lists no entries")
        seen: set[str] = set()
        dupes = sorted({e.id for e in entries if e.id in seen or seen.add(e.id)})
        if dupes:
            raise ValueError(f"mask bank {index_path}: duplicate entry ids {dupes[:5]}")
        for e in entries:
            for key in ("mask", "human_mask", "object_mask"):
                rel = getattr(e, key)
                if rel and not (root / rel).is_file():
                    raise FileNotFoundError(
                        f"mask bank {index_path}: entry {e.id!r} names {key} {rel!r}, "
                        f"but {root / rel} does not exist")
        return cls(root=root, entries=entries, index_path=index_path)

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def categories(self) -> list[str]:
        return sorted({e.category for e in self.entries})

    @property
    def index_hash(self) -> str:
        """Hash of what the embeddings depend on: entry ids and captions, in order."""
        payload = json.dumps([[e.id, e.caption] for e in self.entries], ensure_ascii=False)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    def load_mask(self, entry: BankEntry, which: str = "mask") -> np.ndarray:
        """A mask of ``entry`` as float32 HxW in 0..1 (``which``: mask|human_mask|object_mask)."""
        rel = getattr(entry, which)
        if not rel:
            raise ValueError(f"mask bank entry {entry.id!r} has no {which}")
        try:
            return load_mask_png(self.root / rel)
        except MaskImageError as e:
            raise MaskImageError(f"bank {self.root}: entry {entry.id}: {rel} is not a readable PNG image "
                                 f"({e.detail}); replace the file or remove the entry from "
                                 f"{self.index_path.name if self.index_path else 'the index'}",
                                 detail=e.detail) from None


def _read_index(path: Path) -> list:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        records = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path} line {n} is not valid JSON: {e}") from None
        return records
    try:
        data = json.loads(text) if text.strip() else []
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    if isinstance(data, Mapping):
        if "entries" not in data:
            raise ValueError(f"{path}: expected a list of entries or an object with 'entries'")
        data = data["entries"]
    if not isinstance(data, list):
        raise ValueError(f"{path}: 'entries' must be a list")
    return data


class MaskImageError(ValueError):
    """A mask file that is not a readable image; ``detail`` says what the reader found."""

    def __init__(self, message: str, *, detail: str = ""):
        super().__init__(message)
        self.detail = detail


def load_mask_png(path: str | os.PathLike) -> np.ndarray:
    """Read a mask image as float32 HxW in 0..1 (the first channel for colour images); a
    file that is no readable image (not a PNG, truncated) is a `MaskImageError`."""
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("RGB", "RGBA", "P", "LA"):
                im = im.convert("RGB").getchannel(0)
            elif im.mode != "L":
                im = im.convert("L")
            return np.asarray(im, dtype=np.float32) / 255.0
    except FileNotFoundError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError, zlib.error) as e:
        detail = (str(e).strip().splitlines() or [type(e).__name__])[0]
        if isinstance(e, Image.UnidentifiedImageError):
            detail = "not an image file PIL can identify"
        raise MaskImageError(f"{path} is not a readable PNG image ({detail})", detail=detail) from None


def save_mask_png(mask: np.ndarray, path: str | os.PathLike) -> None:
    """Write a 0..1 (or bool) mask as an 8-bit grey PNG."""
    m = np.asarray(mask, dtype=np.float32)
    Image.fromarray(np.clip(np.round(m * 255.0), 0, 255).astype(np.uint8), mode="L").save(path)



def write_index(out_dir: str | os.PathLike, entries: Sequence[BankEntry], **meta) -> Path:
    """Write ``bank.json`` for ``entries`` into ``out_dir``."""
    path = Path(out_dir) / INDEX_NAMES[0]
    doc = {"format": BANK_FORMAT, "version": BANK_VERSION, **meta,
           "entries": [e.to_record() for e in entries]}
    write_text_atomic(path, json.dumps(doc, indent=1, ensure_ascii=False))
    return path


# --------------------------------------------------------------------------------------
# Building a bank from a dataset
# --------------------------------------------------------------------------------------

@dataclass
class BankSource:
    """What the builder needs from one dataset sample (the adapter's output)."""

    id: str
    caption: str
    verb: str
    object: str
    human_mask: np.ndarray
    object_mask: np.ndarray
    image: str | None = None


def _as_mask(m: Any) -> np.ndarray:
    """Dataset masks may come as PIL images, uint8/bool/float arrays or tensors."""
    if isinstance(m, Image.Image):
        m = np.asarray(m.convert("L"), dtype=np.float32) / 255.0
    elif hasattr(m, "detach"):
        m = m.detach().cpu().float().numpy()
    m = np.asarray(m)
    if m.ndim == 3:
        m = m[..., 0] if m.shape[-1] in (1, 3, 4) else m[0]
    if m.dtype == np.uint8:
        return m.astype(np.float32) / 255.0
    return m.astype(np.float32)


def dataset_sources(dataset_root: str | os.PathLike, split: str | None = None) -> Iterator[BankSource]:
    """Adapter from the project's CHOI dataset (``pipelines/data/dataset.py``) to :class:`BankSource`.

    Reads only the two target masks of each sample (not the reference images).
    """
    from ..data.dataset import ChoiDataset

    ds = ChoiDataset(dataset_root, split=split)
    for i in range(len(ds)):
        rec = ds.record(i)
        yield BankSource(id=rec["id"], caption=rec["caption"], verb=rec["verb"], object=rec["object"],
                         human_mask=ds.load_part(i, "human_mask"), object_mask=ds.load_part(i, "object_mask"),
                         image=str(ds.path(i, "target")))


def _relative_to(path: str | None, base: Path) -> str | None:
    # Stored relative to the bank folder like the masks, so a bank and its dataset can
    # move together; absolute when no relative path exists (another drive).
    if not path:
        return None
    try:
        return Path(os.path.relpath(Path(path).resolve(), base.resolve())).as_posix()
    except ValueError:
        return str(Path(path).resolve())


def _file_stem(sid: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", sid).strip("._")
    return stem or "entry"


def build_bank(dataset_root: str | os.PathLike | None, out_dir: str | os.PathLike, *,
               split: str | None = None, sources: Iterable[BankSource] | None = None,
               save_parts: bool = True, overwrite: bool = False, threshold: float = 0.5) -> MaskBank:
    """Build a mask bank in ``out_dir`` from a dataset in the project's format.

    Per sample: union = human ∪ object (binarised at ``threshold``), cropped to its bbox
    and saved as ``masks/<id>.png``; with ``save_parts`` the human and object masks are
    cropped with the same box (``masks/<id>_human.png`` / ``_object.png``) so they stay
    aligned with the union. Samples whose union is empty are skipped with a warning.
    ``sources`` replaces the dataset reader (any iterable of :class:`BankSource`).
    """
    out = Path(out_dir)
    if any((out / n).exists() for n in INDEX_NAMES) and not overwrite:
        raise FileExistsError(f"{out} already holds a mask bank; pass overwrite=True (CLI: --overwrite)")
    if sources is None:
        if dataset_root is None:
            raise ValueError("build_bank needs dataset_root or sources")
        sources = dataset_sources(dataset_root, split=split)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    entries: list[BankEntry] = []
    used: set[str] = set()
    skipped: list[str] = []
    for src in sources:
        human = _as_mask(src.human_mask) > threshold
        obj = _as_mask(src.object_mask) > threshold
        if human.shape != obj.shape:
            raise ValueError(f"sample {src.id!r}: human mask {human.shape} and object mask "
                             f"{obj.shape} differ in size")
        union = human | obj
        box = mask_box(union)
        if box is None:
            skipped.append(src.id)
            continue
        sid = src.id if src.id not in used else f"{src.id}_{len(entries)}"
        used.add(sid)
        stem = _file_stem(sid)
        rel = {"mask": f"masks/{stem}.png"}
        save_mask_png(union[box.slices], out / rel["mask"])
        if save_parts:
            for key, part in (("human_mask", human), ("object_mask", obj)):
                rel[key] = f"masks/{stem}_{key.split('_')[0]}.png"
                save_mask_png(part[box.slices], out / rel[key])
        entries.append(BankEntry(id=sid, caption=src.caption,
                                 category=normalize_category(f"{src.verb} {src.object}"),
                                 verb=normalize_category(src.verb), object=normalize_category(src.object),
                                 image=_relative_to(src.image, out), **rel))
    if skipped:
        warnings.warn(f"build_bank: skipped {len(skipped)} samples with empty human+object "
                      f"masks: {skipped[:5]}{' ...' if len(skipped) > 5 else ''}")
    if not entries:
        raise ValueError(f"no sample with a non-empty mask found in {dataset_root or 'the given sources'}")
    write_index(out, entries, source=str(dataset_root) if dataset_root else None, split=split)
    return MaskBank.load(out)
