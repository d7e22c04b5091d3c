"""★ Scene-aware decoding: the optional MGIG refiner (pipelines/mgig/refiner.py) — what it
sees, how it is stored, and how `objective: decode` trains it alone."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from interact_custom.cli.research.training.config import CONFIGS_DIR
from interact_custom.cli import train as train_cli
from interact_custom.pipelines import imgproc
from interact_custom.cli.research.data import synth
from interact_custom.pipelines.mgig import MGIGModel, mgig_config, preset_name_of
from interact_custom.pipelines.mgig import inputs as preprocess
from interact_custom.pipelines.mgig import pipeline as choi
from interact_custom.pipelines.mgig import refiner as refiner_module
from interact_custom.pipelines.mgig.refiner import SceneRefiner
from interact_custom.cli.research.training import config as train_config
from interact_custom.cli.research.training import data as train_data
from interact_custom.cli.research.training import losses
from interact_custom.weights_manager.native_mgig import load_mgig, save_mgig
from interact_custom.weights_manager.official_mgig import MGIGCheckpointError

CONFIGS = CONFIGS_DIR
pytestmark = pytest.mark.usefixtures("training_cpu")


def tiny_model(refiner: int | None = 8) -> MGIGModel:
    torch.manual_seed(0)
    model = MGIGModel(mgig_config("tiny"))
    if refiner:
        model.add_refiner(refiner)
    return model.eval().requires_grad_(False)


def scene_and_figure():
    # A smooth scene (resampling it to the model's size and back is nearly lossless) and a
    # thin figure: most of its square crop is scene.
    yy, xx = np.mgrid[0:96, 0:128]
    bg = np.stack([xx * 2, yy * 2, 255 - xx], -1).clip(0, 255).astype(np.uint8)
    mask = np.zeros((96, 128), np.uint8)
    mask[30:66, 58:64] = 1
    mask[44:48, 64:84] = 1
    return bg, mask


def generate(model, bg, mask, collage="box"):
    features = choi.id_features(model, np.full((40, 20, 3), 200, np.uint8), np.ones((40, 20)),
                                np.full((20, 20, 3), 60, np.uint8), np.ones((20, 20)))
    detail = preprocess.detail_map(features.canvas.image, features.canvas.mask)
    return choi.generate(model, features, detail, mask, bg, steps=2, sampler="ddim", seed=0, paste="crop",
                         collage=collage)


def test_a_fresh_refiner_is_the_identity():
    model = tiny_model()
    z = torch.randn(2, model.latent_channels, 16, 16)
    hint = torch.rand(1, 4, 128, 128) * 2 - 1
    with torch.no_grad():
        assert torch.equal(model.decode_latent(z, hint=hint), model.decode_latent(z))
    with pytest.raises(ValueError, match="same size"):
        model.refiner(torch.zeros(1, 3, 64, 64), torch.zeros(1, 4, 32, 32))
    with pytest.raises(ValueError, match="positive integer"):
        SceneRefiner(0)


@pytest.mark.slow
def test_the_refiner_gets_the_hint_and_its_output_is_what_is_pasted(monkeypatch):
    # A refiner that returns the hint's RGB: outside the target box the hint is the scene, so
    # the pasted crop gives the scene back there — what a trained refiner learns to do.
    bg, mask = scene_and_figure()
    plain = generate(tiny_model(refiner=None), bg, mask)
    model = tiny_model()
    seen, scenes = [], []

    def copy_hint(decoded, hint, colours=None, scene=None):
        seen.append((tuple(decoded.shape), tuple(hint.shape), tuple(colours.shape), tuple(scene.shape)))
        scenes.append(scene)
        return hint[:, :3].to(decoded.dtype)

    monkeypatch.setattr(model.refiner, "forward", copy_hint)
    refined = generate(model, bg, mask)
    size = model.config.image_size
    assert seen == [((1, 3, size, size), (1, 4, size, size), (1, 6), (1, 1, size, size))]
    # The scene plane: 1 on the crop outside the target box, 0 in it (and on the padding).
    hint = refined.hint
    ty1, ty2, tx1, tx2 = hint.target_box_in_crop.yyxx
    crop_h, crop_w = hint.extra_sizes[:2]
    plane = np.ones((crop_h, crop_w), np.uint8)
    plane[ty1:ty2, tx1:tx2] = 0
    want = imgproc.resize_nearest(imgproc.pad_to_square(plane, 0), (512, 512))
    assert np.array_equal(hint.scene, want.astype(np.float32)) and 0 < hint.scene.mean() < 1
    assert scenes[0].sum() > 0 and set(scenes[0].unique().tolist()) <= {0.0, 1.0}
    crop = refined.hint.crop_box.mask(*bg.shape[:2]).astype(bool)
    box = refined.hint.target_box.grown(2).clipped(*bg.shape[:2]).mask(*bg.shape[:2]).astype(bool)
    scene = crop & ~box
    assert scene.sum() > 500
    err = np.abs(refined.images[0].astype(int) - bg.astype(int)).max(-1)
    err_plain = np.abs(plain.images[0].astype(int) - bg.astype(int)).max(-1)
    assert np.median(err[scene]) <= 3 and err_plain[scene].mean() > 10 * max(err[scene].mean(), 1)


@pytest.mark.slow
def test_with_the_figure_collage_the_scene_comes_back_in_the_box_too(monkeypatch):
    # ★ collage="figure": the hint shows the scene in the target box off the grown mask, and
    # the scene plane marks it; a refiner that copies the hint gives the scene back there.
    bg, mask = scene_and_figure()
    model = tiny_model()
    monkeypatch.setattr(model.refiner, "forward", lambda decoded, hint, colours=None, scene=None:
                        hint[:, :3].to(decoded.dtype))
    boxed, figured = generate(model, bg, mask), generate(model, bg, mask, collage="figure")
    h, w = bg.shape[:2]
    box = figured.hint.target_box.clipped(h, w).mask(h, w).astype(bool)
    off_figure = box & (imgproc.dilate(mask, 2 * preprocess.COLLAGE_GROW + 9) == 0)
    assert off_figure.sum() > 150
    err = {name: np.abs(out.images[0].astype(int) - bg.astype(int)).max(-1)[off_figure]
           for name, out in (("box", boxed), ("figure", figured))}
    assert np.median(err["figure"]) <= 3 and err["box"].mean() > 10 * max(err["figure"].mean(), 1), \
        {k: float(v.mean()) for k, v in err.items()}

def test_reference_colours_are_the_human_and_object_means():
    # The canvas puts the human top-left and the object bottom-right: the top half's masked
    # mean is the human's colour, the bottom half's the object's, in [-1, 1].
    canvas = torch.ones(1, 3, 224, 224)
    mask = torch.zeros(1, 1, 224, 224)
    canvas[..., :100, :100] = torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1)
    mask[..., :100, :100] = 1
    canvas[..., 130:, 130:] = torch.tensor([0.0, 0.5, 1.0]).view(3, 1, 1)
    mask[..., 130:, 130:] = 1
    got = refiner_module.reference_colours(canvas, mask)
    assert torch.allclose(got, torch.tensor([[1.0, -1.0, -1.0, -1.0, 0.0, 1.0]]))
    # A flipped canvas keeps them apart; a half without reference pixels gives zeros.
    assert torch.allclose(refiner_module.reference_colours(canvas.flip(-1), mask.flip(-1)), got)
    mask[..., 130:, 130:] = 0
    assert torch.equal(refiner_module.reference_colours(canvas, mask)[0, 3:], torch.zeros(3))
    with pytest.raises(ValueError, match="canvas"):
        refiner_module.reference_colours(canvas[:, :1], mask)
    with pytest.raises(ValueError, match="colours must be"):
        tiny_model().refiner(torch.zeros(1, 3, 32, 32), torch.zeros(1, 4, 32, 32), torch.zeros(1, 3))


@pytest.mark.slow
def test_a_refiner_is_saved_and_loaded_with_the_model(tmp_path):
    model = tiny_model()
    with torch.no_grad():
        for p in model.refiner.parameters():
            p.normal_(0, 0.02)
    path = save_mgig(model, tmp_path / "m.safetensors", dtype="fp32")
    back = load_mgig(path)
    assert back.config.refiner == {"width": 8} and preset_name_of(back.config) == "tiny"
    z, hint = torch.randn(1, model.latent_channels, 16, 16), torch.rand(1, 4, 128, 128)
    colours = torch.rand(1, 6) * 2 - 1
    with torch.no_grad():
        assert torch.equal(back.decode_latent(z, hint=hint, colours=colours),
                           model.decode_latent(z, hint=hint, colours=colours))
        assert not torch.equal(back.decode_latent(z, hint=hint), back.decode_latent(z))
        assert not torch.equal(back.decode_latent(z, hint=hint, colours=colours), back.decode_latent(z, hint=hint))
    assert load_mgig(save_mgig(tiny_model(None), tmp_path / "plain.safetensors", dtype="fp32")).refiner is None
    # Its tensors alone (no metadata) are detected too; a malformed one is named.
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    assert load_mgig(sd).config.refiner == {"width": 8}
    sd["refiner.encode.0.weight"] = torch.zeros(8, 5, 3, 3)
    with pytest.raises(MGIGCheckpointError, match="refiner.encode.0.weight"):
        load_mgig(sd)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("choi") / "data"
    synth.generate(root, count=4, seed=0, size=64, val_fraction=0.0)
    return root


def decode_config(data: Path, out: Path, **overrides) -> train_config.TrainConfig:
    raw = json.loads((CONFIGS / "tiny_mgig.json").read_text(encoding="utf-8"))
    raw.pop("_comment", None)
    raw.update({"data_root": str(data), "output_dir": str(out), "objective": "decode", "refiner": 8, "steps": 6,
                "lr": 3e-3, "data_limit": 1, "validate_every": 0, "checkpoint_every": 6,
                "background_dropout": 0.0, **overrides})
    return train_config.make_config(raw)


def test_training_items_say_where_the_hint_shows_the_target_scene(data):
    # Where the scene plane is 1 the hint's RGB is the training target itself (the refiner
    # may copy it); with the background dropped the hint is white there, so the plane is 0.
    kept = train_data.MGIGTrainData(data, size=128, mask_channel_prob=0.0).item(0)
    scene = kept["scene"][0] > 0.5
    assert kept["scene"].shape == (1, 128, 128) and 0.2 < scene.float().mean() < 0.95
    diff = (kept["hint"][:3] - kept["target"]).abs().amax(0)
    assert diff[scene].mean() < 0.05 and diff[~scene].mean() > 4 * diff[scene].mean()  # box edges resample
    dropped = train_data.MGIGTrainData(data, size=128, background_dropout=1.0)
    rng = np.random.RandomState(0)
    assert float(dropped.item(0, rng)["scene"].sum()) == 0.0
    assert kept["reference_mask"].shape == (1, 224, 224) and 0 < float(kept["reference_mask"].mean()) < 1
    # ★ figure_collage_prob: the detail map covers only the grown layout mask, so the hint
    # shows (and the plane marks) the target scene in the box off the figure too.
    # Same random draws (the collage is drawn last), so the same crop as the official item.
    boxed = train_data.MGIGTrainData(data, size=128, mask_channel_prob=0.0).item(0, np.random.RandomState(0))
    figured = train_data.MGIGTrainData(data, size=128, mask_channel_prob=0.0, figure_collage_prob=1.0)
    item = figured.item(0, np.random.RandomState(0))
    assert torch.equal(item["target"], boxed["target"])
    scene, plane = boxed["scene"][0] > 0.5, item["scene"][0] > 0.5
    assert plane.sum() > scene.sum() and (plane | ~scene).all()
    diff = (item["hint"][:3] - item["target"]).abs().amax(0)
    assert diff[plane & ~scene].mean() < 0.1 and diff[~plane].mean() > 4 * diff[plane].mean()


@pytest.mark.slow
def test_objective_decode_trains_the_refiner_alone(data, tmp_path):
    cfg = decode_config(data, tmp_path / "run")
    start = train_cli.build_model(cfg)
    assert start.refiner is not None
    items = [train_data.MGIGTrainData(data, size=128, limit=1).item(0)]
    batch = torch.utils.data.default_collate(items)
    module = losses.LOSSES["mgig"](start, cfg).eval()
    with torch.no_grad():
        before = float(module(batch, 1000))
    trained = load_mgig(train_cli.train(cfg, progress=False).final)
    module = losses.LOSSES["mgig"](trained.float(), cfg).eval()
    with torch.no_grad():
        after = float(module(batch, 1000))
    assert after < before
    old, new = start.state_dict(), trained.state_dict()
    changed = {k.split(".")[0] for k in old if not torch.allclose(old[k].float(), new[k].float(), atol=1e-3)}
    assert changed == {"refiner"}


def test_sampled_latents_are_the_models_own_predictions(data, tmp_path):
    # decode_sampled_prob 1: every latent the decoding side learns from is the frozen
    # model's one-step x̂₀ of the noised target, not the target's own latent.
    cfg = decode_config(data, tmp_path / "p", decode_sampled_prob=1.0)
    model = train_cli.build_model(cfg).eval()
    batch = torch.utils.data.default_collate([train_data.MGIGTrainData(data, size=128, limit=1).item(0)])
    module = losses.LOSSES["mgig"](model, cfg)
    seen = []
    original = model.decode_latent
    model.decode_latent = lambda z, **kw: seen.append(z) or original(z, **kw)
    with torch.no_grad():
        module(batch, 7)
        g = torch.Generator().manual_seed(7)
        own = losses._sample_latent(model.vae, batch["target"].float(), model.latent_scale, g)
        torch.rand(1, generator=g)
        predicted = module.predicted_latent(own, batch, g)
    assert torch.allclose(seen[0], predicted, atol=1e-5) and not torch.allclose(seen[0], own, atol=1e-2)
    with pytest.raises(train_config.ConfigError, match="decode_sampled_prob"):
        decode_config(data, tmp_path / "q", decode_sampled_prob=1.5)


def test_decode_settings_are_checked(data, tmp_path):
    with pytest.raises(train_config.ConfigError, match="objective"):
        decode_config(data, tmp_path / "x", objective="pixels")
    with pytest.raises(train_config.ConfigError, match="refiner"):
        decode_config(data, tmp_path / "x", refiner=True)
    raw = json.loads((CONFIGS / "tiny_iamg.json").read_text(encoding="utf-8"))
    raw.pop("_comment", None)
    with pytest.raises(train_config.ConfigError, match="objective"):
        train_config.make_config({**raw, "objective": "decode"})
    cfg = decode_config(data, tmp_path / "y", refiner=None, trainable=["refiner"])
    with pytest.raises(train_config.ConfigError, match="set refiner"):
        train_cli.train(cfg, progress=False)
