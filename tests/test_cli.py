"""The command-line surface: verify, convert, demo; flags checked when the command line is
read, the error naming the flag."""
import copy
import json

import numpy as np
import pytest
import torch
from PIL import Image

from interact_custom.cli import main


def copy_part(vectors, tmp_path, part="preproc"):
    """A one-part copy of the vector folder that a test may tamper with."""
    manifest = copy.deepcopy(vectors.manifest)  # the fixture is shared: never mutate it
    manifest["parts"] = {part: manifest["parts"][part]}
    out = tmp_path / "vectors"
    out.mkdir()
    (out / "manifest.json").write_text(json.dumps(manifest))
    arrays = dict(vectors.arrays(part))
    return out, manifest, arrays


def test_verify_passes_on_the_reference_vectors(vectors, capsys):
    assert main(["verify", "--vectors", str(vectors.path), "--parts", "preproc"]) == 0
    out = capsys.readouterr().out
    assert "fn_sobel_out_t50" in out and "PASS" in out and "-> OK" in out


def test_verify_fails_on_a_wrong_reference(vectors, tmp_path, capsys):
    out, manifest, arrays = copy_part(vectors, tmp_path)
    arrays["fn_sobel_out_t50"] = arrays["fn_sobel_out_t50"].copy()
    arrays["fn_sobel_out_t50"][10, 10] ^= 0x40
    np.savez(out / manifest["parts"]["preproc"]["file"], **arrays)
    assert main(["verify", "--vectors", str(out)]) == 1
    row = [l for l in capsys.readouterr().out.splitlines() if "fn_sobel_out_t50" in l][0]
    assert "FAIL" in row


def test_verify_fails_on_an_array_it_cannot_compute(vectors, tmp_path, capsys):
    out, manifest, arrays = copy_part(vectors, tmp_path)
    arrays["fn_unknown_new_output"] = np.zeros(3)
    manifest["parts"]["preproc"]["arrays"]["fn_unknown_new_output"] = {"shape": [3], "dtype": "float64"}
    (out / "manifest.json").write_text(json.dumps(manifest))
    np.savez(out / manifest["parts"]["preproc"]["file"], **arrays)
    assert main(["verify", "--vectors", str(out)]) == 1
    assert "not computed by our code" in capsys.readouterr().out


def test_verify_bad_folder_and_part(tmp_path, vectors, capsys):
    assert main(["verify", "--vectors", str(tmp_path)]) == 2
    assert "no manifest.json" in capsys.readouterr().err
    assert main(["verify", "--vectors", str(vectors.path), "--parts", "nope"]) == 2
    assert "has no part(s) nope" in capsys.readouterr().err


@pytest.mark.slow
def test_convert_official_mgig_round_trip(vectors, tmp_path, capsys):
    from interact_custom.weights_manager.native_mgig import load_mgig

    dst = tmp_path / "mgig.safetensors"
    assert main(["convert", str(vectors.checkpoint("mgig")), str(dst), "--dtype", "fp32"]) == 0
    original, converted = load_mgig(vectors.checkpoint("mgig")), load_mgig(dst)
    a, b = original.state_dict(), converted.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # never overwrites unless asked
    before = dst.read_bytes()
    assert main(["convert", str(vectors.checkpoint("mgig")), str(dst)]) == 1
    assert "refusing to overwrite" in capsys.readouterr().err and dst.read_bytes() == before
    assert main(["convert", str(vectors.checkpoint("mgig")), str(dst), "--dtype", "fp16", "--overwrite"]) == 0
    half = load_mgig(dst)
    assert next(half.parameters()).dtype == torch.float16


def test_convert_official_iamg(vectors, tmp_path):
    dst = tmp_path / "iamg.safetensors"
    assert main(["convert", str(vectors.checkpoint("iamg")), str(dst), "--dtype", "bf16"]) == 0
    from safetensors import safe_open

    with safe_open(str(dst), framework="pt") as f:
        meta = f.metadata()
    assert meta["model"] == "iamg" and meta["dtype"] == "bf16"


def test_convert_rejects_a_non_model_file(tmp_path, capsys):
    src = tmp_path / "random.pth"
    torch.save({"foo.weight": torch.zeros(2)}, src)
    assert main(["convert", str(src), str(tmp_path / "out.safetensors")]) == 1
    assert "neither an MGIG" in capsys.readouterr().err


def test_demo_writes_a_composited_result(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--steps", "2", "--mask", "retrieval"]) == 0
    text = capsys.readouterr().out
    from interact_custom.weights_manager.loader import embedded_is_random

    assert "RETRIEVED with IAMG-R" in text
    assert ("SEEDED RANDOM WEIGHTS" in text) == embedded_is_random("mgig")
    assert ("trained by this package" in text) != embedded_is_random("mgig")
    bg = np.array(Image.open(out.parents[0] / "demo" / "result.png"))
    from interact_custom.cli.research.data.examples import load_examples

    ex = load_examples()
    mask = np.array(Image.open(out / "interaction_mask.png")) > 127
    assert bg.shape == ex["background"].shape and mask.shape == bg.shape[:2]
    changed = np.any(bg != ex["background"], axis=-1)
    ys, xs = np.nonzero(mask)
    # generation is pasted around the mask only: every changed pixel is near the mask's box
    cy, cx = np.nonzero(changed)
    assert changed.any() and cy.min() >= 0
    pad_y, pad_x = (ys.max() - ys.min()), (xs.max() - xs.min())
    assert cy.min() >= ys.min() - pad_y and cy.max() <= ys.max() + pad_y
    assert cx.min() >= xs.min() - pad_x and cx.max() <= xs.max() + pad_x
    sheet = np.array(Image.open(out / "sheet.png"))
    assert sheet.shape[1] > 4 * sheet.shape[0] and sheet.std() > 10
    # a second run into the same folder is refused rather than overwriting
    assert main(["demo", "--out", str(out), "--steps", "2"]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_unknown_command(capsys):
    assert main(["frobnicate"]) == 2
    assert "unknown command" in capsys.readouterr().err


def test_demo_default_generates_the_mask_with_iamg_inside_the_box(tmp_path, capsys):
    from interact_custom.cli.research.data.examples import load_examples

    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--steps", "2"]) == 0
    printed = capsys.readouterr().out
    assert "GENERATED by IAMG" in printed
    # the console shows both stages' progress, IAMG first
    assert "\rIAMG sampling step 2/2" in printed and "\rMGIG sampling step 2/2" in printed
    assert printed.index("IAMG sampling step 1/2") < printed.index("MGIG sampling step 1/2")
    mask = np.array(Image.open(out / "interaction_mask.png")) > 127
    x, y, w, h = load_examples()["box"]
    inside = np.zeros_like(mask)
    inside[y:y + h, x:x + w] = True
    assert mask.any() and not (mask & ~inside).any()


# ------------------------------------------------ flags checked before any work, naming the flag

@pytest.mark.parametrize("argv, says", [
    (["demo", "--out", ""], "argument --out: empty path; name the output folder (. for the current folder)"),
    (["demo", "--out", "  "], "argument --out: empty path"),
    (["benchmark", "--out", "OUT", "--steps", "0"], "argument --steps: expected a whole number >= 1, got 0"),
    (["benchmark", "--out", "OUT", "--fast-steps", "-1"],
     "argument --fast-steps: expected a whole number >= 1, got -1"),
    (["benchmark", "--out", "OUT", "--timed-steps", "1"],
     "argument --timed-steps: expected a whole number >= 2, got 1"),
    (["evaluate", "--dataset", "D", "--generated", "G", "--out", "OUT", "--limit", "0"],
     "argument --limit: expected a whole number >= 1, got 0"),
    (["synthbench", "--out", "OUT", "--limit", "-5"], "argument --limit: expected a whole number >= 1, got -5"),
    (["synthbench", "--out", "OUT", "--count", "0"], "argument --count: expected a whole number >= 1, got 0"),
    (["synth", "--out", "OUT", "--count", "0"], "argument --count: expected a whole number >= 1, got 0"),
    (["train", "masks", "--iamg", "I", "--data", "D", "--out", "OUT", "--limit", "0"],
     "argument --limit: expected a whole number >= 1, got 0"),
    (["synth", "--out", "OUT", "--val-fraction", "1"], "argument --val-fraction: expected a number in [0, 1), got 1"),
    (["synthbench", "--out", "OUT", "--size", "8"], "argument --size: expected a whole number >= 48, got 8"),
    (["build", "video", "--clips", "C", "--out", "OUT", "--min-gap", "0"],
     "argument --min-gap: expected a whole number >= 1, got 0"),
    (["build", "video", "--clips", "C", "--out", "OUT", "--max-iou", "nan"],
     "argument --max-iou: expected a number in [0, 1], got nan"),
    (["build", "hoi", "--annotations", "A", "--out", "OUT", "--margin", "nan"],
     "argument --margin: expected a finite number >= 0, got nan"),
    (["build", "hoi", "--annotations", "A", "--out", "OUT", "--box-expand", "0.5"],
     "argument --box-expand: expected a finite number >= 1, got 0.5"),
    (["build", "hoi", "--annotations", "A", "--out", "OUT", "--split-val", "1.5"],
     "argument --split-val: expected a number in [0, 1), got 1.5"),
])
def test_bad_flags_are_refused_at_once_naming_the_flag(tmp_path, monkeypatch, capsys, argv, says):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert says in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # nothing written, not even in the current folder


def test_benchmark_checks_steps_against_the_samplers_before_measuring(tmp_path, capsys):
    assert main(["benchmark", "--out", str(tmp_path / "b"), "--steps", "100000"]) == 2
    assert ("benchmark: --steps: steps: expected a whole number from 1 to 1000 for the plms sampler, got 100000"
            in capsys.readouterr().err)
    assert main(["benchmark", "--out", str(tmp_path / "b"), "--tmp", str(tmp_path / "nope")]) == 2
    assert f"benchmark: --tmp {tmp_path / 'nope'}: no such folder" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_evaluate_and_synthbench_pipelines_name_limit(tmp_path):
    from interact_custom.cli.research.evaluation import synthbench
    from interact_custom.cli.research.evaluation.evaluate import EvaluationError, evaluate

    with pytest.raises(EvaluationError, match=r"limit: expected None or a whole number >= 1, got 0"):
        evaluate(tmp_path, tmp_path, limit=0)
    with pytest.raises(ValueError, match=r"limit: expected None or a whole number >= 1, got -5"):
        synthbench.generate_and_score(tmp_path, [], None, limit=-5)
