"""Synthetic CHOI generator (cli/research/data/synth.py) and the dataset format (cli/research/data/dataset.py)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from interact_custom import cli
from interact_custom.cli.research.data import dataset as ds
from interact_custom.cli.research.data import synth
from interact_custom.pipelines.vocabulary import INTERACTIONS

REPO = Path(__file__).resolve().parents[1]
SIZE = 64


@pytest.fixture(scope="module")
def samples():
    """36 samples = 9 pairs x 4 scenes: one pair per category, every verb of each."""
    return list(synth.iter_samples(36, seed=5, size=SIZE, val_fraction=0.25))


def _write(root, items):
    with ds.ChoiWriter(root) as w:
        for s in items:
            s = dict(s)
            w.add(s.pop("sample_id"), **s)


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_files_different_seed_different(tmp_path):
    synth.generate(tmp_path / "a", 5, seed=3, size=SIZE)
    synth.generate(tmp_path / "b", 5, seed=3, size=SIZE)
    synth.generate(tmp_path / "c", 5, seed=4, size=SIZE)
    a, b, c = _tree(tmp_path / "a"), _tree(tmp_path / "b"), _tree(tmp_path / "c")
    assert len(a) == 5 * 8 + 1 and a == b
    assert a.keys() == c.keys()
    assert a["samples/000000/target.png"] != c["samples/000000/target.png"]


def test_count_does_not_change_samples(samples):
    # A shorter run is a prefix of a longer one (each pair has its own seeded generator).
    short = list(synth.iter_samples(6, seed=5, size=SIZE, val_fraction=0.25))
    for s, l in zip(short, samples):
        assert s["sample_id"] == l["sample_id"] and s["caption"] == l["caption"]
        np.testing.assert_array_equal(s["target"], l["target"])
        np.testing.assert_array_equal(s["human_ref"], l["human_ref"])


def test_masks_nonempty_inside_and_disjoint(samples):
    for s in samples:
        hm, om = s["human_mask"], s["object_mask"]
        assert hm.dtype == bool and hm.shape == (SIZE, SIZE) and s["target"].shape == (SIZE, SIZE, 3)
        assert hm.sum() > 20 and om.sum() > 3, s["caption"]
        union = hm | om
        # Inside the image: the pair never touches the border.
        assert not union[0].any() and not union[-1].any() and not union[:, 0].any() and not union[:, -1].any()
        assert (hm & om).sum() <= 0.05 * min(hm.sum(), om.sum())
        x, y, w, h = s["box"]
        ys, xs = np.nonzero(union)
        assert (x, y, x + w - 1, y + h - 1) == (xs.min(), ys.min(), xs.max(), ys.max())
        for ref in ("human_ref", "object_ref"):
            img, m = s[ref], s[ref + "_mask"]
            assert img.shape[:2] == m.shape and m.any()
        # The background is the target without the pair (bar a kite's line, left unlabelled
        # like in real segmentations).
        changed = (s["background"] != s["target"]).any(-1) & ~union
        assert changed.sum() <= (0.02 * changed.size if s["verb"] == "fly" else 0)
        assert (s["background"][hm] != s["target"][hm]).any()


def test_reference_shows_another_pose(samples):
    for s in samples:
        meta = s["extra"]["synth"]
        assert meta["human_ref_scene"] != meta["scene"] != meta["object_ref_scene"]
        assert meta["human_ref_pose"] != meta["pose"]
        assert meta["object_ref_box"] != meta["object_box"]
    # Same identity: the pair's target and human reference share their shirt colours.
    first, second = samples[0], samples[1]
    assert first["extra"]["synth"]["pair"] == second["extra"]["synth"]["pair"]
    assert first["extra"]["description"].split(" is ")[0] == second["extra"]["description"].split(" is ")[0]


def test_all_categories_and_interactions(samples):
    assert len(synth.CATEGORIES) >= 6 and len(INTERACTIONS) >= 8
    assert {s["object_category"] for s in samples} == set(synth.CATEGORIES)
    assert {s["verb"] for s in samples} == set(INTERACTIONS)
    for s in samples:
        assert s["verb"] in synth.COMPATIBLE[s["object_category"]]
        assert s["caption"] == f"a person is {INTERACTIONS[s['verb']]} the {s['object_category']}"
    assert synth.caption("sit_on", "chair") == "a person is sitting on the chair"
    # Validation identities are held out: whole pairs, the last ones.
    val_pairs = {s["extra"]["synth"]["pair"] for s in samples if s["split"] == "val"}
    train_pairs = {s["extra"]["synth"]["pair"] for s in samples if s["split"] == "train"}
    assert val_pairs == {7, 8} and not val_pairs & train_pairs


def test_any_resolution_same_layout():
    small = next(synth.iter_samples(1, seed=9, size=64))
    big = next(synth.iter_samples(1, seed=9, size=160))
    assert big["target"].shape == (160, 160, 3) and small["caption"] == big["caption"]
    sb = np.array(small["box"]) / 64
    bb = np.array(big["box"]) / 160
    assert np.abs(sb - bb).max() < 0.05


def test_dataset_round_trip(tmp_path, samples):
    items = samples[:6]
    _write(tmp_path, items)
    data = ds.ChoiDataset(tmp_path)
    assert len(data) == 6 and data.ids == [s["sample_id"] for s in items]
    for s, r in zip(items, data):
        assert (r.id, r.caption, r.verb, r.object, r.split) == (
            s["sample_id"], s["caption"], s["verb"], s["object_category"], s["split"])
        assert r.box == tuple(s["box"]) and r.extra == s["extra"]
        np.testing.assert_array_equal(r.target, s["target"])
        np.testing.assert_array_equal(r.background, s["background"])
        for part in ("human_mask", "object_mask", "human_ref_mask", "object_ref_mask"):
            arr = getattr(r, part)
            assert arr.dtype == np.uint8 and set(np.unique(arr)) <= {0, 255}
            np.testing.assert_array_equal(arr, s[part].astype(np.uint8) * 255)
        np.testing.assert_array_equal(r.human_ref, s["human_ref"])
        np.testing.assert_array_equal(r.object_ref, s["object_ref"])
        np.testing.assert_array_equal(r.interaction_mask > 0, s["human_mask"] | s["object_mask"])
    np.testing.assert_array_equal(data.load_part(2, "object_mask"), data[2].object_mask)
    index_lines = (tmp_path / ds.INDEX_NAME).read_text().splitlines()
    assert len(index_lines) == 6 and json.loads(index_lines[0])["files"]["target"] == "samples/000000/target.png"
    assert not list(tmp_path.rglob("*.tmp"))


def test_split_filter(tmp_path, samples):
    _write(tmp_path, samples)
    assert ds.ChoiDataset(tmp_path).splits == ["train", "val"]
    val = ds.ChoiDataset(tmp_path, split="val")
    assert len(val) == 8 and all(r["split"] == "val" for r in val.records)
    assert len(ds.ChoiDataset(tmp_path, split="train")) == 28


def test_write_sample_refuses_to_overwrite(tmp_path, samples):
    s = dict(samples[0])
    sid = s.pop("sample_id")
    ds.write_sample(tmp_path, sid, **s)
    target = tmp_path / "samples" / sid / "target.png"
    before = target.read_bytes()
    other = dict(s, target=samples[1]["target"])
    with pytest.raises(FileExistsError, match=sid):
        ds.write_sample(tmp_path, sid, **other)
    assert target.read_bytes() == before
    ds.write_sample(tmp_path, sid, overwrite=True, **other)
    assert target.read_bytes() != before and len(ds.ChoiDataset(tmp_path)) == 1
    # Appending keeps the existing sample.
    t = dict(samples[1])
    ds.write_sample(tmp_path, t.pop("sample_id"), **t)
    assert ds.ChoiDataset(tmp_path).ids == [sid, samples[1]["sample_id"]]
    with pytest.raises(FileExistsError, match="index.jsonl"):
        ds.ChoiWriter(tmp_path)


def test_generate_refuses_non_empty_folder(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        synth.generate(tmp_path, 2, seed=0, size=SIZE)
    rc = cli.main(["synth", "--out", str(tmp_path), "--count", "2", "--size", str(SIZE)])
    assert rc == 2 and "--overwrite" in capsys.readouterr().err
    assert not (tmp_path / ds.INDEX_NAME).exists()
    rc = cli.main(["synth", "--out", str(tmp_path), "--count", "2", "--size", str(SIZE), "--overwrite"])
    assert rc == 0 and len(ds.ChoiDataset(tmp_path)) == 2
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_writer_validates_inputs(tmp_path, samples):
    s = dict(samples[0])
    sid = s.pop("sample_id")
    with pytest.raises(ds.DatasetError, match="human_mask"):
        ds.write_sample(tmp_path, sid, **dict(s, human_mask=s["human_mask"].astype(np.uint8)))  # 0/1 values
    with pytest.raises(ds.DatasetError, match="object_mask"):
        ds.write_sample(tmp_path, sid, **dict(s, object_mask=np.zeros((SIZE, SIZE), bool)))
    with pytest.raises(ds.DatasetError, match="box"):
        ds.write_sample(tmp_path, sid, **dict(s, box=[0, 0, SIZE + 1, 4]))
    with pytest.raises(ds.DatasetError, match="id"):
        ds.write_sample(tmp_path, "../evil", **s)


def test_reader_errors_name_the_file(tmp_path, samples):
    _write(tmp_path, samples[:3])
    data = ds.ChoiDataset(tmp_path)
    missing = tmp_path / "samples" / "000001" / "object_ref_mask.png"
    missing.unlink()
    with pytest.raises(FileNotFoundError, match=r"000001.*object_ref_mask.*does not exist"):
        data[1]
    (tmp_path / "samples" / "000002" / "target.png").write_bytes(b"not a png")
    with pytest.raises(ds.DatasetError, match=r"000002.*target\.png"):
        data[2]
    assert data[0].id == "000000"

    index = tmp_path / ds.INDEX_NAME
    lines = index.read_text().splitlines()
    index.write_text("\n".join(lines + ["{not json"]) + "\n")
    with pytest.raises(ds.DatasetError, match="line 4"):
        ds.ChoiDataset(tmp_path)
    bad = json.loads(lines[0])
    bad["files"]["target"] = "../outside.png"
    index.write_text(json.dumps(bad) + "\n")
    with pytest.raises(ds.DatasetError, match="inside"):
        ds.ChoiDataset(tmp_path)
    with pytest.raises(FileNotFoundError, match="index.jsonl"):
        ds.ChoiDataset(tmp_path / "nowhere")


def test_examples_are_consistent_and_small(tmp_path):
    meta = synth.write_examples(tmp_path)
    human, obj = Image.open(tmp_path / "human.png"), Image.open(tmp_path / "object.png")
    bg, mask = Image.open(tmp_path / "background.png"), Image.open(tmp_path / "interaction_mask.png")
    assert (human.mode, obj.mode, bg.mode, mask.mode) == ("RGBA", "RGBA", "RGB", "L")
    assert bg.size == (384, 256) == mask.size and meta["background_size"] == [384, 256]
    for im in (human, obj):
        alpha = np.asarray(im)[..., 3]
        assert set(np.unique(alpha)) == {0, 255} and alpha.mean() > 40
    m = np.asarray(mask)
    x, y, w, h = meta["box"]
    assert set(np.unique(m)) == {0, 255} and m[y:y + h, x:x + w].sum() == m.sum()
    saved = json.loads((tmp_path / "example.json").read_text())
    assert saved["caption"] == "a person is pushing the bicycle" and saved["box"] == meta["box"]
    assert sum(p.stat().st_size for p in tmp_path.iterdir()) < 200_000
    with pytest.raises(FileExistsError):
        synth.write_examples(tmp_path)
    # The shipped copies are exactly what the generator makes (same pixels, same JSON).
    shipped = REPO / "pipelines" / "assets" / "examples"
    for name in synth.EXAMPLE_FILES:
        if name.endswith(".json"):
            assert json.loads((shipped / name).read_text()) == saved
        else:
            np.testing.assert_array_equal(np.asarray(Image.open(shipped / name)),
                                          np.asarray(Image.open(tmp_path / name)), err_msg=name)
