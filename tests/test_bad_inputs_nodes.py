"""Bad inputs at the node layer (issue 14), run through the node classes as a graph would:

- an IMAGE with NaN pixels, an IMAGE / MASK holding 0..255 data, a MASK with NaN: one
  clear error naming the input (they used to become black / white silently);
- a human or object mask that covers the whole image or touches all four borders (an
  inverted mask, or an inverted 64x64 placeholder): a warning in the log and on the node;
- a prompt with no word the small model knows (emoji, another language): a warning in
  the log and on the node, since the mask is then generated as if there were no prompt;
  one warning per unknown word otherwise (and per word its training never showed, when
  the tokenizer records them);
- sizes no machine can hold (a 4096² canvas x 16, a huge background or photo): refused
  before any allocation or sampling, naming the inputs, the estimate and the memory
  available (`pipelines.memory`), whose estimates are checked against measured peaks;
- a batch of backgrounds: each gets its masks / images (no silent first item); empty
  batches and ID features of another MGIG: errors naming the input (and both models).
"""
from __future__ import annotations

import logging
import os
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
        clean = iamg_pipeline.generate_mask(model, prompt="a person is holding the ball", steps=STEPS,
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


# ------------------------------------------------- memory: sizes no machine can hold
# (pipelines/memory.py: each node estimates what it will hold and refuses, naming the
# inputs, before it allocates or samples anything)

GIB = 2 ** 30
MAX_CANVAS, MAX_BATCH = 4096, 16  # nodes/masks.py: the widgets' largest canvas and batch


@pytest.fixture()
def machine_with(monkeypatch):
    """Pretend the machine has this much memory available."""
    from interact_custom.pipelines import memory

    def set_available(n_bytes: int):
        monkeypatch.setattr(memory, "available_bytes", lambda: n_bytes)
    return set_available


@pytest.fixture()
def no_sampling(monkeypatch):
    """Any sampling is a failure: a refused run must stop before the models run."""
    from interact_custom.pipelines import iamg as iamg_pipeline
    from interact_custom.pipelines.mgig import pipeline as mgig_pipeline

    def sampled(*args, **kwargs):
        raise AssertionError("sampled although the run cannot fit in memory")
    monkeypatch.setattr(iamg_pipeline, "generate_mask", sampled)
    monkeypatch.setattr(iamg_pipeline.pipeline, "generate_mask", sampled)  # what `generate_masks` calls
    monkeypatch.setattr(mgig_pipeline, "generate", sampled)


def test_generate_mask_refuses_a_canvas_batch_no_machine_holds(iamg, machine_with, no_sampling):
    from interact_custom.pipelines import memory
    from interact_custom.pipelines.memory import MemoryLimitError  # noqa: F401

    machine_with(8 * GIB)
    with pytest.raises(MemoryLimitError) as e:
        node("IAMGGenerateMask").generate(iamg, **iamg_args(steps=STEPS, batch_size=MAX_BATCH, width=MAX_CANVAS,
                                                            height=MAX_CANVAS))
    message = str(e.value)
    assert message.startswith(f"IAMG Generate Mask: {MAX_BATCH} mask(s) of 4096x4096 (batch_size {MAX_BATCH}) needs "
                              "about 8.4 GiB of memory, but this machine has 8.0 GiB available")
    assert "lower batch_size or width / height" in message


def test_generate_mask_refuses_a_huge_background(iamg, machine_with, no_sampling):
    from interact_custom.pipelines import memory
    from interact_custom.pipelines.memory import MemoryLimitError  # noqa: F401

    machine_with(256 * 2 ** 20)
    background = torch.rand(1, 2048, 2048, 3)
    with pytest.raises(MemoryLimitError, match=r"IAMG Generate Mask: 1 mask\(s\) of 2048x2048 .*needs about "
                                                      r"0\.\d GiB.* or a smaller background \(e\.g\. Upscale Image"):
        node("IAMGGenerateMask").generate(iamg, **iamg_args(steps=STEPS), background=background)


def test_sampler_refuses_a_huge_background(mgig, refs, machine_with):
    from interact_custom.pipelines import memory
    from interact_custom.pipelines.memory import MemoryLimitError  # noqa: F401

    features, canvas, canvas_mask = node("IDFeatures").extract(mgig, refs["human"], refs["human_mask"],
                                                              refs["object"], refs["object_mask"])
    (detail,) = node("DetailMap").compute(canvas, canvas_mask, 50)
    background = torch.rand(1, 2048, 2048, 3)
    mask = torch.zeros(1, 2048, 2048)
    mask[0, 800:1200, 800:1100] = 1.0
    machine_with(256 * 2 ** 20)
    from test_nodes_functional import sampler_args

    with pytest.raises(MemoryLimitError, match=r"Mask-Guided Sampler: 4 image\(s\) of 2048x2048 \(1 x "
                                                      r"batch_size 4\) needs about .* lower batch_size"):
        node("MaskGuidedSampler").sample(mgig, features, detail, mask, **sampler_args(batch_size=4),
                                         background=background)


def test_id_features_and_fit_refuse_sizes_beyond_the_machine(mgig, refs, machine_with):
    from interact_custom.pipelines import memory
    from interact_custom.pipelines.memory import MemoryLimitError  # noqa: F401

    machine_with(64 * 2 ** 20)
    photo = torch.rand(1, 2048, 2048, 3)
    mask = torch.zeros(1, 2048, 2048)
    mask[0, 100:900, 200:700] = 1.0
    with pytest.raises(MemoryLimitError, match=r"CHOI ID Features \(human_image 2048x2048, object_image "
                                                      r"\d+x\d+\) needs about .*use smaller photos"):
        node("IDFeatures").extract(mgig, photo, mask, refs["object"], refs["object_mask"])
    with pytest.raises(MemoryLimitError, match=r"Fit Mask To Box: 8 mask\(s\) on a 4096x4096 canvas needs "
                                                      r"about .*use a smaller canvas"):
        node("FitMaskToBox").fit(torch.ones(8, 64, 64), (0, 0, 100, 100), "keep_aspect", 4096, 4096)


def test_widget_maxima_fit_a_machine_with_16_gib():
    from interact_custom.pipelines import memory
    from interact_custom.pipelines.memory import MemoryLimitError  # noqa: F401

    # The largest canvas and batch the widgets offer (what a workflow can ask for without an
    # image) needs less than what a 16 GiB machine can give a run.
    specs = node("IAMGGenerateMask").INPUT_TYPES()["required"]
    assert specs["width"][1]["max"] == specs["height"][1]["max"] == MAX_CANVAS
    assert specs["batch_size"][1]["max"] == MAX_BATCH
    assert node("MaskGuidedSampler").INPUT_TYPES()["required"]["batch_size"][1]["max"] == MAX_BATCH
    fit = node("FitMaskToBox").INPUT_TYPES()["required"]
    assert fit["width"][1]["max"] == fit["height"][1]["max"] == MAX_CANVAS
    assert memory.estimate("iamg_masks", MAX_CANVAS, MAX_CANVAS, MAX_BATCH) < 10 * GIB


def test_available_memory_is_read_from_the_system():
    from interact_custom.pipelines import memory
    from interact_custom.pipelines.memory import MemoryLimitError  # noqa: F401

    available = memory.available_bytes()
    assert available is not None and 0 < available


_MEASURE = r"""
import gc, json, sys
import torch
sys.path.insert(0, sys.argv[1])
torch.set_num_threads(1)
from interact_custom.nodes import NODE_CLASS_MAPPINGS as NODES
from interact_custom.pipelines import memory
from test_nodes_functional import iamg_args, load_image, sampler_args

def node(key):
    return NODES[f"InteractCustom{key}"]()

def status(field):
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith(field))

rows = []
def measure(label, need, call):
    gc.collect()
    base = status("VmRSS:")
    open("/proc/self/clear_refs", "w").write("5")  # VmHWM := VmRSS
    out = call()
    rows.append((label, status("VmHWM:") - base, need))
    del out

iamg = node("LoadIAMG").load("(embedded) default", "auto", "cpu", True)[0]
mgig = node("LoadMGIG").load("(embedded) default", "auto", "cpu", True)[0]
node("IAMGGenerateMask").generate(iamg, **iamg_args(steps=1, width=128, height=128))  # first-call set-up
S, E = 1536, memory.estimate
bg = torch.rand(2, S, S, 3)
measure("iamg", E("iamg_masks", S, S, 4) + E("image_input", S, S, 2),
        lambda: node("IAMGGenerateMask").generate(iamg, **iamg_args(steps=1, batch_size=2), background=bg,
                                                  box=(100, 200, 600, 700)))
human, human_bg = load_image("human.png")
obj, obj_bg = load_image("object.png")
features, canvas, canvas_mask = node("IDFeatures").extract(mgig, human, 1 - human_bg, obj, 1 - obj_bg)
(detail,) = node("DetailMap").compute(canvas, canvas_mask, 50)
mask = torch.zeros(1, S, S)
mask[0, 500:1000, 400:900] = 1.0
measure("sampler", E("mgig_images", S, S, 4) + E("image_input", S, S, 2) + E("mask_input", S, S, 1),
        lambda: node("MaskGuidedSampler").sample(mgig, features, detail, mask, **sampler_args(steps=1, batch_size=2),
                                                 background=bg))
measure("fit", E("fit_masks", S, S, 2) + E("mask_input", S, S, 2),
        lambda: node("FitMaskToBox").fit(mask.expand(2, -1, -1), (100, 100, 1200, 1000), "keep_aspect", S, S))
photo = torch.nn.functional.interpolate(human.permute(0, 3, 1, 2), size=(S, S)).permute(0, 2, 3, 1).contiguous()
photo_mask = torch.nn.functional.interpolate((1 - human_bg)[None], size=(S, S))[0].contiguous()
measure("id_features", sum(E(k, S, S, 1) for k in ("image_input", "mask_input", "id_reference")),
        lambda: node("IDFeatures").extract(mgig, photo, photo_mask, obj, 1 - obj_bg))
big_canvas = torch.nn.functional.interpolate(canvas.permute(0, 3, 1, 2), size=(S, S)).permute(0, 2, 3, 1).contiguous()
big_mask = torch.nn.functional.interpolate(canvas_mask[None], size=(S, S))[0].contiguous()
measure("detail_map", sum(E(k, S, S, 1) for k in ("image_input", "mask_input", "detail_map")),
        lambda: node("DetailMap").compute(big_canvas, big_mask, 50))
print(json.dumps(rows))
"""


@pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK), reason="needs Linux's peak-RSS reset")
@pytest.mark.slow
def test_memory_estimates_cover_what_the_nodes_use():
    # Each node's estimate (pipelines/memory.py FOOTPRINTS) is at least the peak memory it
    # really adds, measured in a fresh process (glibc told to return every large block, so
    # the resident size follows what is allocated) at 1536x1536 with batches of 2.
    import json
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
    proc = subprocess.run([sys.executable, "-c", _MEASURE, str(Path(__file__).parent)], capture_output=True,
                          text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(proc.stdout.strip().splitlines()[-1])
    for label, peak, need in rows:
        assert peak <= need, f"{label}: used {peak / 2 ** 20:.0f} MiB, estimated {need / 2 ** 20:.0f} MiB"
        assert need <= 3 * max(peak, 2 ** 20), f"{label}: estimate {need / 2 ** 20:.0f} MiB, used {peak / 2 ** 20:.0f}"


# ------------------------------------------------------- a batch of backgrounds

def _backgrounds(refs, n=3):
    """n different scenes of the example background's size (darkened copies, in 8-bit steps)."""
    bg = refs["background"]
    return torch.cat([torch.round(bg * 255.0 * (1.0 - 0.2 * k)) / 255.0 for k in range(n)])


def test_generate_mask_runs_each_background_of_a_batch(iamg, refs):
    backgrounds = _backgrounds(refs)
    args = iamg_args(steps=STEPS, sampler="euler_a", batch_size=2)
    masks, soft, previews = node("IAMGGenerateMask").generate(iamg, **args, background=backgrounds, box=BOX)
    assert masks.shape == soft.shape == (6, *backgrounds.shape[1:3]) and previews.shape == (6, *backgrounds.shape[1:])
    for k in range(3):  # items 2k, 2k+1: background k, as a run on it alone
        alone, alone_soft, alone_preview = node("IAMGGenerateMask").generate(iamg, **args,
                                                                          background=backgrounds[k:k + 1], box=BOX)
        assert torch.equal(masks[2 * k:2 * k + 2], alone) and torch.equal(soft[2 * k:2 * k + 2], alone_soft)
        assert torch.equal(previews[2 * k:2 * k + 2], alone_preview)


def test_sampler_generates_into_each_background_of_a_batch(mgig, refs):
    from test_nodes_functional import sampler_args

    features, canvas, canvas_mask = node("IDFeatures").extract(mgig, refs["human"], refs["human_mask"],
                                                              refs["object"], refs["object_mask"])
    (detail,) = node("DetailMap").compute(canvas, canvas_mask, 50)
    backgrounds = _backgrounds(refs)
    mask = torch.zeros(1, *backgrounds.shape[1:3])
    mask[0, 100:180, 100:160] = 1.0
    images, crops, alpha = node("MaskGuidedSampler").sample(mgig, features, detail, mask,
                                                            **sampler_args(sampler="euler_a", paste="mask"),
                                                            background=backgrounds)
    assert images.shape == backgrounds.shape and crops.shape[0] == alpha.shape[0] == 3
    for k in range(3):  # each image keeps its own scene outside the pasted figure
        kept = alpha[k] == 0
        assert torch.equal(images[k][kept], backgrounds[k][kept])
    with pytest.raises(ValueError, match=r"id_features / interaction_mask has a batch of 2 but background has 3"):
        node("MaskGuidedSampler").sample(mgig, features, detail, mask.expand(2, -1, -1),
                                         **sampler_args(sampler="euler_a"), background=backgrounds)


# ------------------------------------------------------- words the model does not know

@pytest.mark.parametrize("prompt, words", [
    ("a person is defenestrating the bicycle", ["defenestrating"]),
    ("a person is kiking the bal", ["kiking", "bal"]),
])
def test_each_unknown_word_of_the_prompt_warns(iamg, refs, prompt, words, caplog):
    with caplog.at_level(logging.WARNING, logger="interact_custom"):
        out = node("IAMGGenerateMask").generate(iamg, **iamg_args(interaction=prompt, steps=STEPS),
                                            background=refs["background"], box=BOX)
    assert isinstance(out, dict), "the node should carry the warnings to the front end"
    texts = out["ui"]["text"]
    assert len(texts) == len(words)
    for word, text in zip(words, texts):
        assert text.startswith(f"the word {word!r} of the prompt is not in this model's vocabulary")
        assert f"the word {word!r}" in caplog.text
    assert "did you mean 'kicking'" in " ".join(texts) or words == ["defenestrating"]


def test_the_embedded_default_warns_about_words_it_never_learned(iamg, refs):
    # "giraffe" is in its vocabulary but in none of the synthetic captions it learned from.
    out = node("IAMGGenerateMask").generate(iamg, **iamg_args(interaction="a person is riding the giraffe",
                                                              steps=STEPS),
                                            background=refs["background"], box=BOX)
    assert isinstance(out, dict)
    assert out["ui"]["text"] == ["the word 'giraffe' of the prompt is in none of the captions this model was "
                                 "trained on: it has not learned what it means, so the mask may ignore it"]


# ------------------------------------------------------- ID features of another MGIG

def test_id_features_of_another_mgig_are_refused_naming_both(mgig, refs):
    from test_nodes_functional import sampler_args
    from interact_custom.nodes import comfy_bridge as bridge
    from interact_custom.nodes.loaders import LoadedModel
    from interact_custom.pipelines.mgig import MGIGModel, mgig_config

    torch.manual_seed(0)
    other = LoadedModel("mgig", bridge.ManagedModel(MGIGModel(mgig_config("tiny")).eval(), torch.device("cpu")),
                        "tiny_mgig.safetensors", torch.float32)
    features, canvas, canvas_mask = node("IDFeatures").extract(other, refs["human"], refs["human_mask"],
                                                              refs["object"], refs["object_mask"])
    (detail,) = node("DetailMap").compute(canvas, canvas_mask, 50)
    mask = torch.zeros(1, 256, 256)
    mask[0, 100:180, 100:160] = 1.0
    with pytest.raises(ValueError, match=re.escape(
            "id_features were made by MGIG 'tiny_mgig.safetensors', but the sampler uses MGIG '(embedded) default' "
            "(identity tokens 64 wide; MGIG '(embedded) default' reads 96): identity features only work with the "
            "model that made them. Connect CHOI ID Features' mgig_model to the same Load MGIG as the sampler")):
        node("MaskGuidedSampler").sample(mgig, features, detail, mask, **sampler_args(sampler="euler_a"))


def test_id_features_check_tells_weights_apart_but_not_dtypes(mgig, refs):
    from interact_custom.pipelines.mgig import MGIGModel, mgig_config
    from interact_custom.pipelines.mgig import pipeline as choi

    with mgig as model:
        features = choi.id_features(model, refs["human"][0].numpy(), refs["human_mask"][0].numpy(),
                                    refs["object"][0].numpy(), refs["object_mask"][0].numpy(), model_name="ours")
        choi.check_features(copy_in(model, torch.bfloat16), features)  # the same weights in bf16: fine
    torch.manual_seed(1)
    untrained = MGIGModel(mgig_config("small")).eval()  # same shapes, other weights
    with pytest.raises(ValueError, match=r"made by MGIG 'ours', but the sampler uses this MGIG \(an ID encoder "
                                         r"with other weights\)"):
        choi.check_features(untrained, features)


def copy_in(model, dtype):
    import copy

    return copy.deepcopy(model).to(dtype)


# ------------------------------------------------------- empty batches

@pytest.mark.parametrize("call, match", [
    (lambda n, r: n("IDFeatures").extract(NOT_USED, r["human"][:0], r["human_mask"], r["object"], r["object_mask"]),
     r"human_image: the IMAGE batch is empty \(0 images\); connect a node that outputs at least one"),
    (lambda n, r: n("IDFeatures").extract(NOT_USED, r["human"], r["human_mask"][:0], r["object"], r["object_mask"]),
     r"human_mask: the MASK batch is empty \(0 masks\)"),
    (lambda n, r: n("DetailMap").compute(torch.zeros(0, 224, 224, 3), torch.ones(1, 224, 224), 50),
     r"reference_canvas: the IMAGE batch is empty"),
    (lambda n, r: n("FitMaskToBox").fit(torch.zeros(0, 64, 64), (0, 0, 10, 10), "keep_aspect", 512, 512),
     r"mask: the MASK batch is empty \(0 masks\)"),
    (lambda n, r: n("FitMaskToBox").fit(torch.ones(1, 64, 64), (0, 0, 10, 10), "keep_aspect", 512, 512,
                                        image=torch.zeros(0, 64, 64, 3)),
     r"image: the IMAGE batch is empty"),
    (lambda n, r: n("BoxFromMask").make(torch.zeros(0, 64, 64), 0), r"mask: the MASK batch is empty"),
    (lambda n, r: n("BoxFromMask").make(torch.zeros(1, 0, 64), 0), r"mask: the MASK has no pixels \(64x0\)"),
])
def test_empty_batches_are_named(refs, call, match):
    with pytest.raises(ValueError, match=match):
        call(node, refs)


NOT_USED = None  # the model is never reached


def test_empty_batches_in_generate_mask_and_sampler(iamg, mgig, refs):
    from test_nodes_functional import sampler_args

    with pytest.raises(ValueError, match=r"background: the IMAGE batch is empty \(0 images\)"):
        node("IAMGGenerateMask").generate(iamg, **iamg_args(steps=STEPS), background=refs["background"][:0])
    features, canvas, canvas_mask = node("IDFeatures").extract(mgig, refs["human"], refs["human_mask"],
                                                              refs["object"], refs["object_mask"])
    (detail,) = node("DetailMap").compute(canvas, canvas_mask, 50)
    mask = torch.ones(1, 256, 256)
    for inputs, match in [((features, detail, mask[:0]), r"interaction_mask: the MASK batch is empty"),
                          ((features, detail[:0], mask), r"detail_map: the IMAGE batch is empty"),
                          (([], detail, mask), r"id_features is empty \(0 identity pairs\)")]:
        with pytest.raises(ValueError, match=match):
            node("MaskGuidedSampler").sample(mgig, *inputs, **sampler_args())
    with pytest.raises(ValueError, match=r"background: the IMAGE batch is empty"):
        node("MaskGuidedSampler").sample(mgig, features, detail, mask, **sampler_args(),
                                         background=refs["background"][:0])


def test_box_from_a_batch_of_masks_says_which_mask_it_boxes(caplog):
    masks = torch.zeros(3, 64, 64)
    masks[0, 10:20, 5:15] = 1.0
    masks[1:, 40:60, 40:60] = 1.0
    with caplog.at_level(logging.WARNING, logger="interact_custom"):
        out = node("BoxFromMask").make(masks, 0)
    assert out["result"] == ((5, 10, 10, 10),)
    (text,) = out["ui"]["text"]
    assert text.startswith("mask is a batch of 3 masks; the box is the first one's") and text in caplog.text
    assert node("BoxFromMask").make(masks[:1], 0) == ((5, 10, 10, 10),)  # one mask: no warning


def test_words_the_model_was_never_trained_on_warn_when_recorded():
    # A word-level tokenizer may carry the words of the model's training captions
    # (`PromptTokenizer.with_trained_words`); a prompt word in the vocabulary but in none of
    # them ("giraffe") is then warned about, like an unknown word.
    from interact_custom.pipelines import iamg as iamg_pipeline
    from interact_custom.pipelines.iamg.pipeline import prompt_warnings

    model = iamg_pipeline.build_iamg("tiny_text")
    assert model.tokenizer.trained_words is None
    assert prompt_warnings(model, "a person is riding the giraffe") == []  # not recorded: no claim
    model.tokenizer = model.tokenizer.with_trained_words(["a person is riding the bicycle",
                                                          "a person is kicking the ball"])
    assert model.tokenizer.trained_words == {"a", "person", "is", "riding", "the", "bicycle", "kicking", "ball"}
    assert prompt_warnings(model, "a person is riding the bicycle") == []
    assert prompt_warnings(model, "a person is riding the giraffe, defenestrating it") == [
        "the word 'defenestrating' of the prompt is not in this model's vocabulary: the model reads it as an "
        "unknown word with no meaning, so the mask follows the rest of the prompt only; use a word it knows",
        "the word 'giraffe' of the prompt is in none of the captions this model was trained on: it has not learned "
        "what it means, so the mask may ignore it",
        "the word 'it' of the prompt is in none of the captions this model was trained on: it has not learned what "
        "it means, so the mask may ignore it"]
    result = iamg_pipeline.generate_mask(model, prompt="a person is riding the bicycles", steps=1, sampler="euler_a")
    assert result.warnings == ["the word 'bicycles' of the prompt is in none of the captions this model was trained "
                               "on (did you mean 'bicycle'?): it has not learned what it means, so the mask may "
                               "ignore it"]
