"""MGIG preprocessing: parity with every `preproc` reference array (the official
hico_process_pairs / data_utils outputs), the OpenCV-equivalent image operations, and the
edge cases (boxes at the border, tiny and empty masks, portrait / landscape backgrounds,
square and clipped crops, crop-back placement)."""
from __future__ import annotations

import numpy as np
import pytest

from interact_custom.pipelines import composite
from interact_custom.pipelines import geometry as geo
from interact_custom.pipelines import imgproc as ip
from interact_custom.pipelines.geometry import Box, official_mask_box
from interact_custom.pipelines.mgig import inputs as pp
from interact_custom.cli.research import vectors_preproc
from interact_custom.cli.research.training import augment

B = Box.from_yyxx  # the official (y1, y2, x1, x2) order the cases below are written in


# --- parity with the official reference arrays ------------------------------------------

@pytest.fixture(scope="module")
def preproc_results(vectors):
    return list(vectors_preproc.check(vectors))


def test_every_preproc_array_matches_the_official_code(preproc_results, vectors):
    by_name = {r.name: r for r in preproc_results}
    missing = [n for n in vectors.array_names("preproc") if n not in by_name]
    assert not missing, f"arrays without a result: {missing}"
    assert len(by_name) == len(preproc_results), "an array got two results"
    failed = [f"{r.name}: {r.note or ''} abs {r.max_abs:.3g}" for r in preproc_results if r.failed]
    assert not failed, "\n".join(failed)
    # Everything but the stored inputs is recomputed; only a set whose pinned draw chose
    # the (unrecorded, random) mask perturbation may skip its hint arrays.
    skipped = [r.name for r in preproc_results if r.status == "SKIPPED"]
    if not vectors_preproc.pipeline_settings(vectors)["perturbed"]:
        assert not skipped, skipped


def test_uint8_outputs_are_bit_exact(preproc_results, vectors):
    arrays = vectors.arrays("preproc")
    for r in preproc_results:
        if r.status == "PASS" and arrays[r.name].dtype in (np.uint8, np.int64):
            assert r.max_abs == 0, r.name


def test_pipeline_settings_come_from_the_manifest(vectors):
    s = vectors_preproc.pipeline_settings(vectors)
    notes = vectors.part("preproc")["notes"]
    assert s["box_ratio"] == notes["pinned_random_choices"][0]["returned"] / 10
    assert s["crop_ratio"] == vectors.part("preproc").get("variant", {}).get("crop_ratio", s["crop_ratio"])


# --- OpenCV-equivalent operations (values recorded from opencv-python 5.0) ---------------

def test_resize_linear_matches_recorded_opencv_values():
    a = (np.arange(30).reshape(5, 6) * 8).astype(np.uint8)
    assert ip.resize_linear(a, (3, 4)).tolist() == [[18, 30, 42, 54], [98, 110, 122, 134],
                                                    [178, 190, 202, 214]]
    b = np.array([[0, 255, 0], [255, 0, 255]], np.uint8)
    # Row 2 shows OpenCV's vectorised rounding: 127.5 becomes 127 or 128.
    assert ip.resize_linear(b, (5, 7)).tolist() == [
        [0, 36, 145, 255, 145, 36, 0], [26, 55, 142, 229, 142, 55, 26],
        [128, 127, 127, 128, 127, 127, 128], [229, 200, 113, 26, 113, 200, 229],
        [255, 219, 109, 0, 109, 219, 255]]
    c = np.array([[10, 200, 37, 90], [250, 3, 128, 77], [5, 60, 180, 255], [99, 100, 101, 102]], np.uint8)
    assert ip.resize_linear(c, (2, 2)).tolist() == [[116, 83], [66, 160]]  # exact 2x: averaging
    assert ip.resize_linear(c, (5, 3)).tolist() == [[41, 118, 81], [158, 81, 84], [111, 93, 164],
                                                    [39, 114, 200], [99, 100, 102]]
    f = ip.resize_linear(c.astype(np.float32) / 3, (5, 3))
    assert f.dtype == np.float32
    np.testing.assert_array_equal(f[0], np.array([13.88888931274414, 39.5, 27.05555534362793], np.float32))
    np.testing.assert_array_equal(f[3], np.array([13.222223281860352, 38.04999923706055, 66.76667022705078],
                                                 np.float32))


def test_resize_takes_height_width_and_keeps_layout():
    img = np.zeros((10, 30, 3), np.uint8)
    assert ip.resize_linear(img, (7, 12)).shape == (7, 12, 3)
    assert ip.resize_linear(img[:, :, 0], (7, 12)).shape == (7, 12)
    assert ip.resize_nearest(img, (7, 12)).shape == (7, 12, 3)
    same = np.arange(12, dtype=np.uint8).reshape(3, 4)
    np.testing.assert_array_equal(ip.resize_linear(same, (3, 4)), same)
    with pytest.raises(ValueError, match="height, width"):
        ip.resize_linear(img, (0, 5))
    with pytest.raises(TypeError, match="uint8, float32 or float64"):
        ip.resize_linear(img.astype(np.int16), (5, 5))


def test_resize_nearest_floors_the_source_index():
    c = np.array([[10, 200, 37, 90], [250, 3, 128, 77], [5, 60, 180, 255], [99, 100, 101, 102]], np.uint8)
    assert ip.resize_nearest(c, (3, 7)).tolist() == [[10, 10, 200, 200, 37, 37, 90],
                                                     [250, 250, 3, 3, 128, 128, 77],
                                                     [5, 5, 60, 60, 180, 180, 255]]


def test_erode_does_not_erode_from_the_border():
    full = np.ones((9, 11), np.uint8)
    np.testing.assert_array_equal(ip.erode(full, 5, iterations=2), full)
    holed = full.copy()
    holed[4, 5] = 0
    out = ip.erode(holed, 5, iterations=2)  # two 5x5 passes = one 9x9 pass
    assert out[:, 1:10].sum() == 0 and out[:, 0].all() and out[:, 10].all()


def test_structuring_element_and_grey_morphology():
    assert ip.structuring_element("ellipse", (5, 5)).tolist() == [
        [0, 0, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 1, 0, 0]]
    assert ip.structuring_element("ellipse", (3, 7)).tolist() == [
        [0, 0, 0, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1, 1], [0, 0, 0, 1, 0, 0, 0]]
    dot = np.zeros((7, 7), np.uint8)
    dot[3, 3] = 1
    k = ip.structuring_element("ellipse", (5, 5))
    np.testing.assert_array_equal(ip.dilate(dot, k)[1:6, 1:6], k)
    np.testing.assert_array_equal(ip.erode(ip.dilate(dot, k), k), dot)


def test_sobel_reflect101_and_uint8_saturation():
    ramp = np.tile((np.arange(6) * 10).astype(np.uint8), (4, 1))[:, :, None]
    gx = ip.sobel(ramp, 1, 0)[:, :, 0]
    assert gx.dtype == np.float64
    np.testing.assert_array_equal(gx[:, 1:-1], 80.0)   # (I(x+1) - I(x-1)) * (1 + 2 + 1)
    np.testing.assert_array_equal(gx[:, [0, -1]], 0.0)  # reflect-101 mirrors the neighbour
    np.testing.assert_array_equal(ip.sobel(ramp, 0, 1), 0.0)
    assert ip.convert_scale_abs(np.array([-300.0, -2.5, 3.5, 254.6])).tolist() == [255, 2, 4, 255]
    a = np.array([1, 2, 3, 255], np.uint8)
    b = np.array([2, 3, 4, 255], np.uint8)
    assert ip.add_weighted(a, 0.5, b, 0.5).tolist() == [2, 2, 4, 255]  # halves round to even


def test_largest_component_is_8_connected():
    m = np.zeros((6, 8), np.uint8)
    m[0, 0] = m[1, 1] = m[2, 2] = 1          # a diagonal: one 8-connected component of 3
    m[4, 5:8] = 1                            # a bar of 3 (tie: the first one wins)
    diagonal = np.zeros_like(m)
    diagonal[[0, 1, 2], [0, 1, 2]] = 1
    np.testing.assert_array_equal(ip.largest_component(m), diagonal)
    m[5, 4] = 1                              # diagonal neighbour of the bar -> 4 pixels
    out = ip.largest_component(m)
    assert out.sum() == 4 and out[5, 4] == 1 and out[0, 0] == 0
    assert ip.largest_component(np.zeros((3, 3))).sum() == 0


# --- boxes ----------------------------------------------------------------------------

def test_bbox_has_inclusive_ends_and_official_tiny_fallback():
    m = np.zeros((40, 56), np.uint8)
    m[5:17, 9:30] = 1
    assert official_mask_box(m).yyxx == (5, 16, 9, 29)
    tiny = np.zeros((40, 56), np.uint8)
    tiny[3, 4] = tiny[3, 5] = 1
    assert official_mask_box(tiny).yyxx == (0, 40, 0, 56)     # official: whole image
    assert geo.official_box(tiny, "object_mask").yyxx == (3, 3, 4, 5)
    with pytest.raises(ValueError, match="human_mask is empty"):
        geo.official_box(np.zeros((4, 4)), "human_mask")


def test_expand_box_clips_at_the_border_and_never_collapses():
    assert geo.expand_box(B(100, 180, 150, 260), 1.1, (300, 420)).yyxx == (95, 184, 143, 266)
    assert geo.expand_box(B(5, 290, 3, 80), 1.5, (300, 420, 3)).yyxx == (0, 300, 0, 100)
    assert geo.expand_box(B(100, 110, 200, 205), 1.3, (300, 420), min_crop=40).yyxx == (85, 125, 182, 222)
    # A 1-pixel mask in the top-left corner: the official arithmetic gives an empty box.
    assert geo.expand_box(B(0, 0, 0, 0), 1.0, (10, 10)).yyxx == (0, 1, 0, 1)
    with pytest.raises(ValueError, match="ratio"):
        geo.expand_box(B(0, 5, 0, 5), 0, (10, 10))


def test_box_to_square_portrait_landscape_and_border():
    assert geo.box_to_square(B(50, 150, 100, 160), (300, 420)).yyxx == (50, 150, 80, 180)
    assert geo.box_to_square(B(50, 90, 10, 200), (300, 420)).yyxx == (0, 165, 10, 200)
    assert geo.box_to_square(B(0, 120, 380, 420), (300, 420)).yyxx == (0, 120, 340, 420)
    assert B(10, 50, 20, 70).relative_to(B(5, 100, 15, 110)).yyxx == (5, 45, 5, 55)


def test_box_to_square_result_is_always_inside_the_image():
    # Partly outside: squared, then clipped -- never past the border.
    for box in (B(-30, 10, 5, 12), B(50, 90, 400, 440), B(290, 310, -8, 2), B(0, 300, 410, 430)):
        y1, y2, x1, x2 = geo.box_to_square(box, (300, 420)).yyxx
        assert 0 <= y1 <= y2 <= 300 and 0 <= x1 <= x2 <= 420, (box, (y1, y2, x1, x2))
    # Entirely outside: a clear error, not a box past the edge.
    for box in (B(10, 20, 430, 440), B(310, 330, 5, 9), B(-20, -10, 5, 9), B(5, 9, 420, 420)):
        with pytest.raises(ValueError, match=r"box_to_square: box .* does not intersect the 300x420 image"):
            geo.box_to_square(box, (300, 420))
    # The official one-pixel boxes (far edge = the same row/column) still pass.
    assert geo.box_to_square(B(0, 0, 0, 0), (10, 10)).yyxx == (0, 0, 0, 0)
    assert geo.box_to_square(B(9, 9, 9, 9), (10, 10)).yyxx == (9, 9, 9, 9)


@pytest.mark.parametrize("ratio", [float("inf"), float("-inf"), float("nan")])
def test_expand_box_refuses_non_finite_ratios(ratio):
    with pytest.raises(ValueError, match="ratio: expected a positive finite number"):
        geo.expand_box(B(10, 20, 10, 20), ratio, (64, 64))
    with pytest.raises(ValueError, match="min_crop: expected a finite number"):
        geo.expand_box(B(10, 20, 10, 20), 1.1, (64, 64), min_crop=ratio)


def test_pad_to_square_centres_with_the_smaller_half_first():
    x = np.ones((2, 5), np.uint8)
    p = ip.pad_to_square(x, 7)
    assert p.shape == (5, 5) and (p[0] == 7).all() and (p[1:3] == 1).all() and (p[3:] == 7).all()
    y = ip.pad_to_square(np.ones((4, 1, 3)), 0)
    assert y.shape == (4, 4, 3) and y[:, 1].all() and not y[:, [0, 2, 3]].any()


# --- full pipeline on synthetic scenes ----------------------------------------------------

# A scene whose crop comes out exactly square (crop_back's W1 == H1 branch).
SQUARE_SCENE = ((256, 256), (100, 161, 100, 140), (120, 150, 105, 135))


def _scene(h: int, w: int, human_box, object_box, seed: int = 0):
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    # Smooth (resampling barely changes it) but textured (a one-pixel shift shows).
    bg = np.stack([128 + 100 * np.sin(xx / 6 + seed) * np.cos(yy / 9),
                   128 + 100 * np.cos(xx / 11) * np.sin(yy / 5 + seed),
                   xx * 255 / max(w - 1, 1)], -1)
    bg = np.clip(np.rint(bg), 0, 255).astype(np.uint8)
    human = np.zeros((h, w), np.uint8)
    obj = np.zeros((h, w), np.uint8)
    y1, y2, x1, x2 = human_box
    human[y1:y2, x1:x2] = 1
    y1, y2, x1, x2 = object_box
    obj[y1:y2, x1:x2] = 1
    return bg, human, obj


def _prepare(bg, human, obj, **kw):
    return vectors_preproc.prepare_mgig_inputs(bg, human, bg, obj, bg, np.maximum(human, obj), **kw)


def _check_geometry(inputs, shape):
    h1, w1, h2, w2 = inputs.extra_sizes
    y1, y2, x1, x2 = inputs.crop_box.yyxx
    assert 0 <= y1 < y2 <= shape[0] and 0 <= x1 < x2 <= shape[1]
    assert (y2 - y1, x2 - x1) == (h1, w1) and h2 == w2 == max(h1, w1)
    ty1, ty2, tx1, tx2 = inputs.target_box.yyxx
    # (the official squaring may shave one pixel off the crop, not more)
    assert y1 - 1 <= ty1 < ty2 <= y2 + 1 and x1 - 1 <= tx1 < tx2 <= x2 + 1
    assert inputs.hint.shape == (512, 512, 4) and inputs.hint.dtype == np.float32
    assert inputs.target.shape == (512, 512, 3) and inputs.target.dtype == np.float32
    assert inputs.reference.shape == (224, 224, 3) and 0 <= inputs.reference.min() <= inputs.reference.max() <= 1
    assert -1 <= inputs.hint.min() and inputs.hint.max() <= 1
    assert set(np.unique(inputs.hint[..., 3])) <= {-1.0, 0.0, 1.0}


@pytest.mark.parametrize("shape, human_box, object_box", [
    ((300, 420), (69, 232, 255, 340), (155, 255, 199, 325)),   # landscape, interior
    ((420, 300), (40, 300, 60, 160), (200, 330, 120, 260)),    # portrait
    SQUARE_SCENE,  # square crop (W1 == H1)
    ((240, 400), (0, 240, 0, 120), (150, 240, 90, 200)),       # masks touching the borders
])
def test_prepare_mgig_inputs_geometry(shape, human_box, object_box):
    bg, human, obj = _scene(*shape, human_box, object_box)
    inputs = _prepare(bg, human, obj)
    _check_geometry(inputs, shape)
    h1, w1, h2, _ = inputs.extra_sizes
    mask_channel = inputs.hint[..., 3]
    if w1 < h2:   # padded left/right (the larger half after): padding columns are -1
        assert (mask_channel[:, -1] == -1).all()
    elif h1 < h2:
        assert (mask_channel[-1] == -1).all()
    else:
        assert (mask_channel != -1).all()
    # The mask channel's 1-region is the target box, mapped into the 512 square.
    ys, xs = np.nonzero(mask_channel == 1)
    scale = 512 / h2
    pad_y, pad_x = (h2 - h1) // 2, (h2 - w1) // 2
    ty1, ty2, tx1, tx2 = inputs.target_box.relative_to(inputs.crop_box).yyxx
    assert abs(ys.min() - (ty1 + pad_y) * scale) <= scale + 1 and abs(ys.max() + 1 - (ty2 + pad_y) * scale) <= scale + 1
    assert abs(xs.min() - (tx1 + pad_x) * scale) <= scale + 1 and abs(xs.max() + 1 - (tx2 + pad_x) * scale) <= scale + 1


def test_tiny_masks_still_give_a_canvas_and_hint():
    bg, human, obj = _scene(200, 300, (0, 0, 0, 0), (0, 0, 0, 0))
    human[199, 299] = 1         # one pixel in the bottom-right corner
    obj[0, 0] = obj[0, 1] = 1   # two pixels in the top-left corner
    inputs = _prepare(bg, human, obj)
    _check_geometry(inputs, bg.shape)
    assert inputs.reference_mask.max() == 255


def test_square_scene_has_a_square_unpadded_crop():
    shape, human_box, object_box = SQUARE_SCENE
    bg, human, obj = _scene(*shape, human_box, object_box)
    inputs = _prepare(bg, human, obj)
    h1, w1, h2, w2 = inputs.extra_sizes
    assert h1 == w1 == h2 == w2
    assert (inputs.hint[..., 3] != -1).all()


def test_single_pixel_union_in_the_corner():
    bg, human, obj = _scene(90, 130, (0, 1, 0, 1), (0, 1, 0, 1))
    inputs = _prepare(bg, human, obj)
    _check_geometry(inputs, bg.shape)
    assert inputs.crop_box.yyxx == (0, 1, 0, 1) and inputs.extra_sizes == (1, 1, 1, 1)
    assert (inputs.hint[..., 3] == 1).all()


def test_float_and_bool_inputs_match_uint8():
    bg, human, obj = _scene(160, 200, (20, 140, 30, 90), (60, 150, 80, 190))
    ref = _prepare(bg, human, obj)
    alt = vectors_preproc.prepare_mgig_inputs(bg.astype(np.float32) / 255, human.astype(bool), bg, obj * 255, bg,
                                 np.maximum(human, obj).astype(np.float32))
    np.testing.assert_array_equal(alt.hint, ref.hint)
    np.testing.assert_array_equal(alt.reference, ref.reference)


def test_hflip_flips_the_reference_canvas_only():
    bg, human, obj = _scene(160, 200, (20, 140, 30, 90), (60, 150, 80, 190))
    plain, flipped = _prepare(bg, human, obj), _prepare(bg, human, obj, hflip=True)
    np.testing.assert_array_equal(flipped.reference, plain.reference[:, ::-1])
    np.testing.assert_array_equal(flipped.target, plain.target)
    np.testing.assert_array_equal(flipped.hint[..., 3], plain.hint[..., 3])
    assert flipped.crop_box == plain.crop_box


def test_mask_channel_mask_uses_the_interaction_mask():
    bg, human, obj = _scene(200, 260, (30, 170, 40, 110), (90, 190, 100, 230))
    union = np.maximum(human, obj)
    detail = pp.detail_map(np.full((224, 224, 3), 128, np.uint8), np.ones((224, 224)))
    box = pp.build_hint(bg, union, detail, mask_channel="box")
    msk = pp.build_hint(bg, union, detail, mask_channel="mask")
    np.testing.assert_array_equal(msk.hint[..., :3], box.hint[..., :3])
    y1, y2, x1, x2 = msk.crop_box.yyxx
    ours = msk.hint[..., 3]
    expected = ip.resize_nearest(ip.pad_to_square(union[y1:y2, x1:x2], 2), (512, 512)).astype(np.float32)
    expected[expected == 2] = -1
    np.testing.assert_array_equal(ours, expected)
    assert (ours == 1).sum() < (box.hint[..., 3] == 1).sum()  # the L-shape is smaller than its box
    with pytest.raises(ValueError, match="mask_channel"):
        pp.build_hint(bg, union, detail, mask_channel="perturbed")



def test_figure_collage_shows_the_scene_in_the_box_off_the_figure():
    """★ collage="figure": the detail map covers only the interaction mask grown by
    COLLAGE_GROW hint pixels; elsewhere in the target box the hint is the scene itself, and
    the scene plane says so. The mask channel, the target and the geometry are unchanged."""
    bg, human, obj = _scene(200, 260, (30, 170, 40, 60), (90, 100, 60, 200))  # a thin L: mostly scene
    union = np.maximum(human, obj)
    detail = np.full((16, 16, 3), 90, np.uint8)
    box = pp.build_hint(bg, union, detail, mask_channel="mask")
    fig = pp.build_hint(bg, union, detail, mask_channel="mask", collage="figure")
    np.testing.assert_array_equal(fig.hint[..., 3], box.hint[..., 3])
    np.testing.assert_array_equal(fig.target, box.target)
    assert (fig.crop_box, fig.target_box, fig.extra_sizes) == (box.crop_box, box.target_box, box.extra_sizes)
    in_box = (box.scene == 0) & (box.hint[..., 3] >= 0)
    shown = (fig.scene == 1) & in_box
    assert fig.scene.min() == 0 and (fig.scene >= box.scene).all() and shown.sum() > 0.5 * in_box.sum()
    # Where the box collage shows the detail map (grey 90), the figure collage shows the scene;
    # away from the covered part's edge (one resampling tap) it is the scene exactly.
    grey = np.float32(90 / 127.5 - 1)
    inner = ip.erode(shown.astype(np.uint8), 5) > 0
    np.testing.assert_allclose(box.hint[..., :3][inner], grey, atol=1e-6)
    np.testing.assert_allclose(fig.hint[..., :3][inner], fig.target[inner], atol=1e-6)
    # The whole mask (and a margin) stays under the detail map.
    on_mask = fig.hint[..., 3] == 1
    assert (fig.scene[on_mask] == 0).all()
    np.testing.assert_allclose(fig.hint[..., :3][ip.erode(on_mask.astype(np.uint8), 3) > 0], grey, atol=1e-6)
    assert ((fig.scene == 0) & ~on_mask & in_box).any()  # the grown margin
    with pytest.raises(ValueError, match="collage"):
        pp.build_hint(bg, union, detail, mask_channel="box", collage="mask")

@pytest.mark.parametrize("shape, rows, cols", [
    ((64, 64), slice(30, 31), slice(20, 21)),     # one pixel
    ((64, 64), slice(21, 23), slice(23, 25)),     # 2 x 2
    ((64, 64), slice(0, 1), slice(0, 3)),         # 1 x 3 in the top-left corner
    ((64, 64), slice(61, 64), slice(61, 64)),     # 3 x 3 in the bottom-right corner
    ((64, 64), slice(30, 39), slice(20, 29)),     # 9 x 9
    ((64, 64), slice(30, 36), slice(20, 29)),     # 6 x 9
    ((64, 64), slice(5, 60), slice(31, 32)),      # one column, tall
    ((64, 64), slice(63, 64), slice(0, 64)),      # the last row
])
def test_build_hint_crop_contains_every_mask_pixel(shape, rows, cols):
    """The official 1-px-short box grown by 1.1 and 1.3 misses the last row / column of
    masks under ~10 px; the crop is widened to the mask there."""
    union = np.zeros(shape, np.uint8)
    union[rows, cols] = 1
    bg = np.zeros((*shape, 3), np.uint8)
    detail = np.full((16, 16, 3), 90, np.uint8)
    hint = pp.build_hint(bg, union, detail, mask_channel="box")
    outside = np.ones(shape, bool)
    outside[hint.crop_box.slices] = False
    assert not union[outside].any(), hint.crop_box
    assert pp.hint_boxes(union, shape) == (hint.target_box, hint.crop_box)   # for callers cutting the crop
    h1, w1, h2, w2 = hint.extra_sizes
    assert (hint.crop_box.height, hint.crop_box.width) == (h1, w1) and h2 == w2 == max(h1, w1)
    assert hint.hint.shape == (512, 512, 4)
    out = composite.crop_back(np.full((511, 512, 3), 7.0, np.float32), bg, hint.extra_sizes, hint.crop_box)
    assert out.shape == bg.shape


def test_build_hint_widens_the_crop_only_for_small_masks():
    """A mask of official size gives the official crop (the reference vectors pin one)."""
    bg, human, obj = _scene(300, 420, (69, 232, 255, 340), (155, 255, 199, 325))
    union = np.maximum(human, obj)
    detail = np.full((16, 16, 3), 90, np.uint8)
    hint = pp.build_hint(bg, union, detail, mask_channel="box")
    target = geo.expand_box(geo.official_box(union), pp.TARGET_BOX_RATIO, bg.shape)
    assert hint.crop_box == geo.box_to_square(geo.expand_box(target, pp.CROP_RATIO, bg.shape), bg.shape)


def test_detail_map_edges_only_inside_the_eroded_mask():
    img = np.zeros((120, 160, 3), np.uint8)
    img[:, 80:] = 255   # one strong vertical edge
    none = pp.detail_map(img, np.zeros((120, 160), np.float32))
    assert none.shape == img.shape and not none.any()
    full = pp.detail_map(img, np.ones((120, 160), np.float32))
    assert full.any() and not full[:, :60].any()
    assert not pp.detail_map(img, np.ones((120, 160)), thresh=256).any()


# --- crop back ------------------------------------------------------------------------------

@pytest.mark.parametrize("shape, human_box, object_box", [
    ((300, 420), (69, 232, 255, 340), (155, 255, 199, 325)),   # landscape
    ((420, 300), (40, 300, 60, 160), (200, 330, 120, 260)),    # portrait, crop clipped
    SQUARE_SCENE,  # square crop
])
def test_crop_back_places_the_prediction_in_the_crop_only(shape, human_box, object_box):
    bg, human, obj = _scene(*shape, human_box, object_box)
    before = bg.copy()
    inputs = _prepare(bg, human, obj)
    pred = np.full((511, 512, 3), 200.7, np.float32)
    out = composite.crop_back(pred, bg, inputs.extra_sizes, inputs.crop_box)
    np.testing.assert_array_equal(bg, before)              # background untouched
    y1, y2, x1, x2 = inputs.crop_box.yyxx
    m = composite.CROP_MARGIN
    assert (out[y1 + m:y2 - m, x1 + m:x2 - m] == 200).all()  # truncation, like the official
    outside = np.ones(shape, bool)
    outside[y1 + m:y2 - m, x1 + m:x2 - m] = False
    np.testing.assert_array_equal(out[outside], bg[outside])


@pytest.mark.parametrize("shape, human_box, object_box", [
    ((300, 420), (69, 232, 255, 340), (155, 255, 199, 325)),
    ((420, 300), (40, 300, 60, 160), (200, 330, 120, 260)),
    ((240, 400), (0, 240, 0, 120), (150, 240, 90, 200)),
])
def test_crop_back_round_trip_is_aligned(shape, human_box, object_box):
    """Pasting the target crop itself back reproduces the background (up to resampling)."""
    bg, human, obj = _scene(*shape, human_box, object_box)
    inputs = _prepare(bg, human, obj)
    pred = (inputs.target + 1) * 127.5
    out = composite.crop_back(pred, bg, inputs.extra_sizes, inputs.crop_box, margin=0)
    y1, y2, x1, x2 = inputs.crop_box.yyxx
    err = np.abs(out[y1:y2, x1:x2].astype(int) - bg[y1:y2, x1:x2])
    assert err.mean() < 3.0, err.mean()
    # A one-pixel misplacement would cost about one gradient step (~1-2 levels / px) plus
    # the texture: compare against the shifted paste.
    shifted = np.abs(out[y1 + 1:y2, x1 + 1:x2].astype(int) - bg[y1:y2 - 1, x1:x2 - 1])
    assert err.mean() < shifted.mean()


@pytest.mark.parametrize("shape, rows, cols, crop_ratio", [
    ((96, 96), slice(0, 2), slice(0, 3), 1.3),       # touching the top-left corner
    ((96, 96), slice(0, 1), slice(0, 1), 1.3),       # one pixel in the corner
    ((96, 96), slice(1, 4), slice(2, 3), 2.9),       # near it
    ((40, 96), slice(0, 3), slice(30, 60), 1.3),     # flat, on the top border
    ((96, 40), slice(30, 60), slice(0, 2), 1.3),     # tall, on the left border
    ((64, 64), slice(0, 9), slice(0, 9), 1.3),       # crop smaller than twice the margin
])
def test_crop_back_near_the_top_left_corner(shape, rows, cols, crop_ratio):
    """Crops clipped at the top / left border that are thinner than the 5-px margin: the
    official ``y2 - m`` end goes negative and wraps around (a broadcast error, or a
    paste at the far side of the image); nothing outside the pasted box may change."""
    h, w = shape
    union = np.zeros(shape, np.uint8)
    union[rows, cols] = 1
    bg = (np.arange(h * w * 3) % 251).astype(np.uint8).reshape(h, w, 3)
    hint = pp.build_hint(bg, union, np.full((16, 16, 3), 90, np.uint8), mask_channel="box", crop_ratio=crop_ratio)
    out = composite.crop_back(np.full((511, 512, 3), 200.5, np.float32), bg, hint.extra_sizes, hint.crop_box)
    assert out.shape == bg.shape and out.dtype == np.uint8
    pasted = composite.pasted_box(hint.crop_box).clipped(h, w)
    keep = np.ones(shape, bool)
    keep[pasted.slices] = False
    np.testing.assert_array_equal(out[keep], bg[keep])
    assert (out[pasted.slices] == 200).all()


def test_crop_back_with_crops_thinner_than_the_margin():
    bg = (np.arange(50 * 60 * 3) % 251).astype(np.uint8).reshape(50, 60, 3)
    pred = np.full((511, 512, 3), 9.0, np.float32)
    for crop in (Box(0, 0, 3, 3), Box(0, 0, 4, 12), Box(0, 0, 12, 4), Box(2, 0, 30, 7), Box(0, 1, 9, 40)):
        side = max(crop.height, crop.width)
        out = composite.crop_back(pred, bg, (crop.height, crop.width, side, side), crop)
        assert out.shape == bg.shape
        keep = np.ones((50, 60), bool)
        keep[composite.pasted_box(crop).clipped(50, 60).slices] = False
        np.testing.assert_array_equal(out[keep], bg[keep])


def test_decoded_to_prediction_drops_the_first_row():
    decoded = np.zeros((512, 512, 3), np.float32)
    decoded[0] = 1.0
    decoded[1] = 2.0   # clipped to 255
    pred = composite.decoded_to_prediction(decoded)
    assert pred.shape == (511, 512, 3) and pred.dtype == np.float32
    assert (pred[0] == 255).all() and (pred[1:] == 127.5).all()


def test_crop_back_rejects_mismatched_geometry():
    bg = np.zeros((100, 120, 3), np.uint8)
    with pytest.raises(ValueError, match="extra_sizes"):
        composite.crop_back(np.zeros((511, 512, 3)), bg, (50, 50, 50, 50), B(0, 40, 0, 50))
    with pytest.raises(ValueError, match="outside the background"):
        composite.crop_back(np.zeros((511, 512, 3)), bg, (50, 50, 50, 50), B(80, 130, 0, 50))


# --- input validation -----------------------------------------------------------------------

def test_errors_name_the_input():
    bg, human, obj = _scene(120, 160, (10, 100, 20, 80), (40, 110, 60, 150))
    union = np.maximum(human, obj)
    with pytest.raises(ValueError, match="human_mask is empty"):
        vectors_preproc.prepare_mgig_inputs(bg, np.zeros_like(human), bg, obj, bg, union)
    with pytest.raises(ValueError, match="union_mask is empty"):
        vectors_preproc.prepare_mgig_inputs(bg, human, bg, obj, bg, np.zeros_like(union))
    with pytest.raises(ValueError, match=r"object_mask: size 60x160 .* 120x160"):
        vectors_preproc.prepare_mgig_inputs(bg, human, bg, obj[:60], bg, union)
    with pytest.raises(ValueError, match="background: expected an H x W x 3"):
        vectors_preproc.prepare_mgig_inputs(bg, human, bg, obj, bg[:, :, 0], union)
    with pytest.raises(ValueError, match="human_image: .*batch"):
        vectors_preproc.prepare_mgig_inputs(bg[None], human, bg, obj, bg, union)
    with pytest.raises(ValueError, match=r"object_image: float pixels must be in \[0, 1\]"):
        vectors_preproc.prepare_mgig_inputs(bg, human, bg.astype(np.float32), obj, bg, union)
    with pytest.raises(TypeError, match="human_image: expected uint8 or float pixels, got bool"):
        vectors_preproc.prepare_mgig_inputs(bg > 0, human, bg, obj, bg, union)


def test_perturb_mask_is_reproducible_and_binary():
    gt = np.zeros((48, 64), np.uint8)
    gt[10:40, 12:50] = 1
    a = augment.perturb_mask(gt, np.random.RandomState(3))
    b = augment.perturb_mask(gt, np.random.RandomState(3))
    np.testing.assert_array_equal(a, b)
    assert set(np.unique(a)) <= {0, 1} and a.sum() >= gt.sum() * 0.5
