"""The shipped embedded default: a small IAMG + MGIG trained by `train` on synthetic data.

These check what a user gets from a fresh install: the files fit the budget, load as the
embedded default, and do their jobs on synthetic identities they never saw in training
(another synthesis seed): IAMG puts an interaction-shaped mask in the box, MGIG paints the
references' colours into the mask and leaves the rest of the scene alone. Thresholds sit
well below what the held-out benchmark measured (README, *The embedded default*) and far
above what untrained weights reach.
"""
from __future__ import annotations

import numpy as np
import pytest

from interact_custom.pipelines import choi, evaluate as ev, iamg, preprocess, synth
from interact_custom.weights_manager import native_iamg
from interact_custom.weights_manager.loader import (EMBEDDED, EMBEDDED_MGIG_FILE, embedded_is_random,
                                                    load_iamg_model, load_mgig_model)

BUDGET_BYTES = 25 * 10**6
HELD_OUT_SEED = 4242  # training used seed 1


def test_the_trained_default_ships_within_budget():
    from safetensors import safe_open

    assert not embedded_is_random("mgig") and not embedded_is_random("iamg")
    files = [EMBEDDED_MGIG_FILE, native_iamg.DEFAULT_WEIGHTS]
    assert sum(f.stat().st_size for f in files) <= BUDGET_BYTES
    for f, preset in zip(files, ("small", "small_text")):
        with safe_open(str(f), "pt") as h:
            meta = h.metadata()
            assert meta["dtype"] == "fp16" and meta["preset"] == preset
            assert all(h.get_slice(k).get_dtype() == "F16" for k in h.keys())


@pytest.fixture(scope="module")
def held_out():
    return list(synth.iter_samples(4, seed=HELD_OUT_SEED, size=256, val_fraction=0.0))


@pytest.fixture(scope="module")
def models():
    return load_iamg_model(EMBEDDED), load_mgig_model(EMBEDDED)


def test_defaults_work_at_the_size_they_were_trained_at(models):
    model_iamg, model_mgig = models
    assert model_iamg.image_size == 128 and model_iamg.uses_text and model_iamg.tokenizer.kind == "words"
    assert model_mgig.config.image_size == 256 and model_mgig.latent_channels == 8
    # Latent scales calibrated on the training data, not SD's.
    assert model_iamg.scale_factor != pytest.approx(iamg.VAE_SCALE_FACTOR, rel=0.05)
    assert model_mgig.latent_scale != pytest.approx(iamg.VAE_SCALE_FACTOR, rel=0.05)


def test_iamg_default_draws_the_pair_in_the_box(models, held_out):
    model_iamg = models[0]
    ious = []
    for i, s in enumerate(held_out):
        truth = (s["human_mask"] > 0) | (s["object_mask"] > 0)
        result = iamg.generate_mask(model_iamg, prompt=s["caption"], background=s["background"], box=s["box"],
                                    steps=20, sampler="dpmpp_2m", seed=i, clip_to_box=False)
        mask = np.asarray(result.binary[0]) > 0.5
        assert mask.any(), s["caption"]
        assert ev.mask_in_box(mask, s["box"]) > MIN_IN_BOX, s["caption"]
        ious.append(ev.mask_iou(mask, truth))
    assert np.mean(ious) > MIN_MEAN_IOU, ious


def test_mgig_default_paints_the_references_into_the_mask(models, held_out):
    model_mgig = models[1]
    for i, s in enumerate(held_out[:2]):
        truth = (s["human_mask"] > 0) | (s["object_mask"] > 0)
        features = choi.id_features(model_mgig, s["human_ref"], s["human_ref_mask"], s["object_ref"],
                                    s["object_ref_mask"])
        detail = preprocess.detail_map(features.canvas.image, features.canvas.mask)
        out = choi.generate(model_mgig, features, detail, truth, s["background"], steps=20, sampler="dpmpp_2m",
                            seed=i).images[0]
        human = ev.colour_distance(ev.region_pixels(s["human_ref"], s["human_ref_mask"] > 0),
                                   ev.region_pixels(out, s["human_mask"] > 0))
        assert human < MAX_COLOUR_HUMAN, (s["caption"], human)
        changed = ev.changed_pixels(out, s["background"])
        assert ev.confinement(changed, ev.box_mask(s["box"], truth.shape)) > MIN_CONFINEMENT_BOX
