"""IAMG-R: interaction-mask retrieval from a bank of captioned masks (DESIGN.md §2).

The official IAMG-R keeps HICO-DET masks with LLaVA captions, embeds the query caption
with CLIP ViT-L/14 (`clip.encode_text`), scores it against the bank captions of the
requested HOI category with an *unnormalised* dot product and returns the union of the
arg-max entry's human and object masks. Ours (★) generalises that:

* a **mask bank** is a folder: ``bank.json`` (or ``bank.jsonl``) plus PNG masks. Each
  entry has an ``id``, a ``caption``, an HOI ``category`` ("ride bicycle"), its ``verb``
  and ``object``, the union ``mask`` (cropped to its own bounding box, so it can be fitted
  into any box later) and optionally ``human_mask`` / ``object_mask`` (cropped with the
  same box) and the source ``image``. Paths are relative to the bank folder.
* captions are embedded by a **text encoder** (:class:`TextEncoder`): the CLIP text model
  found in the IAMG checkpoint (:class:`CLIPTextEncoder`) or a weight-free lexical
  fallback (:class:`LexicalEncoder`); bank embeddings are cached next to the index.
* :func:`retrieve` ranks by cosine similarity (``similarity="dot"`` gives the official
  unnormalised score), optional category filter, top-k, deterministic tie-break by id.
* :func:`fit_mask_to_box` places a retrieved mask into a box of a canvas;
  :func:`candidates_grid` renders the candidates for browsing.

CLI: ``python -m interact_custom bank build|query`` (:func:`add_arguments`, :func:`run`).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..weights_manager.files import write_text_atomic

INDEX_NAMES = ("bank.json", "bank.jsonl")
BANK_FORMAT = "interact_custom.mask_bank"
BANK_VERSION = 1
CACHE_DIR = ".embeddings"
# Scores closer than this count as ties, so identical captions (whose embeddings may
# differ in the last bits depending on their position in a batch) are ordered by id.
TIE_DECIMALS = 6


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
        return load_mask_png(self.root / rel)


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


def load_mask_png(path: str | os.PathLike) -> np.ndarray:
    """Read a mask image as float32 HxW in 0..1 (the first channel for colour images)."""
    with Image.open(path) as im:
        if im.mode in ("RGB", "RGBA", "P", "LA"):
            im = im.convert("RGB").getchannel(0)
        elif im.mode != "L":
            im = im.convert("L")
        return np.asarray(im, dtype=np.float32) / 255.0


def save_mask_png(mask: np.ndarray, path: str | os.PathLike) -> None:
    """Write a 0..1 (or bool) mask as an 8-bit grey PNG."""
    m = np.asarray(mask, dtype=np.float32)
    Image.fromarray(np.clip(np.round(m * 255.0), 0, 255).astype(np.uint8), mode="L").save(path)


def mask_bbox(mask: np.ndarray, threshold: float = 0.5) -> tuple[int, int, int, int] | None:
    """(y0, y1, x0, x1), exclusive ends, of the pixels above ``threshold``; None if empty."""
    on = np.asarray(mask) > threshold
    rows, cols = np.flatnonzero(on.any(1)), np.flatnonzero(on.any(0))
    if rows.size == 0:
        return None
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


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
    """Adapter from the project's CHOI dataset (``pipelines/dataset.py``) to :class:`BankSource`.

    Reads only the two target masks of each sample (not the reference images).
    """
    from .dataset import ChoiDataset

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
        box = mask_bbox(union)
        if box is None:
            skipped.append(src.id)
            continue
        y0, y1, x0, x1 = box
        sid = src.id if src.id not in used else f"{src.id}_{len(entries)}"
        used.add(sid)
        stem = _file_stem(sid)
        rel = {"mask": f"masks/{stem}.png"}
        save_mask_png(union[y0:y1, x0:x1], out / rel["mask"])
        if save_parts:
            for key, part in (("human_mask", human), ("object_mask", obj)):
                rel[key] = f"masks/{stem}_{key.split('_')[0]}.png"
                save_mask_png(part[y0:y1, x0:x1], out / rel[key])
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


# --------------------------------------------------------------------------------------
# Text encoders
# --------------------------------------------------------------------------------------

@runtime_checkable
class TextEncoder(Protocol):
    """Anything that embeds captions. ``identity`` changes whenever the embeddings would."""

    identity: str

    def encode(self, texts: list[str]) -> np.ndarray:  # [N, D] float32
        ...


# Weight-free lexical encoder tables. Each canonical lemma lists the surface forms that
# HOI captions use for it (inflections, spelling variants, everyday synonyms).
_VERB_FORMS = {
    "ride": "ride rides riding rode ridden",
    "kick": "kick kicks kicking kicked",
    "hold": "hold holds holding held grip grips gripping grasp grasps grasping",
    "carry": "carry carries carrying carried",
    "grab": "grab grabs grabbing grabbed",
    "lift": "lift lifts lifting lifted raise raises raising raised",
    "push": "push pushes pushing pushed",
    "pull": "pull pulls pulling pulled drag drags dragging dragged",
    "throw": "throw throws throwing threw thrown toss tosses tossing tossed",
    "catch": "catch catches catching caught",
    "hit": "hit hits hitting strike strikes striking struck",
    "swing": "swing swings swinging swung",
    "sit": "sit sits sitting sat seated",
    "stand": "stand stands standing stood",
    "lie": "lie lies lying lay laying",
    "straddle": "straddle straddles straddling straddled",
    "walk": "walk walks walking walked",
    "run": "run runs running ran",
    "jump": "jump jumps jumping jumped leap leaps leaping leapt hop hops hopping",
    "drive": "drive drives driving drove driven",
    "fly": "fly flies flying flew flown",
    "eat": "eat eats eating ate eaten",
    "drink": "drink drinks drinking drank sip sips sipping",
    "hug": "hug hugs hugging hugged embrace embraces embracing cuddle cuddling",
    "kiss": "kiss kisses kissing kissed",
    "pet": "pet pets petting petted stroke strokes stroking",
    "feed": "feed feeds feeding fed",
    "wash": "wash washes washing washed clean cleans cleaning cleaned",
    "look": "look looks looking watch watches watching watched inspect inspects inspecting "
            "inspected observe observing view viewing",
    "read": "read reads reading",
    "type": "type types typing typed",
    "talk": "talk talks talking call calls calling",
    "cut": "cut cuts cutting slice slices slicing",
    "open": "open opens opening opened",
    "wear": "wear wears wearing wore worn",
    "play": "play plays playing played",
    "board": "board boards boarding boarded",
    "repair": "repair repairs repairing repaired fix fixes fixing fixed",
    "brush": "brush brushes brushing brushed",
    "wave": "wave waves waving waved",
    "point": "point points pointing pointed",
    "lean": "lean leans leaning leaned",
    "row": "row rows rowing rowed paddle paddles paddling",
    "sail": "sail sails sailing sailed",
    "surf": "surf surfs surfing surfed",
    "ski": "ski skis skiing skied",
    "skate": "skate skates skating skated",
    "serve": "serve serves serving served",
    "blow": "blow blows blowing blew",
    "stab": "stab stabs stabbing stabbed",
    "load": "load loads loading loaded",
    "launch": "launch launches launching launched",
    "park": "park parks parking parked",
    "chase": "chase chases chasing chased",
}
_OBJECT_FORMS = {
    "bicycle": "bicycle bicycles bike bikes cycle cycles bmx",
    "motorcycle": "motorcycle motorcycles motorbike motorbikes scooter scooters moped",
    "ball": "ball balls football footballs soccerball basketball basketballs volleyball",
    "horse": "horse horses pony ponies",
    "dog": "dog dogs puppy puppies pup pups",
    "cat": "cat cats kitten kittens kitty",
    "car": "car cars automobile automobiles",
    "airplane": "airplane airplanes aeroplane aeroplanes plane planes aircraft jet jets",
    "boat": "boat boats ship ships canoe canoes kayak kayaks",
    "phone": "phone phones cellphone cellphones smartphone smartphones mobile",
    "laptop": "laptop laptops notebook computer computers",
    "cup": "cup cups mug mugs",
    "couch": "couch couches sofa sofas",
    "chair": "chair chairs seat seats stool stools bench benches",
    "television": "television televisions tv tvs",
    "bag": "bag bags handbag handbags backpack backpacks suitcase suitcases",
    "racket": "racket rackets racquet racquets",
    "skateboard": "skateboard skateboards",
    "surfboard": "surfboard surfboards",
    "umbrella": "umbrella umbrellas",
    "kite": "kite kites",
    "frisbee": "frisbee frisbees",
    "bottle": "bottle bottles",
    "book": "book books",
    "table": "table tables desk desks",
    "truck": "truck trucks lorry lorries",
    "bus": "bus buses",
    "cow": "cow cows cattle",
    "sheep": "sheep lamb lambs",
    "elephant": "elephant elephants",
}
# Person words: every caption has one, so they carry little evidence (half weight).
_PERSON_FORMS = ("person people persons man men woman women boy boys girl girls guy guys lady "
                 "ladies kid kids child children he she him someone player rider human adult")
# Lemmas that describe nearly the same interaction shape share an extra concept token
# (half weight), so "carry" scores above "kick" against "hold" without equalling it.
_CONCEPTS = {
    "grasp": "hold carry grab lift",
    "strike": "hit swing kick",
    "seated": "sit straddle ride",
    "toss": "throw catch",
    "affection": "hug kiss pet",
    "travel": "ride drive fly sail row",
}
_STOPWORDS = set("a an the is are was were be been being am of and to this that these those "
                 "there here it its his her their them photo picture image shows showing show "
                 "depicts depicting while very".split())


def _lexicon() -> tuple[dict[str, str], dict[str, str]]:
    lemma: dict[str, str] = {}
    for canon, forms in {**_VERB_FORMS, **_OBJECT_FORMS}.items():
        for f in forms.split():
            lemma.setdefault(f, canon)
    for f in _PERSON_FORMS.split():
        lemma[f] = "person"
    concept = {l: c for c, ls in _CONCEPTS.items() for l in ls.split()}
    return lemma, concept


_LEMMA, _CONCEPT = _lexicon()
_LEXICON_HASH = hashlib.sha256(json.dumps(
    [_VERB_FORMS, _OBJECT_FORMS, _PERSON_FORMS, _CONCEPTS, sorted(_STOPWORDS)],
    sort_keys=True).encode()).hexdigest()[:12]


def _light_stem(w: str) -> str:
    """Crude suffix stripping for words outside the table (applied to query and bank alike)."""
    def undouble(b: str) -> str:
        return b[:-1] if len(b) > 2 and b[-1] == b[-2] and b[-1] not in "lsz" else b
    if len(w) > 4 and w.endswith("ies"):
        return w[:-3] + "y"
    if len(w) > 5 and w.endswith("ing"):
        return undouble(w[:-3])
    if len(w) > 4 and w.endswith("ed"):
        return undouble(w[:-2])
    if len(w) > 4 and w.endswith(("ches", "shes", "sses", "xes", "zes")):
        return w[:-2]
    if len(w) > 3 and w.endswith("s") and not w.endswith(("ss", "us", "is")):
        return w[:-1]
    return w


def lexical_tokens(text: str) -> list[tuple[str, float]]:
    """(feature, weight) pairs the lexical encoder hashes: lemmas, concepts, trigrams."""
    feats: list[tuple[str, float]] = []
    for w in re.findall(r"[a-z0-9]+", text.lower()):
        if w in _STOPWORDS:
            continue
        lem = _LEMMA.get(w) or _LEMMA.get(_light_stem(w)) or _light_stem(w)
        feats.append(("w:" + lem, 0.5 if lem == "person" else 1.0))
        if lem in _CONCEPT:
            feats.append(("c:" + _CONCEPT[lem], 0.5))
        padded = f"<{w}>"
        feats.extend(("t:" + padded[i:i + 3], 1.0) for i in range(len(padded) - 2))
    return feats


@lru_cache(maxsize=65536)
def _hash_slot(feature: str, dim: int) -> tuple[int, float]:
    # blake2b, not hash(): Python's string hash is salted per process, and the cache
    # files must stay valid across runs.
    h = int.from_bytes(hashlib.blake2b(feature.encode("utf-8"), digest_size=8).digest(), "little")
    return h % dim, (1.0 if (h >> 63) & 1 else -1.0)


class LexicalEncoder:
    """Weight-free caption embedding for when no CLIP text model is available.

    Lower-cases and tokenises on letters/digits, drops stop words, maps each word to a
    lemma through a small built-in table of interaction verbs, HOI objects and person
    words (riding/rides/rode -> ride, bike/bicycle -> bicycle, man/woman -> person; other
    words get light suffix stripping), adds a shared concept token for near-synonymous
    interactions (hold/carry/grab/lift) and character trigrams of the surface words
    (robust to unseen inflections and typos). Word features and trigram features are
    signed-hashed into two ``dim``-sized vectors, each L2-normalised, mixed with weight
    ``trigram_weight`` for the trigram part, and L2-normalised again. Thus "a man rides a
    bike" and "a person is riding the bicycle" share all word features.
    """

    def __init__(self, dim: int = 2048, trigram_weight: float = 0.5):
        if dim < 16:
            raise ValueError(f"LexicalEncoder dim must be >= 16, got {dim}")
        self.dim = int(dim)
        self.trigram_weight = float(trigram_weight)
        self.identity = f"lexical-v1:dim={self.dim}:tri={self.trigram_weight:g}:lex={_LEXICON_HASH}"

    def encode(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), np.float32)
        for n, text in enumerate(texts):
            words = np.zeros(self.dim, np.float64)
            grams = np.zeros(self.dim, np.float64)
            for feat, weight in lexical_tokens(text):
                slot, sign = _hash_slot(feat, self.dim)
                (grams if feat.startswith("t:") else words)[slot] += sign * weight
            v = _unit(words) + self.trigram_weight * _unit(grams)
            out[n] = _unit(v)
        return out


def _unit(v: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(v)
    return v / n if n > 0 else v


def _load_state_dict(source: Any) -> Mapping[str, Any]:
    if isinstance(source, Mapping):
        return source
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"text encoder weights {path} do not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(path))
    import torch
    try:  # mmap: the full IAMG file is ~3 GB and we only need its text encoder
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:
        return torch.load(path, map_location="cpu", weights_only=True)


def clip_text_state_dict(source: Any) -> tuple[dict, Any | None, str]:
    """Extract the HF CLIP text-model tensors from a checkpoint (path or mapping).

    Accepts the official IAMG dict (its ``text_encoder`` entry, keys
    ``transformer.text_model.*``), a Lightning ``state_dict``, or any dict with
    ``*text_model.*`` keys (HF CLIPTextModel / CLIPTextModelWithProjection, safetensors).
    Returns (keys relative to ``text_model.``, text projection or None, its layout:
    "linear" = HF ``text_projection.weight`` [proj, hidden], "matrix" = OpenAI
    ``text_projection`` [hidden, proj]).
    """
    sd = _load_state_dict(source)
    if "text_encoder" in sd and isinstance(sd["text_encoder"], Mapping):
        sd = sd["text_encoder"]
    elif "state_dict" in sd and isinstance(sd["state_dict"], Mapping):
        sd = sd["state_dict"]
    text = {k.split("text_model.", 1)[1]: v for k, v in sd.items()
            if "text_model." in k and not k.endswith("position_ids")}
    if not text:
        sample = ", ".join(list(sd)[:5])
        raise ValueError("no CLIP text-model tensors ('*text_model.*' keys, HF CLIPTextModel naming) "
                         f"in {source if not isinstance(source, Mapping) else 'the given dict'}; "
                         f"first keys: {sample}")
    proj, layout = None, ""
    for k, v in sd.items():
        if k.endswith("text_projection.weight"):
            proj, layout = v, "linear"
        elif k.endswith("text_projection") and proj is None:
            proj, layout = v, "matrix"
    return text, proj, layout


def _fingerprint(tensors: Mapping[str, Any]) -> str:
    # Names, shapes and two full-tensor sums: cheap (no hashing of 500 MB of floats) and
    # any retrained or different checkpoint changes it.
    h = hashlib.sha256()
    for k in sorted(tensors):
        t = tensors[k].detach().double()
        h.update(f"{k}{tuple(t.shape)}{float(t.sum()):.10e}{float(t.abs().sum()):.10e}".encode())
    return h.hexdigest()[:16]


class CLIPTextEncoder:
    """CLIP text features from local files (transformers CLIPTextModel + CLIPTokenizer).

    Tokenisation follows the official FrozenCLIPEmbedder: truncate to ``max_length``
    (77), pad to it with the end token, no attention mask (CLIP's causal mask makes the
    padding irrelevant). The feature is the pooled output: the final-layer-normed hidden
    state at the first end token, the token the official retrieval's ``clip.encode_text``
    reads. ``clip.encode_text`` then multiplies by CLIP's ``text_projection``, which the
    IAMG file does not contain; it is applied when the weights provide it, otherwise the
    768-d pooled feature is used (cosine ranking then differs slightly from the official
    projected dot product). Long captions are truncated (the official code would replace
    them by "a man and a object").
    """

    def __init__(self, text_model, tokenizer, *, projection=None, projection_layout: str = "linear",
                 max_length: int = 77, device="cpu", dtype=None, batch_size: int = 32,
                 identity: str | None = None):
        import torch
        self.device = torch.device(device)
        self.dtype = dtype or torch.float32
        self.model = text_model.to(self.device, self.dtype).eval()
        self.tokenizer = tokenizer
        self.max_length = int(max_length)
        self.batch_size = int(batch_size)
        self.projection = None
        if projection is not None:
            p = projection.detach().to(self.device, self.dtype)
            self.projection = p.t() if projection_layout == "linear" else p  # as [hidden, proj]
        self.identity = identity or (
            f"clip-text:pooled{'+proj' if projection is not None else ''}:len={self.max_length}:"
            f"w={_fingerprint(dict(self.model.state_dict()))}:tok={_tokenizer_hash(tokenizer)}")

    @classmethod
    def from_files(cls, weights: Any, tokenizer_dir: str | os.PathLike, *,
                   num_attention_heads: int | None = None, hidden_act: str = "quick_gelu",
                   max_length: int = 77, device="cpu", dtype=None) -> "CLIPTextEncoder":
        """Build from a checkpoint (see :func:`clip_text_state_dict`) and a tokenizer folder
        holding ``vocab.json`` + ``merges.txt`` (e.g. ComfyUI's ``comfy/sd1_tokenizer``,
        see :func:`comfy_sd1_tokenizer_dir`). Nothing is downloaded.

        The architecture is read from the tensors; the head count is not visible in them:
        ``num_attention_heads`` defaults to hidden/64 (CLIP's 64-dim heads: 12 for ViT-L/14).
        """
        import torch
        from transformers import CLIPTextConfig, CLIPTextModel

        tokenizer = load_clip_tokenizer(tokenizer_dir)
        text, proj, layout = clip_text_state_dict(weights)
        try:
            vocab, hidden = text["embeddings.token_embedding.weight"].shape
            max_pos = text["embeddings.position_embedding.weight"].shape[0]
            inter = text["encoder.layers.0.mlp.fc1.weight"].shape[0]
        except KeyError as e:
            raise ValueError(f"CLIP text weights lack {e.args[0]!r}: not a CLIPTextModel state dict") from None
        layers = 1 + max(int(m.group(1)) for k in text if (m := re.match(r"encoder\.layers\.(\d+)\.", k)))
        if num_attention_heads is None:
            if hidden % 64:
                raise ValueError(f"CLIP text model width {hidden} is not a multiple of 64: pass "
                                 "num_attention_heads explicitly (it cannot be read from the weights)")
            num_attention_heads = hidden // 64
        if len(tokenizer) > vocab:
            raise ValueError(f"tokenizer {tokenizer_dir} has {len(tokenizer)} tokens but the text "
                             f"model's embedding has only {vocab}: they do not belong together")
        config = CLIPTextConfig(
            vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
            num_attention_heads=num_attention_heads, max_position_embeddings=max_pos,
            hidden_act=hidden_act, projection_dim=hidden,
            # Pool at the first end token (the tokenizer pads with it too).
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id)
        model = CLIPTextModel(config)
        # transformers 4 names keys "text_model.*", transformers 5 drops the prefix.
        prefix = "text_model." if any(k.startswith("text_model.") for k in model.state_dict()) else ""
        missing, unexpected = model.load_state_dict({prefix + k: v for k, v in text.items()},
                                                    strict=False, assign=True)
        missing = [k for k in missing if not k.endswith("position_ids")]
        if missing or unexpected:
            raise ValueError(f"CLIP text weights do not match a CLIPTextModel: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}")
        return cls(model.float(), tokenizer, projection=proj, projection_layout=layout,
                   max_length=min(max_length, max_pos), device=device, dtype=dtype or torch.float32)

    def encode(self, texts: list[str]) -> np.ndarray:
        import torch
        chunks = []
        with torch.inference_mode():
            for i in range(0, len(texts), self.batch_size):
                batch = self.tokenizer(list(texts[i:i + self.batch_size]), truncation=True,
                                       max_length=self.max_length, padding="max_length",
                                       return_tensors="pt")
                out = self.model(input_ids=batch["input_ids"].to(self.device))
                feats = out.pooler_output
                if self.projection is not None:
                    feats = feats @ self.projection
                chunks.append(feats.float().cpu().numpy())
        if not chunks:
            dim = self.model.config.hidden_size if self.projection is None else self.projection.shape[1]
            return np.zeros((0, dim), np.float32)
        return np.concatenate(chunks).astype(np.float32)


def load_clip_tokenizer(tokenizer_dir: str | os.PathLike):
    """A CLIPTokenizer from a local folder with vocab.json + merges.txt (never downloads)."""
    from transformers import CLIPTokenizer

    d = Path(tokenizer_dir)
    missing = [n for n in ("vocab.json", "merges.txt") if not (d / n).is_file()]
    if missing:
        raise FileNotFoundError(f"CLIP tokenizer folder {d} lacks {', '.join(missing)} "
                                "(expected a CLIP BPE tokenizer, e.g. ComfyUI's comfy/sd1_tokenizer)")
    return CLIPTokenizer.from_pretrained(str(d), local_files_only=True)


def _tokenizer_hash(tokenizer) -> str:
    h = hashlib.sha256(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    return h.hexdigest()[:12]


def comfy_sd1_tokenizer_dir(comfy_root: str | os.PathLike) -> Path:
    """ComfyUI's bundled SD1 (CLIP ViT-L/14) tokenizer folder under its install root."""
    d = Path(comfy_root) / "comfy" / "sd1_tokenizer"
    if not (d / "vocab.json").is_file():
        raise FileNotFoundError(f"{comfy_root} does not look like a ComfyUI root: {d}/vocab.json missing")
    return d


# --------------------------------------------------------------------------------------
# Embedding cache and retrieval
# --------------------------------------------------------------------------------------

def bank_embeddings(bank: MaskBank, encoder: TextEncoder, *, cache: bool = True) -> np.ndarray:
    """Caption embeddings of all bank entries [N, D], cached in ``<bank>/.embeddings/``.

    One ``.npy`` + ``.json`` pair per encoder identity; the JSON records the identity and
    the bank's :attr:`MaskBank.index_hash`, and the cache is recomputed when either
    differs. A read-only bank folder just skips writing the cache.
    """
    key = hashlib.sha256(encoder.identity.encode()).hexdigest()[:16]
    npy = bank.root / CACHE_DIR / f"{key}.npy"
    meta_path = npy.with_suffix(".json")
    if cache and npy.is_file() and meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
            if meta.get("encoder") == encoder.identity and meta.get("index_hash") == bank.index_hash:
                emb = np.load(npy, allow_pickle=False)
                if emb.shape[0] == len(bank):
                    return emb
        except (OSError, ValueError):
            pass  # unreadable cache: recompute below
    emb = np.asarray(encoder.encode([e.caption for e in bank.entries]), dtype=np.float32)
    if emb.ndim != 2 or emb.shape[0] != len(bank):
        raise ValueError(f"text encoder {encoder.identity} returned shape {emb.shape} "
                         f"for {len(bank)} captions; expected [N, D]")
    if cache:
        try:
            npy.parent.mkdir(exist_ok=True)
            tmp = npy.with_name(npy.stem + ".tmp.npy")
            np.save(tmp, emb)
            os.replace(tmp, npy)
            meta_path.write_text(json.dumps({"encoder": encoder.identity, "index_hash": bank.index_hash,
                                             "count": int(emb.shape[0]), "dim": int(emb.shape[1])}))
        except OSError as e:
            warnings.warn(f"could not write the embedding cache in {npy.parent}: {e}")
    return emb


@dataclass
class Candidate:
    """One retrieved mask: ``mask`` is the union mask, float32 HxW in 0..1 (bbox-cropped)."""

    id: str
    caption: str
    category: str
    score: float
    mask: np.ndarray = field(repr=False)
    rank: int = 0
    entry: BankEntry | None = field(default=None, repr=False)


def retrieve(bank: MaskBank, query: str, *, encoder: TextEncoder, top_k: int = 5,
             category: str | None = None, similarity: str = "cosine",
             cache: bool = True) -> list[Candidate]:
    """Rank bank masks by caption similarity to ``query``; best ``top_k`` first.

    ``category`` restricts to one HOI category (e.g. "ride bicycle"; case and '_' are
    ignored). ``similarity``: "cosine" (default, in [-1, 1]) or "dot" (the official
    IAMG-R score, unnormalised). Equal scores (to 1e-6) are ordered by entry id.
    """
    if not bank.entries:
        raise ValueError(f"mask bank {bank.root} is empty: nothing to retrieve")
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if similarity not in ("cosine", "dot"):
        raise ValueError(f"similarity must be 'cosine' or 'dot', got {similarity!r}")
    emb = bank_embeddings(bank, encoder, cache=cache)
    rows = np.arange(len(bank))
    if category:
        want = normalize_category(category)
        rows = np.array([i for i, e in enumerate(bank.entries) if e.category == want], dtype=int)
        if rows.size == 0:
            raise ValueError(f"unknown HOI category {category!r} for mask bank {bank.root}; "
                             f"known categories: {', '.join(bank.categories)}")
    q = np.asarray(encoder.encode([query]), dtype=np.float64)[0]
    e = emb[rows].astype(np.float64)
    if similarity == "cosine":
        q = _unit(q)
        e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    scores = e @ q
    order = sorted(range(rows.size), key=lambda j: (-round(float(scores[j]), TIE_DECIMALS),
                                                    bank.entries[rows[j]].id))
    out = []
    for rank, j in enumerate(order[:top_k], 1):
        entry = bank.entries[rows[j]]
        out.append(Candidate(id=entry.id, caption=entry.caption, category=entry.category,
                             score=float(scores[j]), mask=bank.load_mask(entry), rank=rank, entry=entry))
    return out


# --------------------------------------------------------------------------------------
# Placing a mask and previews
# --------------------------------------------------------------------------------------

def _to_float_mask(mask: Any) -> np.ndarray:
    m = np.asarray(mask)
    if m.ndim == 3 and m.shape[0] == 1:
        m = m[0]
    if m.ndim != 2:
        raise ValueError(f"mask must be 2-D [H, W], got shape {m.shape}")
    if m.dtype == np.bool_:
        return m.astype(np.float32)
    if m.dtype == np.uint8:
        return m.astype(np.float32) / 255.0
    return np.clip(m.astype(np.float32), 0.0, 1.0)


def fit_mask_to_box(mask: Any, box_xywh: Sequence[float], canvas_hw: Sequence[int], *,
                    mode: str = "keep_aspect", crop_to_content: bool = True,
                    resample: str = "bilinear") -> np.ndarray:
    """Place ``mask`` inside ``box_xywh`` (pixels, x/y of the top-left corner) of an empty
    canvas of size ``canvas_hw``; returns float32 [H, W] in 0..1.

    The mask is first cropped to its own non-zero bbox (``crop_to_content``; bank masks
    already are). ``mode="keep_aspect"`` scales it to fit the box and centres it (the
    shorter side leaves equal margins); ``"stretch"`` fills the box exactly. Parts outside
    the canvas are clipped. ``resample``: "bilinear" (soft edges) or "nearest".
    """
    if mode not in ("keep_aspect", "stretch"):
        raise ValueError(f"mode must be 'keep_aspect' or 'stretch', got {mode!r}")
    if resample not in ("bilinear", "nearest"):
        raise ValueError(f"resample must be 'bilinear' or 'nearest', got {resample!r}")
    m = _to_float_mask(mask)
    x, y, w, h = (float(v) for v in box_xywh)
    H, W = (int(v) for v in canvas_hw)
    if w <= 0 or h <= 0:
        raise ValueError(f"box {tuple(box_xywh)} must have positive width and height")
    if H <= 0 or W <= 0:
        raise ValueError(f"canvas size {tuple(canvas_hw)} must be positive")
    if crop_to_content:
        box = mask_bbox(m, threshold=0.0)
        if box is None:
            raise ValueError("mask is empty (all zero): nothing to fit into the box")
        y0, y1, x0, x1 = box
        m = m[y0:y1, x0:x1]
    mh, mw = m.shape
    if mode == "stretch":
        nw, nh = w, h
    else:
        scale = min(w / mw, h / mh)
        nw, nh = mw * scale, mh * scale
    nw_i, nh_i = max(1, int(round(nw))), max(1, int(round(nh)))
    left = int(round(x + (w - nw_i) / 2.0))
    top = int(round(y + (h - nh_i) / 2.0))
    filt = Image.BILINEAR if resample == "bilinear" else Image.NEAREST
    placed = np.asarray(Image.fromarray(m, mode="F").resize((nw_i, nh_i), filt), dtype=np.float32)
    canvas = np.zeros((H, W), np.float32)
    cy0, cy1 = max(top, 0), min(top + nh_i, H)
    cx0, cx1 = max(left, 0), min(left + nw_i, W)
    if cy1 > cy0 and cx1 > cx0:
        canvas[cy0:cy1, cx0:cx1] = placed[cy0 - top:cy1 - top, cx0 - left:cx1 - left]
    return np.clip(canvas, 0.0, 1.0)


def candidates_grid(candidates: Sequence[Candidate], *, cell: int = 192, columns: int = 4,
                    label_height: int = 30) -> np.ndarray:
    """A preview sheet: each candidate's mask (white on dark grey) fitted into a cell,
    with "#rank score" and its category/id written below. uint8 [H, W, 3]."""
    if not candidates:
        raise ValueError("candidates_grid needs at least one candidate")
    columns = max(1, min(columns, len(candidates)))
    rows = (len(candidates) + columns - 1) // columns
    pad = 4
    inner = cell - 2 * pad
    sheet = Image.new("RGB", (columns * cell, rows * (cell + label_height)), (24, 24, 24))
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for i, c in enumerate(candidates):
        cx, cy = (i % columns) * cell, (i // columns) * (cell + label_height)
        fitted = fit_mask_to_box(c.mask, (0, 0, inner, inner), (inner, inner)) \
            if np.any(np.asarray(c.mask) > 0) else np.zeros((inner, inner), np.float32)
        tile = np.clip(48 + fitted * 207, 0, 255).astype(np.uint8)
        sheet.paste(Image.fromarray(tile, mode="L").convert("RGB"), (cx + pad, cy + pad))
        draw.text((cx + pad, cy + cell), f"#{c.rank or i + 1}  {c.score:.3f}", fill=(255, 220, 80), font=font)
        draw.text((cx + pad, cy + cell + label_height // 2), f"{c.category} | {c.id}"[:40],
                  fill=(200, 200, 200), font=font)
    return np.asarray(sheet, dtype=np.uint8)


def make_encoder(kind: str = "lexical", *, clip_weights: Any = None, tokenizer_dir: Any = None,
                 num_attention_heads: int | None = None, device="cpu") -> TextEncoder:
    """"lexical" (weight-free) or "clip" (needs ``clip_weights`` and ``tokenizer_dir``)."""
    if kind == "lexical":
        return LexicalEncoder()
    if kind == "clip":
        if clip_weights is None or tokenizer_dir is None:
            raise ValueError("the clip encoder needs a weights file (e.g. iamg.pth) and a tokenizer folder "
                             "(vocab.json + merges.txt, e.g. ComfyUI's comfy/sd1_tokenizer)")
        return CLIPTextEncoder.from_files(clip_weights, tokenizer_dir,
                                          num_attention_heads=num_attention_heads, device=device)
    raise ValueError(f"unknown text encoder {kind!r}; choose 'lexical' or 'clip'")


# --------------------------------------------------------------------------------------
# CLI: python -m interact_custom bank {build,query}
# --------------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register ``bank build`` and ``bank query``."""
    sub = parser.add_subparsers(dest="bank_command", metavar="{build,query}", required=True)
    b = sub.add_parser("build", help="build a mask bank from a dataset in the project's format")
    b.add_argument("--dataset", required=True, help="dataset root folder")
    b.add_argument("--out", required=True, help="bank folder to create")
    b.add_argument("--split", default=None, help="dataset split (default: all)")
    b.add_argument("--no-parts", action="store_true", help="store only union masks, not human/object")
    b.add_argument("--overwrite", action="store_true", help="replace an existing bank index")
    q = sub.add_parser("query", help="rank bank masks by caption similarity")
    q.add_argument("--bank", required=True, help="bank folder (with bank.json or bank.jsonl)")
    q.add_argument("--text", required=True, help='query caption, e.g. "a person is riding the bicycle"')
    q.add_argument("--category", default=None, help='HOI category filter, e.g. "ride bicycle"')
    q.add_argument("--top-k", type=int, default=5)
    q.add_argument("--encoder", choices=("lexical", "clip"), default="lexical")
    q.add_argument("--clip-weights", default=None, help="checkpoint with a CLIP text model (e.g. iamg.pth)")
    q.add_argument("--tokenizer", default=None, help="CLIP tokenizer folder (vocab.json + merges.txt)")
    q.add_argument("--heads", type=int, default=None, help="attention heads of the CLIP text model "
                   "(default width/64)")
    q.add_argument("--similarity", choices=("cosine", "dot"), default="cosine")
    q.add_argument("--grid", default=None, help="also write a PNG preview of the candidates here")
    q.add_argument("--no-cache", action="store_true", help="do not read or write the embedding cache")


def run(args: argparse.Namespace) -> int:
    """Run ``bank build`` / ``bank query``; errors are printed, exit code 1."""
    try:
        if args.bank_command == "build":
            bank = build_bank(args.dataset, args.out, split=args.split,
                              save_parts=not args.no_parts, overwrite=args.overwrite)
            print(f"built mask bank {bank.root}: {len(bank)} entries, {len(bank.categories)} categories")
            return 0
        bank = MaskBank.load(args.bank)
        encoder = make_encoder(args.encoder, clip_weights=args.clip_weights,
                               tokenizer_dir=args.tokenizer, num_attention_heads=args.heads)
        cands = retrieve(bank, args.text, encoder=encoder, top_k=args.top_k, category=args.category,
                         similarity=args.similarity, cache=not args.no_cache)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{'rank':>4}  {'score':>7}  {'id':<20}  {'category':<22}  caption")
    for c in cands:
        caption = c.caption if len(c.caption) <= 70 else c.caption[:67] + "..."
        print(f"{c.rank:>4}  {c.score:>7.4f}  {c.id:<20}  {c.category:<22}  {caption}")
    if args.grid:
        Image.fromarray(candidates_grid(cands)).save(args.grid)
        print(f"preview written to {args.grid}")
    return 0
