"""The `auto` sampling settings: one source (pipelines.sampling_settings), read off the model."""
from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

from interact_custom.nodes.sampling import resolve_sampling, sampling_inputs
from interact_custom.pipelines import iamg
from interact_custom.pipelines.mgig import pipeline as choi
from interact_custom.pipelines.sampling_settings import (AUTO, OFFICIAL, RECOMMENDED, MGIGSettings, resolve,
                                                         settings_for)
from interact_custom.weights_manager.loader import load_iamg_model, load_mgig_model


def test_the_embedded_defaults_get_the_recommended_settings():
    assert settings_for("iamg", load_iamg_model()) == RECOMMENDED["iamg"]
    assert settings_for("mgig", load_mgig_model()).sampling == RECOMMENDED["mgig"]
    assert RECOMMENDED["mgig"].sampler == "euler_a" and RECOMMENDED["mgig"].steps == 20
    assert RECOMMENDED["mgig"].guidance == 3.0


def test_official_format_models_get_the_official_settings(vectors):
    from interact_custom.weights_manager.official_iamg import load_official_iamg
    from interact_custom.weights_manager.native_mgig import load_mgig

    mgig = load_mgig(vectors.path / "mgig_reduced.ckpt")
    assert settings_for("mgig", mgig).sampling == OFFICIAL["mgig"] == type(OFFICIAL["mgig"])("ddim", 50, 5.0)
    iamg_model = load_official_iamg(vectors.path / "iamg_reduced.pth")
    assert settings_for("iamg", iamg_model) == type(OFFICIAL["iamg"])("plms", 50, 5.0)


def test_the_module_constants_are_the_one_source():
    assert (choi.DEFAULT_STEPS, choi.DEFAULT_GUIDANCE) == (OFFICIAL["mgig"].steps, OFFICIAL["mgig"].guidance)
    assert (choi.RECOMMENDED_SAMPLER, choi.RECOMMENDED_STEPS, choi.RECOMMENDED_GUIDANCE) == (
        RECOMMENDED["mgig"].sampler, RECOMMENDED["mgig"].steps, RECOMMENDED["mgig"].guidance)
    assert (iamg.DEFAULT_STEPS, iamg.DEFAULT_GUIDANCE) == (OFFICIAL["iamg"].steps, OFFICIAL["iamg"].guidance)


@pytest.mark.parametrize("kind", ["iamg", "mgig"])
def test_fresh_nodes_default_to_auto(kind):
    spec = sampling_inputs(kind)
    assert list(spec) == ["steps", "sampler", "guidance"]  # saved workflows' widget order
    assert spec["sampler"][1]["default"] == AUTO and spec["sampler"][0][0] == AUTO
    assert spec["steps"][1]["default"] == 0 and spec["guidance"][1]["default"] == 0.0
    assert "auto" in spec["sampler"][1]["tooltip"]


def test_auto_fills_only_what_is_left_on_auto(caplog):
    v_model = SimpleNamespace(prediction_type="v_prediction")
    eps_model = SimpleNamespace(prediction_type="epsilon")
    with caplog.at_level(logging.INFO, logger="interact_custom"):
        run = resolve_sampling("mgig", v_model, AUTO, 0, 0.0)
    assert (run.sampler, run.steps, run.guidance) == ("euler_a", 20, 3.0)
    assert "MGIG sampling: euler_a, 20 steps, guidance 3" in caplog.text
    run, line = resolve("mgig", eps_model, AUTO, 30, 0.0)
    assert (run.sampler, run.steps, run.guidance) == ("ddim", 30, 5.0)
    assert "sampler, guidance auto" in line and "official" in line
    run, line = resolve("iamg", v_model, "plms", 50, 7.5)
    assert (run.sampler, run.steps, run.guidance) == ("plms", 50, 7.5) and line is None


def test_a_runs_settings_are_one_value_made_from_the_model_and_checked_where_made():
    v_model, eps_model = SimpleNamespace(prediction_type="v_prediction"), SimpleNamespace(prediction_type="epsilon")
    assert settings_for("mgig", eps_model) == MGIGSettings("ddim", 50, 5.0)
    chosen = settings_for("mgig", v_model, steps=7, paste="crop", mask_channel=None)  # None: the default
    assert (chosen.sampler, chosen.steps, chosen.guidance, chosen.paste, chosen.mask_channel) == (
        "euler_a", 7, 3.0, "crop", "mask")
    for bad, says in ((dict(paste="blend"), "paste"), (dict(mask_channel="perturbed"), "mask_channel"),
                      (dict(collage="mask"), "collage"), (dict(crop_ratio=float("nan")), "crop_ratio"),
                      (dict(steps=0), "steps"), (dict(control_scale=-1.0), "control strength")):
        with pytest.raises(ValueError, match=says):
            settings_for("mgig", v_model, **bad)
    with pytest.raises(TypeError, match="paste"):
        settings_for("iamg", v_model, paste="crop")  # not an IAMG choice
    with pytest.raises(TypeError, match="not both"):
        choi.generate(v_model, None, None, None, settings=chosen, steps=2)
