"""IAMG-R mask banks: the folder format, reading and writing it.

A **mask bank** is a folder: ``bank.json`` (or ``bank.jsonl``) plus PNG masks. Each
entry has an ``id``, a ``caption``, an HOI ``category`` ("ride bicycle"), its ``verb``
and ``object``, the union ``mask`` (cropped to its own bounding box, so it can be fitted
into any box later) and optionally ``human_mask`` / ``object_mask`` (cropped with the
same box) and the source ``image``. Paths are relative to the bank folder.

A bank may come from anyone (a download, a shared folder), so reading one is confined:
every mask an entry names must resolve to a file inside the bank folder (no absolute
path, no ``..``, no symbolic link leading out), and an entry that would lead out gets
the same message whether or not its target exists. ``image`` only records where the
sample came from and is never opened. The index is at most `MAX_INDEX_BYTES` and
`MAX_BANK_ENTRIES` entries, mask images at most `MAX_MASK_PIXELS` pixels.

Holds :class:`BankEntry`, :class:`MaskBank` (loading and checking a bank), the index
reader/writer (:func:`write_index`), mask PNG IO (:func:`load_mask_png`,
:func:`save_mask_png`). Embedding and ranking live in `.ranking`, the text encoders in
`.encoders`; building a bank from a dataset is research tooling (`cli/research/banks.py`,
the ``bank build`` command).
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from PIL import Image

from ..files import write_text_atomic
from ..readers import mask_values

INDEX_NAMES = ("bank.json", "bank.jsonl")
BANK_FORMAT = "interact_custom.mask_bank"
BANK_VERSION = 1
# Limits on what one bank may make the reader do (a bank may come from anyone): entries
# (each costs an embedding row and a file check), bytes of the index read before
# parsing it, and pixels of one mask image (checked from its header, before decoding).
MAX_BANK_ENTRIES = 20_000
MAX_INDEX_BYTES = 16 * 2**20
MAX_MASK_PIXELS = 8192 * 8192
MASK_KEYS = ("mask", "human_mask", "object_mask")  # the entry fields naming files that are read


# --------------------------------------------------------------------------------------
# The bank
# --------------------------------------------------------------------------------------

def normalize_category(name: str) -> str:
    """Canonical spelling of an HOI category: lower case, '_' as space, single spaces."""
    return " ".join(str(name).lower().replace("_", " ").split())


_JSON_TYPES = {dict: "an object", list: "an array", str: "a string", int: "a number", float: "a number",
               bool: "true/false", type(None): "null"}


def _json_type(value: Any) -> str:
    return next((name for t, name in _JSON_TYPES.items() if isinstance(value, t) and
                 not (t is int and isinstance(value, bool))), type(value).__name__)


def _text_field(record: Mapping[str, Any], key: str, where: str) -> str | None:
    """``record[key]`` as text (None when absent, null or ""); a JSON array, object or
    boolean there is an error naming the entry and the field (``id`` may be a number)."""
    value = record.get(key)
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return value
    if key == "id" and isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise ValueError(f"{where}: {key!r} must be a string, got {_json_type(value)}")


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
            raise ValueError(f"{where}: expected a JSON object, got {_json_type(record)}")
        fields = {k: _text_field(record, k, where)
                  for k in ("id", "caption", "category", "verb", "object", *MASK_KEYS, "image")}
        missing = [k for k in ("id", "caption", "mask") if not fields[k]]
        if missing:
            raise ValueError(f"{where}: entry is missing {', '.join(missing)} "
                             "(required: id, caption, mask; and category or verb+object)")
        verb = (fields["verb"] or "").strip()
        obj = (fields["object"] or "").strip()
        category = fields["category"] or (f"{verb} {obj}" if verb and obj else "")
        if not category:
            raise ValueError(f"{where}: entry {fields['id']!r} has no category and no verb+object")
        category = normalize_category(category)
        if not (verb and obj):
            # "ride bicycle" -> verb "ride", object "bicycle"; multi-word objects stay whole.
            verb, _, obj = category.partition(" ")
        return cls(id=fields["id"], caption=fields["caption"], category=category, verb=verb, object=obj,
                   mask=fields["mask"], human_mask=fields["human_mask"], object_mask=fields["object_mask"],
                   image=fields["image"])

    def to_record(self) -> dict:
        rec = {"id": self.id, "caption": self.caption, "category": self.category,
               "verb": self.verb, "object": self.object, "mask": self.mask}
        for k in ("human_mask", "object_mask", "image"):
            if getattr(self, k):
                rec[k] = getattr(self, k)
        return rec


def _inside(base: str, rel: str, folders: dict[str, str] | None = None) -> str | None:
    """The file ``rel`` names in the folder ``base`` (already resolved), itself resolved;
    None when ``rel`` is absolute, has a drive or a ``..`` part, or resolves (through a
    symbolic link) outside ``base`` -- decided the same way whether or not the target exists.
    ``folders`` memoises resolved parent folders across the calls for one bank. Plain
    strings: a bank of MAX_BANK_ENTRIES entries makes tens of thousands of these calls."""
    text = rel.replace("\\", "/")  # a bank written on Windows
    if not text or "\0" in text or text.startswith("/") or text[1:2] == ":":  # absolute, or a drive
        return None
    parts = [p for p in text.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        return None
    parent = "/".join(parts[:-1])
    try:
        folder = folders.get(parent) if folders is not None else None
        if folder is None:
            folder = os.path.realpath(os.path.join(base, parent))
            if folders is not None:
                folders[parent] = folder
        real = os.path.join(folder, parts[-1])
        if os.path.islink(real):
            real = os.path.realpath(real)
    except (OSError, ValueError):  # a name the OS refuses
        return None
    return real if real.startswith(base.rstrip(os.sep) + os.sep) else None


def find_banks(folders: Iterable[str | os.PathLike]) -> dict[str, Path]:
    """The mask banks in ``folders``: each sub-folder that holds ``bank.json`` or
    ``bank.jsonl``, by its folder name, sorted by name. When two folders hold a bank of
    the same name the first folder's wins; hidden (``.``) folders are left out, and a
    folder that cannot be read is skipped."""
    found: dict[str, Path] = {}
    for folder in folders:
        try:
            with os.scandir(folder) as it:
                subs = sorted(it, key=lambda d: d.name)
        except OSError:
            continue
        for d in subs:
            if d.name.startswith(".") or d.name in found:
                continue
            try:
                if d.is_dir() and any(os.path.isfile(os.path.join(d.path, n)) for n in INDEX_NAMES):
                    found[d.name] = Path(d.path)
            except OSError:
                continue
    return dict(sorted(found.items()))


def bank_choices(folders: Iterable[str | os.PathLike], shipped_name: str, shipped_dir: Path) -> dict[str, Path]:
    """The banks a user may pick, by name: the shipped bank (``shipped_name``), then each
    bank in ``folders`` (`find_banks`; one of the shipped bank's name is left out). A
    caller offers only these, never a path it was sent."""
    found = find_banks(folders)
    found.pop(shipped_name, None)
    return {shipped_name: Path(shipped_dir), **found}


def chosen_bank(name, banks: dict[str, Path], how_to_add: str) -> Path:
    """The folder of the bank ``name`` among ``banks`` (`bank_choices`); for any other value
    an error listing the names there are, then ``how_to_add`` (it says nothing about files:
    a name may come from anyone who can send a workflow)."""
    if isinstance(name, str) and name in banks:
        return banks[name]
    shown = str(name) if len(str(name)) <= 80 else str(name)[:77] + "..."
    raise ValueError(f"mask bank {shown!r} is not one of the available banks: {', '.join(banks)}. {how_to_add}")


@dataclass
class MaskBank:
    """A folder of captioned interaction masks (see the module docstring for the layout).
    ``name``, when given, is how messages name the bank (e.g. its ComfyUI dropdown entry)
    instead of its folder path."""

    root: Path
    entries: list[BankEntry]
    index_path: Path | None = None
    name: str | None = None

    @property
    def label(self) -> str:
        return repr(self.name) if self.name is not None else str(self.root)

    @classmethod
    def load(cls, root: str | os.PathLike, *, name: str | None = None) -> "MaskBank":
        """Read ``bank.json`` / ``bank.jsonl`` from ``root`` and check the whole bank: at
        most `MAX_BANK_ENTRIES` well-formed entries with unique ids, every mask file inside
        the bank folder. ``name``: how messages name the bank (default: its folder)."""
        root = Path(root)
        bank = cls(root=root, entries=[], name=name)
        if not root.is_dir():
            raise FileNotFoundError(f"mask bank folder {bank.label} does not exist")
        bank.index_path, index_file = bank._find_index()
        lead = f"mask bank {bank.label}: {bank.index_path.name}"
        records = _read_index(index_file, lead)
        bank.entries = [BankEntry.from_record(r, f"{lead} entry {i}") for i, r in enumerate(records)]
        if not bank.entries:
            raise ValueError(f"mask bank {bank.label} is empty: {bank.index_path.name} lists no entries")
        seen: set[str] = set()
        dupes = sorted({e.id for e in bank.entries if e.id in seen or seen.add(e.id)})
        if dupes:
            raise ValueError(f"{lead}: duplicate entry ids {dupes[:5]}")
        base, folders = str(root.resolve()), {}
        for e in bank.entries:
            for key in MASK_KEYS:
                if getattr(e, key):
                    bank._entry_file(e, key, base, folders)
        return bank

    def _find_index(self) -> tuple[Path, Path]:
        """(the index as the bank names it, the file to read): the first of INDEX_NAMES
        present; an index that is a link leading out of the bank is refused."""
        base = str(self.root.resolve())
        for n in INDEX_NAMES:
            if not os.path.lexists(self.root / n):
                continue
            real = _inside(base, n)
            if real is None:
                raise ValueError(f"mask bank {self.label}: {n} is a link leading out of the bank folder; "
                                 "the index must be a file inside the bank")
            if os.path.isfile(real):
                return self.root / n, Path(real)
        raise FileNotFoundError(
            f"mask bank folder {self.label} has no index: expected {' or '.join(INDEX_NAMES)} "
            "(build one with `python -m interact_custom bank build`)")

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

    def entry_file(self, entry: BankEntry, which: str = "mask") -> Path:
        """The file ``entry``'s ``which`` (mask|human_mask|object_mask) names, resolved.
        It must lie inside the bank folder: an absolute path, ``..`` or a link leading out
        is an error that reads the same whether or not the target exists."""
        return Path(self._entry_file(entry, which, str(self.root.resolve())))

    def _entry_file(self, entry: BankEntry, which: str, base: str, folders: dict[str, str] | None = None) -> str:
        rel = getattr(entry, which)
        if not rel:
            raise ValueError(f"mask bank {self.label}: entry {entry.id!r} has no {which}")
        path = _inside(base, rel, folders)
        if path is None:
            raise ValueError(f"mask bank {self.label}: entry {entry.id!r} names {which} {rel!r}, which is not a "
                             "file inside the bank folder: entries must name files by relative paths inside the "
                             "bank, e.g. 'masks/<id>.png' (no absolute path, no '..', no link leading out of "
                             "the bank)")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"mask bank {self.label}: entry {entry.id!r} names {which} {rel!r}, but the "
                                    "bank folder holds no such file")
        return path

    def load_mask(self, entry: BankEntry, which: str = "mask") -> np.ndarray:
        """A mask of ``entry`` as float32 HxW in 0..1 (``which``: mask|human_mask|object_mask)."""
        path = self.entry_file(entry, which)
        try:
            return load_mask_png(path)
        except MaskImageError as e:
            raise MaskImageError(f"bank {self.label}: entry {entry.id}: {getattr(entry, which)} {e.problem}; "
                                 "replace the file or remove the entry from "
                                 f"{self.index_path.name if self.index_path else 'the index'}",
                                 detail=e.detail, problem=e.problem) from None


def _read_index(path: Path, lead: str) -> list:
    """The entry records of the index ``path``; ``lead`` starts every message (it names
    the bank and the index as the user knows them). Size and entry count are checked
    before anything is built from them."""
    too_big = (f"{lead} is larger than {MAX_INDEX_BYTES:,} bytes, the most a bank index may be (a bank holds "
               f"at most {MAX_BANK_ENTRIES:,} entries); split the bank into several")
    if path.stat().st_size > MAX_INDEX_BYTES:
        raise ValueError(too_big)
    with open(path, "rb") as f:
        raw = f.read(MAX_INDEX_BYTES + 1)  # the file may have grown since stat()
    if len(raw) > MAX_INDEX_BYTES:
        raise ValueError(too_big)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{lead} is not UTF-8 text (invalid byte at offset {e.start})") from None
    too_many = (f"{lead} lists more than {MAX_BANK_ENTRIES:,} entries, the most a bank may hold; split it "
                "into several banks")
    too_deep = "nests arrays or objects too deeply to read; a bank index is a list of flat entry objects"
    if path.suffix == ".jsonl":
        records = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                if len(records) == MAX_BANK_ENTRIES:
                    raise ValueError(too_many)
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{lead} line {n} is not valid JSON: {e}") from None
                except RecursionError:
                    raise ValueError(f"{lead} line {n} {too_deep}") from None
        return records
    try:
        data = json.loads(text) if text.strip() else []
    except json.JSONDecodeError as e:
        raise ValueError(f"{lead} is not valid JSON: {e}") from None
    except RecursionError:
        raise ValueError(f"{lead} {too_deep}") from None
    if isinstance(data, Mapping):
        if "entries" not in data:
            raise ValueError(f"{lead}: expected a list of entries or an object with 'entries'")
        data = data["entries"]
    if not isinstance(data, list):
        raise ValueError(f"{lead}: 'entries' must be a list, got {_json_type(data)}")
    if len(data) > MAX_BANK_ENTRIES:
        raise ValueError(too_many)
    return data


class MaskImageError(ValueError):
    """A mask file that cannot be used: not a readable image, or too many pixels.
    ``detail`` says what the reader found; ``problem`` is the message after the file name."""

    def __init__(self, message: str, *, detail: str = "", problem: str = ""):
        super().__init__(message)
        self.detail = detail
        self.problem = problem or message


def load_mask_png(path: str | os.PathLike, *, max_pixels: int = MAX_MASK_PIXELS) -> np.ndarray:
    """Read a mask image as float32 HxW in 0..1 (the first channel for colour images); a
    file that is no readable image (not a PNG, truncated), or whose header declares more
    than ``max_pixels`` pixels (refused before decoding: a decompression bomb), is a
    `MaskImageError`."""
    def too_large(size: str) -> MaskImageError:
        problem = (f"has {size}, more than the {max_pixels:,} pixels a mask may have (a guard against "
                   "decompression bombs); crop it to its bounding box or downscale it")
        return MaskImageError(f"{path} {problem}", detail=size, problem=problem)

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
        with im:
            w, h = im.size
            if w * h > max_pixels:
                raise too_large(f"{w}x{h} pixels")
            im.load()
            if im.mode in ("RGB", "RGBA", "P", "LA"):
                im = im.convert("RGB").getchannel(0)
            return mask_values(im, str(path)).astype(np.float32)  # grey 0..255 -> 0..1
    except (FileNotFoundError, MaskImageError):
        raise
    except Image.DecompressionBombError:
        raise too_large("more pixels than PIL's decompression-bomb limit") from None
    except (OSError, SyntaxError, ValueError, EOFError, zlib.error) as e:
        detail = (str(e).strip().splitlines() or [type(e).__name__])[0]
        if isinstance(e, Image.UnidentifiedImageError):
            detail = "not an image file PIL can identify"
        problem = f"is not a readable PNG image ({detail})"
        raise MaskImageError(f"{path} {problem}", detail=detail, problem=problem) from None


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
