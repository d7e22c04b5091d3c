"""Evaluation metrics (cli/research/evaluation/, cli/research/evaluation/eval_models.py) and the `evaluate`
command, with tiny random CLIP / DINOv2 models written to tmp_path (nothing downloaded)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from interact_custom import cli
from interact_custom.pipelines import imgproc
from interact_custom.cli.research.evaluation import encoders as enc
from interact_custom.cli.research.evaluation import evaluate as ev
from interact_custom.cli.research.evaluation import metrics
from interact_custom.cli.research.data import synth
from interact_custom.cli.research.data.dataset import ChoiDataset
from interact_custom.cli.research.evaluation import eval_models

SIZE = 64


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    # 64-wide, one head: the shape rules of the single-file loader (64-dim heads) hold.
    config = CLIPVisionConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=1,
                              image_size=32, patch_size=8, projection_dim=16)
    path = tmp_path_factory.mktemp("clip")
    CLIPVisionModelWithProjection(config).save_pretrained(path)
    return path


def _tiny_dino(swiglu: bool):
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(1)
    # Stored 4×4 position grid: the 224² input (16×16) exercises the official interpolation.
    return Dinov2Model(Dinov2Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=1, image_size=56,
                                    patch_size=14, use_swiglu_ffn=swiglu, layerscale_value=0.5))


@pytest.fixture(scope="module")
def dino_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("dino")
    _tiny_dino(True).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def encoders(clip_dir, dino_dir):
    return eval_models.load_clip_encoder(clip_dir), eval_models.load_dino_encoder(dino_dir)


def _image(seed, h=40, w=52):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# ----------------------------------------------------------------------------- CLIP / DINO


def test_identical_images_score_one_and_different_images_less(encoders):
    clip, dino = encoders
    a, b = _image(0), np.full((40, 52, 3), 30, np.uint8)
    hm = np.zeros((40, 52), bool)
    hm[5:30, 4:20] = True
    om = np.zeros((40, 52), bool)
    om[10:35, 25:50] = True
    assert enc.clip_score(clip, a, a) == pytest.approx(1.0, abs=1e-5)
    assert enc.clip_score(clip, a, b) < 0.999
    same = enc.dino_scores(dino, a, a, hm, om)
    assert set(same) == {"dino_human", "dino_object", "dino_pair"}
    for value in same.values():
        assert value == pytest.approx(1.0, abs=1e-5)
    diff = enc.dino_scores(dino, a, b, hm, om)
    assert all(v < 0.999 for v in diff.values())
    # Pixels outside the masks do not count: changing them keeps every score at 1.
    c = a.copy()
    c[~(hm | om)] = 0
    assert enc.dino_scores(dino, c, a, hm, om)["dino_pair"] == pytest.approx(1.0, abs=1e-5)


def test_dino_is_deterministic_and_uses_cls_after_norm(dino_dir, encoders):
    _, dino = encoders
    a = _image(3)
    again = eval_models.load_dino_encoder(dino_dir)
    torch.testing.assert_close(dino.features([a]), again.features([a]), rtol=0, atol=0)
    # The feature is the final-normed CLS token (pooler_output) of the official-interpolation model.
    x = torch.from_numpy(metrics.resize_image(a, (224, 224))).permute(2, 0, 1)[None].float() / 255
    mean, std = torch.tensor(imgproc.IMAGENET_MEAN), torch.tensor(imgproc.IMAGENET_STD)
    x = (x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    with torch.no_grad():
        cls_token = dino.model(pixel_values=x).last_hidden_state[:, 0]
    torch.testing.assert_close(dino.features([a]), torch.nn.functional.normalize(cls_token, dim=-1))


def test_clip_preprocess_resizes_short_side_and_centre_crops(encoders):
    clip, _ = encoders
    wide = np.zeros((20, 60, 3), np.uint8)
    wide[:, 20:40] = 255  # the centre third survives the 32×32 crop of a 32×96 resize
    x = clip.preprocess(wide)
    assert x.shape == (3, 32, 32)
    white = (1.0 - torch.tensor(enc.CLIP_MEAN)) / torch.tensor(enc.CLIP_STD)
    torch.testing.assert_close(x[:, 16, 16], white)


def test_single_file_clip_matches_folder(tmp_path, clip_dir, encoders):
    from safetensors.torch import save_file
    from transformers import CLIPVisionModelWithProjection

    model = CLIPVisionModelWithProjection.from_pretrained(clip_dir)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "clip_vision.safetensors")
    from_file = eval_models.load_clip_encoder(tmp_path / "clip_vision.safetensors")
    a = _image(4)
    torch.testing.assert_close(from_file.features([a]), encoders[0].features([a]), rtol=0, atol=1e-6)


@pytest.mark.parametrize("swiglu", [True, False])
def test_single_file_original_dinov2_matches_folder(tmp_path, swiglu):
    from interact_custom.weights_manager.official_mgig import _dinov2_hf_to_official

    model = _tiny_dino(swiglu)
    model.save_pretrained(tmp_path / "hf")
    sd = model.state_dict()
    plain = {k: v for k, v in sd.items() if ".mlp.fc" in k}  # plain-MLP names are shared
    original = _dinov2_hf_to_official({k: v for k, v in sd.items() if k not in plain})
    original.update({k.replace("encoder.layer.", "blocks."): v for k, v in plain.items()})
    # As inside an MGIG checkpoint (prefixed) and as the DINOv2 release (.pth, no prefix).
    torch.save({f"cond_stage_model.model.{k}": v for k, v in original.items()}, tmp_path / "mgig_like.pth")
    a = _image(5)
    ref = eval_models.load_dino_encoder(tmp_path / "hf").features([a])
    torch.testing.assert_close(eval_models.load_dino_encoder(tmp_path / "mgig_like.pth").features([a]), ref,
                               rtol=0, atol=1e-6)


def test_missing_or_wrong_models_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        eval_models.load_clip_encoder(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        eval_models.load_dino_encoder(tmp_path)
    torch.save({"foo": torch.zeros(2)}, tmp_path / "x.pth")
    with pytest.raises(ev.EvaluationError, match="x.pth"):
        eval_models.load_dino_encoder(tmp_path / "x.pth")
    with pytest.raises(ev.EvaluationError, match="vision_model"):
        eval_models.load_clip_encoder(tmp_path / "x.pth")


# ----------------------------------------------------------------------------- masks and pixels


def test_identical_masks_kl_zero_iou_one():
    m = np.zeros((50, 70), bool)
    m[10:40, 20:45] = True
    assert metrics.spatial_kl(m, m) == 0.0
    assert metrics.mask_iou(m, m) == 1.0


@pytest.mark.parametrize("side", [64, 128])
def test_disjoint_halves_kl_by_hand(side):
    gt = np.zeros((side, side), bool)
    gt[: side // 2] = True
    gen = ~gt
    eps = metrics.KL_EPS
    # Each half holds 2048 cells of the 64² grid: P = (1+eps)/Z on gt's half, eps/Z on the
    # other, Z = 2048 (1 + 2 eps); Q mirrored. KL = log((1+eps)/eps) / (1 + 2 eps).
    expected = math.log((1 + eps) / eps) / (1 + 2 * eps)
    assert metrics.spatial_kl(gt, gen) == pytest.approx(expected, rel=1e-9)
    assert expected == pytest.approx(6.8950, abs=1e-4)
    assert metrics.mask_iou(gt, gen) == 0.0


def test_kl_small_grid_by_hand_and_direction():
    gt = np.array([[1, 0], [0, 0]], bool)
    gen = np.array([[1, 1], [0, 0]], bool)
    p = np.array([1.5, 0.5, 0.5, 0.5]) / 3.0
    q = np.array([1.5, 1.5, 0.5, 0.5]) / 4.0
    assert metrics.spatial_kl(gt, gen, grid=2, eps=0.5) == pytest.approx(float(np.sum(p * np.log(p / q))), rel=1e-12)
    assert metrics.spatial_kl(gen, gt, grid=2, eps=0.5) == pytest.approx(float(np.sum(q * np.log(q / p))), rel=1e-12)
    assert metrics.mask_iou(gt, gen) == 0.5
    # Area averaging: a 4×4 mask filling the top-left quarter is the 2×2 grid's one cell.
    np.testing.assert_array_equal(metrics.occupancy(np.kron(gt, np.ones((2, 2), bool)), 2), gt.astype(float))


def test_mask_in_box_known_answer():
    m = np.zeros((10, 10), bool)
    m[2:6, 1:6] = True  # 20 pixels, columns 1..5
    assert metrics.mask_in_box(m, [2, 0, 10, 10]) == pytest.approx(16 / 20)  # column 1 is outside
    assert metrics.mask_in_box(m, [0, 0, 10, 10]) == 1.0
    assert metrics.mask_in_box(m, [7, 7, 3, 3]) == 0.0
    assert metrics.mask_in_box(np.zeros((10, 10), bool), [0, 0, 5, 5]) is None


def _figure(kind: str, h=60, w=80, x=10, y=5, scale=1.0, mirror=False):
    """A constructed mask: "stand" (a tall bar) or "reach" (a bar with an arm sideways)."""
    m = np.zeros((h, w), bool)
    bh, bw = int(40 * scale), int(8 * scale)
    m[y:y + bh, x:x + bw] = True
    if kind == "reach":
        m[y + bh // 4:y + bh // 4 + int(4 * scale), x + bw:x + bw + int(24 * scale)] = True
    return m[:, ::-1] if mirror else m


def test_mask_shape_ignores_position_and_scale_and_verbs_vote():
    a, b = metrics.mask_shape(_figure("reach")), metrics.mask_shape(_figure("reach", x=30, y=12, scale=0.6))
    assert metrics.mask_iou(a, b) > 0.85
    assert metrics.shape_similarity(a, metrics.mask_shape(_figure("reach", mirror=True))) == pytest.approx(1.0)
    assert metrics.mask_shape(np.zeros((5, 5), bool)) is None
    refs = [(metrics.mask_shape(_figure("stand", scale=s)), "stand") for s in (0.8, 1.0, 1.2)] + \
           [(metrics.mask_shape(_figure("reach", scale=s, mirror=m)), "reach")
            for s, m in ((0.7, 0), (1.0, 1), (1.2, 0))]
    assert metrics.nearest_verb(metrics.mask_shape(_figure("reach", x=40, mirror=True)), refs, k=3) == "reach"
    assert metrics.nearest_verb(metrics.mask_shape(_figure("stand", y=15)), refs, k=3) == "stand"
    assert metrics.nearest_verb(None, refs) is None
    # Leave-one-out on the references themselves: every one is recognised.
    assert metrics.verb_accuracy_of_ground_truth([(str(i), s, v) for i, (s, v) in enumerate(refs)], k=1) == 1.0


def test_mask_iou_mirror_forgives_only_the_way_the_figure_faces():
    truth = _figure("reach", x=20)  # the arm reaches right, inside the box below
    ys, xs = np.nonzero(truth)
    box = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]
    facing_left = metrics.mirror_in_box(truth, box)
    assert facing_left.sum() == truth.sum() and not np.array_equal(facing_left, truth)
    np.testing.assert_array_equal(metrics.mirror_in_box(facing_left, box), truth)
    assert metrics.mask_iou(facing_left, truth) < 0.6
    assert metrics.mask_iou_mirror(facing_left, truth, box) == 1.0
    # A wrong pose stays wrong whichever way it faces: the arm 16 rows lower (upside down in
    # the box) shares only the 8 x 40 bar, IoU 320 / (320 + 96 + 96); facing left, less.
    upside_down = truth.copy()
    upside_down[5:45] = truth[5:45][::-1]
    assert metrics.mask_iou_mirror(upside_down, truth, box) == pytest.approx(320 / 512)


def test_fit_to_box_and_pose_reference_by_hand():
    a = np.zeros((20, 20), bool)
    a[2:6, 2:4] = True  # a 4x2 figure in box (2, 2, 2, 4)
    fitted = metrics.fit_to_box(a, [2, 2, 2, 4], [10, 8, 4, 8], (20, 20))
    expected = np.zeros((20, 20), bool)
    expected[8:16, 10:14] = True
    np.testing.assert_array_equal(fitted, expected)
    # Two samples of one verb and object: the same L facing opposite ways in different boxes.
    el = np.zeros((20, 20), bool)
    el[2:10, 2:4], el[8:10, 4:8] = True, True  # box (2, 2, 6, 8)
    mirrored = metrics.mirror_in_box(metrics.fit_to_box(el, [2, 2, 6, 8], [10, 5, 6, 8], (20, 20)), [10, 5, 6, 8])
    other = np.zeros((20, 20), bool)
    samples = [("hold", "ball", el, [2, 2, 6, 8]), ("hold", "ball", mirrored, [10, 5, 6, 8]),
               ("kick", "ball", other, [0, 0, 3, 3])]  # no peer: not paired
    ref = metrics.pose_reference(samples)
    assert ref["pairs"] == 2
    assert ref["mask_iou_mirror"] == 1.0
    assert ref["mask_iou"] == pytest.approx(metrics.mask_iou(el, metrics.mirror_in_box(el, [2, 2, 6, 8])))
    assert metrics.pose_reference(samples[2:]) is None


def test_confinement_known_answer():
    background = np.full((10, 10, 3), 100, np.uint8)
    image = background.copy()
    image[2:4, 2:6] = (250, 20, 20)  # 8 changed pixels inside the box
    image[8, 8:10] = (20, 250, 20)  # 2 outside it
    image[0, 0] = (101, 100, 100)  # one grey level: not a visible change
    changed = metrics.changed_pixels(image, background)
    assert changed.sum() == 10
    box = metrics.box_mask([1, 1, 6, 4], (10, 10))
    assert metrics.confinement(changed, box) == pytest.approx(0.8)
    assert metrics.confinement(np.zeros((10, 10), bool), box) == 1.0


def test_lab_and_colour_distance():
    lab = metrics.rgb_to_lab(np.array([[255, 255, 255], [0, 0, 0], [255, 0, 0]], np.uint8))
    np.testing.assert_allclose(lab, [[100, 0, 0], [0, 0, 0], [53.2408, 80.0925, 67.2032]], atol=2e-3)
    red, blue = np.array([[252, 4, 4]] * 5, np.uint8), np.array([[4, 4, 252]] * 3, np.uint8)  # bin centres
    expected = float(np.linalg.norm(metrics.rgb_to_lab(red[0]) - metrics.rgb_to_lab(blue[0])))
    assert metrics.colour_distance(red, blue) == pytest.approx(expected)
    assert metrics.colour_distance(red, red) == 0.0
    # Nearest colours, pixel-weighted: a 5 red + 3 blue reference against an all-red
    # region is 0 from generated to reference and 3/8 * expected back.
    assert metrics.colour_distance(np.concatenate([red, blue]), red) == pytest.approx(0.5 * 3 / 8 * expected)
    assert metrics.colour_distance(red, red[:0]) is None


def test_mean_colour_distance_does_not_forgive_a_spread_of_colours():
    red, blue = np.array([[252, 4, 4]] * 4, np.uint8), np.array([[4, 4, 252]] * 4, np.uint8)
    grey = np.array([[128, 128, 128]] * 4, np.uint8)
    lab = lambda px: metrics.rgb_to_lab(px).mean(0)  # noqa: E731
    assert metrics.mean_colour_distance(red, red) == 0.0
    assert metrics.mean_colour_distance(red, blue) == pytest.approx(float(np.linalg.norm(lab(red) - lab(blue))))
    # A red truth against a region of red, blue and grey pixels: the chamfer distance
    # counts the red pixels as perfect and is half-forgiven from the truth's side (red is
    # there); the mean colour (the mean of the Lab values) is far off.
    spread = np.concatenate([red, blue, grey])
    assert metrics.mean_colour_distance(red, spread) == pytest.approx(float(np.linalg.norm(lab(red) - lab(spread))))
    assert metrics.mean_colour_distance(red, spread) > 1.5 * metrics.colour_distance(red, spread)
    assert metrics.mean_colour_distance(red[:0], red) is None


# ----------------------------------------------------------------------------- evaluate / CLI


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """A 4-sample synthetic dataset whose 'generated' images are the targets themselves,
    with the ground-truth union masks as interaction masks."""
    root = tmp_path_factory.mktemp("bench")
    synth.generate(root / "data", 4, seed=2, size=SIZE)
    data = ChoiDataset(root / "data")
    (root / "gen").mkdir()
    (root / "masks").mkdir()
    for s in data:
        Image.fromarray(s.target).save(root / "gen" / f"{s.id}.png")
        Image.fromarray(s.interaction_mask).save(root / "masks" / f"{s.id}.png")
    return root


def test_cli_writes_json_and_markdown_with_perfect_scores(bench, clip_dir, dino_dir, tmp_path, capsys):
    out = tmp_path / "report"
    rc = cli.main(["evaluate", "--dataset", str(bench / "data"), "--generated", str(bench / "gen"),
                   "--out", str(out), "--clip", str(clip_dir), "--dino", str(dino_dir),
                   "--interaction-masks", str(bench / "masks")])
    assert rc == 0
    report = json.loads((out / "metrics.json").read_text())
    assert report["evaluated"] == 4 and report["synthetic"] and report["mask_source"] == "interaction"
    m = report["metrics"]
    for name in ("clip_score", "dino_human", "dino_object", "dino_pair", "mask_iou", "mask_iou_mirror",
                 "mask_in_box", "confinement_box"):  # mask_verb is the ground truth's own leave-one-out score here
        assert m[name]["mean"] == pytest.approx(1.0, abs=1e-5), name
        assert m[name]["n"] == 4
    ref = report["mask_verb_reference"]
    assert m["mask_verb"]["mean"] == pytest.approx(ref["ground_truth_masks"]) and m["mask_verb"]["n"] == 4
    assert ref["chance"] == pytest.approx(1 / len({s["caption"].split()[3] for s in report["samples"]}))
    assert m["mask_kl"]["mean"] == pytest.approx(0.0, abs=1e-12)
    assert m["colour_human"]["mean"] < 3.0 and m["colour_object"]["mean"] < 3.0
    assert m["colour_mean_human"]["mean"] == 0.0 and m["colour_mean_object"]["mean"] == 0.0
    assert set(report["skipped"]) == {"interaction"}
    assert "HOI judge" in report["interaction_accuracy"]
    assert [s["id"] for s in report["samples"]] == ["000000", "000001", "000002", "000003"]
    md = (out / "metrics.md").read_text()
    assert "| clip_score | 1.0000 |" in md and "| mask_kl | 0.0000 |" in md
    pose = report["mask_iou_reference"]  # the 4 samples: one object, verbs shared by some
    assert pose is not None and pose["pairs"] >= 1 and 0.0 <= pose["mask_iou"] <= pose["mask_iou_mirror"] <= 1.0
    assert f"mask_iou_mirror {pose['mask_iou_mirror']:.4f} ({pose['pairs']} pairs)" in md
    assert md in capsys.readouterr().out
    # An existing report is kept unless --overwrite.
    rc = cli.main(["evaluate", "--dataset", str(bench / "data"), "--generated", str(bench / "gen"),
                   "--out", str(out)])
    assert rc == 2 and "--overwrite" in capsys.readouterr().err


def test_cli_skips_metrics_without_models_visibly(bench, tmp_path, capsys):
    (tmp_path / "gen").mkdir()
    for p in sorted((bench / "gen").iterdir())[1:]:  # sample 000000 has no generated image
        (tmp_path / "gen" / p.name).write_bytes(p.read_bytes())
    rc = cli.main(["evaluate", "--dataset", str(bench / "data"), "--generated", str(tmp_path / "gen"),
                   "--out", str(tmp_path / "report")])
    assert rc == 0
    printed = capsys.readouterr().out
    report = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert report["missing_generated"] == ["000000"] and report["evaluated"] == 3
    for name in ("clip_score", "dino_human", "dino_object", "dino_pair", "mask_kl", "mask_iou", "mask_in_box"):
        assert name not in report["metrics"]
        assert report["skipped"][name].startswith("skipped:")
        assert f"- {name}: skipped" in printed
    assert "no CLIP model given (--clip)" in printed and "interaction: interaction accuracy not computed" in printed
    # Measures that need no model or mask still run on the synthetic data.
    assert report["metrics"]["confinement_box"]["mean"] == 1.0
    assert report["settings"]["confinement_mask_region"] == "GT union mask"


def test_cli_errors_name_the_missing_input(bench, tmp_path, capsys):
    rc = cli.main(["evaluate", "--dataset", str(bench / "data"), "--generated", str(bench / "gen"),
                   "--out", str(tmp_path / "r"), "--dino", str(tmp_path / "no_such_dino")])
    assert rc == 2 and "no_such_dino" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    rc = cli.main(["evaluate", "--dataset", str(bench / "data"), "--generated", str(tmp_path / "empty"),
                   "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert rc == 2 and "<id>.png" in err and "000000.png" in err
    assert not (tmp_path / "r").exists()


def test_hoi_judge_is_pluggable_and_not_called_by_default(bench):
    class CaptionLengthJudge:
        def __init__(self):
            self.calls = []

        def score(self, image, caption):
            self.calls.append((image.shape, caption))
            return 0.5

    judge = CaptionLengthJudge()
    assert isinstance(judge, ev.HOIJudge) and isinstance(ev.UnavailableHOIJudge(), ev.HOIJudge)
    with pytest.raises(NotImplementedError, match="offline"):
        ev.UnavailableHOIJudge().score(np.zeros((4, 4, 3), np.uint8), "a person is riding the bicycle")
    report = ev.evaluate(bench / "data", bench / "gen", judge=judge, synthetic=False, limit=2)
    assert report["metrics"]["interaction"]["mean"] == 0.5 and len(judge.calls) == 2
    assert judge.calls[0][1].startswith("a person is ")
    assert "interaction" not in report["skipped"]
    assert all(report["skipped"][n].startswith("skipped: not a synthetic") for n in ev.GROUPS["synthetic"]
               if n not in ("mask_in_box",))


def test_per_verb_table_gives_each_verbs_own_means():
    samples = [{"verb": "hold", "mask_iou": 0.2, "mask_verb": 1.0},
               {"verb": "hold", "mask_iou": 0.4, "mask_verb": 0.0},
               {"verb": "ride", "mask_iou": 0.9, "mask_verb": None},
               {"mask_iou": 0.5}]  # no verb: not grouped
    table = ev.by_verb(samples, ["mask_iou", "mask_verb"])
    assert list(table) == ["hold", "ride"]
    assert table["hold"] == {"n": 2, "mask_iou": pytest.approx(0.3), "mask_verb": 0.5}
    assert table["ride"] == {"n": 1, "mask_iou": 0.9}  # None values left out
    report = {"evaluated": 3, "samples_in_dataset": 3, "dataset": "d", "split": None, "generated": "g",
              "matching": "m", "missing_generated": [], "masks": None, "metrics": {}, "skipped": {},
              "by_verb": table}
    md = ev.markdown_report(report)
    assert "| verb | n | mask_verb | mask_iou |" in md
    assert "| hold | 2 | 0.500 | 0.300 |" in md and "| ride | 1 |  | 0.900 |" in md


def test_report_rows_carry_their_verb(bench):
    report = ev.evaluate(bench / "data", bench / "gen", masks_dir=bench / "masks", mask_source="interaction")
    data = ChoiDataset(bench / "data")
    assert [s["verb"] for s in report["samples"]] == [s.verb for s in data]
    for verb, entry in report["by_verb"].items():
        rows = [s for s in report["samples"] if s["verb"] == verb]
        assert entry["n"] == len(rows)
        assert entry["mask_iou"] == pytest.approx(1.0)
