"""Property tests (hypothesis) of the box geometry and the MGIG crop arithmetic:
`geometry.Box` / `mask_box` / `official_mask_box` / `official_box` / `check_xywh` /
`expand_box` / `box_to_square`, `imgproc.pad_to_square`, `mgig.inputs.build_hint` and
`composite.crop_back`, on small images (8..96 px a side) with masks drawn anywhere, borders
included. Deterministic (derandomized) and fast: a few seconds in all."""
from __future__ import annotations

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings, strategies as st  # noqa: E402

from interact_custom.pipelines.geometry import Box, check_xywh, mask_box, official_mask_box  # noqa: E402
from interact_custom.pipelines import composite, imgproc  # noqa: E402
from interact_custom.pipelines import geometry as geo  # noqa: E402
from interact_custom.pipelines.mgig import inputs as pp  # noqa: E402

FAST = settings(derandomize=True, max_examples=150, deadline=None)
SLOW = settings(derandomize=True, max_examples=40, deadline=None)  # build_hint resizes to 512

sides = st.integers(8, 96)
ratios = st.floats(1.0, 3.0, allow_nan=False)


def _inside(box: Box, height: int, width: int) -> bool:
    return 0 <= box.x0 <= box.x1 <= width and 0 <= box.y0 <= box.y1 <= height


@st.composite
def shapes(draw):
    return draw(sides), draw(sides)


@st.composite
def boxes_in(draw, height, width, min_size=0):
    """A box inside a height x width image (possibly empty unless min_size)."""
    x0 = draw(st.integers(0, width - min_size))
    y0 = draw(st.integers(0, height - min_size))
    x1 = draw(st.integers(x0 + min_size, width))
    y1 = draw(st.integers(y0 + min_size, height))
    return Box(x0, y0, x1, y1)


@st.composite
def masks(draw, shape=None):
    """(mask, height, width): one to three rectangles or blobs, anywhere, often on a
    border or in a corner, from one pixel to the whole image."""
    height, width = shape if shape is not None else draw(shapes())
    mask = np.zeros((height, width), np.uint8)
    for _ in range(draw(st.integers(1, 3))):
        h = draw(st.one_of(st.integers(1, 6), st.integers(1, height)))
        w = draw(st.one_of(st.integers(1, 6), st.integers(1, width)))
        y = draw(st.one_of(st.just(0), st.just(height - h), st.integers(0, height - h)))
        x = draw(st.one_of(st.just(0), st.just(width - w), st.integers(0, width - w)))
        if draw(st.booleans()):
            mask[y:y + h, x:x + w] = 1
        else:  # an ellipse-ish blob in that rectangle (never empty: its centre is set)
            yy, xx = np.mgrid[0:h, 0:w]
            cy, cx = (h - 1) / 2, (w - 1) / 2
            blob = ((yy - cy) / max(h / 2, 0.5)) ** 2 + ((xx - cx) / max(w / 2, 0.5)) ** 2 <= 1
            blob[int(cy), int(cx)] = True
            mask[y:y + h, x:x + w] |= blob.astype(np.uint8)
    return mask, height, width


# --- Box ------------------------------------------------------------------------------------

@FAST
@given(st.integers(-200, 200), st.integers(-200, 200), st.integers(0, 200), st.integers(0, 200))
def test_box_conversions_round_trip(x, y, w, h):
    box = Box.from_xywh(x, y, w, h)
    assert box.xywh == (x, y, w, h) and (box.width, box.height) == (w, h)
    assert Box.from_xywh(*box.xywh) == box
    assert Box.from_yyxx(*box.yyxx) == box
    assert box.yyxx == (box.y0, box.y1, box.x0, box.x1)
    assert box.is_empty == (w == 0 or h == 0)


@FAST
@given(shapes().flatmap(lambda s: st.tuples(st.just(s), boxes_in(*s))))
def test_box_slices_and_mask_agree(args):
    (height, width), box = args
    image = np.zeros((height, width), np.uint8)
    image[box.slices] = 1
    assert image.sum() == box.width * box.height
    np.testing.assert_array_equal(box.mask(height, width, np.uint8), image)
    assert box.inside(height, width)
    if not box.is_empty:
        assert mask_box(image) == box


@FAST
@given(shapes(), st.integers(-150, 150), st.integers(-150, 150), st.integers(0, 150), st.integers(0, 150))
def test_clipped_is_inside_and_keeps_the_pixels(shape, x, y, w, h):
    height, width = shape
    box = Box.from_xywh(x, y, w, h)
    clipped = box.clipped(height, width)
    assert _inside(clipped, height, width)
    np.testing.assert_array_equal(box.mask(height, width), clipped.mask(height, width))
    rel = box.relative_to(clipped)
    assert rel.shifted(clipped.x0, clipped.y0) == box


@FAST
@given(shapes().flatmap(lambda s: st.tuples(st.just(s), boxes_in(*s))), st.integers(0, 12))
def test_inset_stays_inside_the_box(args, margin):
    (height, width), box = args
    inner = box.inset(margin)
    assert inner.width == max(0, box.width - 2 * margin) and inner.height == max(0, box.height - 2 * margin)
    if not inner.is_empty:
        assert box.x0 <= inner.x0 <= inner.x1 <= box.x1 and box.y0 <= inner.y0 <= inner.y1 <= box.y1


# --- mask boxes -----------------------------------------------------------------------------

@FAST
@given(masks())
def test_mask_box_is_tight(args):
    mask, height, width = args
    box = mask_box(mask)
    assert _inside(box, height, width) and not box.is_empty
    assert mask[box.slices].sum() == mask.sum()
    assert mask[box.y0].any() and mask[box.y1 - 1].any()
    assert mask[:, box.x0].any() and mask[:, box.x1 - 1].any()


@FAST
@given(masks())
def test_official_mask_box_is_one_pixel_short(args):
    mask, height, width = args
    tight = mask_box(mask)
    official = official_mask_box(mask, min_pixels=0)
    assert official == Box(tight.x0, tight.y0, tight.x1 - 1, tight.y1 - 1)
    assert _inside(official, height, width)
    assert geo.official_box(mask) == official
    if mask.sum() < 10:
        assert official_mask_box(mask) == Box(0, 0, width, height)   # the official fallback


# --- check_xywh -----------------------------------------------------------------------------

@FAST
@given(shapes().flatmap(lambda s: st.tuples(st.just(s), boxes_in(*s, min_size=1))))
def test_check_xywh_accepts_every_box_inside(args):
    (height, width), box = args
    assert check_xywh(box.xywh, height, width) == box
    assert check_xywh([float(v) for v in box.xywh], height, width) == box


@FAST
@given(shapes(), st.lists(st.floats(0, 1, allow_nan=False), min_size=4, max_size=4))
def test_check_xywh_refuses_fractions_of_the_image(shape, values):
    if all(float(v).is_integer() for v in values):
        values[0] = 0.5
    with pytest.raises(ValueError, match=r"box must be in pixels; \(.*\) looks like fractions of the image"):
        check_xywh(values, *shape)


def test_check_xywh_messages():
    with pytest.raises(ValueError, match=r"box must be in pixels; \(0\.1, 0\.2, 0\.5, 0\.5\) looks like "
                                         r"fractions of the image — multiply by the width/height"):
        check_xywh((0.1, 0.2, 0.5, 0.5), 64, 80)
    # whole numbers in [0, 1] are pixels: a 1 x 1 box in the corner, or no area
    assert check_xywh((0, 0, 1, 1), 64, 80) == Box(0, 0, 1, 1)
    with pytest.raises(ValueError, match=r"box has no area \(width 0, height 1\)"):
        check_xywh((1, 0, 0, 1), 64, 80)
    with pytest.raises(ValueError, match=r"box has no area \(width 0, height 0\)"):
        check_xywh((3.2, 4.4, 0.3, 0.2), 64, 80)     # not all in [0, 1]: rounded pixels
    with pytest.raises(ValueError, match=r"lies outside the 80x64 background"):
        check_xywh((70, 0, 20, 10), 64, 80)


# --- expand_box / box_to_square / pad_to_square --------------------------------------------

@FAST
@given(shapes().flatmap(lambda s: st.tuples(st.just(s), boxes_in(*s))), ratios, st.integers(0, 40))
def test_expand_box_stays_inside_and_holds_the_box(args, ratio, min_crop):
    (height, width), box = args
    out = geo.expand_box(box, ratio, (height, width, 3), min_crop=min_crop)
    assert _inside(out, height, width) and not out.is_empty
    # ratios >= 1 never shrink the box (the official size is ratio * (far - near + 1))
    assert out.x0 <= box.x0 and out.y0 <= box.y0 and box.x1 <= out.x1 and box.y1 <= out.y1


@pytest.mark.parametrize("ratio", [float("inf"), float("nan"), 0.0, -1.0])
def test_expand_box_refuses_bad_ratios(ratio):
    with pytest.raises(ValueError, match="ratio"):
        geo.expand_box(Box(2, 2, 5, 5), ratio, (16, 16))


@FAST
@given(shapes(), st.integers(-120, 120), st.integers(-120, 120), st.integers(0, 120), st.integers(0, 120))
def test_box_to_square_is_inside_or_refused(shape, x, y, w, h):
    height, width = shape
    box = Box.from_xywh(x, y, w, h)
    hits = x < width and max(x + w, x + 1) > 0 and y < height and max(y + h, y + 1) > 0
    if not hits:
        with pytest.raises(ValueError, match="does not intersect"):
            geo.box_to_square(box, shape)
        return
    out = geo.box_to_square(box, shape)
    assert _inside(out, height, width)
    if box.inside(height, width) and not box.is_empty:
        assert not out.is_empty
        side = max(box.width, box.height)
        # squared about the centre (odd long sides lose a pixel), then clipped
        assert out.width <= side and out.height <= side
        if out.inside(height, width) and out.x0 > 0 and out.y0 > 0 and out.x1 < width and out.y1 < height:
            assert abs(out.width - out.height) <= 1


@FAST
@given(st.integers(1, 40), st.integers(1, 40), st.integers(0, 3), st.integers(0, 255))
def test_pad_to_square_centres_the_image(h, w, channels, value):
    shape = (h, w) if channels == 0 else (h, w, channels)
    image = np.full(shape, 7 if value != 7 else 8, np.uint8)
    out = imgproc.pad_to_square(image, value)
    side = max(h, w)
    assert out.shape == (side, side) + shape[2:] and out.dtype == image.dtype
    top, left = (side - h) // 2, (side - w) // 2
    np.testing.assert_array_equal(out[top:top + h, left:left + w], image)
    assert (out == value).sum() == out.size - image.size


# --- build_hint / crop_back -----------------------------------------------------------------

def _background(height, width):
    return (np.arange(height * width * 3, dtype=np.int64) * 7 % 251).astype(np.uint8).reshape(height, width, 3)


DETAIL = np.full((12, 12, 3), 90, np.uint8)


@SLOW
@given(masks(), st.floats(1.0, 1.5), st.floats(1.0, 3.0), st.sampled_from(["box", "mask"]))
def test_build_hint_crop_holds_the_mask_and_crop_back_pastes_only_there(args, box_ratio, crop_ratio, channel):
    mask, height, width = args
    bg = _background(height, width)
    hint = pp.build_hint(bg, mask, DETAIL, box_ratio=box_ratio, crop_ratio=crop_ratio, mask_channel=channel)
    crop = hint.crop_box
    assert _inside(crop, height, width) and not crop.is_empty
    assert _inside(hint.target_box, height, width)
    assert _inside(hint.target_box_in_crop, crop.height, crop.width)
    outside = np.ones((height, width), bool)
    outside[crop.slices] = False
    assert not mask[outside].any(), (crop, mask_box(mask))
    h1, w1, h2, w2 = hint.extra_sizes
    assert (h1, w1) == (crop.height, crop.width) and h2 == w2 == max(h1, w1)
    assert hint.hint.shape == (512, 512, 4) and hint.target.shape == (512, 512, 3)
    assert set(np.unique(hint.hint[..., 3])) <= {-1.0, 0.0, 1.0}

    for pred in (np.full((511, 512, 3), 200.5, np.float32), (hint.target + 1) * 127.5):
        out = composite.crop_back(pred, bg, hint.extra_sizes, crop)
        assert out.shape == bg.shape and out.dtype == np.uint8
        pasted = composite.pasted_box(crop)
        keep = np.ones((height, width), bool)
        keep[pasted.clipped(height, width).slices] = False
        np.testing.assert_array_equal(out[keep], bg[keep])
    np.testing.assert_array_equal(bg, _background(height, width))   # input untouched


@FAST
@given(shapes().flatmap(lambda s: st.tuples(st.just(s), boxes_in(*s, min_size=1))), st.integers(0, 8))
def test_crop_back_on_any_crop_inside(args, margin):
    (height, width), crop = args
    bg = _background(height, width)
    side = max(crop.height, crop.width)
    out = composite.crop_back(np.full((511, 512, 3), 3.0, np.float32), bg, (crop.height, crop.width, side, side),
                       crop, margin=margin)
    assert out.shape == bg.shape
    pasted = composite.pasted_box(crop, margin).clipped(height, width)
    keep = np.ones((height, width), bool)
    keep[pasted.slices] = False
    np.testing.assert_array_equal(out[keep], bg[keep])
    assert (out[pasted.slices] == 3).all()
