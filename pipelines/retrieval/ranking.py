"""IAMG-R retrieval: embedding a bank, ranking it against a query, placing the result.

* :func:`bank_embeddings` embeds all bank captions with a text encoder (`.encoders`),
  cached in ``<cache>/bank_embeddings/<bank name>-<path hash>/`` (:func:`bank_cache_dir`;
  ``<cache>`` is the caller's ``cache_root`` -- a folder of ComfyUI's inside ComfyUI --
  else `paths.cache_dir`: ``$INTERACT_CUSTOM_CACHE``, else
  ``$XDG_CACHE_HOME/interact_custom``, else ``~/.cache/interact_custom``), never in the
  bank folder, which for the shipped bank is inside the installed package. All caches
  together stay within `CACHE_MAX_BYTES` (least recently used banks evicted first).
* :func:`retrieve` ranks by cosine similarity (``similarity="dot"`` gives the official
  unnormalised score), optional category filter, top-k, deterministic tie-break by id,
  and returns :class:`Candidate` masks.
* :func:`fit_mask_to_box` places a retrieved mask into a box of a canvas;
  :func:`candidates_grid` renders the candidates for browsing.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..files import write_text_atomic
from ..geometry import mask_box
from ..paths import CACHE_ENV, cache_dir
from ..readers import mask_values
from .bank import MAX_BANK_ENTRIES, BankEntry, MaskBank, normalize_category
from .encoders import TextEncoder, _unit

CACHE_DIR = "bank_embeddings"  # the embedding caches' folder in `paths.cache_dir()`
# The most all banks' embedding caches in one cache folder may take together; the least
# recently used are removed to stay within it. A bank at MAX_BANK_ENTRIES with a
# 2048-wide encoder (LexicalEncoder) takes about 160 MiB.
CACHE_MAX_BYTES = 2**30
# Scores closer than this count as ties, so identical captions (whose embeddings may
# differ in the last bits depending on their position in a batch) are ordered by id.
TIE_DECIMALS = 6


# --------------------------------------------------------------------------------------
# Embedding cache and retrieval
# --------------------------------------------------------------------------------------

def bank_cache_dir(bank: MaskBank, cache_root: str | os.PathLike | None = None) -> Path:
    """The folder of ``bank``'s embedding caches: ``<cache>/bank_embeddings/<bank folder
    name>-<hash of its absolute path>``, so two banks never share one, whatever their
    captions. ``<cache>`` is ``cache_root`` (inside ComfyUI the node passes a folder of
    ComfyUI's), else the user cache folder (`paths.cache_dir`)."""
    root = str(bank.root.resolve())
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", bank.root.resolve().name).strip("._") or "bank"
    base = Path(cache_root) if cache_root is not None else cache_dir()
    return base / CACHE_DIR / f"{name}-{hashlib.sha256(root.encode('utf-8')).hexdigest()[:16]}"


_CACHE_FOLDER = re.compile(r".+-[0-9a-f]{16}")  # what bank_cache_dir names; nothing else is ever evicted


def _usage(folder: Path) -> tuple[float, int]:
    """(last use, bytes) of a bank's cache folder: its newest file's mtime (a cache hit
    touches its file) and the size of its files."""
    last, size = 0.0, 0
    try:
        for f in folder.iterdir():
            st = f.stat()
            last, size = max(last, st.st_mtime), size + st.st_size
    except OSError:
        pass
    return last, size


def _make_room(folder: Path, key: str, need: int) -> bool:
    """Free space in the embedding caches so that ``need`` more bytes for ``folder``'s
    ``key`` keep their total within `CACHE_MAX_BYTES`: the least recently used banks'
    caches go first, then ``folder``'s caches for other encoders. False if it cannot fit."""
    if need > CACHE_MAX_BYTES:
        return False
    others = []
    try:
        others = [d for d in folder.parent.iterdir()
                  if d != folder and d.is_dir() and not d.is_symlink() and _CACHE_FOLDER.fullmatch(d.name)]
    except OSError:
        pass
    usage = sorted((*_usage(d), d) for d in others)
    own = []  # this bank's files, other than the two about to be replaced
    try:
        own = sorted((f.stat().st_mtime, f.stat().st_size, f) for f in folder.iterdir()
                     if f.is_file() and not f.name.startswith((f"{key}.", f".{key}.")))
    except OSError:
        pass
    total = sum(size for _, size, _ in usage) + sum(size for _, size, _ in own)
    for _, size, path in usage + own:
        if total + need <= CACHE_MAX_BYTES:
            break
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        total -= size
    return total + need <= CACHE_MAX_BYTES


def bank_embeddings(bank: MaskBank, encoder: TextEncoder, *, cache: bool = True,
                    cache_root: str | os.PathLike | None = None) -> np.ndarray:
    """Caption embeddings of all bank entries [N, D], cached in :func:`bank_cache_dir`
    (``cache_root`` or the user cache folder; nothing is written into the bank folder).

    One ``.npy`` + ``.json`` pair per encoder identity; the JSON records the bank's
    absolute path, its :attr:`MaskBank.index_hash` and the encoder identity, and the
    cache is recomputed when any differs. All banks' caches together stay within
    `CACHE_MAX_BYTES`: the least recently used are removed to make room, and embeddings
    that would not fit are not cached (with a warning). An unwritable cache folder just
    skips writing (with a warning).
    """
    if len(bank) > MAX_BANK_ENTRIES:  # a bank built in memory; MaskBank.load refuses these already
        raise ValueError(f"mask bank {bank.label} has {len(bank):,} entries, more than the "
                         f"{MAX_BANK_ENTRIES:,} a bank may hold; split it into several banks")
    key = hashlib.sha256(encoder.identity.encode()).hexdigest()[:16]
    folder = bank_cache_dir(bank, cache_root)
    npy = folder / f"{key}.npy"
    meta_path = npy.with_suffix(".json")
    want = {"bank": str(bank.root.resolve()), "index_hash": bank.index_hash, "encoder": encoder.identity}
    if cache and npy.is_file() and meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            if all(meta.get(k) == v for k, v in want.items()):
                emb = np.load(npy, allow_pickle=False)
                if emb.ndim == 2 and emb.shape[0] == len(bank):
                    os.utime(npy)  # its last use, for the least-recently-used eviction
                    return emb
        except (OSError, ValueError):
            pass  # unreadable cache: recompute below
    emb = np.asarray(encoder.encode([e.caption for e in bank.entries]), dtype=np.float32)
    if emb.ndim != 2 or emb.shape[0] != len(bank):
        raise ValueError(f"text encoder {encoder.identity} returned shape {emb.shape} "
                         f"for {len(bank)} captions; expected [N, D]")
    if cache:
        meta_text = json.dumps({**want, "count": int(emb.shape[0]), "dim": int(emb.shape[1])})
        need = emb.nbytes + 1024 + len(meta_text.encode("utf-8"))  # + the .npy header
        try:
            if not _make_room(folder, key, need):
                warnings.warn(f"the embeddings of mask bank {bank.label} ({need:,} bytes) do not fit the "
                              f"{CACHE_MAX_BYTES:,}-byte embedding cache: not cached, recomputed on each use")
                return emb
            folder.mkdir(parents=True, exist_ok=True)
            tmp = folder / f".{key}.{os.getpid()}.tmp.npy"
            try:
                np.save(tmp, emb)
                os.replace(tmp, npy)
            finally:
                if tmp.exists():
                    tmp.unlink()
            write_text_atomic(meta_path, meta_text)
        except OSError as e:
            warnings.warn(f"could not write the embedding cache in {folder}: {e} "
                          f"(set ${CACHE_ENV} to a writable folder)")
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
             cache: bool = True, cache_root: str | os.PathLike | None = None) -> list[Candidate]:
    """Rank bank masks by caption similarity to ``query``; best ``top_k`` first.

    ``category`` restricts to one HOI category (e.g. "ride bicycle"; case and '_' are
    ignored). ``similarity``: "cosine" (default, in [-1, 1]) or "dot" (the official
    IAMG-R score, unnormalised). Equal scores (to 1e-6) are ordered by entry id.
    ``cache`` / ``cache_root``: see :func:`bank_embeddings` (every input is checked
    before the cache is touched).
    """
    if not bank.entries:
        raise ValueError(f"mask bank {bank.label} is empty: nothing to retrieve")
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if similarity not in ("cosine", "dot"):
        raise ValueError(f"similarity must be 'cosine' or 'dot', got {similarity!r}")
    if not str(query).strip():
        raise ValueError("query is empty: describe the interaction, e.g. 'a person is riding the bicycle'")
    rows = np.arange(len(bank))
    if category:
        want = normalize_category(category)
        rows = np.array([i for i, e in enumerate(bank.entries) if e.category == want], dtype=int)
        if rows.size == 0:
            raise ValueError(f"unknown HOI category {category!r} for mask bank {bank.label}; "
                             f"known categories: {', '.join(bank.categories)}")
    q = np.asarray(encoder.encode([query]), dtype=np.float64)[0]
    if not np.any(q):  # every score would be 0: the "best" entry would be arbitrary
        raise ValueError(f"query {query!r} has no word the {type(encoder).__name__} knows (emoji, another "
                         "language?); describe the interaction in English, e.g. 'a person is riding the "
                         "bicycle', or pick the category")
    emb = bank_embeddings(bank, encoder, cache=cache, cache_root=cache_root)
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

def fit_mask_to_box(mask: Any, box_xywh: Sequence[float], canvas_hw: Sequence[int], *,
                    mode: str = "keep_aspect", crop_to_content: bool = True,
                    resample: str = "bilinear") -> np.ndarray:
    """Place ``mask`` (soft values kept: `readers.mask_values`) inside ``box_xywh`` (pixels,
    x/y of the top-left corner) of an empty canvas of size ``canvas_hw``; returns float32
    [H, W] in 0..1.

    The mask is first cropped to its own non-zero bbox (``crop_to_content``; bank masks
    already are). ``mode="keep_aspect"`` scales it to fit the box and centres it (the
    shorter side leaves equal margins); ``"stretch"`` fills the box exactly. Parts outside
    the canvas are clipped. ``resample``: "bilinear" (soft edges) or "nearest".
    """
    if mode not in ("keep_aspect", "stretch"):
        raise ValueError(f"mode must be 'keep_aspect' or 'stretch', got {mode!r}")
    if resample not in ("bilinear", "nearest"):
        raise ValueError(f"resample must be 'bilinear' or 'nearest', got {resample!r}")
    m = mask_values(mask, "mask").astype(np.float32)
    x, y, w, h = (float(v) for v in box_xywh)
    H, W = (int(v) for v in canvas_hw)
    if w <= 0 or h <= 0:
        raise ValueError(f"box {tuple(box_xywh)} must have positive width and height")
    if H <= 0 or W <= 0:
        raise ValueError(f"canvas size {tuple(canvas_hw)} must be positive")
    if crop_to_content:
        box = mask_box(m > 0.0)
        if box is None:
            raise ValueError("mask is empty (all zero): nothing to fit into the box")
        m = m[box.slices]
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

