"""The synthetic benchmark end to end with tiny models (seconds): masks, images, report."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from interact_custom import cli
from interact_custom.cli import synthbench as synthbench_cli
from interact_custom.pipelines import iamg
from interact_custom.cli.research.evaluation import synthbench
from interact_custom.pipelines.mgig import MGIGModel, mgig_config
from interact_custom.weights_manager.native_iamg import save_iamg
from interact_custom.weights_manager.native_mgig import save_mgig


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    import torch

    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    config = replace(mgig_config("tiny"), image_size=128)
    save_mgig(MGIGModel(config), root / "mgig.safetensors")
    model = iamg.build_iamg("tiny_text", seed=0, zero_init_cross_attention=False)
    model.image_size = 64
    save_iamg(model, root / "iamg.safetensors")
    return root


def test_ground_truth_masks_score_perfect_layout(models, tmp_path):
    out = tmp_path / "gt"
    report = synthbench_cli.run_benchmark(out, count=3, seed=5, size=64, mgig_source=str(models / "mgig.safetensors"),
                                      mask="truth", steps=2, log=lambda *a: None)
    m = report["metrics"]
    assert m["mask_iou"]["mean"] == pytest.approx(1.0) and m["mask_in_box"]["mean"] == pytest.approx(1.0)
    assert m["mask_verb"]["mean"] == pytest.approx(report["mask_verb_reference"]["ground_truth_masks"])
    assert report["evaluated"] == 3 and report["synthbench"]["iamg_empty_masks"] == 0
    for sid in ("000000", "000001", "000002"):
        assert Image.open(out / "generated" / f"{sid}.png").size == (64, 64)
    assert json.loads((out / "report" / "metrics.json").read_text())["synthbench"]["mask"] == "truth"
    sheet = np.asarray(Image.open(out / "samples.png"))
    assert sheet.shape == (3 * 128, 6 * 128, 3)
    # The report is kept unless asked.
    with pytest.raises(FileExistsError, match="--overwrite"):
        synthbench_cli.run_benchmark(out, mgig_source=str(models / "mgig.safetensors"), mask="truth", steps=1)


def test_cli_with_iamg_masks_inside_the_box(models, tmp_path, capsys):
    out = tmp_path / "iamg"
    rc = cli.main(["synthbench", "--out", str(out), "--count", "2", "--seed", "6", "--size", "64",
                   "--iamg", str(models / "iamg.safetensors"), "--mgig", str(models / "mgig.safetensors"),
                   "--steps", "2", "--iamg-steps", "2", "--iamg-guidance", "1.0"])
    assert rc == 0
    report = json.loads((out / "report" / "metrics.json").read_text())
    b = report["synthbench"]
    assert b["mask"] == "iamg" and b["iamg_sampling"]["steps"] == 2 and b["samples"] == 2
    assert report["evaluated"] + b["iamg_empty_masks"] == 2
    # IAMG masks are clipped to the box: nothing of them lies outside it.
    if "mask_in_box" in report["metrics"]:
        assert report["metrics"]["mask_in_box"]["mean"] == pytest.approx(1.0)
    assert "empty masks" in capsys.readouterr().out


@pytest.mark.slow
def test_swapped_references_are_the_identity_control(models, tmp_path):
    # Same masks, seeds and backgrounds; only the references change, to those of sample
    # (i + n/2) mod n, while the colours are still scored against the sample's own truth.
    mgig = str(models / "mgig.safetensors")
    data = tmp_path / "own" / "data"
    own = synthbench_cli.run_benchmark(tmp_path / "own", count=4, seed=7, size=64, mgig_source=mgig, mask="truth",
                                   steps=2, log=lambda *a: None)
    swapped = synthbench_cli.run_benchmark(tmp_path / "swapped", data=data, mgig_source=mgig, mask="truth",
                                       refs="swapped", steps=2, log=lambda *a: None)
    assert (own["synthbench"]["refs"], swapped["synthbench"]["refs"]) == ("own", "swapped")
    assert [synthbench.swapped_index(i, 4) for i in range(4)] == [2, 3, 0, 1]
    for sid in ("000000", "000003"):
        a = np.asarray(Image.open(tmp_path / "own" / "generated" / f"{sid}.png"), dtype=float)
        b = np.asarray(Image.open(tmp_path / "swapped" / "generated" / f"{sid}.png"), dtype=float)
        assert np.abs(a - b).max() > 0  # the references reach the model
    assert swapped["metrics"]["mask_iou"]["mean"] == pytest.approx(1.0)  # the layout is the sample's own
    with pytest.raises(ValueError, match="refs: expected one of own, swapped"):
        synthbench_cli.run_benchmark(tmp_path / "x", data=data, mgig_source=mgig, mask="truth", refs="other")
    with pytest.raises(ValueError, match="at least 2 samples"):
        synthbench_cli.run_benchmark(tmp_path / "y", count=1, seed=7, size=64, mgig_source=mgig, mask="truth",
                                 refs="swapped")


@pytest.mark.slow
def test_ceiling_scores_the_decoding_of_the_true_targets_own_latent(models, tmp_path, capsys):
    # With a lossless stand-in for the VAE (latent = the image itself), the ceiling gives the
    # ground truth back: the right crop of the right image is encoded and pasted back where
    # it came from, so the colour measures fall to resampling noise. A sampled MGIG image
    # (the same model, sampling from noise) is far from it.
    import torch

    from interact_custom.weights_manager.native_mgig import load_mgig

    mgig = load_mgig(models / "mgig.safetensors")
    dataset = synthbench.prepare(tmp_path / "c", count=3, seed=5, size=128, mask="truth", log=lambda *a: None)
    mgig.encode_latent = lambda images: images
    mgig.decode_latent = lambda z, **refiner_inputs: z
    with torch.no_grad():
        ceiling = synthbench.generate_and_score(tmp_path / "c", dataset, mgig, ceiling=True, log=lambda *a: None)
    m = ceiling["metrics"]
    assert ceiling["synthbench"]["ceiling"] and ceiling["synthbench"]["mgig_sampling"] is None
    assert m["colour_mean_human"]["mean"] < 3 and m["colour_mean_object"]["mean"] < 6
    for s in dataset:
        got = np.asarray(Image.open(tmp_path / "c" / "generated" / f"{s.id}.png"), dtype=float)
        assert np.abs(got - s.target).mean() < 6  # resampling 512 -> 128 -> 512 -> crop, the dropped row
    sampled = synthbench_cli.run_benchmark(tmp_path / "s", data=tmp_path / "c" / "data",
                                           mgig_source=str(models / "mgig.safetensors"), mask="truth", steps=2,
                                           log=lambda *a: None)
    assert sampled["metrics"]["colour_mean_human"]["mean"] > 3 * m["colour_mean_human"]["mean"]
    with pytest.raises(ValueError, match="--mask truth"):
        synthbench.generate_and_score(tmp_path / "c", dataset, mgig, iamg_model=object(), ceiling=True)
    rc = cli.main(["synthbench", "--out", str(tmp_path / "x"), "--count", "2", "--ceiling",
                   "--mgig", str(models / "mgig.safetensors")])
    assert rc == 2 and "--mask truth" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
