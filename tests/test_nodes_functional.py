"""The node classes run directly (no ComfyUI) on the shipped example inputs, with the
embedded default models at 2 sampling steps: what a user's graph would compute.

Inputs are made the way ComfyUI's core nodes make them: LoadImage gives IMAGE
[1,H,W,3] and MASK = 1 - alpha (a 64x64 zero mask for an image without alpha),
InvertMask gives 1 - mask, LoadImageMask(channel "red") of a grayscale PNG gives its
gray values.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from interact_custom.nodes import NODE_CLASS_MAPPINGS as NODES

EXAMPLES = Path(__file__).resolve().parents[1] / "pipelines" / "assets" / "examples"
EXAMPLE = json.loads((EXAMPLES / "example.json").read_text())
BOX = tuple(EXAMPLE["box"])  # (x, y, width, height) in background pixels
STEPS = 2


def load_image(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """ComfyUI LoadImage: (IMAGE [1,H,W,3], MASK [1,H,W] = 1 - alpha, or 64x64 zeros without alpha)."""
    img = Image.open(EXAMPLES / name)
    rgb = torch.from_numpy(np.asarray(img.convert("RGB"), np.float32) / 255.0)[None]
    if "A" in img.getbands():
        mask = 1.0 - torch.from_numpy(np.asarray(img.getchannel("A"), np.float32) / 255.0)[None]
    else:
        mask = torch.zeros(1, 64, 64)
    return rgb, mask


def load_image_mask_red(name: str) -> torch.Tensor:
    """ComfyUI LoadImageMask(channel="red"): an L image is converted to RGBA, red = gray."""
    return torch.from_numpy(np.asarray(Image.open(EXAMPLES / name).convert("RGBA").getchannel("R"),
                                       np.float32) / 255.0)[None]


def node(key: str):
    return NODES[f"InteractCustom{key}"]()


def sampler_args(**overrides) -> dict:
    args = dict(steps=STEPS, sampler="dpmpp_2m", guidance=5.0, control_strength=1.0, seed=42, batch_size=1,
                mask_channel="mask", crop_ratio=1.3, paste="crop", collage="box")
    args.update(overrides)
    return args


def iamg_args(**overrides) -> dict:
    args = dict(interaction=EXAMPLE["caption"], steps=STEPS, sampler="dpmpp_2m", guidance=5.0, seed=7,
                batch_size=1, threshold=0.5, clip_to_box=True, width=512, height=512)
    args.update(overrides)
    return args


@pytest.fixture(scope="module")
def inputs() -> dict:
    human, human_bg = load_image("human.png")
    obj, obj_bg = load_image("object.png")
    background, background_mask = load_image("background.png")
    return {"human": human, "human_mask": 1.0 - human_bg, "object": obj, "object_mask": 1.0 - obj_bg,
            "background": background, "background_mask": background_mask,
            "interaction_mask": load_image_mask_red("interaction_mask.png")}


@pytest.fixture(scope="module")
def mgig():
    return node("LoadMGIG").load("(embedded) default", "auto", "cpu", True)[0]


@pytest.fixture(scope="module")
def iamg():
    return node("LoadIAMG").load("(embedded) default", "auto", "cpu", True)[0]


@pytest.fixture(scope="module")
def identity(mgig, inputs):
    """(id_features, reference_canvas, canvas_mask, detail_map)."""
    features, canvas, canvas_mask = node("IDFeatures").extract(
        mgig, inputs["human"], inputs["human_mask"], inputs["object"], inputs["object_mask"])
    (detail,) = node("DetailMap").compute(canvas, canvas_mask, 50)
    return features, canvas, canvas_mask, detail


@pytest.fixture(scope="module")
def generated(mgig, identity, inputs):
    features, _, _, detail = identity
    return node("MaskGuidedSampler").sample(mgig, features, detail, inputs["interaction_mask"], **sampler_args(),
                                            background=inputs["background"], box=BOX)


# ------------------------------------------------------------------------------ MGIG

def test_identity_outputs(identity):
    features, canvas, canvas_mask, detail = identity
    assert len(features) == 1
    assert canvas.shape == (1, 224, 224, 3) and canvas.dtype == torch.float32
    # The canvas mask is resized with the canvas (soft edges), as in the official preprocessing.
    assert canvas_mask.shape == (1, 224, 224) and float(canvas_mask.min()) == 0.0 and float(canvas_mask.max()) == 1.0
    assert detail.shape == (1, 224, 224, 3) and 0.0 <= float(detail.min()) and float(detail.max()) <= 1.0
    # The detail map only keeps edges inside the (eroded) canvas mask.
    assert float(detail.amax(-1)[canvas_mask == 0].max()) == 0.0 and float(detail.max()) > 0.0


def test_sampler_output_sizes_and_paste(generated, inputs):
    image, crop, pasted = generated
    background = inputs["background"]
    assert image.shape == background.shape == (1, 256, 384, 3)
    assert crop.shape == (1, 512, 512, 3)
    assert pasted.shape == (1, 256, 384) and set(pasted.unique().tolist()) == {0.0, 1.0}
    outside = pasted[0] == 0
    # Outside the pasted region the background comes back bit for bit.
    assert torch.equal(image[0][outside], background[0][outside])
    assert not torch.equal(image[0][~outside], background[0][~outside])
    # The pasted region covers the interaction mask's box.
    x, y, w, h = BOX
    ys, xs = torch.nonzero(pasted[0], as_tuple=True)
    assert int(xs.min()) <= x and int(xs.max()) >= x + w - 1 and int(ys.min()) <= y and int(ys.max()) >= y + h - 1


def test_sampler_paste_mask_keeps_the_scene_and_outputs_its_alpha(mgig, identity, inputs, generated):
    # The node's default compositing: only the (grown, feathered) figure replaces the scene.
    features, _, _, detail = identity
    spec = NODES["InteractCustomMaskGuidedSampler"].INPUT_TYPES()["required"]["paste"]
    assert spec[1]["default"] == "mask"
    image, _, alpha = node("MaskGuidedSampler").sample(mgig, features, detail, inputs["interaction_mask"],
                                                       **sampler_args(paste="mask"),
                                                       background=inputs["background"], box=BOX)
    background = inputs["background"]
    kept = alpha[0] == 0
    assert torch.equal(image[0][kept], background[0][kept])
    assert ((alpha > 0) & (alpha < 1)).any()  # feathered edge
    figure = inputs["interaction_mask"][0] > 0.5
    assert bool((alpha[0][figure] == 1).all())
    crop_region = generated[2][0] > 0
    assert kept[crop_region].float().mean() > 0.2  # much of the crop is the user's scene again
    # Where alpha is 1, the same generation as paste = crop.
    assert torch.equal(image[0][alpha[0] == 1], generated[0][0][alpha[0] == 1])


def test_sampler_seed(mgig, identity, inputs, generated):
    features, _, _, detail = identity
    again = node("MaskGuidedSampler").sample(mgig, features, detail, inputs["interaction_mask"], **sampler_args(),
                                             background=inputs["background"], box=BOX)
    assert torch.equal(again[0], generated[0]) and torch.equal(again[1], generated[1])
    other = node("MaskGuidedSampler").sample(mgig, features, detail, inputs["interaction_mask"],
                                             **sampler_args(seed=43), background=inputs["background"], box=BOX)
    assert not torch.equal(other[1], generated[1])
    assert torch.equal(other[2], generated[2])  # same mask, same pasted region


def test_sampler_seed_ancestral(mgig, identity, inputs):
    """euler_a (the embedded default's sampler) draws fresh noise every step: the seed fixes
    it too, whatever torch's global RNG has done in between."""
    features, _, _, detail = identity

    def run(seed, global_seed):
        torch.manual_seed(global_seed)
        return node("MaskGuidedSampler").sample(mgig, features, detail, inputs["interaction_mask"],
                                                **sampler_args(sampler="euler_a", steps=3, seed=seed),
                                                background=inputs["background"], box=BOX)[1]

    first = run(5, 0)
    assert torch.equal(run(5, 123), first)
    assert not torch.equal(run(6, 0), first)


# ------------------------------------------------------------------------------ IAMG

def test_iamg_mask_in_background(iamg, inputs):
    mask, soft, preview = node("IAMGGenerateMask").generate(iamg, **iamg_args(), background=inputs["background"],
                                                            box=BOX)
    assert mask.shape == soft.shape == (1, 256, 384)
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    assert 0.0 <= float(soft.min()) and float(soft.max()) <= 1.0
    assert torch.equal(mask, (soft > 0.5).float())
    assert preview.shape == (1, 256, 384, 3)
    # The preview is the background, tinted where the mask is.
    assert torch.allclose(preview[0][mask[0] == 0], inputs["background"][0][mask[0] == 0], atol=1 / 255)


def test_iamg_mask_on_canvas(iamg):
    mask, soft, preview = node("IAMGGenerateMask").generate(iamg, **iamg_args(width=320, height=256, batch_size=2))
    assert mask.shape == soft.shape == (2, 256, 320) and preview.shape == (2, 256, 320, 3)
    assert set(mask.unique().tolist()) <= {0.0, 1.0}


# ----------------------------------------------------------------------------- IAMG-R

def test_retrieval_and_fit(inputs):
    mask, caption, grid = node("IAMGRRetrieveMask").retrieve("(shipped) example bank", EXAMPLE["caption"], "", 8, 1)
    assert caption == EXAMPLE["caption"]  # the bank holds this exact caption
    assert mask.ndim == 3 and mask.shape[0] == 1 and float(mask.max()) > 0
    assert grid.ndim == 4 and grid.shape[0] == 1 and grid.shape[-1] == 3
    (fitted,) = node("FitMaskToBox").fit(mask, BOX, "keep_aspect", 512, 512, image=inputs["background"])
    assert fitted.shape == (1, 256, 384)
    x, y, w, h = BOX
    ys, xs = torch.nonzero(fitted[0] > 0, as_tuple=True)
    assert x <= int(xs.min()) and int(xs.max()) < x + w and y <= int(ys.min()) and int(ys.max()) < y + h
    # keep_aspect: the mask spans the box in one direction.
    assert int(xs.max()) - int(xs.min()) + 1 >= w - 1 or int(ys.max()) - int(ys.min()) + 1 >= h - 1
    (stretched,) = node("FitMaskToBox").fit(mask, BOX, "stretch", 384, 256)
    ys, xs = torch.nonzero(stretched[0] > 0, as_tuple=True)
    assert (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1) == (x, y, x + w, y + h)


def test_retrieval_candidate_errors():
    with pytest.raises(ValueError, match="beyond top_k"):
        node("IAMGRRetrieveMask").retrieve("(shipped) example bank", "riding", "", 2, 3)
    with pytest.raises(ValueError, match="category"):
        node("IAMGRRetrieveMask").retrieve("(shipped) example bank", "riding", "no such thing", 2, 1)


# ---------------------------------------------------------------- errors users meet

def test_loadimage_placeholder_mask_is_explained(mgig, identity, inputs):
    placeholder = torch.zeros(1, 64, 64)  # LoadImage's mask for an image without alpha
    with pytest.raises(ValueError, match=r"human_mask is empty.*64x64 placeholder.*MaskEditor"):
        node("IDFeatures").extract(mgig, inputs["human"], placeholder, inputs["object"], inputs["object_mask"])
    _, placeholder_bg = load_image("interaction_mask.png")  # a grayscale PNG loaded with LoadImage
    features, _, _, detail = identity
    with pytest.raises(ValueError, match=r"interaction_mask is empty.*LoadImageMask"):
        node("MaskGuidedSampler").sample(mgig, features, detail, placeholder_bg, **sampler_args(),
                                         background=inputs["background"])


def test_box_outside_background(mgig, iamg, identity, inputs):
    features, _, _, detail = identity
    outside = (300, 79, 149, 162)  # x + width = 449 > 384
    with pytest.raises(ValueError, match=r"outside the 384x256 background"):
        node("MaskGuidedSampler").sample(mgig, features, detail, inputs["interaction_mask"], **sampler_args(),
                                         background=inputs["background"], box=outside)
    with pytest.raises(ValueError, match=r"outside the 384x256 background"):
        node("IAMGGenerateMask").generate(iamg, **iamg_args(), background=inputs["background"], box=outside)
    with pytest.raises(ValueError, match=r"outside the 384x256 background"):
        node("FitMaskToBox").fit(inputs["interaction_mask"], outside, "keep_aspect", 512, 512,
                                 image=inputs["background"])
    with pytest.raises(ValueError, match="positive width and height"):
        node("Box").make(10, 10, 0, 20)


def test_mask_outside_box(mgig, identity, inputs):
    features, _, _, detail = identity
    elsewhere = (0, 0, 100, 60)  # inside the background, but the interaction mask is not there
    with pytest.raises(ValueError, match="no pixels inside the box"):
        node("MaskGuidedSampler").sample(mgig, features, detail, inputs["interaction_mask"], **sampler_args(),
                                         background=inputs["background"], box=elsewhere)


def test_box_without_background_in_iamg(iamg):
    with pytest.raises(ValueError, match="box is connected but background is not"):
        node("IAMGGenerateMask").generate(iamg, **iamg_args(), box=BOX)


def test_mismatched_batches(mgig, identity, inputs):
    humans = inputs["human"].expand(2, -1, -1, -1)
    masks = inputs["human_mask"].expand(3, -1, -1)
    with pytest.raises(ValueError, match=r"human_image has a batch of 2 but human_mask has 3"):
        node("IDFeatures").extract(mgig, humans, masks, inputs["object"], inputs["object_mask"])
    features, canvas, canvas_mask, detail = identity
    with pytest.raises(ValueError, match=r"reference_canvas has a batch of 2 but canvas_mask has 3"):
        node("DetailMap").compute(canvas.expand(2, -1, -1, -1), canvas_mask.expand(3, -1, -1), 50)
    with pytest.raises(ValueError, match=r"id_features has a batch of 2 but interaction_mask has 3"):
        node("MaskGuidedSampler").sample(mgig, features * 2, detail.expand(2, -1, -1, -1),
                                         inputs["interaction_mask"].expand(3, -1, -1), **sampler_args(),
                                         background=inputs["background"])
