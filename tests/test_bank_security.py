"""IAMG-R mask banks on a shared server: what a bank (an uploaded, downloaded or shared
folder) and a workflow (any value through the API) can make the server read, write and
reveal.

1. Confinement: every mask an entry names resolves inside the bank folder -- an absolute
   path, ``..`` or a symbolic link leading out is refused, with the same message whether
   or not the target exists; the node offers only the shipped bank and the bank folders
   of the registered `interact_custom_banks` folders, and refuses any other name.
2. Limits: at most MAX_BANK_ENTRIES entries and MAX_INDEX_BYTES of index, checked before
   anything is built or cached; the embedding caches stay within CACHE_MAX_BYTES, the
   least recently used banks evicted first.
3. Messages name what the user gave and what was expected, never a file's content or a
   server path.
4. Neighbours: decompression-bomb masks, deeply nested or malformed indexes, and the
   ``bank`` commands, which never overwrite a file or fill a foreign folder unasked.
"""
from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from interact_custom.cli import main
from interact_custom.nodes import comfy_bridge
from interact_custom.nodes.masks import SHIPPED_BANK, IAMGRRetrieveMask
from interact_custom.pipelines import retrieval as R
from interact_custom.cli.research import banks
from interact_custom.pipelines.retrieval import bank as bank_module
from interact_custom.pipelines.retrieval import ranking


@pytest.fixture(autouse=True)
def _private_folders(tmp_path, monkeypatch):
    monkeypatch.setenv("INTERACT_CUSTOM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("INTERACT_CUSTOM_BANKS", str(tmp_path / "banks"))


def _rect(y0, y1, x0, x1, size=32):
    m = np.zeros((size, size), np.uint8)
    m[y0:y1, x0:x1] = 255
    return m


def _sources(n=2):
    captions = [("a man riding a bike", "ride", "bicycle"), ("a girl kicking a ball", "kick", "ball"),
                ("a boy holding a cat", "hold", "cat")]
    return [banks.BankSource(id=f"{i:06d}", caption=c, verb=v, object=o, human_mask=_rect(2, 20, 4, 12),
                         object_mask=_rect(10, 30, 8, 28 - i)) for i, (c, v, o) in enumerate(captions[:n])]


def _bank(folder, n=2):
    return banks.build_bank(None, folder, sources=_sources(n))


def _secret_png(path: Path) -> Path:
    """A file outside every bank: a checkerboard no bank mask looks like."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(((np.indices((16, 16)).sum(0) % 2) * 255).astype(np.uint8), mode="L").save(path)
    return path


def _point_entry(bank_root: Path, which: str, rel: str) -> None:
    index = json.loads((bank_root / "bank.json").read_text())
    index["entries"][0][which] = rel
    (bank_root / "bank.json").write_text(json.dumps(index))


def _error(fn, *args, **kw) -> str:
    with pytest.raises((ValueError, FileNotFoundError)) as e:
        fn(*args, **kw)
    return str(e.value)


# ----------------------------------------------------------------------------- 1. confinement


def _escapes(tmp_path):
    """(entry text, target) pairs that lead out of the bank at tmp_path/bank."""
    return {
        "absolute": (str(tmp_path / "private" / "secret.png"), tmp_path / "private" / "secret.png"),
        "dotdot": ("../private/secret.png", tmp_path / "private" / "secret.png"),
        "dotdot_deep": ("masks/../../private/secret.png", tmp_path / "private" / "secret.png"),
        "backslash_dotdot": ("..\\private\\secret.png", tmp_path / "private" / "secret.png"),
        "symlink": ("masks/link.png", tmp_path / "private" / "secret.png"),
        "symlinked_folder": ("linked/secret.png", tmp_path / "private" / "secret.png"),
    }


@pytest.mark.parametrize("case", ["absolute", "dotdot", "dotdot_deep", "backslash_dotdot", "symlink",
                                  "symlinked_folder"])
@pytest.mark.parametrize("which", ["mask", "human_mask"])
def test_entries_leading_out_of_the_bank_are_refused_alike_whether_or_not_the_target_exists(
        tmp_path, case, which):
    bank = _bank(tmp_path / "bank")
    rel, target = _escapes(tmp_path)[case]
    (bank.root / "masks" / "link.png").symlink_to(target)
    (bank.root / "linked").symlink_to(target.parent, target_is_directory=True)
    _point_entry(bank.root, which, rel)

    _secret_png(target)
    with_target = _error(R.MaskBank.load, bank.root)
    target.unlink()
    without_target = _error(R.MaskBank.load, bank.root)
    assert with_target == without_target  # nothing tells whether the outside file exists
    assert f"entry '000000' names {which} {rel!r}, which is not a file inside the bank folder" in with_target
    assert "no absolute path, no '..', no link leading out of the bank" in with_target

    # A bank made in memory (not through load) cannot read it either.
    _secret_png(target)
    entry = R.BankEntry(id="x", caption="c", category="ride bicycle", verb="ride", object="bicycle", mask=rel)
    direct = R.MaskBank(bank.root, [entry])
    assert "not a file inside the bank folder" in _error(direct.load_mask, entry)


def test_links_and_dotdot_inside_the_bank_still_work(tmp_path):
    bank = _bank(tmp_path / "bank")
    (bank.root / "masks" / "alias.png").symlink_to(bank.root / "masks" / "000001.png")
    _point_entry(bank.root, "mask", "masks/../masks/alias.png")  # '..' is refused even when it stays inside
    assert "not a file inside the bank folder" in _error(R.MaskBank.load, bank.root)
    _point_entry(bank.root, "mask", "masks/alias.png")
    loaded = R.MaskBank.load(bank.root)
    np.testing.assert_array_equal(loaded.load_mask(loaded.entries[0]),
                                  loaded.load_mask(loaded.entries[1]))


def test_an_index_that_is_a_link_out_of_the_bank_is_refused(tmp_path):
    outside = tmp_path / "private" / "bank.json"
    outside.parent.mkdir()
    folder = tmp_path / "bank"
    folder.mkdir()
    (folder / "bank.json").symlink_to(outside)
    missing = _error(R.MaskBank.load, folder)
    outside.write_text(json.dumps({"entries": [{"id": "a", "caption": "c", "category": "x y", "mask": "a.png"}]}))
    present = _error(R.MaskBank.load, folder)
    assert missing == present == f"mask bank {folder}: bank.json is a link leading out of the bank folder; " \
                                 "the index must be a file inside the bank"


def test_node_offers_only_the_shipped_and_the_registered_banks(tmp_path):
    _bank(tmp_path / "banks" / "mine")
    (tmp_path / "banks" / "no_index").mkdir()
    (tmp_path / "banks" / ".hidden").mkdir()
    (tmp_path / "banks" / ".hidden" / "bank.json").write_text("[]")
    spec = IAMGRRetrieveMask.INPUT_TYPES()["required"]["bank"]
    assert spec[0] == [SHIPPED_BANK, "mine"] and spec[1]["default"] == SHIPPED_BANK
    assert comfy_bridge.bank_folders() == [str(tmp_path / "banks")]

    mask, caption, grid = IAMGRRetrieveMask().retrieve("mine", "a girl kicks a ball", "", 2, 1)
    assert caption == "a girl kicking a ball"
    bank = R.MaskBank.load(tmp_path / "banks" / "mine")
    np.testing.assert_array_equal(mask[0].numpy(), bank.load_mask(bank.entries[1]))


def test_the_shipped_workflow_names_a_bank_the_dropdown_offers():
    wf = json.loads((Path(__file__).resolve().parents[1] / "workflows" / "choi_retrieval.json").read_text())
    (node,) = [n for n in wf["nodes"] if n["type"] == "InteractCustomIAMGRRetrieveMask"]
    assert node["widgets_values"][0] in IAMGRRetrieveMask.INPUT_TYPES()["required"]["bank"][0]


@pytest.mark.parametrize("given", ["private", "/root/.ssh", "~", "../banks/mine", "", "evilbank"])
def test_node_refuses_any_other_bank_name_saying_only_what_there_is(tmp_path, given):
    _bank(tmp_path / "banks" / "mine")
    real = _bank(tmp_path / "private")  # a bank folder on disk, but not a registered one
    given = {"private": str(real.root)}.get(given, given)
    message = _error(IAMGRRetrieveMask().retrieve, given, "a man riding", "", 2, 1)
    assert message.startswith(f"mask bank {given!r} is not one of the available banks: {SHIPPED_BANK}, mine. ")
    assert "models/interact_custom_banks/" in message
    # The same words for a folder that exists, one that does not, and anything else.
    assert message.replace(repr(given), "X") == _error(
        IAMGRRetrieveMask().retrieve, "/no/such/folder", "a man riding", "", 2, 1).replace("'/no/such/folder'", "X")
    assert str(Path.home()) not in message.replace(repr(given), "")
    assert not (tmp_path / "cache").exists()


def test_node_messages_name_the_bank_not_its_folder(tmp_path):
    bank = _bank(tmp_path / "banks" / "evil")
    _point_entry(bank.root, "mask", "../../private/secret.png")
    message = _error(IAMGRRetrieveMask().retrieve, "evil", "a man riding", "", 2, 1)
    assert message.startswith("mask bank 'evil': entry '000000' names mask '../../private/secret.png', which is "
                              "not a file inside the bank folder")
    assert str(tmp_path) not in message
    assert not (tmp_path / "cache").exists()


# ----------------------------------------------------------------------------- 2. limits


def _index_with(n: int) -> str:
    return json.dumps({"entries": [{"id": str(i), "caption": "a person riding a horse", "category": "ride horse",
                                    "mask": "masks/missing.png"} for i in range(n)]})


def test_a_bank_with_too_many_entries_is_refused_before_anything_is_checked_or_cached(tmp_path):
    folder = tmp_path / "banks" / "huge"
    folder.mkdir(parents=True)
    (folder / "bank.json").write_text(_index_with(R.MAX_BANK_ENTRIES + 1))
    message = _error(R.MaskBank.load, folder)
    assert message == (f"mask bank {folder}: bank.json lists more than {R.MAX_BANK_ENTRIES:,} entries, the most a "
                       "bank may hold; split it into several banks")
    node_message = _error(IAMGRRetrieveMask().retrieve, "huge", "a person riding a horse", "", 2, 1)
    assert node_message.startswith("mask bank 'huge': bank.json lists more than")
    (folder / "bank.json").unlink()
    (folder / "bank.jsonl").write_text("\n".join(json.dumps(e) for e in json.loads(
        _index_with(R.MAX_BANK_ENTRIES + 1))["entries"]))
    assert "bank.jsonl lists more than" in _error(R.MaskBank.load, folder)
    assert not (tmp_path / "cache").exists()


def test_an_oversized_index_is_refused_before_it_is_parsed(tmp_path, monkeypatch):
    folder = tmp_path / "bank"
    folder.mkdir()
    (folder / "bank.json").write_bytes(b" " * R.MAX_INDEX_BYTES + _index_with(1).encode())
    parsed = []
    monkeypatch.setattr(bank_module.json, "loads", lambda *a, **k: parsed.append(1))
    message = _error(R.MaskBank.load, folder)
    assert message.startswith(f"mask bank {folder}: bank.json is larger than {R.MAX_INDEX_BYTES:,} bytes")
    assert not parsed


def test_a_bank_made_in_memory_beyond_the_limit_is_not_embedded(tmp_path):
    entry = R.BankEntry(id="a", caption="c", category="x y", verb="x", object="y", mask="a.png")
    bank = R.MaskBank(tmp_path, [entry] * (R.MAX_BANK_ENTRIES + 1))
    assert "more than the 20,000 a bank may hold" in _error(R.bank_embeddings, bank, R.LexicalEncoder())
    assert not (tmp_path / "cache").exists()


def _set_mtime(folder: Path, t: float) -> None:
    for f in folder.iterdir():
        os.utime(f, (t, t))


def test_embedding_caches_stay_within_the_cap_evicting_the_least_recently_used(tmp_path, monkeypatch):
    enc = R.LexicalEncoder()
    a, b, c = (_bank(tmp_path / name) for name in ("a", "b", "c"))
    one = R.bank_embeddings(a, enc).nbytes
    monkeypatch.setattr(ranking, "CACHE_MAX_BYTES", int(2.5 * (one + 2048)))  # room for two banks
    R.bank_embeddings(a, enc)
    R.bank_embeddings(b, enc)
    now = os.path.getmtime(next(R.bank_cache_dir(b).glob("*.npy")))
    _set_mtime(R.bank_cache_dir(a), now - 200)
    _set_mtime(R.bank_cache_dir(b), now - 100)
    R.bank_embeddings(R.MaskBank.load(a.root), enc)  # a hit: a is now the most recently used
    R.bank_embeddings(c, enc)
    assert R.bank_cache_dir(a).is_dir() and R.bank_cache_dir(c).is_dir()
    assert not R.bank_cache_dir(b).exists()
    total = sum(f.stat().st_size for f in (tmp_path / "cache").rglob("*") if f.is_file())
    assert total <= ranking.CACHE_MAX_BYTES

    # Embeddings larger than the whole cache are used but not cached.
    monkeypatch.setattr(ranking, "CACHE_MAX_BYTES", one // 2)
    d = _bank(tmp_path / "d")
    with pytest.warns(UserWarning, match=r"do not fit the .*-byte embedding cache: not cached"):
        emb = R.bank_embeddings(d, enc)
    np.testing.assert_array_equal(emb, enc.encode([e.caption for e in d.entries]))
    assert not R.bank_cache_dir(d).exists()
    assert R.bank_cache_dir(a).is_dir()  # nothing evicted for a cache that cannot fit


def test_eviction_removes_only_bank_caches(tmp_path, monkeypatch):
    enc = R.LexicalEncoder()
    a = _bank(tmp_path / "a")
    root = tmp_path / "cache" / R.CACHE_DIR
    root.mkdir(parents=True)
    (root / "notes.txt").write_bytes(b"x" * 100_000)  # not ours: never removed, though it is big
    (root / "my folder").mkdir()
    monkeypatch.setattr(ranking, "CACHE_MAX_BYTES", 50_000)
    R.bank_embeddings(a, enc)
    assert (root / "notes.txt").is_file() and (root / "my folder").is_dir()
    assert R.bank_cache_dir(a).is_dir()


def test_a_refused_query_writes_no_cache(tmp_path):
    bank = _bank(tmp_path / "bank")
    for query, category in (("🚲", None), ("a man riding", "fly kite")):
        with pytest.raises(ValueError):
            R.retrieve(bank, query, encoder=R.LexicalEncoder(), category=category)
    assert not (tmp_path / "cache").exists()


def test_the_node_caches_inside_comfyui_and_the_library_outside(monkeypatch, tmp_path):
    assert comfy_bridge.embedding_cache_root() is None  # standalone: the user cache folder
    bank = _bank(tmp_path / "bank")
    R.retrieve(bank, "a man riding", encoder=R.LexicalEncoder(), cache_root=tmp_path / "comfy_models" / "c")
    assert R.bank_cache_dir(bank, tmp_path / "comfy_models" / "c").is_dir()
    assert not (tmp_path / "cache").exists()


# ----------------------------------------------------------------------------- 3. messages


def test_index_errors_never_show_the_file_content(tmp_path):
    folder = tmp_path / "bank"
    folder.mkdir()
    (folder / "bank.json").write_text("root:SECRET-HASH:19000:0:99999:7:::\n")
    message = _error(R.MaskBank.load, folder)
    assert message.startswith(f"mask bank {folder}: bank.json is not valid JSON") and "SECRET" not in message
    (folder / "bank.json").write_bytes(b'{"entries": [\xff]}')
    assert _error(R.MaskBank.load, folder) == f"mask bank {folder}: bank.json is not UTF-8 text " \
                                               "(invalid byte at offset 13)"


def test_a_missing_mask_inside_the_bank_names_the_entry(tmp_path):
    bank = _bank(tmp_path / "bank")
    (bank.root / "masks" / "000001.png").unlink()
    assert _error(R.MaskBank.load, bank.root) == (
        f"mask bank {bank.root}: entry '000001' names mask 'masks/000001.png', but the bank folder holds no "
        "such file")


# ----------------------------------------------------------------------------- 4. neighbours


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header declares width x height grey pixels, with almost no data."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("size", [(9000, 9000), (100_000, 100_000)])  # ours; beyond PIL's own limit
def test_a_decompression_bomb_mask_is_refused_naming_entry_and_limit(tmp_path, size):
    bank = _bank(tmp_path / "bank")
    _png_header_only(bank.root / "masks" / "000001.png", *size)
    with pytest.raises(R.MaskImageError) as e:
        R.retrieve(bank, "a girl kicks a ball", encoder=R.LexicalEncoder(), top_k=2)
    message = str(e.value)
    assert message.startswith(f"bank {bank.root}: entry 000001: masks/000001.png has ")
    assert f"more than the {R.MAX_MASK_PIXELS:,} pixels a mask may have" in message
    if size[0] == 9000:
        assert "has 9000x9000 pixels" in message


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_a_deeply_nested_index_is_a_clear_error(tmp_path, suffix):
    folder = tmp_path / "bank"
    folder.mkdir()
    (folder / f"bank{suffix}").write_text("[" * 200_000 + "]" * 200_000)
    message = _error(R.MaskBank.load, folder)
    assert "nests arrays or objects too deeply to read; a bank index is a list of flat entry objects" in message


@pytest.mark.parametrize("entry, says", [
    (7, "bank.json entry 0: expected a JSON object, got a number"),
    ({"id": "a", "caption": ["x"], "category": "ride horse", "mask": "a.png"},
     "bank.json entry 0: 'caption' must be a string, got an array"),
    ({"id": "a", "caption": "x", "category": "ride horse", "mask": {"path": "/etc/passwd"}},
     "bank.json entry 0: 'mask' must be a string, got an object"),
    ({"id": True, "caption": "x", "category": "ride horse", "mask": "a.png"},
     "bank.json entry 0: 'id' must be a string, got true/false"),
    ({"id": "a", "caption": "x", "category": "ride horse", "mask": None},
     "bank.json entry 0: entry is missing mask"),
])
def test_malformed_entries_name_the_entry_and_the_field(tmp_path, entry, says):
    folder = tmp_path / "bank"
    folder.mkdir()
    (folder / "bank.json").write_text(json.dumps({"entries": [entry]}))
    assert says in _error(R.MaskBank.load, folder)
    (folder / "bank.json").write_text(json.dumps({"entries": "masks/"}))
    assert _error(R.MaskBank.load, folder).endswith("bank.json: 'entries' must be a list, got a string")


def test_cli_query_grid_never_overwrites_unless_asked(tmp_path, capsys):
    bank = _bank(tmp_path / "bank")
    grid = tmp_path / "notes.txt"
    grid.write_text("my notes")
    args = ["bank", "query", "--bank", str(bank.root), "--text", "a kid kicks the ball", "--top-k", "2",
            "--grid", str(grid)]
    assert main(args) == 1
    assert f"--grid {grid} already exists; pass --overwrite" in capsys.readouterr().err
    assert grid.read_text() == "my notes"
    assert main(args + ["--overwrite"]) == 0
    assert Image.open(grid).format == "PNG" and Image.open(grid).size == (2 * 192, 192 + 30)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bank", "cache", "notes.txt"]  # no temp file left
    assert main(args[:-1] + [str(tmp_path)]) == 1
    assert "is a folder; give a file name" in capsys.readouterr().err


def test_build_refuses_a_non_empty_folder_that_is_not_a_bank(tmp_path, capsys):
    out = tmp_path / "photos"
    (out / "masks").mkdir(parents=True)
    (out / "masks" / "000000.png").write_bytes(b"my own file")
    with pytest.raises(FileExistsError, match=r"is not empty and holds no mask bank .*overwrite=True"):
        banks.build_bank(None, out, sources=_sources())
    assert main(["bank", "build", "--dataset", str(tmp_path / "dataset"), "--out", str(out)]) == 1
    assert f"{out} is not empty and holds no mask bank" in capsys.readouterr().err
    assert (out / "masks" / "000000.png").read_bytes() == b"my own file"
    assert not (out / "bank.json").exists()
    bank = banks.build_bank(None, out, sources=_sources(), overwrite=True)
    assert len(bank) == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    assert len(banks.build_bank(None, empty, sources=_sources())) == 2  # an empty folder is fine
