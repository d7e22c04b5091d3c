"""Bad inputs at the node layer (issue 14), run through the node classes as a graph would:

- an IMAGE with NaN pixels, an IMAGE / MASK holding 0..255 data, a MASK with NaN: one
  clear error naming the input (they used to become black / white silently);
- a human or object mask that covers the whole image or touches all four borders (an
  inverted mask, or an inverted 64x64 placeholder): a warning in the log and on the node;
- a prompt with no word the small model knows (emoji, another language): a warning in
  the log and on the node, since the mask is then generated as if there were no prompt.
"""
from __future__ import annotations

import logging
import re

import numpy as np
import pytest
import torch

from interact_custom.nodes import NODE_CLASS_MAPPINGS as NODES
from interact_custom.nodes import tensors

from test_nodes_functional import BOX, iamg, iamg_args, load_image, mgig  # noqa: F401 (fixtures)

STEPS = 1


def node(key: str):
    return NODES[f"InteractCustom{key}"]()


@pytest.fixture(scope="module")
def refs():
    human, human_bg = load_image("human.png")
    obj, obj_bg = load_image("object.png")
    background, _ = load_image("background.png")
    return {"human": human, "human_mask": 1.0 - human_bg, "object": obj, "object_mask": 1.0 - obj_bg,
            "background": background}


# --------------------------------------------------------------- IMAGE / MASK values

def test_nan_pixels_are_refused(mgig, refs):
    image = refs["human"].clone()
    image[0, :3, :5] = float("nan")
    with pytest.raises(ValueError, match=r"human_image: 45 of \d+ IMAGE values are NaN or infinite"):
        node("IDFeatures").extract(mgig, image, refs["human_mask"], refs["object"], refs["object_mask"])


def test_0_255_image_is_refused_instead_of_turning_white(mgig, refs):
    with pytest.raises(ValueError, match=r"object_image: values go up to 255, .*0\.\.255 data — divide it by 255"):
        node("IDFeatures").extract(mgig, refs["human"], refs["human_mask"], refs["object"] * 255.0,
                                   refs["object_mask"])


def test_0_255_and_nan_masks_are_refused(mgig, refs):
    with pytest.raises(ValueError, match=r"human_mask: values go up to 255, .*MASK holds 0\.\.1"):
        node("IDFeatures").extract(mgig, refs["human"], refs["human_mask"] * 255.0, refs["object"],
                                   refs["object_mask"])
    mask = refs["object_mask"].clone()
    mask[0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"object_mask: 1 of \d+ MASK values are NaN or infinite"):
        node("IDFeatures").extract(mgig, refs["human"], refs["human_mask"], refs["object"], mask)


def test_slight_overshoot_is_still_clamped():
    # Resamplers overshoot a little: that stays legal (clamped), only 0..255 data is refused.
    image = torch.full((1, 4, 4, 3), 1.01)
    image[0, 0, 0] = -0.01
    (arr,) = tensors.image_batch(image, "image")
    assert arr.max() == 255 and arr.min() == 0


# ------------------------------------------------------------------ inverted masks

def test_inverted_mask_warns_in_the_log_and_on_the_node(mgig, refs, caplog):
    inverted = 1.0 - refs["human_mask"]  # forgot InvertMask: the background is "the person"
    with caplog.at_level(logging.WARNING, logger="interact_custom"):
        out = node("IDFeatures").extract(mgig, refs["human"], inverted, refs["object"], refs["object_mask"])
    assert isinstance(out, dict), "the node should carry the warning to the front end"
    (text,) = out["ui"]["text"]
    assert text.startswith("human_mask") and "probably inverted" in text and "InvertMask" in text
    assert "probably inverted" in caplog.text
    features, canvas, canvas_mask = out["result"]
    assert canvas.shape == (1, 224, 224, 3)  # still runs: a warning, not an error


def test_placeholder_inverted_covers_the_whole_image(mgig, refs):
    # InvertMask of LoadImage's 64x64 zero placeholder: all ones.
    out = node("IDFeatures").extract(mgig, refs["human"], refs["human_mask"], refs["object"], torch.ones(1, 64, 64))
    (text,) = out["ui"]["text"]
    assert text.startswith("object_mask covers 100% of the image")


def test_a_normal_cut_out_gives_no_warning(mgig, refs):
    out = node("IDFeatures").extract(mgig, refs["human"], refs["human_mask"], refs["object"], refs["object_mask"])
    assert isinstance(out, tuple) and len(out) == 3


# ------------------------------------------------------------------ unreadable prompts

@pytest.mark.parametrize("prompt", ["🚲🏃", "un homme fait du vélo"])
def test_a_prompt_the_model_cannot_read_warns(iamg, refs, prompt, caplog):
    with caplog.at_level(logging.WARNING, logger="interact_custom"):
        out = node("IAMGGenerateMask").generate(iamg, **iamg_args(interaction=prompt, steps=STEPS),
                                            background=refs["background"], box=BOX)
    assert isinstance(out, dict)
    (text,) = out["ui"]["text"]
    assert "none of the words of the prompt" in text and "in English" in text
    assert "none of the words" in caplog.text
    mask = out["result"][0]
    assert mask.shape[1:] == refs["background"].shape[1:3]


def test_an_english_prompt_gives_no_warning(iamg, refs):
    out = node("IAMGGenerateMask").generate(iamg, **iamg_args(steps=STEPS), background=refs["background"], box=BOX)
    assert isinstance(out, tuple)


def test_the_warning_is_also_in_the_pipeline_result(iamg):
    from interact_custom.pipelines import iamg as iamg_pipeline

    with iamg as model:
        result = iamg_pipeline.generate_mask(model, prompt="🚲", steps=STEPS, sampler="euler_a")
        clean = iamg_pipeline.generate_mask(model, prompt="a person is holding the cup", steps=STEPS,
                                            sampler="euler_a")
    assert len(result.warnings) == 1 and clean.warnings == []
    assert np.isfinite(np.asarray(result.soft)).all()


# ------------------------------------------------------------------ IAMG-R queries

@pytest.mark.parametrize("query, match", [("", "query is empty"), ("   ", "query is empty"),
                                          ("🚲🏃", "has no word the LexicalEncoder knows")])
def test_retrieval_refuses_queries_it_cannot_read(query, match):
    from interact_custom.pipelines import retrieval
    from interact_custom.pipelines.paths import BANK_DIR

    bank = retrieval.MaskBank.load(BANK_DIR)
    with pytest.raises(ValueError, match=match):
        retrieval.retrieve(bank, query, encoder=retrieval.LexicalEncoder(), top_k=1)
    # an English query still works
    best = retrieval.retrieve(bank, "a person is riding the bicycle", encoder=retrieval.LexicalEncoder(), top_k=1)
    assert "bicycle" in best[0].caption


# --------------------------------------------------------------- sampling settings

@pytest.mark.parametrize("setting, value, says", [
    ("guidance", float("nan"), "guidance: expected a finite number >= 0, got nan"),
    ("control_strength", -1.0, "control strength: expected a finite number >= 0, got -1.0"),
    ("steps", -3, "steps: expected a whole number from 1 to 500 for the euler_a sampler, got -3"),
    ("collage", "mask", "collage: expected one of box, figure, got 'mask'"),
])
def test_sampler_node_refuses_settings_it_cannot_run(mgig, refs, setting, value, says):
    # (they used to paste a black square / noise); `steps 0` means auto, so -3 is the bad one
    from test_nodes_functional import sampler_args

    features, canvas, canvas_mask = node("IDFeatures").extract(mgig, refs["human"], refs["human_mask"],
                                                              refs["object"], refs["object_mask"])
    (detail,) = node("DetailMap").compute(canvas, canvas_mask, 50)
    args = {**sampler_args(), "sampler": "euler_a", setting: value}
    mask = torch.zeros(1, *refs["background"].shape[1:3])
    mask[0, 100:180, 100:160] = 1.0
    with pytest.raises(ValueError, match=re.escape(says)):
        node("MaskGuidedSampler").sample(mgig, features, detail, mask, **args)
