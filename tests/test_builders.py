"""CHOI dataset builders (cli/research/data/builders.py): video clips (paper §4.2), HOI images (§4.1).

Clips and images are rendered with the synthetic generator (`cli.research.data.synth`): the same
human-object pair in several poses over one backdrop (a static camera), with exact masks.
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from interact_custom import cli
from interact_custom.cli.research.data import builders as B
from interact_custom.cli.research.data import synth
from interact_custom.cli.research.data.dataset import ChoiDataset
from interact_custom.pipelines.geometry import Box
from interact_custom.pipelines.vocabulary import INTERACTIONS

SIZE = 96
MIN_AREA = 0.001  # 10 px at 96²


def render_pair(seed: int, verbs, category="ball", same_background=True):
    """The same human and object doing `verbs`, one (image, human mask, object mask) each."""
    rng = np.random.default_rng(seed)
    human, obj = synth.random_human(rng), synth.random_object(rng, category)
    bg = synth.random_background(rng, 1.0) if same_background else None
    out = []
    for v in verbs:
        img, lab = synth.render(synth.make_scene(rng, human, obj, v, background=bg), SIZE)
        hm, om = lab == synth.HUMAN, lab == synth.OBJECT
        assert hm.sum() > 100 and om.sum() > 12  # above MIN_AREA (10 px)
        out.append((img, hm, om))
    return out


@pytest.fixture(scope="module")
def clip():
    """7 frames: scenes A A B B C C D (a repeated scene = a still frame, human IoU 1).
    Frame 5 has a 3-pixel object mask (tiny), frame 6 an empty human mask."""
    verbs = ["hold", "kick", "throw", "hold"]
    scenes = render_pair(11, verbs)
    order = [0, 0, 1, 1, 2, 2, 3]
    frames = [scenes[k][0].copy() for k in order]
    hms = [scenes[k][1].copy() for k in order]
    oms = [scenes[k][2].copy() for k in order]
    tiny = np.zeros_like(oms[5])
    ys, xs = np.nonzero(oms[5])
    tiny[ys[:3], xs[:3]] = True
    oms[5] = tiny
    hms[6][:] = False
    return dict(frames=frames, human=hms, object=oms, verbs=[verbs[k] for k in order])


def as_clip(c, clip_id="c1", **kw) -> B.VideoClip:
    return B.VideoClip(c["frames"], c["human"], c["object"], c["verbs"], "ball", clip_id=clip_id, **kw)


def crop(img, box):
    x, y, w, h = box
    return img[y:y + h, x:x + w]


def union_box(mask):
    ys, xs = np.nonzero(mask)
    return (int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1))


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def save(path: Path, arr) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    a = np.asarray(arr)
    Image.fromarray(a.astype(np.uint8) * 255 if a.dtype == bool else a).save(path)


def write_clip_folder(root: Path, clip_id: str, c, masks=True, meta=None):
    d = root / clip_id
    for i, f in enumerate(c["frames"]):
        save(d / "frames" / f"f{i}.png", f)  # f10 after f9: natural order
        if masks:
            save(d / "human_masks" / f"f{i}.png", c["human"][i])
            save(d / "object_masks" / f"f{i}.png", c["object"][i])
    (d / "clip.json").write_text(json.dumps(meta or {"verb": c["verbs"], "object": "ball"}))
    return d


def check_video_sample(s, c, min_gap, max_iou):
    src = s.extra["source"]
    t, r = src["target_index"], src["reference_index"]
    assert t != r and abs(t - r) >= min_gap and src["frame_gap"] == abs(t - r)
    assert B.mask_iou(c["human"][t], c["human"][r]) <= max_iou
    assert not np.array_equal(c["frames"][t], c["frames"][r])  # the reference is another pose
    np.testing.assert_array_equal(s.target, c["frames"][t])
    np.testing.assert_array_equal(s.human_mask, c["human"][t] * 255)
    np.testing.assert_array_equal(s.object_mask, c["object"][t] * 255)
    # References: the pixels of the *other* frame inside the recorded crop box, masks alike.
    for part in ("human", "object"):
        box = src[f"{part}_ref_box"]
        np.testing.assert_array_equal(getattr(s, f"{part}_ref"), crop(c["frames"][r], box))
        np.testing.assert_array_equal(getattr(s, f"{part}_ref_mask"), crop(c[part][r], box) * 255)
        # The crop holds the whole mask of that frame.
        assert getattr(s, f"{part}_ref_mask").sum() // 255 == c[part][r].sum()
    assert s.box == union_box(c["human"][t] | c["object"][t])
    assert s.verb == c["verbs"][t] and src["reference_verb"] == c["verbs"][r]
    return t, r


# ----------------------------------------------------------------------------- video, API


def test_video_pairs_references_and_skips(clip, tmp_path):
    report = B.build_video_dataset([as_clip(clip)], tmp_path / "ds", min_gap=1, max_iou=0.9,
                                   pairs_per_clip=100, min_area=MIN_AREA, seed=0)
    ds = ChoiDataset(tmp_path / "ds")
    usable = range(5)  # frame 5: tiny object mask, frame 6: empty human mask
    expected = {(t, r) for t in usable for r in usable
                if t != r and B.mask_iou(clip["human"][t], clip["human"][r]) <= 0.9}
    assert (0, 1) not in expected and (2, 3) not in expected and len(expected) >= 12
    got = {check_video_sample(s, clip, 1, 0.9) for s in ds}
    assert got == expected and len(ds) == report.written == len(expected)
    assert report.skipped == {B.TINY_OBJECT: 1, B.EMPTY_HUMAN: 1}
    assert any("frame 0005" in n and B.TINY_OBJECT in n for n in report.notes)
    assert all(s.background is None for s in ds)
    s = ds[0]
    assert s.caption == f"a person is {synth.INTERACTIONS[s.verb]} the ball" == synth.caption(s.verb, "ball")
    assert ds.record(0)["id"] == f"c1-{s.extra['source']['target_index']:04d}-{s.extra['source']['reference_index']:04d}"
    saved = json.loads((tmp_path / "ds" / B.BUILD_REPORT).read_text())
    assert saved["written"] == len(ds) and saved["skipped"] == {B.TINY_OBJECT: 1, B.EMPTY_HUMAN: 1}


def test_video_min_gap_pairs_per_clip_and_seed(clip, tmp_path):
    def pairs(seed, out):
        B.build_video_dataset([as_clip(clip)], tmp_path / out, min_gap=3, max_iou=1.0, pairs_per_clip=2,
                              min_area=MIN_AREA, seed=seed)
        ds = ChoiDataset(tmp_path / out)
        return [check_video_sample(s, clip, 3, 1.0) for s in ds]

    a, b = pairs(0, "a"), pairs(0, "b")
    assert len(a) == 2 and a == b
    assert tree(tmp_path / "a") == tree(tmp_path / "b")
    assert any(pairs(s, f"s{s}") != a for s in range(1, 6))  # the seed does choose the pairs
    # Nothing qualifies: counted per clip, no sample, no error.
    report = B.build_video_dataset([as_clip(clip)], tmp_path / "none", min_gap=7, max_iou=1.0,
                                   min_area=MIN_AREA)
    assert report.written == 0 and report.skipped[B.NO_PAIR] == 1


def test_video_callables_land_in_the_files(clip, tmp_path):
    labels = {hashlib.sha1(f.tobytes()).hexdigest(): (h, o)
              for f, h, o in zip(clip["frames"], clip["human"], clip["object"])}
    prompts = []

    def segment(frame, prompt):
        prompts.append(prompt)
        h, o = labels[hashlib.sha1(frame.tobytes()).hexdigest()]
        return (h if prompt == "person" else o).astype(np.float32)  # floats are accepted (> 0.5)

    def captioner(image, verb, obj):
        return f"custom {verb} {obj} {int(image.sum())}"

    def inpaint(image, mask):
        out = image.copy()
        out[mask] = (0, 255, 0)
        return out

    c = as_clip(clip)
    c.human_masks = c.object_masks = None
    B.build_video_dataset([c], tmp_path / "ds", min_gap=2, max_iou=0.9, pairs_per_clip=3, min_area=MIN_AREA,
                          segment=segment, captioner=captioner, inpaint=inpaint, box_expand=1.2)
    assert sorted(set(prompts)) == ["ball", "person"] and len(prompts) == 2 * 7
    ds = ChoiDataset(tmp_path / "ds")
    assert len(ds) == 3
    for s in ds:
        t = check_video_sample_no_box(s, clip)
        assert s.caption == f"custom {clip['verbs'][t]} ball {int(clip['frames'][t].sum())}"
        np.testing.assert_array_equal(s.background, inpaint(clip["frames"][t], clip["human"][t] | clip["object"][t]))
        x, y, w, h = union_box(clip["human"][t] | clip["object"][t])
        bx, by, bw, bh = s.box  # expanded ×1.2 about the centre, contains the union box
        assert bx <= x and by <= y and bx + bw >= x + w and by + bh >= y + h and bw * bh > w * h


def check_video_sample_no_box(s, c):
    src = s.extra["source"]
    t, r = src["target_index"], src["reference_index"]
    np.testing.assert_array_equal(s.target, c["frames"][t])
    np.testing.assert_array_equal(s.human_mask, c["human"][t] * 255)
    np.testing.assert_array_equal(s.human_ref, crop(c["frames"][r], src["human_ref_box"]))
    return t


def test_video_errors_name_the_clip(clip, tmp_path):
    c = as_clip(clip)
    c.object_masks = c.object_masks[:-1]
    with pytest.raises(B.BuildError, match=r"clip 'c1': 6 object masks for 7 frames"):
        B.build_video_dataset([c], tmp_path / "a")
    c = as_clip(clip)
    c.human_masks = None
    with pytest.raises(B.BuildError, match=r"clip 'c1': no human masks and no segmenter"):
        B.build_video_dataset([c], tmp_path / "b")
    c = as_clip(clip)
    c.human_masks = [m[:, :-1] for m in clip["human"]]
    with pytest.raises(B.BuildError, match=r"clip 'c1' frame 0000: human mask array is 95×96 but its image is 96×96"):
        B.build_video_dataset([c], tmp_path / "c")
    with pytest.raises(B.BuildError, match="repeated"):
        B.build_video_dataset([as_clip(clip), as_clip(clip)], tmp_path / "d")


# ----------------------------------------------------------------------------- video, CLI


CALLABLES = '''
import hashlib
from pathlib import Path
import numpy as np

_LABELS = np.load(Path(__file__).with_name("labels.npz"))

def segment(frame, prompt):
    lab = _LABELS["k" + hashlib.sha1(np.ascontiguousarray(frame).tobytes()).hexdigest()]
    return (lab == (1 if prompt == "person" else 2)).astype(np.uint8)  # 0/1 integers are accepted

def caption(image, verb, obj):
    return "cli caption: " + verb + " / " + obj

def inpaint(image, mask):
    out = image.copy()
    out[mask] = (255, 0, 255)
    return out

def flip(crop, mask):
    return crop[:, ::-1].copy(), mask[:, ::-1].copy()

NOT_CALLABLE = 3
'''


@pytest.fixture(scope="module")
def clean_clips():
    """Two clips without tiny masks (distinct identities), for the folder / CLI tests."""
    out = []
    for seed in (21, 22):
        scenes = render_pair(seed, ["hold", "kick", "throw", "hold", "kick"])
        out.append(dict(frames=[s[0] for s in scenes], human=[s[1] for s in scenes],
                        object=[s[2] for s in scenes], verbs=["hold", "kick", "throw", "hold", "kick"]))
    return out


def test_video_cli_matches_api_and_uses_callables(clean_clips, tmp_path, capsys, monkeypatch):
    clips_dir = tmp_path / "clips"
    for k, c in enumerate(clean_clips):
        write_clip_folder(clips_dir, f"clip{k}", c)
    (tmp_path / "user_fns.py").write_text(CALLABLES)
    labels = {}
    for c in clean_clips:
        for f, h, o in zip(c["frames"], c["human"], c["object"]):
            labels["k" + hashlib.sha1(f.tobytes()).hexdigest()] = h * 1 + o * 2 * ~h
    np.savez(tmp_path / "labels.npz", **labels)

    args = ["build", "video", "--clips", str(clips_dir), "--min-gap", "1", "--max-iou", "0.9",
            "--pairs-per-clip", "3", "--seed", "4", "--min-area", str(MIN_AREA), "--split-val", "0.5"]
    assert cli.main(args + ["--out", str(tmp_path / "cli")]) == 0
    out = capsys.readouterr()
    assert "wrote 6 samples (3 train, 3 val)" in out.out and "build: 2/2 clip1: 3 samples" in out.err
    api = B.build_video_dataset([as_clip(c, f"clip{k}") for k, c in enumerate(clean_clips)], tmp_path / "api",
                                min_gap=1, max_iou=0.9, pairs_per_clip=3, seed=4, min_area=MIN_AREA,
                                val_fraction=0.5)
    cli_ds, api_ds = ChoiDataset(tmp_path / "cli"), ChoiDataset(tmp_path / "api")
    assert api.written == 6 and cli_ds.ids == api_ds.ids
    assert {r["split"] for r in cli_ds.records} == {"train", "val"}
    for a, b in zip(cli_ds, api_ds):
        np.testing.assert_array_equal(a.target, b.target)
        np.testing.assert_array_equal(a.human_ref, b.human_ref)
        assert a.caption == b.caption and a.split == b.split
        assert a.extra["source"]["target_frame"] == f"f{a.extra['source']['target_index']}.png"

    # No mask folders: --segmenter as module:function; captioner / inpainter from a file path.
    for c in clips_dir.iterdir():
        for kind in ("human_masks", "object_masks"):
            for p in (c / kind).iterdir():
                p.unlink()
            (c / kind).rmdir()
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "user_fns", raising=False)
    fns = tmp_path / "user_fns.py"
    assert cli.main(args + ["--out", str(tmp_path / "seg"), "--segmenter", "user_fns:segment",
                            "--captioner", f"{fns}:caption", "--inpainter", f"{fns}:inpaint"]) == 0
    seg_ds = ChoiDataset(tmp_path / "seg")
    assert seg_ds.ids == api_ds.ids
    for a, b in zip(seg_ds, api_ds):
        np.testing.assert_array_equal(a.human_mask, b.human_mask)
        np.testing.assert_array_equal(a.object_ref_mask, b.object_ref_mask)
        assert a.caption == f"cli caption: {a.verb} / ball"
        expected = a.target.copy()
        expected[a.interaction_mask > 0] = (255, 0, 255)
        np.testing.assert_array_equal(a.background, expected)


def test_cli_refuses_non_empty_out_unless_overwrite(clean_clips, tmp_path, capsys):
    clips_dir = tmp_path / "clips"
    write_clip_folder(clips_dir, "a", clean_clips[0])
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    args = ["build", "video", "--clips", str(clips_dir), "--out", str(out), "--min-gap", "1",
            "--min-area", str(MIN_AREA)]
    assert cli.main(args) == 2
    assert "is not empty" in capsys.readouterr().err and not (out / "index.jsonl").exists()
    assert cli.main(args + ["--overwrite"]) == 0
    assert len(ChoiDataset(out)) > 0 and (out / "keep.txt").read_text() == "mine"


def test_cli_errors_name_the_file(clean_clips, tmp_path, capsys):
    clips_dir = tmp_path / "clips"
    d = write_clip_folder(clips_dir, "a", clean_clips[0])
    base = ["build", "video", "--clips", str(clips_dir), "--out", str(tmp_path / "o")]

    def err(*extra):
        assert cli.main(base + list(extra)) == 2
        return capsys.readouterr().err

    (d / "object_masks" / "f3.png").unlink()
    assert f"missing object mask for frame f3.png: expected {d / 'object_masks' / 'f3.png'}" in err()
    save(d / "object_masks" / "f3.png", np.zeros((SIZE, SIZE + 2), bool))
    assert f"object mask {d / 'object_masks' / 'f3.png'} is {SIZE + 2}×{SIZE}" in err()
    save(d / "object_masks" / "f3.png", clean_clips[0]["object"][3])
    (d / "clip.json").write_text(json.dumps({"verbs": "hold", "object": "ball"}))
    assert "unknown keys ['verbs']" in err() and "clip.json" in err()
    (d / "clip.json").write_text(json.dumps({"verb": ["hold", "kick"], "object": "ball"}))
    assert "2 verb values for 5 frames" in err()
    (d / "clip.json").write_text(json.dumps({"verb": "hold", "object": "ball"}))
    assert "--segmenter 'nocolon': expected 'module:function'" in err("--segmenter", "nocolon")
    assert "cannot import module 'no_such_module_xyz'" in err("--captioner", "no_such_module_xyz:fn")
    (tmp_path / "fns.py").write_text(CALLABLES.replace("_LABELS = np.load", "_LABELS = None  #"))
    assert "has no attribute 'missing'" in err("--inpainter", f"{tmp_path / 'fns.py'}:missing")
    assert "not a callable" in err("--inpainter", f"{tmp_path / 'fns.py'}:NOT_CALLABLE")
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


# ----------------------------------------------------------------------------- HOI (§4.1)


@pytest.fixture(scope="module")
def hoi():
    """p0: hold, kick, hold, hold (the last with an empty object mask); p1: ride, push (one
    bicycle, object_id "bike1"); p2: one image; p3: one image file annotated twice."""
    rows = []

    def add(person, scenes, verbs, category, object_id=None):
        for (img, hm, om), v in zip(scenes, verbs):
            rows.append(dict(image=img, human=hm, object=om, verb=v, obj=category, person=person,
                             object_id=object_id))

    add("p0", render_pair(31, ["hold", "kick", "hold", "hold"], same_background=False),
        ["hold", "kick", "hold", "hold"], "ball")
    rows[3]["object"] = np.zeros_like(rows[3]["object"])
    add("p1", render_pair(32, ["ride", "push"], "bicycle", same_background=False), ["ride", "push"], "bicycle",
        object_id="bike1")
    add("p2", render_pair(33, ["swing"], "bat"), ["swing"], "bat")
    p3 = render_pair(34, ["hold"], "kite")
    add("p3", p3 + p3, ["hold", "fly"], "kite")
    return rows


def hoi_items(rows):
    return [B.HoiImage(r["image"], r["human"], r["object"], r["verb"], r["obj"], r["person"],
                       object_id=r["object_id"], image_id=f"im{i}") for i, r in enumerate(rows)]


def check_hoi(ds, rows):
    by_id = {f"im{i}": r for i, r in enumerate(rows)}
    for s in ds:
        row, src = by_id[s.id], s.extra["source"]
        np.testing.assert_array_equal(s.target, row["image"])
        np.testing.assert_array_equal(s.human_mask, row["human"] * 255)
        if src["human_ref_from"] == "image":
            other = by_id[src["human_ref_image"]]
            assert other["person"] == row["person"] and other is not row          # same identity
            assert not np.array_equal(other["image"], row["image"])              # another image
            np.testing.assert_array_equal(s.human_ref, crop(other["image"], src["human_ref_box"]))
            np.testing.assert_array_equal(s.human_ref_mask, crop(other["human"], src["human_ref_box"]) * 255)
        oref = by_id[src["object_ref_image"]] if src["object_ref_from"] == "image" else row
        np.testing.assert_array_equal(s.object_ref, crop(oref["image"], src["object_ref_box"]))
        np.testing.assert_array_equal(s.object_ref_mask, crop(oref["object"], src["object_ref_box"]) * 255)
        assert s.box == union_box(row["human"] | row["object"])


def test_hoi_same_identity_references_and_skips(hoi, tmp_path):
    report = B.build_hoi_dataset(hoi_items(hoi), tmp_path / "ds", seed=0, min_area=MIN_AREA)
    ds = ChoiDataset(tmp_path / "ds")
    assert ds.ids == ["im0", "im1", "im2", "im4", "im5"]
    assert report.skipped == {B.EMPTY_OBJECT: 1, B.NO_IDENTITY: 3}  # im3; p2 alone; p3 = one file twice
    check_hoi(ds, hoi)
    src = {s.id: s.extra["source"] for s in ds}
    # A different verb is preferred: the only usable other-verb image of p0 is im1 (kick);
    # im3 (empty object mask) is never a reference.
    assert src["im0"]["human_ref_image"] == src["im2"]["human_ref_image"] == "im1"
    assert src["im1"]["human_ref_image"] in ("im0", "im2")
    assert src["im4"]["human_ref_image"] == "im5" and src["im4"]["object_ref_from"] == "image"
    assert src["im4"]["object_ref_image"] == "im5"
    assert src["im0"]["object_ref_from"] == "same_image"  # no object_id: the paper's own object crop
    assert ds[0].caption == "a person is holding the ball"


def test_hoi_pose_change_and_explicit_reference(hoi, tmp_path):
    calls = []
    posed = np.full((20, 10, 3), 7, np.uint8)

    def pose_change(crop_img, crop_mask):
        calls.append(crop_img.shape)
        if len(calls) % 2 == 0:
            return None  # falls back to another image of the same person
        return posed, np.ones((20, 10), bool)

    items = hoi_items(hoi)
    items[1].human_ref, items[1].human_ref_mask = hoi[4]["image"], hoi[4]["human"]  # explicit wins
    report = B.build_hoi_dataset(items, tmp_path / "ds", min_area=MIN_AREA, pose_change=pose_change)
    ds = ChoiDataset(tmp_path / "ds")
    src = {s.id: s.extra["source"] for s in ds}
    assert src["im1"]["human_ref_from"] == "explicit"
    np.testing.assert_array_equal(ds[1].human_ref, crop(hoi[4]["image"], src["im1"]["human_ref_box"]))
    froms = [src[i]["human_ref_from"] for i in ds.ids if i != "im1"]
    assert "pose_change" in froms and "image" in froms
    for s in ds:
        if src[s.id]["human_ref_from"] == "pose_change":
            np.testing.assert_array_equal(s.human_ref, posed)
            assert (s.human_ref_mask == 255).all()
    # With a pose changer, an identity with a single image is no longer skipped (p2 once).
    assert report.written > 5 and B.EMPTY_OBJECT in report.skipped


def test_hoi_cli_folder_determinism_and_errors(hoi, tmp_path, capsys):
    root = tmp_path / "hoi"
    lines = []
    for i, r in enumerate(hoi):
        name = f"im{i}"
        save(root / "images" / f"{name}.png", r["image"])
        save(root / "masks" / f"{name}_h.png", r["human"])
        save(root / "masks" / f"{name}_o.png", r["object"])
        line = {"id": f"im{i}", "image": f"images/{name}.png", "human_mask": f"masks/{name}_h.png",
                "object_mask": f"masks/{name}_o.png", "verb": r["verb"], "object": r["obj"],
                "person_id": r["person"]}
        if r["object_id"]:
            line["object_id"] = r["object_id"]
        lines.append(line)
    # p3's second annotation (HICO-DET lists several pairs per image) points at the same files.
    lines[8].update(image=lines[7]["image"], human_mask=lines[7]["human_mask"], object_mask=lines[7]["object_mask"])
    ann = root / "annotations.jsonl"
    ann.write_text("".join(json.dumps(line) + "\n" for line in lines))
    args = ["build", "hoi", "--annotations", str(ann), "--min-area", str(MIN_AREA), "--seed", "3"]
    assert cli.main(args + ["--out", str(tmp_path / "a")]) == 0
    assert cli.main(args + ["--out", str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out
    assert "wrote 5 samples (5 train)" in out and f"3 × {B.NO_IDENTITY}" in out
    assert tree(tmp_path / "a") == tree(tmp_path / "b")
    ds = ChoiDataset(tmp_path / "a")
    check_hoi(ds, hoi)
    assert ds[0].extra["source"]["image"] == str(root / "images" / "im0.png")

    lines[2]["human_mask"] = "masks/missing.png"
    ann.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert cli.main(args + ["--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert f"{ann} line 3: human_mask file {root / 'masks' / 'missing.png'} does not exist" in err
    lines[2]["human_mask"] = "masks/im2_h.png"
    lines[2]["person"] = "p0"
    ann.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert cli.main(args + ["--out", str(tmp_path / "c")]) == 2
    assert "line 3: unknown keys ['person']" in capsys.readouterr().err


# ----------------------------------------------------------------------------- pieces


def test_captions_and_geometry():
    assert B.default_caption("sit_on", "dining_table") == "a person is sitting on the dining table"
    assert B.default_caption("lie_on", "bed") == "a person is lying on the bed"
    assert [B.verb_phrase(v) for v in ("hop_on", "ride", "greet", "open", "riding", "swing")] == [
        "hopping on", "riding", "greeting", "opening", "riding", "swinging"]
    for verb in INTERACTIONS:  # one vocabulary with the synthetic data
        assert B.default_caption(verb, "box") == synth.caption(verb, "box")
    assert Box.from_xywh(10, 20, 30, 40).scaled(1.0).clipped(100, 100).xywh == (10, 20, 30, 40)
    assert Box.from_xywh(10, 20, 30, 40).scaled(2.0).clipped(100, 100).xywh == (0, 0, 55, 80)
    img = np.arange(20 * 30 * 3, dtype=np.uint8).reshape(20, 30, 3)
    mask = np.zeros((20, 30), bool)
    mask[5:9, 10:20] = True
    c, m, box = B.crop_reference(img, mask, margin=0.2)
    assert box == (8, 3, 14, 8)
    np.testing.assert_array_equal(c, img[3:11, 8:22])
    np.testing.assert_array_equal(m, mask[3:11, 8:22])
    assert B.choose_val_groups(["a", "b", "c", "d"], 0.25, 0) == B.choose_val_groups(["d", "c", "b", "a"], 0.25, 0)
    assert len(B.choose_val_groups(["a", "b"], 0.01, 0)) == 1 and B.choose_val_groups(["a"], 0.5, 0) == set()
