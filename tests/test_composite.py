"""★ paste="mask": only the generated figure goes back into the scene (pipelines.composite)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from interact_custom.pipelines import composite, imgproc
from interact_custom.pipelines.mgig import pipeline as choi
from interact_custom.pipelines.mgig import inputs as preprocess
from interact_custom.pipelines.mgig import MGIGModel, mgig_config


def _disk(h, w, cy, cx, r):
    yy, xx = np.mgrid[:h, :w]
    return ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r).astype(np.uint8)


def _chebyshev_distance(mask):
    # Chebyshev distance to the mask by repeated 3x3 dilation (test helper, small images).
    dist = np.full(mask.shape, np.inf)
    cur = mask.astype(np.uint8)
    for d in range(0, 60):
        dist[(cur > 0) & np.isinf(dist)] = d
        cur = imgproc.dilate(cur, 3)
    return dist


@pytest.mark.parametrize("grow,feather", [(6, 4), (0, 3), (3, 0), (0, 0)])
def test_alpha_is_one_on_the_grown_figure_and_exactly_zero_beyond_the_feather(grow, feather):
    mask = _disk(80, 100, 40, 50, 12)
    region = np.ones_like(mask, dtype=np.float32)
    alpha = composite.figure_alpha(mask, region, grow=grow, feather=feather)
    dist = _chebyshev_distance(mask)
    assert alpha.dtype == np.float32 and alpha.min() >= 0 and alpha.max() <= 1
    assert (alpha[dist <= grow] == 1).all()
    assert (alpha[dist > grow + 2 * feather] == 0).all()
    if feather:
        band = (dist > grow) & (dist <= grow + 2 * feather)
        assert ((alpha[band] > 0) & (alpha[band] < 1)).any()  # a soft edge, not a step


def test_alpha_stays_inside_the_pasted_region():
    mask = _disk(64, 64, 32, 32, 20)
    region = np.zeros((64, 64), np.float32)
    region[10:50, 10:50] = 1
    alpha = composite.figure_alpha(mask, region)
    assert (alpha[region == 0] == 0).all() and (alpha[20:40, 20:40] == 1).all()


def test_blend_keeps_the_background_exactly_where_alpha_is_zero():
    rng = np.random.default_rng(0)
    gen = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    bg = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    alpha = np.zeros((20, 30), np.float32)
    alpha[5:10, 5:10] = 1
    alpha[12, 12] = 0.5
    out = composite.blend(gen, bg, alpha)
    assert np.array_equal(out[alpha == 0], bg[alpha == 0]) and np.array_equal(out[alpha == 1], gen[alpha == 1])
    assert np.allclose(out[12, 12], (gen[12, 12].astype(float) + bg[12, 12]) / 2, atol=1)


@pytest.mark.parametrize("bad", [dict(paste="blend"), dict(paste_grow=-1), dict(paste_feather=2.5)])
def test_bad_paste_settings_are_clear_errors(bad):
    with pytest.raises(ValueError, match="paste"):
        composite.check_paste(bad.get("paste", "mask"), bad.get("paste_grow", 6), bad.get("paste_feather", 4))


@pytest.fixture(scope="module")
def tiny_run():
    torch.manual_seed(0)
    model = MGIGModel(mgig_config("tiny")).eval().requires_grad_(False)
    rng = np.random.default_rng(1)
    bg = rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)
    human = np.full((40, 20, 3), 200, np.uint8)
    obj = np.full((20, 20, 3), 60, np.uint8)
    features = choi.id_features(model, human, np.ones((40, 20)), obj, np.ones((20, 20)))
    detail = preprocess.detail_map(features.canvas.image, features.canvas.mask)
    # A thin figure (a standing person and a held stick), as silhouettes are: most of its
    # square crop is scene, not figure.
    mask = np.zeros((96, 128), np.uint8)
    mask[28:72, 56:62] = 1
    mask[44:48, 62:92] = 1
    common = dict(steps=2, sampler="ddim", seed=0)
    crop = choi.generate(model, features, detail, mask, bg, paste="crop", **common)
    masked = choi.generate(model, features, detail, mask, bg, **common)
    return bg, mask, crop, masked


def test_paste_pixels_scale_with_the_enlargement():
    assert composite.paste_pixels(2, 2, 1.0) == (2, 2)
    assert composite.paste_pixels(2, 2, 3.6) == (7, 7)  # a photo: the crop is 3.6x the working size
    assert composite.paste_pixels(2, 2, 0.2) == (0, 1)  # a feather never rounds to a hard cut
    assert composite.paste_pixels(3, 0, 0.2) == (1, 0)
    with pytest.raises(ValueError, match="paste scale"):
        composite.paste_pixels(2, 2, 0.0)


@pytest.mark.slow
def test_paste_mask_is_the_default_and_keeps_the_scene_outside_the_figure(tiny_run):
    bg, mask, crop, masked = tiny_run
    alpha = masked.pasted_mask
    outside = alpha == 0
    dist = _chebyshev_distance(mask)
    # The tiny preset works at the official 512 px; the 96 x 128 scene's crop is far smaller,
    # so 2 + 2 working pixels are narrower in background pixels.
    scale = masked.hint.extra_sizes[2] / 512
    grow, feather = composite.paste_pixels(composite.PASTE_GROW, composite.PASTE_FEATHER, scale)
    assert grow + feather < composite.PASTE_GROW + composite.PASTE_FEATHER
    assert (alpha[dist <= grow] == 1).all() and (outside[dist > grow + 2 * feather]).all()
    assert not outside[dist == grow + 2 * feather - 1].all()
    assert np.array_equal(masked.images[0][outside], bg[outside])  # exactly the user's pixels
    assert np.array_equal(masked.images[0][alpha == 1], crop.images[0][alpha == 1])  # the same generation
    # The official crop-back changes the whole crop, far beyond the figure.
    crop_changed = np.any(crop.images[0] != bg, axis=2)
    assert crop_changed[outside & (crop.pasted_mask == 1)].mean() > 0.9
    assert (masked.pasted_mask[crop.pasted_mask == 0] == 0).all()
    assert outside[crop.pasted_mask == 1].mean() > 0.1  # part of the crop is kept from the scene and set(np.unique(crop.pasted_mask)) == {0.0, 1.0}


def test_paste_crop_is_the_official_crop_back(tiny_run):
    bg, mask, crop, _ = tiny_run
    pred = composite.decoded_to_prediction(crop.crops[0].astype(np.float32) / 127.5 - 1.0)
    ref = composite.crop_back(pred, bg, crop.hint.extra_sizes, crop.hint.crop_box)
    assert np.abs(ref.astype(int) - crop.images[0].astype(int)).max() <= 1  # uint8 crop round trip


def test_blend_border_step_measures_the_seam():
    from interact_custom.cli.research.evaluation.metrics import blend_border_step

    bg = np.full((40, 40, 3), 100, np.uint8)
    square = np.zeros((40, 40), bool)
    square[15:25, 15:25] = True
    hard = bg.copy()
    hard[square] = 160                                     # a pasted square with a hard 60-level edge
    assert blend_border_step(hard, square.astype(np.float32)) == pytest.approx(60.0)
    assert blend_border_step(bg, square.astype(np.float32)) == 0.0  # the scene has no step there
    alpha = composite.figure_alpha(square, np.ones((40, 40), np.float32), grow=0, feather=4)
    generated = np.full((40, 40, 3), 160, np.uint8)
    step = blend_border_step(composite.blend(generated, bg, alpha), alpha)
    assert step is not None and step < 10                  # feathering spreads the 60 levels
    assert blend_border_step(bg, np.zeros((40, 40))) is None
