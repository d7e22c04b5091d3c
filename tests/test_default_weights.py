"""The shipped embedded default: a small IAMG + MGIG trained by `train` on synthetic data.

These check what a user gets from a fresh install: the files fit the budget, load as the
embedded default, and do their jobs on synthetic identities they never saw in training
(another synthesis seed). Their measured quality is docs/TRAINING.md's held-out table; the
tests pin what training demonstrably gave them against the same architecture untrained.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from interact_custom.pipelines import iamg, imgproc
from interact_custom.pipelines.mgig import pipeline as choi
from interact_custom.cli.research.evaluation import evaluate as ev
from interact_custom.pipelines.mgig import inputs as preprocess
from interact_custom.cli.research.data import synth
from interact_custom.pipelines.mgig import build_mgig, mgig_config
from interact_custom.weights_manager.loader import (EMBEDDED, EMBEDDED_IAMG_FILE, EMBEDDED_MGIG_FILE, embedded_is_random,
                                                    load_iamg_model, load_mgig_model)

BUDGET_BYTES = 25 * 10**6
HELD_OUT_SEED = 4242  # training used seed 1: these identities are new to the models
RECOMMENDED = dict(steps=choi.RECOMMENDED_STEPS, sampler=choi.RECOMMENDED_SAMPLER,
                   guidance=choi.RECOMMENDED_GUIDANCE)  # what the shipped workflows sample with


def _references(model, refs):
    """The ID features and detail map of a synthetic sample's references, as the nodes make them."""
    features = choi.id_features(model, refs["human_ref"], refs["human_ref_mask"], refs["object_ref"],
                                refs["object_ref_mask"])
    return features, preprocess.detail_map(features.canvas.image, features.canvas.mask)


def test_the_trained_default_ships_within_budget():
    from safetensors import safe_open

    assert not embedded_is_random("mgig") and not embedded_is_random("iamg")
    files = [EMBEDDED_MGIG_FILE, EMBEDDED_IAMG_FILE]
    assert sum(f.stat().st_size for f in files) <= BUDGET_BYTES
    for f in files:
        with safe_open(str(f), "pt") as h:
            assert h.metadata()["dtype"] == "fp16"
            assert all(h.get_slice(k).get_dtype() == "F16" for k in h.keys())
    from interact_custom.pipelines.mgig import preset_name_of

    assert preset_name_of(load_mgig_model(EMBEDDED).config) == "small"
    assert load_iamg_model(EMBEDDED).preset == "small_text"


@pytest.fixture(scope="module")
def held_out():
    return list(synth.iter_samples(6, seed=HELD_OUT_SEED, size=256, val_fraction=0.0))


@pytest.fixture(scope="module")
def models():
    return load_iamg_model(EMBEDDED), load_mgig_model(EMBEDDED)


def test_defaults_work_at_the_size_they_were_trained_at(models):
    model_iamg, model_mgig = models
    assert model_iamg.image_size == 128 and model_iamg.uses_text and model_iamg.tokenizer.kind == "words"
    assert model_mgig.config.image_size == 256 and model_mgig.latent_channels == 8
    assert model_iamg.latent_shift is not None and len(model_iamg.latent_shift) == 8
    # Latent scales calibrated on the training data, not SD's.
    assert model_iamg.scale_factor != pytest.approx(iamg.VAE_SCALE_FACTOR, rel=0.05)
    assert model_mgig.latent_scale != pytest.approx(iamg.VAE_SCALE_FACTOR, rel=0.05)


@pytest.mark.slow
def test_iamg_default_learned_to_draw_a_figure_sized_mask_in_the_box(models, held_out):
    """Against the same architecture untrained (seeded), unclipped masks: the trained model
    draws a figure-sized silhouette inside the box; untrained weights fill half the canvas
    regardless of the box. (Measured on these six with the shipped v model: in-box
    0.86-1.0, mean 0.97; area 1.6-9.7 % of the canvas; untrained: in-box 0.13-0.31, area
    52-55 %. The ε model shipped before it, with DPM-Solver++: in-box 0.05-1.0, mean 0.66.)"""
    untrained = iamg.build_iamg("small_text", seed=0, zero_init_cross_attention=False)
    untrained.image_size = models[0].image_size
    stats = {"trained": [], "untrained": []}
    for i, s in enumerate(held_out):
        for name, model in (("trained", models[0]), ("untrained", untrained)):
            result = iamg.generate_mask(model, prompt=s["caption"], background=s["background"], box=s["box"],
                                        steps=choi.RECOMMENDED_STEPS, sampler=choi.RECOMMENDED_SAMPLER, seed=i,
                                        clip_to_box=False)
            mask = np.asarray(result.binary[0]) > 0.5
            stats[name].append((ev.mask_in_box(mask, s["box"]) or 0.0, float(mask.mean())))
    trained, untrained_stats = np.array(stats["trained"]), np.array(stats["untrained"])
    assert trained[:, 0].mean() > 0.8 and trained[:, 0].mean() > 2 * untrained_stats[:, 0].mean()
    assert (trained[:, 1] > 0).all() and trained[:, 1].max() < 0.15 and untrained_stats[:, 1].min() > 0.3


@pytest.mark.slow
def test_iamg_default_mask_overlaps_the_true_figure(models, held_out):
    """The shipped IAMG (a v-prediction model, README step 2b) draws its mask where the true
    human ∪ object is, not just somewhere in the box. Measured on these six (unclipped):
    IoU with the true figure 0.18-0.59, mean 0.36; the ε model shipped before it 0-0.28,
    mean 0.13, with one empty mask; on the 48-sample held-out split 0.19 → 0.38 (README)."""
    ious = []
    for i, s in enumerate(held_out):
        result = iamg.generate_mask(models[0], prompt=s["caption"], background=s["background"], box=s["box"],
                                    steps=choi.RECOMMENDED_STEPS, sampler=choi.RECOMMENDED_SAMPLER, seed=i,
                                    clip_to_box=False)
        mask = np.asarray(result.binary[0]) > 0.5
        ious.append(ev.mask_iou(mask, (s["human_mask"] > 0) | (s["object_mask"] > 0)))
    assert min(ious) > 0.1 and np.mean(ious) > 0.25, ious


def test_mgig_default_runs_at_its_size_and_only_touches_the_crop(models, held_out):
    """Pipeline behaviour of the shipped MGIG (its image quality is what the README's
    held-out table reports, not asserted here): generated at 256², enlarged to the
    official 512² crop, pasted back; pixels outside the pasted region are the background's."""
    model_mgig = models[1]
    s = held_out[0]
    truth = (s["human_mask"] > 0) | (s["object_mask"] > 0)
    features, detail = _references(model_mgig, s)
    out = choi.generate(model_mgig, features, detail, truth, s["background"], steps=10,
                        sampler=choi.RECOMMENDED_SAMPLER)
    assert out.crops[0].shape == (512, 512, 3) and out.images[0].shape == s["background"].shape
    outside = out.pasted_mask == 0
    assert outside.any() and np.array_equal(out.images[0][outside], s["background"][outside])
    assert not np.array_equal(out.images[0], s["background"])


@pytest.mark.slow
def test_mgig_default_learned_to_keep_the_background_around_the_figure(models, held_out):
    """What training gave the shipped MGIG, in pixels: inside the pasted crop but away from
    the interaction mask, the generated image reproduces the background the hint shows.
    Against the same architecture untrained (seeded; the trained VAE, refiner and latent
    scale, so only what the UNet / ControlNet / ID encoder learned differs). Measured on these three
    with the recommended sampling: trained (v-prediction, README steps 4-7) mean |Δ| 5.5-7.8
    levels (6.1-8.4 with step 7's refiner at 800 steps, 8.1-9.1 before it), untrained 67.1-69.8.
    With DPM-Solver++ 20, guidance 5: the step-6 model at 4000 steps 8-14; after step 4 alone
    11-20; the earlier ε-prediction default 26-53."""
    trained = models[1]
    config = replace(mgig_config("small"), image_size=trained.config.image_size, vae=trained.config.vae,
                     refiner=trained.config.refiner)
    untrained = build_mgig(config, seed=0).requires_grad_(False)
    untrained.vae.load_state_dict(trained.vae.state_dict())
    if trained.refiner is not None:  # the decoding side is shared too (step 7's refiner)
        untrained.refiner.load_state_dict(trained.refiner.state_dict())
    errors = {"trained": [], "untrained": []}
    for i, s in enumerate(held_out[:3]):
        truth = (s["human_mask"] > 0) | (s["object_mask"] > 0)
        away = imgproc.dilate(truth.astype(np.uint8), 25) == 0
        for name, model in (("trained", trained), ("untrained", untrained)):
            features, detail = _references(model, s)
            # paste="crop": what the model itself painted over the whole crop (the default
            # paste="mask" would keep these pixels from the background by construction).
            out = choi.generate(model, features, detail, truth, s["background"], **RECOMMENDED, seed=i,
                                paste="crop")
            ring = (out.pasted_mask > 0) & away
            diff = np.abs(out.images[0].astype(np.float64) - s["background"].astype(np.float64))
            errors[name].append(float(diff[ring].mean()))
    trained_err, untrained_err = np.array(errors["trained"]), np.array(errors["untrained"])
    assert (trained_err < 15).all() and (trained_err < 0.2 * untrained_err).all(), errors


@pytest.mark.slow
def test_mgig_default_takes_the_human_colour_from_its_references(models):
    """The identity pathway, in pixels: three held-out identity pairs (synthetic pairs come
    in runs of four samples), each generated on its true mask once with its own references
    and once with the next pair's. The mean CIELAB colour of the generated human region is
    scored against the sample's ground truth (`evaluate.mean_colour_distance`). Measured on
    these three with the recommended sampling: own references 22.0 / 5.5 / 21.2, the next
    pair's 67.8 / 39.1 / 25.8 (with step 7's refiner at 800 steps 20.6 / 5.1 / 21.0 and 66.7 /
    39.1 / 28.3; before it 19.7 / 12.4 / 18.0 and 59.6 / 36.8 / 32.1); on the 48-sample
    held-out split see docs/TRAINING.md."""
    model = models[1]
    samples = list(synth.iter_samples(12, seed=HELD_OUT_SEED, size=256, val_fraction=0.0))
    pairs = [samples[0], samples[4], samples[8]]
    own, swapped = [], []
    for i, s in enumerate(pairs):
        truth = (s["human_mask"] > 0) | (s["object_mask"] > 0)
        human = ev.region_pixels(s["target"], s["human_mask"] > 0)
        for refs, scores in ((s, own), (pairs[(i + 1) % 3], swapped)):
            features, detail = _references(model, refs)
            out = choi.generate(model, features, detail, truth, s["background"], **RECOMMENDED, seed=i)
            scores.append(ev.mean_colour_distance(human, ev.region_pixels(out.images[0], s["human_mask"] > 0)))
    assert all(a < b for a, b in zip(own, swapped)), (own, swapped)
    assert np.mean(own) < 0.6 * np.mean(swapped), (own, swapped)


@pytest.mark.slow
def test_mgig_default_refiner_gives_the_scene_back_around_the_figure(models, held_out):
    """★ Step 7, in pixels: the same sampled latents (same seed) decoded with and without
    the shipped scene refiner, pasted with the official crop-back. In the crop outside the
    target box the hint shows the scene itself; the refiner brings the decoded crop closer
    to it than the plain VAE decode. Only partly: measured on these three, mean max-channel
    |Δ| to the background there 8.3 / 12.6 / 8.8 with the refiner (11.8 / 14.2 / 10.0 at 800
    steps), 13.2 / 16.1 / 12.8 without (held-out split, changes in box 0.681 → 0.831:
    docs/TRAINING.md, step 7)."""
    model = models[1]
    assert model.refiner is not None and model.config.refiner == {"width": 16}
    refined_err, plain_err = [], []
    for i, s in enumerate(held_out[:3]):
        truth = (s["human_mask"] > 0) | (s["object_mask"] > 0)
        features, detail = _references(model, s)
        refined = choi.generate(model, features, detail, truth, s["background"], **RECOMMENDED, seed=i, paste="crop")
        refiner, model.refiner = model.refiner, None
        try:
            plain = choi.generate(model, features, detail, truth, s["background"], **RECOMMENDED, seed=i,
                                  paste="crop")
        finally:
            model.refiner = refiner
        h, w = truth.shape
        scene = (refined.pasted_mask > 0) & (refined.hint.target_box.grown(3).clipped(h, w).mask(h, w) == 0)
        for out, errors in ((refined, refined_err), (plain, plain_err)):
            diff = np.abs(out.images[0].astype(np.float64) - s["background"].astype(np.float64)).max(-1)
            errors.append(float(diff[scene].mean()))
    assert all(r < 0.95 * p for r, p in zip(refined_err, plain_err)), (refined_err, plain_err)
    assert np.mean(refined_err) < 0.9 * np.mean(plain_err), (refined_err, plain_err)


@pytest.mark.slow
def test_mgig_default_paste_leaves_little_of_the_rim_it_paints(models, held_out):
    """★ paste="mask" with the default soft edge (2 + 2 of the model's pixels): the shipped
    MGIG paints a pale rim around the figure, and the wider edge of earlier versions (6 + 4)
    pasted it into the scene. Scored against the true target (the scene itself beyond the
    true mask) over the whole image, the same generation: measured on these three, mean
    ΔE76 2.4 / 3.3 / 4.7 with the default, 2.7 / 3.9 / 5.4 with 6 + 4 (held-out split:
    docs/TRAINING.md)."""
    from interact_custom.pipelines import composite
    from interact_custom.cli.research.evaluation.metrics import rgb_to_lab

    model = models[1]
    errors = {"default": [], "wide": []}
    for i, s in enumerate(held_out[:3]):
        truth = (s["human_mask"] > 0) | (s["object_mask"] > 0)
        features, detail = _references(model, s)
        crop = choi.generate(model, features, detail, truth, s["background"], **RECOMMENDED, seed=i, paste="crop")
        scale = choi.paste_scale(model, crop.hint)
        for name, (grow, feather) in (("default", (composite.PASTE_GROW, composite.PASTE_FEATHER)),
                                      ("wide", (6, 4))):
            px_grow, px_feather = composite.paste_pixels(grow, feather, scale)
            alpha = composite.figure_alpha(truth, crop.pasted_mask, grow=px_grow, feather=px_feather)
            image = composite.blend(crop.images[0], s["background"], alpha)
            errors[name].append(float(np.linalg.norm(rgb_to_lab(image) - rgb_to_lab(s["target"]), axis=-1).mean()))
    assert all(d < w for d, w in zip(errors["default"], errors["wide"])), errors
    assert np.mean(errors["default"]) < 0.92 * np.mean(errors["wide"]), errors
