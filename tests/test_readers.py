"""`pipelines.readers`: one reader for user images and masks, one mask threshold, whatever
the source (array, PIL image, tensor, file)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from interact_custom.pipelines.readers import MASK_THRESHOLD, as_image, as_mask, mask_values


def test_the_threshold_selects_the_same_pixels_in_every_copy_of_a_mask(tmp_path):
    levels = np.arange(256, dtype=np.uint8).reshape(16, 16)
    expected = (levels >= 128).astype(np.uint8)  # above half of full scale
    path = tmp_path / "mask.png"
    Image.fromarray(levels).save(path)
    for copy in (levels, levels.astype(np.int64), levels / 255.0, (levels / 255.0).astype(np.float32),
                 Image.fromarray(levels), path, str(path), torch.from_numpy(levels / 255.0)):
        np.testing.assert_array_equal(as_mask(copy), expected)
    assert MASK_THRESHOLD == 0.5 and as_mask(np.array([[0.5, 0.5001]])).tolist() == [[0, 1]]


def test_binary_masks_are_what_they_say():
    ones = np.array([[0, 1], [1, 0]])
    for copy in (ones.astype(np.uint8), ones.astype(bool), ones.astype(np.float64)):
        np.testing.assert_array_equal(as_mask(copy), ones)
    # A file is 8-bit grey whatever it holds: 1 is a dark grey, not foreground.
    assert not as_mask(Image.fromarray(ones.astype(np.uint8)), allow_empty=True).any()
    assert mask_values(ones.astype(np.uint8)).dtype == np.float64
    assert mask_values(np.full((2, 2), 255, np.uint8)).max() == 1.0


def test_mask_shapes_and_soft_values():
    m = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)
    for shaped in (m[None], m[:, :, None], m[None, :, :, None]):
        np.testing.assert_array_equal(mask_values(shaped), m)
    assert mask_values(m) is m  # float32 / float64 kept in their own precision
    with pytest.raises(ValueError, match=r"human_mask: size 3x4 \(HxW\) does not match its image, which is 5x4"):
        as_mask(m, "human_mask", (5, 4, 3))
    with pytest.raises(ValueError, match="human_mask: float masks must be in"):
        as_mask(m * 2, "human_mask")
    with pytest.raises(ValueError, match="human_mask is empty"):
        as_mask(np.zeros((3, 4)), "human_mask")
    with pytest.raises(ValueError, match="human_mask: expected an H x W mask"):
        as_mask(np.zeros((3, 4, 3)), "human_mask")


def test_images_from_every_source(tmp_path):
    rgb = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) * 10
    path = tmp_path / "image.png"
    Image.fromarray(rgb).save(path)
    for copy in (rgb, rgb / 255.0, Image.fromarray(rgb), path, torch.from_numpy(rgb / 255.0).float()):
        np.testing.assert_array_equal(as_image(copy), rgb)
    rgba = np.dstack([rgb, np.array([[0, 255, 255], [255, 255, 0]], np.uint8)])
    flat = as_image(Image.fromarray(rgba, "RGBA"))  # transparent pixels flattened on white
    assert flat[0, 0].tolist() == [255, 255, 255] and flat[0, 1].tolist() == rgb[0, 1].tolist()
    with pytest.raises(FileNotFoundError, match="background: image file .* does not exist"):
        as_image(tmp_path / "missing.png", "background")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="background: cannot read image file"):
        as_image(tmp_path / "bad.png", "background")
    with pytest.raises(ValueError, match=r"human_image: .*batch"):
        as_image(rgb[None], "human_image")
