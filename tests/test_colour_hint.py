"""★ The colour hint (issue 27): a hint that also carries the references' low-passed
colours (`inputs.colour_collage`) for our own small MGIG — built by `build_hint`, stored
as `MGIGConfig.colour_hint`, validated by `stored_config`, and added to a trained model
without changing what it generates (`MGIGModel.add_colour_hint`)."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from interact_custom.cli.research.training.config import CONFIGS_DIR
from interact_custom.cli import train as train_cli
from interact_custom.cli.research.data import synth
from interact_custom.pipelines.files import WeightsError
from interact_custom.pipelines.mgig import MGIGModel, mgig_config, preset_name_of, resize_hint
from interact_custom.pipelines.mgig import inputs as preprocess
from interact_custom.pipelines.mgig import pipeline as choi
from interact_custom.cli.research.training import config as train_config
from interact_custom.cli.research.training import data as train_data
from interact_custom.weights_manager import stored_config
from interact_custom.weights_manager.loader import EMBEDDED, EMBEDDED_MGIG_FILE, load_mgig_model
from interact_custom.weights_manager.native_mgig import load_mgig, save_mgig
from interact_custom.weights_manager.official_mgig import MGIGCheckpointError

CONFIGS = CONFIGS_DIR
YELLOW, NAVY = (240, 210, 20), (20, 30, 110)


def flat_references():
    """A navy person (a tall block) and a flat yellow object (a disc): no edges inside."""
    human = np.full((60, 30, 3), NAVY, np.uint8)
    yy, xx = np.mgrid[0:40, 0:40]
    disc = ((yy - 20) ** 2 + (xx - 20) ** 2 < 18 ** 2).astype(np.uint8)
    obj = np.full((40, 40, 3), 255, np.uint8)
    obj[disc > 0] = YELLOW
    return human, np.ones((60, 30), np.uint8), obj, disc


def scene_and_mask():
    yy, xx = np.mgrid[0:96, 0:128]
    bg = np.stack([xx * 2, yy * 2, 255 - xx], -1).clip(0, 255).astype(np.uint8)
    mask = np.zeros((96, 128), np.uint8)
    mask[30:70, 50:66] = 1
    mask[50:62, 66:86] = 1
    return bg, mask


def _rgb(planes: np.ndarray) -> np.ndarray:
    return (planes + 1.0) * 127.5


def test_the_colour_planes_carry_a_flat_objects_colour_where_the_detail_map_is_black():
    human, human_mask, obj, obj_mask = flat_references()
    canvas = preprocess.reference_canvas(human, human_mask, obj, obj_mask)
    detail = preprocess.detail_map(canvas.image, canvas.mask)
    colour = preprocess.colour_collage(canvas.image, canvas.mask)
    assert colour.shape == (224, 224, 4) and colour.dtype == np.float32
    # Inside the disc the detail map is black (no edges in a flat fill); the colour planes are yellow.
    inside = preprocess.imgproc.erode((canvas.mask > 127).astype(np.uint8), 31) > 0
    inside[:112] = False  # the object tile: bottom half of the canvas
    assert inside.sum() > 200
    assert detail[inside].max() == 0
    np.testing.assert_allclose(_rgb(colour[inside][:, :3]).mean(0), YELLOW, atol=2)
    assert colour[inside][:, 3].min() > 0.9
    # Two cells away from the foreground there is neither colour nor coverage.
    blank = preprocess.imgproc.dilate((canvas.mask > 0).astype(np.uint8), 4 * preprocess.COLOUR_CELL + 3) == 0
    assert blank.any() and np.abs(colour[blank]).max() == 0

    bg, mask = scene_and_mask()
    plain = preprocess.build_hint(bg, mask, detail, mask_channel="box")
    hint = preprocess.build_hint(bg, mask, detail, mask_channel="box", colour=colour)
    assert plain.hint.shape == (512, 512, 4) and hint.hint.shape == (512, 512, 8)
    np.testing.assert_array_equal(hint.hint[..., :4], plain.hint)  # the official planes are untouched
    # The colour collage lies where the detail map lies: the target box; the object tile
    # (bottom-right of the canvas) is yellow there, the person (top-left) navy.
    in_box = (plain.hint[..., 3] == 1).astype(np.uint8)  # the layout channel: 1 in the target box
    edge = 2 * (int(np.ceil(512 / hint.extra_sizes[2])) + 1) + 1  # one crop pixel, enlarged bilinearly
    box = preprocess.imgproc.erode(in_box, edge) > 0
    around = preprocess.imgproc.dilate(in_box, edge) == 0
    assert around.any() and np.abs(hint.hint[around][:, 4:]).max() == 0
    ys, xs = np.nonzero(box)
    y0, y1, x0, x1 = ys.min(), ys.max(), xs.min(), xs.max()
    bottom_right = hint.hint[(y0 + 3 * y1) // 4, (x0 + 3 * x1) // 4]
    top_left = hint.hint[(3 * y0 + y1) // 4, (3 * x0 + x1) // 4]
    np.testing.assert_allclose(_rgb(bottom_right[4:7]), YELLOW, atol=12)
    np.testing.assert_allclose(_rgb(top_left[4:7]), NAVY, atol=12)
    assert bottom_right[7] > 0.9 and top_left[7] > 0.9
    # At a small model's size the layout channel stays nearest, the colour planes area-resized.
    small = resize_hint(torch.from_numpy(hint.hint).permute(2, 0, 1), 128)
    assert small.shape == (8, 128, 128)
    assert torch.equal(small[:4], resize_hint(torch.from_numpy(plain.hint).permute(2, 0, 1), 128))
    with pytest.raises(ValueError, match="colour"):
        preprocess.build_hint(bg, mask, detail, mask_channel="box", colour=colour[..., :3])


def _generate(model, seed=3):
    human, human_mask, obj, obj_mask = flat_references()
    bg, mask = scene_and_mask()
    features = choi.id_features(model, human, human_mask, obj, obj_mask)
    detail = preprocess.detail_map(features.canvas.image, features.canvas.mask)
    return choi.generate(model, features, detail, mask, bg, steps=3, sampler="euler_a", guidance=3.0, seed=seed,
                         paste="crop")


@pytest.mark.slow
def test_a_colour_hint_made_from_the_shipped_default_generates_exactly_what_it_did():
    model = load_mgig_model(EMBEDDED)
    assert not model.config.colour_hint
    coloured = copy.deepcopy(model)
    coloured.add_colour_hint()
    assert coloured.config.colour_hint and coloured.config.hint_channels == 8
    assert coloured.controlnet.controlnet_cond_embedding.conv_in.weight.shape[1] == 8
    before, after = _generate(model), _generate(coloured)
    assert after.hint.hint.shape[-1] == 8 and before.hint.hint.shape[-1] == 4
    for a, b in zip(before.images + before.crops, after.images + after.crops):
        np.testing.assert_array_equal(a, b)
    # Every other weight is the default's.
    old, new = model.state_dict(), coloured.state_dict()
    assert set(old) == set(new)
    for key in old:
        if key != "controlnet.controlnet_cond_embedding.conv_in.weight":
            assert torch.equal(old[key], new[key]), key
    # The colour planes do reach the ControlNet once its new weights are not zero.
    with torch.no_grad():
        coloured.controlnet.controlnet_cond_embedding.conv_in.weight[:, 4:].normal_(0, 0.5)
    assert not np.array_equal(_generate(coloured).crops[0], before.crops[0])


def test_the_embedded_default_file_is_unchanged_and_loads_as_before():
    from safetensors import safe_open

    with safe_open(str(EMBEDDED_MGIG_FILE), "pt") as h:
        stored = json.loads(h.metadata()["config"])
    assert "colour_hint" not in stored and stored["controlnet"]["conditioning_channels"] == 4
    model = load_mgig_model(EMBEDDED)
    assert model.config.colour_hint is False and preset_name_of(model.config) == "small"


def tiny_colour_model() -> MGIGModel:
    torch.manual_seed(0)
    model = MGIGModel(mgig_config("tiny"))
    model.add_colour_hint()
    with torch.no_grad():
        model.controlnet.controlnet_cond_embedding.conv_in.weight[:, 4:].normal_(0, 0.1)
    return model.eval().requires_grad_(False)


@pytest.mark.slow
def test_a_colour_hint_model_is_saved_and_loaded(tmp_path):
    model = tiny_colour_model()
    path = save_mgig(model, tmp_path / "c.safetensors", dtype="fp32")
    back = load_mgig(path)
    assert back.config.colour_hint is True and back.config.to_dict() == model.config.to_dict()
    assert preset_name_of(back.config) == "tiny"
    for key, value in model.state_dict().items():
        assert torch.equal(value, back.state_dict()[key]), key
    x, hint = torch.randn(1, 4, 64, 64), torch.rand(1, 8, 512, 512) * 2 - 1
    context = torch.randn(1, 257, 64)
    with torch.no_grad():
        assert torch.equal(back.predict_eps(x, 500, context, hint), model.predict_eps(x, 500, context, hint))
    # Its tensors alone are detected as a colour-hint model; a plain model stays plain.
    assert load_mgig(dict(model.state_dict())).config.colour_hint is True
    torch.manual_seed(0)
    assert load_mgig(dict(MGIGModel(mgig_config("tiny")).state_dict())).config.colour_hint is False


@pytest.mark.parametrize("value", ["yes", 1, None, [True]])
def test_stored_config_refuses_a_bad_colour_hint(value):
    config = tiny_colour_model().config.to_dict()
    config["colour_hint"] = value
    with pytest.raises(WeightsError, match="'colour_hint'"):
        stored_config.check_mgig_config(config, "c.safetensors")


def test_stored_config_refuses_a_colour_hint_without_its_channels(tmp_path):
    config = tiny_colour_model().config.to_dict()
    stored_config.check_mgig_config(config, "c.safetensors")
    config["controlnet"]["conditioning_channels"] = 4
    with pytest.raises(WeightsError, match="conditioning_channels"):
        stored_config.check_mgig_config(config, "c.safetensors")
    # A file whose metadata claims the colour hint over a plain ControlNet is refused.
    torch.manual_seed(0)
    plain = MGIGModel(mgig_config("tiny"))
    path = save_mgig(plain, tmp_path / "p.safetensors", dtype="fp32")
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open

    with safe_open(str(path), "pt") as h:
        metadata = dict(h.metadata())
    config = json.loads(metadata["config"])
    config["colour_hint"] = True
    config["controlnet"]["conditioning_channels"] = 8
    metadata["config"] = json.dumps(config)
    save_file(load_file(str(path)), str(tmp_path / "lie.safetensors"), metadata=metadata)
    with pytest.raises(MGIGCheckpointError, match="disagrees"):
        load_mgig(tmp_path / "lie.safetensors")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("choi") / "data"
    synth.generate(root, count=2, seed=0, size=64, val_fraction=0.0)
    return root


def test_training_items_and_the_shipped_config_use_the_same_colour_hint(data):
    plain = train_data.MGIGTrainData(data, size=128, mask_channel_prob=0.0).item(0, np.random.RandomState(1))
    item = train_data.MGIGTrainData(data, size=128, mask_channel_prob=0.0, colour_hint=True).item(
        0, np.random.RandomState(1))
    assert item["hint"].shape == (8, 128, 128) and torch.equal(item["hint"][:4], plain["hint"])
    assert torch.equal(item["target"], plain["target"]) and item["hint"][7].max() > 0.5
    raw = json.loads((CONFIGS / "default_mgig_colour.json").read_text(encoding="utf-8"))
    raw.pop("_comment")
    cfg = train_config.make_config(raw, model="mgig")
    assert cfg.colour_hint and cfg.init.endswith("mgig_default.safetensors")
    assert "refiner" not in cfg.trainable
    with pytest.raises(train_config.ConfigError, match="colour_hint"):
        train_config.make_config({**raw, "colour_hint": "yes"}, model="mgig")


@pytest.mark.slow
def test_a_colour_hint_run_trains_the_new_channels_and_saves_a_colour_hint_model(data, tmp_path):
    raw = json.loads((CONFIGS / "tiny_mgig.json").read_text(encoding="utf-8"))
    raw.pop("_comment", None)
    raw.update(data_root=str(data), output_dir=str(tmp_path / "run"), colour_hint=True, steps=3, data_limit=1,
               checkpoint_every=3, validate_every=3, validation_samples=1)
    cfg = train_config.make_config(raw)
    start = train_cli.build_model(cfg)
    assert start.config.colour_hint
    assert float(start.controlnet.controlnet_cond_embedding.conv_in.weight[:, 4:].detach().abs().max()) == 0
    result = train_cli.train(cfg, progress=False)
    trained = load_mgig(result.final)
    assert trained.config.colour_hint
    assert float(trained.controlnet.controlnet_cond_embedding.conv_in.weight[:, 4:].float().abs().max()) > 0
    out = _generate(trained.float())
    assert out.hint.hint.shape[-1] == 8 and np.isfinite(out.images[0]).all()


def test_the_official_format_refuses_a_colour_hint_model():
    from interact_custom.cli.research.official_export import mgig_official_state_dict

    with pytest.raises(ValueError, match="colour"):
        mgig_official_state_dict(tiny_colour_model())
