"""NumPy versions of the few OpenCV operations the official MGIG preprocessing uses.

The official AnyDoor / Inter-custom code prepares the MGIG hint and reference with
``cv2``; the released checkpoint was trained on exactly those arrays, so each function
here reproduces the *numerical* behaviour of its OpenCV counterpart, not just its idea.
The reference is opencv-python 5.0 (the version the test vectors were made with, which
routes float resizes through its bundled Intel IPP); the behaviour below was measured
against it on random inputs of many sizes:

- :func:`resize_linear` is ``cv2.resize(..., interpolation=INTER_LINEAR)``: half-pixel
  centres, no antialiasing. uint8: OpenCV's 11-bit fixed-point weights and the rounding
  of its vectorised vertical pass, and pixel averaging for an exact 2x downscale
  (bit-exact). float32/float64: IPP's ``a + w * (b - a)`` with fused multiply-adds
  (bit-exact, except up to 1 ulp on a few edge columns of >4x upscales of 3/4-channel
  float32 images).
- :func:`resize_nearest` is ``INTER_NEAREST`` (source index ``floor(dst * src / dst_size)``).
- :func:`erode` / :func:`dilate` use OpenCV's default border, which never erodes (or
  dilates) from outside the image.
- :func:`sobel` is ``cv2.Sobel(img, CV_64F, dx, dy, ksize=3)`` with BORDER_REFLECT_101.
- :func:`convert_scale_abs`, :func:`add_weighted`: saturating uint8 arithmetic with
  round-half-to-even, as OpenCV rounds.
- :func:`structuring_element` is ``cv2.getStructuringElement`` (rect / ellipse).
- :func:`largest_component` keeps the largest 8-connected component.

Sizes are always given as ``(height, width)`` -- note that ``cv2.resize`` takes
``(width, height)``; every function here says which it takes.
"""
from __future__ import annotations

import numpy as np

# ImageNet statistics: the normalisation before every DINOv2 ViT (MGIG's ID encoder, and
# the DINO scores of evaluation).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

__all__ = [
    "resize_linear", "resize_nearest", "erode", "dilate", "structuring_element",
    "sobel", "convert_scale_abs", "add_weighted", "largest_component", "drop_small_components",
]

# OpenCV's fixed-point resize for uint8: weights are float coefficients scaled by
# 2**11 and rounded to int16 (INTER_RESIZE_COEF_BITS = 11).
_COEF_BITS = 11
_COEF_SCALE = 1 << _COEF_BITS


def _check_image(image: np.ndarray, name: str) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim not in (2, 3) or image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"{name}: expected a non-empty HxW or HxWxC array, got shape {image.shape}")
    return image


def check_size(size_hw, name: str = "size_hw") -> tuple[int, int]:
    """``(height, width)`` as two positive ints; ValueError naming ``name`` otherwise
    (also for non-whole values such as 2.5, which would be silently truncated)."""
    try:
        h, w = (int(v) for v in size_hw)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected (height, width) in pixels, got {size_hw!r}") from None
    if h < 1 or w < 1 or (h, w) != tuple(size_hw):
        raise ValueError(f"{name}: expected a positive whole (height, width), got {tuple(size_hw)!r}")
    return h, w


def _linear_taps(src_len: int, dst_len: int, *, clamp_edges: bool):
    """Source indices and float32 weight of the second tap for each output index.

    Mirrors OpenCV: ``scale = 1 / (dst / src)`` in double, the sample position
    ``(d + 0.5) * scale - 0.5`` rounded to float32, floor, fractional part in float32.
    Along x OpenCV clamps positions left of the first pixel to it (weight 0); along y it
    does not (both taps read the clamped first row), which matters for uint8 rounding.
    """
    scale = 1.0 / (dst_len / src_len)
    pos = ((np.arange(dst_len, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
    i0 = np.floor(pos).astype(np.int64)
    frac = (pos - i0.astype(np.float32)).astype(np.float32)
    if clamp_edges:
        low = i0 < 0
        frac[low] = 0.0
        i0[low] = 0
    high = i0 >= src_len - 1
    if clamp_edges:
        frac[high] = 0.0
        i0[high] = src_len - 1
    i1 = np.clip(i0 + 1, 0, src_len - 1)
    i0 = np.clip(i0, 0, src_len - 1)
    return i0, i1, frac


def _fixed_point_weights(frac: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # saturate_cast<short>(w * 2048) rounds half to even (np.rint), in float32.
    w0 = np.rint((np.float32(1.0) - frac) * np.float32(_COEF_SCALE)).astype(np.int64)
    w1 = np.rint(frac * np.float32(_COEF_SCALE)).astype(np.int64)
    return w0, w1


def _resize_linear_u8(img: np.ndarray, h: int, w: int) -> np.ndarray:
    src_h, src_w, cn = img.shape
    x0, x1, fx = _linear_taps(src_w, w, clamp_edges=True)
    y0, y1, fy = _linear_taps(src_h, h, clamp_edges=False)
    a0, a1 = (a.astype(np.int32)[None, :, None] for a in _fixed_point_weights(fx))
    b0, b1 = (b.astype(np.int32)[:, None, None] for b in _fixed_point_weights(fy))
    # Horizontal pass: exact integers (value * 2048), shifted by 4 as the vertical kernel
    # loads them; int32 is wide enough for every intermediate.
    src = img.astype(np.int32)
    horiz = (src[:, x0, :] * a0 + src[:, x1, :] * a1) >> 4
    # Vertical pass as OpenCV's SIMD kernel rounds it (measured: opencv-python 5 takes
    # this path for every element, row tails included): 16-bit multiply-high of the
    # shifted values by each weight, then (sum + 2) >> 2. This differs by one level
    # from exact (sum + 2**21) >> 22 rounding on a few percent of pixels.
    out = ((horiz[y0] * b0) >> 16) + ((horiz[y1] * b1) >> 16)
    out += 2
    out >>= 2
    return np.clip(out, 0, 255).astype(np.uint8)


def _resize_linear_float_generic(img: np.ndarray, h: int, w: int) -> np.ndarray:
    """OpenCV's own float path (used when IPP declines: a 1-pixel-wide or -high source)."""
    dtype = img.dtype
    x0, x1, fx = _linear_taps(img.shape[1], w, clamp_edges=True)
    y0, y1, fy = _linear_taps(img.shape[0], h, clamp_edges=False)
    # float32 weights; products and sums in the image's precision.
    a0 = (np.float32(1.0) - fx).astype(dtype)[None, :, None]
    a1 = fx.astype(dtype)[None, :, None]
    b0 = (np.float32(1.0) - fy).astype(dtype)[:, None, None]
    b1 = fy.astype(dtype)[:, None, None]
    horiz = img[:, x0, :] * a0 + img[:, x1, :] * a1
    return (horiz[y0] * b0 + horiz[y1] * b1).astype(dtype)


def _split(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    c = a * 134217729.0  # 2**27 + 1 (Veltkamp splitting)
    hi = c - (c - a)
    return hi, a - hi


def _fma64(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """a * b + c with (almost always) a single rounding, in float64 (Dekker/Knuth)."""
    a, b, c = np.broadcast_arrays(np.asarray(a, np.float64), np.asarray(b, np.float64),
                                  np.asarray(c, np.float64))
    p = a * b
    ah, al = _split(a)
    bh, bl = _split(b)
    p_err = ((ah * bh - p) + ah * bl + al * bh) + al * bl
    s = p + c
    bb = s - p
    s_err = (p - (s - bb)) + (c - bb)
    return s + (s_err + p_err)


def _fma(a: np.ndarray, b: np.ndarray, c: np.ndarray, dtype) -> np.ndarray:
    if dtype == np.float32:
        # float32 operands: the float64 product is exact, one rounding back to float32.
        return (a.astype(np.float64) * b.astype(np.float64) + c.astype(np.float64)).astype(np.float32)
    return _fma64(a, b, c)


def _ipp_taps(src_len: int, dst_len: int, fused: bool):
    """Intel IPP's linear taps: position (d + 0.5) * (src/dst) - 0.5 in float64 (fused
    multiply-add for float64 images), fraction in float64; outside [0, src_len - 1) the
    edge pixel is taken with weight 0. Also returns that "outside" flag."""
    centres = np.arange(dst_len, dtype=np.float64) + 0.5
    if fused:
        pos = _fma64(centres, src_len / dst_len, -0.5)
    else:
        pos = centres * (src_len / dst_len) - 0.5
    i0 = np.floor(pos).astype(np.int64)
    frac = pos - i0
    outside = (i0 < 0) | (i0 >= src_len - 1)
    frac[outside] = 0.0
    i0 = np.clip(i0, 0, src_len - 1)
    i1 = np.minimum(i0 + 1, src_len - 1)
    return i0, i1, frac, outside


def _resize_linear_float_ipp(img: np.ndarray, h: int, w: int) -> np.ndarray:
    """opencv-python routes float resizes through Intel IPP: separable (x, then y) linear
    interpolation written as a + w * (b - a) with a fused multiply-add; for float32, the
    output columns left/right of the source's pixel centres take an unfused y pass."""
    dtype = img.dtype
    fused = dtype == np.float64
    x0, x1, fx, x_outside = _ipp_taps(img.shape[1], w, fused)
    y0, y1, fy, _ = _ipp_taps(img.shape[0], h, fused)
    fx = fx.astype(dtype)[None, :, None]
    fy = fy.astype(dtype)[:, None, None]
    left = img[:, x0, :]
    horiz = _fma(img[:, x1, :] - left, fx, left, dtype)
    top = horiz[y0]
    delta = horiz[y1] - top
    return _fma(delta, fy, top, dtype).astype(dtype)


def _resize_half_u8(img: np.ndarray) -> np.ndarray:
    """OpenCV's exact-2x uint8 downscale: INTER_LINEAR is switched to 2x2 averaging."""
    total = (img[0::2, 0::2].astype(np.int32) + img[0::2, 1::2]
             + img[1::2, 0::2] + img[1::2, 1::2])
    if img.shape[2] in (1, 3, 4):  # OpenCV's fast path: round half up
        return ((total + 2) >> 2).astype(np.uint8)
    return np.clip(np.rint(total.astype(np.float32) * np.float32(0.25)), 0, 255).astype(np.uint8)


def resize_linear(image: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Bilinear resize to ``size_hw = (height, width)``, as ``cv2.resize(image, (width,
    height))`` with the default INTER_LINEAR (see the module notes for exactness).

    Accepts HxW or HxWxC arrays of uint8, float32 or float64 (other dtypes are rejected:
    the official code never resizes them) and returns the same dtype and layout.
    """
    image = _check_image(image, "image")
    h, w = check_size(size_hw)
    if image.dtype not in (np.uint8, np.float32, np.float64):
        raise TypeError(f"image: expected uint8, float32 or float64, got {image.dtype}")
    squeeze = image.ndim == 2
    img = image[:, :, None] if squeeze else image
    src_h, src_w = img.shape[:2]
    if (src_h, src_w) == (h, w):
        out = img.copy()
    elif img.dtype != np.uint8:
        if src_h > 1 and src_w > 1:
            out = _resize_linear_float_ipp(img, h, w)
        else:
            out = _resize_linear_float_generic(img, h, w)
    elif src_h == 2 * h and src_w == 2 * w:
        out = _resize_half_u8(img)
    else:
        out = _resize_linear_u8(img, h, w)
    return out[:, :, 0] if squeeze else out


def resize_nearest(image: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize to ``size_hw = (height, width)``, as ``cv2.resize(image,
    (width, height), interpolation=INTER_NEAREST)``: output pixel ``d`` reads source
    pixel ``floor(d * src / dst)`` (not the pixel-centre rule of INTER_NEAREST_EXACT)."""
    image = _check_image(image, "image")
    h, w = check_size(size_hw)
    src_h, src_w = image.shape[:2]

    def index(src_len: int, dst_len: int) -> np.ndarray:
        inv_scale = 1.0 / (dst_len / src_len)
        return np.minimum(np.floor(np.arange(dst_len) * inv_scale).astype(np.int64), src_len - 1)

    return image[index(src_h, h)][:, index(src_w, w)].copy()


def structuring_element(shape: str, size_hw: tuple[int, int]) -> np.ndarray:
    """``cv2.getStructuringElement`` for ``shape`` "rect" or "ellipse"; ``size_hw`` is
    (height, width) (cv2 takes (width, height)). Returns a uint8 {0,1} kernel whose
    anchor is its centre ``(height // 2, width // 2)``."""
    h, w = check_size(size_hw)
    if shape == "rect" or (h, w) == (1, 1):
        return np.ones((h, w), dtype=np.uint8)
    if shape != "ellipse":
        raise ValueError(f"shape: expected 'rect' or 'ellipse', got {shape!r}")
    r, c = h // 2, w // 2
    inv_r2 = 1.0 / (r * r) if r else 0.0
    kernel = np.zeros((h, w), dtype=np.uint8)
    for i in range(h):
        dy = i - r
        if abs(dy) <= r:
            # OpenCV rounds the half-width with cvRound (half to even).
            dx = int(np.rint(c * np.sqrt((r * r - dy * dy) * inv_r2)))
            kernel[i, max(c - dx, 0):min(c + dx + 1, w)] = 1
    return kernel


def _morph(image: np.ndarray, kernel, iterations: int, take_min: bool) -> np.ndarray:
    image = _check_image(image, "image")
    if isinstance(kernel, (int, np.integer)):
        kernel = np.ones((int(kernel), int(kernel)), dtype=np.uint8)
    kernel = np.asarray(kernel)
    if kernel.ndim != 2 or kernel.size == 0:
        raise ValueError(f"kernel: expected a 2-D array or an int size, got shape {kernel.shape}")
    if iterations < 0:
        raise ValueError(f"iterations: expected >= 0, got {iterations}")
    kh, kw = kernel.shape
    ay, ax = kh // 2, kw // 2
    offsets = np.argwhere(kernel != 0)
    # OpenCV's default morphology border is "the neutral value": +max for erosion,
    # -max for dilation, so nothing is eroded or dilated from outside the image.
    if np.issubdtype(image.dtype, np.integer):
        info = np.iinfo(image.dtype)
        fill = info.max if take_min else info.min
    elif image.dtype == np.bool_:
        fill = take_min
    else:
        fill = np.inf if take_min else -np.inf
    reduce = np.minimum if take_min else np.maximum
    out = image
    h, w = image.shape[:2]
    pad = ((ay, kh - 1 - ay), (ax, kw - 1 - ax)) + ((0, 0),) * (image.ndim - 2)
    for _ in range(iterations):
        if len(offsets) == 0:
            # An all-zero kernel: OpenCV leaves every pixel at the border value.
            out = np.full_like(out, fill)
            continue
        padded = np.pad(out, pad, mode="constant", constant_values=fill)
        acc = None
        for dy, dx in offsets:
            view = padded[dy:dy + h, dx:dx + w]
            acc = view.copy() if acc is None else reduce(acc, view, out=acc)
        out = acc
    return out.copy() if out is image else out


def erode(image: np.ndarray, kernel=5, iterations: int = 1) -> np.ndarray:
    """``cv2.erode(image, kernel, iterations=...)`` with OpenCV's default border (the
    image edge does not erode). ``kernel`` is a 2-D {0,1} array (anchor at its centre,
    as OpenCV's default) or an int ``k`` for a ``k x k`` ones kernel."""
    return _morph(image, kernel, iterations, take_min=True)


def dilate(image: np.ndarray, kernel=5, iterations: int = 1) -> np.ndarray:
    """``cv2.dilate`` with OpenCV's default border (nothing grows in from outside);
    ``kernel`` as for :func:`erode`. Like OpenCV, the kernel is not reflected."""
    return _morph(image, kernel, iterations, take_min=False)


def sobel(image: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """``cv2.Sobel(image, cv2.CV_64F, dx, dy, ksize=3)`` (first derivatives only), per
    channel, with OpenCV's default BORDER_REFLECT_101. Returns float64, same shape."""
    image = _check_image(image, "image")
    if (dx, dy) not in ((1, 0), (0, 1)):
        raise ValueError(f"dx, dy: expected (1, 0) or (0, 1), got {(dx, dy)}")
    img = image.astype(np.float64)
    pad = ((1, 1), (1, 1)) + ((0, 0),) * (img.ndim - 2)
    # numpy "reflect" is OpenCV's BORDER_REFLECT_101 (and, like OpenCV, repeats the only
    # pixel of a 1-pixel-wide axis).
    p = np.pad(img, pad, mode="reflect")
    h, w = img.shape[:2]

    def sh(oy: int, ox: int) -> np.ndarray:
        return p[oy:oy + h, ox:ox + w]

    if dx == 1:  # derivative [-1, 0, 1] along x, smoothing [1, 2, 1] along y
        return (sh(0, 2) - sh(0, 0)) + 2.0 * (sh(1, 2) - sh(1, 0)) + (sh(2, 2) - sh(2, 0))
    return (sh(2, 0) - sh(0, 0)) + 2.0 * (sh(2, 1) - sh(0, 1)) + (sh(2, 2) - sh(0, 2))


def convert_scale_abs(x: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    """``cv2.convertScaleAbs``: ``saturate_uint8(|x * alpha + beta|)``, rounding half to even."""
    return np.clip(np.rint(np.abs(np.asarray(x, dtype=np.float64) * alpha + beta)), 0, 255).astype(np.uint8)


def add_weighted(a: np.ndarray, alpha: float, b: np.ndarray, beta: float, gamma: float = 0.0) -> np.ndarray:
    """``cv2.addWeighted`` for uint8 inputs: ``saturate_uint8(a*alpha + b*beta + gamma)``
    computed in float32 and rounded half to even, as OpenCV does."""
    a = np.asarray(a)
    b = np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"add_weighted: shapes differ: {a.shape} vs {b.shape}")
    s = a.astype(np.float32) * np.float32(alpha) + (b.astype(np.float32) * np.float32(beta) + np.float32(gamma))
    return np.clip(np.rint(s), 0, 255).astype(np.uint8)


def _components(fg: np.ndarray):
    """8-connected components of a 2-D bool array as row runs: (run_row, run_start,
    run_end, root of each run, area per root). Union-find over row segments, so large
    masks stay fast without SciPy; a root is the lowest run index of its component, i.e.
    the component met first in raster order."""
    h, w = fg.shape
    # Runs of foreground per row: [row, start, end) in raster order.
    padded = np.zeros((h, w + 2), dtype=np.int8)
    padded[:, 1:-1] = fg
    edges = np.diff(padded, axis=1)
    starts_r, starts_c = np.nonzero(edges == 1)
    ends_r, ends_c = np.nonzero(edges == -1)
    run_row, run_start, run_end = starts_r, starts_c, ends_c  # both sorted row-major
    n = len(run_row)
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    row_first = np.searchsorted(run_row, np.arange(h + 1))
    for r in range(1, h):
        a_lo, a_hi = row_first[r - 1], row_first[r]
        b_lo, b_hi = row_first[r], row_first[r + 1]
        if a_lo == a_hi or b_lo == b_hi:
            continue
        # 8-connectivity: runs touch if they overlap after growing one pixel sideways.
        a_start, a_end = run_start[a_lo:a_hi], run_end[a_lo:a_hi]
        for j in range(b_lo, b_hi):
            lo = np.searchsorted(a_end, run_start[j] - 1, side="right")  # first a_end >= start
            hi = np.searchsorted(a_start, run_end[j] + 1, side="left")   # first a_start > end
            for i in range(a_lo + lo, a_lo + hi):
                ri, rj = find(i), find(j)
                if ri != rj:
                    if ri < rj:
                        parent[rj] = ri
                    else:
                        parent[ri] = rj
    roots = np.array([find(i) for i in range(n)])
    areas = np.bincount(roots, weights=run_end - run_start, minlength=n)
    return run_row, run_start, run_end, roots, areas


def _foreground(mask) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask: expected a 2-D array, got shape {mask.shape}")
    return mask != 0


def _paint(shape, runs, keep) -> np.ndarray:
    run_row, run_start, run_end, roots, _ = runs
    out = np.zeros(shape, dtype=np.uint8)
    for i in np.nonzero(np.isin(roots, keep))[0]:
        out[run_row[i], run_start[i]:run_end[i]] = 1
    return out


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected component of the non-zero pixels of a 2-D ``mask``, as a
    uint8 {0,1} array (what the official ``select_max_region`` intends with
    ``cv2.connectedComponentsWithStats``). Ties go to the component met first in raster
    order, like OpenCV's label order. An empty mask gives an all-zero result.
    """
    fg = _foreground(mask)
    if not fg.any():
        return np.zeros(fg.shape, dtype=np.uint8)
    runs = _components(fg)
    # argmax returns the first maximum, so ties go to the earliest component.
    return _paint(fg.shape, runs, [int(np.argmax(runs[4]))])


def drop_small_components(mask: np.ndarray, min_fraction: float) -> np.ndarray:
    """``mask`` (2-D, non-zero = foreground) without the 8-connected components smaller
    than ``min_fraction`` of the largest one, as uint8 {0,1}: removes specks and keeps
    every part of a figure of comparable size (a held object apart from the person)."""
    fg = _foreground(mask)
    if not fg.any():
        return np.zeros(fg.shape, dtype=np.uint8)
    runs = _components(fg)
    areas = runs[4]
    return _paint(fg.shape, runs, np.nonzero(areas >= min_fraction * areas.max())[0])


def pad_to_square(image: np.ndarray, pad_value) -> np.ndarray:
    """Pad the short side with ``pad_value`` to make ``image`` square, centred with the
    smaller half (``int(d / 2)``) before (the official ``pad_to_square(random=False)``).
    Works on ``H x W`` and ``H x W x C`` arrays; keeps the dtype."""
    image = np.asarray(image)
    h, w = image.shape[:2]
    if h == w:
        return image
    d = abs(h - w)
    before = d // 2
    pad = [(0, 0)] * image.ndim
    pad[1 if h > w else 0] = (before, d - before)
    return np.pad(image, pad, mode="constant", constant_values=pad_value)
