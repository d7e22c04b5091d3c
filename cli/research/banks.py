"""Building an IAMG-R mask bank (`pipelines.retrieval.bank` format) from a CHOI dataset or
any iterable of `BankSource`: the ``bank build`` command's work."""
from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from ...pipelines.geometry import mask_box
from ...pipelines.readers import MASK_THRESHOLD, as_mask
from ...pipelines.retrieval.bank import (INDEX_NAMES, MAX_BANK_ENTRIES, BankEntry, MaskBank, normalize_category,
                                         save_mask_png, write_index)



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


def dataset_sources(dataset_root: str | os.PathLike, split: str | None = None) -> Iterator[BankSource]:
    """Adapter from the project's CHOI dataset (``cli/research/data/dataset.py``) to :class:`BankSource`.

    Reads only the two target masks of each sample (not the reference images).
    """
    from .data.dataset import ChoiDataset

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
               save_parts: bool = True, overwrite: bool = False,
               threshold: float = MASK_THRESHOLD) -> MaskBank:
    """Build a mask bank in ``out_dir`` from a dataset in the project's format.

    Per sample: union = human ∪ object (binarised at ``threshold``), cropped to its bbox
    and saved as ``masks/<id>.png``; with ``save_parts`` the human and object masks are
    cropped with the same box (``masks/<id>_human.png`` / ``_object.png``) so they stay
    aligned with the union. Samples whose union is empty are skipped with a warning.
    ``sources`` replaces the dataset reader (any iterable of :class:`BankSource`).
    ``out_dir`` must be new, empty or an existing bank; an existing bank, or a folder
    holding other files, is written into only with ``overwrite``.
    """
    out = Path(out_dir)
    if not overwrite:
        if any((out / n).exists() for n in INDEX_NAMES):
            raise FileExistsError(f"{out} already holds a mask bank; pass overwrite=True (CLI: --overwrite)")
        if out.is_dir() and any(out.iterdir()):
            raise FileExistsError(f"{out} is not empty and holds no mask bank (no {' or '.join(INDEX_NAMES)}): "
                                  "building one there would overwrite its files in masks/; choose a new or empty "
                                  "folder, or pass overwrite=True (CLI: --overwrite)")
    if sources is None:
        if dataset_root is None:
            raise ValueError("build_bank needs dataset_root or sources")
        sources = dataset_sources(dataset_root, split=split)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    entries: list[BankEntry] = []
    used: set[str] = set()
    skipped: list[str] = []
    for src in sources:
        # Masks may come as PIL images, bool / uint8 / float arrays or tensors (`readers.as_mask`).
        human = as_mask(src.human_mask, f"sample {src.id!r}: human_mask", allow_empty=True,
                        threshold=threshold).astype(bool)
        obj = as_mask(src.object_mask, f"sample {src.id!r}: object_mask", allow_empty=True,
                      threshold=threshold).astype(bool)
        if human.shape != obj.shape:
            raise ValueError(f"sample {src.id!r}: human mask {human.shape} and object mask "
                             f"{obj.shape} differ in size")
        union = human | obj
        box = mask_box(union)
        if box is None:
            skipped.append(src.id)
            continue
        if len(entries) == MAX_BANK_ENTRIES:
            raise ValueError(f"{dataset_root or 'the given sources'} has more than {MAX_BANK_ENTRIES:,} samples "
                             "with a mask, the most a bank may hold; build several banks (e.g. one per --split)")
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
