"""Bad inputs to the weight-file IO and the command line: one actionable line, never a
traceback or a silent wrong result.

Weight files (`pipelines.files.read_weights`):
- a text file renamed .ckpt, a 5-byte .pth, random bytes, a JSON file, an empty file:
  "<name>: not a checkpoint (unreadable): ..." (not "pop from empty list" / "KeyError: 101",
  not the pickled-code refusal);
- a real pickle of a custom class (torch.save, and a plain pickle.dump): still refused as
  code that could run, naming the class.
NaN / Inf tensors (`pipelines.files.check_finite` at load):
- our MGIG and IAMG files, and the official MGIG and IAMG checkpoints, with one NaN/Inf
  tensor are refused, naming the tensor.
File modes:
- `save_native` publishes files with the umask default (0o666 & ~umask), not mkstemp's 0600.
CLI (`interact_custom.cli.main`):
- demo --out FILE; read-only output folder for demo, convert, synth, bank build, train
  (and train masks); demo --mgig/--iamg missing or with an unknown extension (fails before
  any work); demo --iamg of an unknown extension; train masks without --iamg; --steps /
  --guidance the sampler cannot run (demo before IAMG runs, synthbench, train masks);
  --device cuda/gpu without CUDA (demo, train masks, evaluate) or cuda:N beyond the
  machine's devices; verify with a
  corrupt / empty / list manifest.json; a failed run leaves no empty output folder behind;
  the package's own errors become "interact-custom <command>: <message>" + exit 2 while an
  unexpected exception type still raises (traceback).
"""
from __future__ import annotations

import json
import math
import os
import pickle
import random
import stat
from pathlib import Path

import pytest
import torch

from interact_custom.cli.research.training.config import CONFIGS_DIR
from interact_custom.cli import main
from interact_custom.pipelines.files import WeightsError, read_weights, save_native
from interact_custom.weights_manager.loader import EMBEDDED_FILES

REPO = Path(__file__).resolve().parents[1]
CONFIGS = CONFIGS_DIR

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")


class _Payload:  # any class outside torch's weights_only allow-list
    pass


def _unreadable(path: Path) -> str:
    with pytest.raises(WeightsError) as info:
        read_weights(path)
    msg = str(info.value)
    assert msg.startswith(f"{path.name}: not a checkpoint (unreadable): "), msg
    assert "execute code" not in msg and "refused" not in msg
    assert "\n" not in msg
    return msg


# --- 1. unreadable files vs pickled code ----------------------------------------------------

@pytest.mark.parametrize("name, content, says", [
    ("model.ckpt", b"hello world, this is not a checkpoint\n", "a text file"),        # renamed text file
    ("tiny.pth", b"abcde", "only 5 bytes"),                                             # 5-byte file
    ("noise.pt", random.Random(3).randbytes(4096), "unrecognised binary data"),         # random bytes
    ("config.bin", json.dumps({"model": "mgig", "steps": [1, 2, 3]}).encode(), "a JSON file"),
    ("empty.ckpt", b"", "empty"),
])
def test_files_that_are_not_checkpoints_are_unreadable(tmp_path, name, content, says):
    path = tmp_path / name
    path.write_bytes(content)
    assert says in _unreadable(path)


def test_torch_save_of_a_custom_class_is_refused_as_code(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"w": torch.ones(2), "x": _Payload()}, path)
    with pytest.raises(WeightsError, match="refused — .*could execute code") as info:
        read_weights(path)
    assert "_Payload" in str(info.value)


def test_plain_pickle_of_a_custom_class_is_refused_as_code(tmp_path):
    path = tmp_path / "evil.ckpt"
    with open(path, "wb") as f:
        pickle.dump({"x": _Payload()}, f)
    with pytest.raises(WeightsError, match="refused — .*could execute code") as info:
        read_weights(path)
    assert "_Payload" in str(info.value)


# --- 2. NaN / Inf tensors --------------------------------------------------------------------

def _poisoned_native(tmp_path: Path, kind: str, value: float) -> tuple[Path, str]:
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    src = EMBEDDED_FILES[kind]
    if not src.is_file():
        pytest.skip(f"the embedded {kind} default is not installed")
    sd = load_file(str(src))
    with safe_open(str(src), framework="pt") as f:
        metadata = f.metadata()
    name = next(k for k, v in sd.items() if v.is_floating_point() and v.numel() > 4)
    sd[name] = sd[name].clone()
    sd[name].view(-1)[3] = value
    dst = tmp_path / f"{kind}_poisoned.safetensors"
    save_file(sd, str(dst), metadata=metadata)
    return dst, name


def test_native_mgig_with_a_nan_tensor_is_refused(tmp_path):
    from interact_custom.weights_manager.native_mgig import load_mgig

    path, name = _poisoned_native(tmp_path, "mgig", math.nan)
    with pytest.raises(WeightsError) as info:
        load_mgig(path)
    msg = str(info.value)
    assert path.name in msg and repr(name) in msg and "NaN" in msg


def test_native_iamg_with_an_inf_tensor_is_refused(tmp_path):
    from interact_custom.weights_manager.native_iamg import load_iamg

    path, name = _poisoned_native(tmp_path, "iamg", math.inf)
    with pytest.raises(WeightsError) as info:
        load_iamg(path)
    msg = str(info.value)
    assert path.name in msg and repr(name) in msg and "Inf" in msg


def test_official_mgig_with_a_nan_tensor_is_refused(vectors, tmp_path):
    from interact_custom.weights_manager.native_mgig import load_mgig

    ckpt = torch.load(vectors.checkpoint("mgig"), map_location="cpu", weights_only=True)
    sd = ckpt.get("state_dict", ckpt)
    name = "model.diffusion_model.out.2.weight"
    sd[name] = sd[name].clone()
    sd[name].view(-1)[0] = math.nan
    path = tmp_path / "mgig_nan.ckpt"
    torch.save(ckpt, path)
    with pytest.raises(WeightsError) as info:
        load_mgig(path)
    assert "mgig_nan.ckpt" in str(info.value) and repr(name) in str(info.value)


def test_official_iamg_with_a_nan_tensor_is_refused(vectors, tmp_path):
    from interact_custom.weights_manager.native_iamg import load_iamg

    ckpt = torch.load(vectors.checkpoint("iamg"), map_location="cpu", weights_only=True)
    name = "input_blocks.0.0.weight"
    ckpt["model"][name] = ckpt["model"][name].clone()
    ckpt["model"][name].view(-1)[0] = math.nan
    path = tmp_path / "iamg_nan.pth"
    torch.save(ckpt, path)
    with pytest.raises(WeightsError) as info:
        load_iamg(path)
    assert "iamg_nan.pth" in str(info.value) and repr(f"model.{name}") in str(info.value)


# --- 3. file modes ---------------------------------------------------------------------------

def test_save_native_gives_the_umask_default_mode(tmp_path):
    old = os.umask(0o022)
    try:
        path = save_native(tmp_path / "w.safetensors", {"a.weight": torch.ones(2)}, model="mgig", preset="x")
        umask = os.umask(0o022)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


# --- 4. the command line ---------------------------------------------------------------------

def _err(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def test_demo_out_is_an_existing_file(tmp_path, capsys):
    out = tmp_path / "out.png"
    out.write_bytes(b"x")
    assert main(["demo", "--out", str(out), "--mask", "example"]) == 2
    err = _err(capsys)
    assert f"--out {out}: is a file, not a folder" in err
    assert out.read_bytes() == b"x"


def _read_only(tmp_path: Path, monkeypatch) -> Path:
    """A folder the user cannot write into. Root ignores permission bits, so as root (CI
    here) the folder is also reported unwritable by ``os.access`` — what a read-only mount
    gives root too; the code under test asks ``os.access`` before any work."""
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    if os.geteuid() == 0:
        real_access = os.access

        def access(path, mode, *args, **kwargs):
            if mode & os.W_OK and Path(path).resolve() == ro.resolve():
                return False
            return real_access(path, mode, *args, **kwargs)

        monkeypatch.setattr(os, "access", access)
    return ro


def test_demo_read_only_out(tmp_path, capsys, monkeypatch):
    ro = _read_only(tmp_path, monkeypatch)
    assert main(["demo", "--out", str(ro), "--mask", "example"]) == 2
    assert f"{ro} is not writable" in _err(capsys)


def test_convert_read_only_out(tmp_path, capsys, monkeypatch):
    ro = _read_only(tmp_path, monkeypatch)
    assert main(["convert", str(EMBEDDED_FILES["mgig"]), str(ro / "m.safetensors")]) == 1
    err = _err(capsys)
    assert err.startswith("convert: ") and f"{ro} is not writable" in err


def test_synth_read_only_out(tmp_path, capsys, monkeypatch):
    ro = _read_only(tmp_path, monkeypatch)
    assert main(["synth", "--out", str(ro / "ds"), "--count", "2", "--size", "64"]) == 2
    assert f"{ro} is not writable" in _err(capsys)


def test_bank_build_read_only_out(tmp_path, capsys, monkeypatch):
    ro = _read_only(tmp_path, monkeypatch)
    assert main(["bank", "build", "--dataset", str(tmp_path), "--out", str(ro / "bank")]) == 1
    assert f"{ro} is not writable" in _err(capsys)


def test_train_read_only_output_dir(tmp_path, capsys, monkeypatch):
    ro = _read_only(tmp_path, monkeypatch)
    assert main(["train", "vae", "--config", str(CONFIGS / "tiny_vae.json"),
                 "--set", f"output_dir={ro / 'run'}", "--set", f"data_root={tmp_path}"]) == 2
    assert f"{ro} is not writable" in _err(capsys)


def test_train_masks_read_only_out(tmp_path, capsys, monkeypatch):
    ro = _read_only(tmp_path, monkeypatch)
    assert main(["train", "masks", "--iamg", str(EMBEDDED_FILES["iamg"]), "--data", str(tmp_path),
                 "--out", str(ro)]) == 2
    assert f"{ro} is not writable" in _err(capsys)


def test_demo_missing_mgig_fails_before_any_work(tmp_path, capsys):
    out = tmp_path / "out"
    # --mask auto runs IAMG first: the MGIG path must be refused before that
    assert main(["demo", "--out", str(out), "--mgig", str(tmp_path / "nope.ckpt"), "--steps", "50"]) == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    assert f"interact-custom demo: --mgig: weight file not found: {tmp_path / 'nope.ckpt'}" in captured.err
    assert not out.exists()
    assert "interaction" not in captured.out  # nothing was loaded or sampled


def test_demo_mgig_unknown_extension(tmp_path, capsys):
    bad = tmp_path / "mgig.zip"
    bad.write_bytes(b"PK")
    assert main(["demo", "--out", str(tmp_path / "out"), "--mgig", str(bad)]) == 2
    err = _err(capsys)
    assert "--mgig: mgig.zip: unsupported extension '.zip'; expected one of .safetensors" in err
    assert not (tmp_path / "out").exists()


def test_demo_missing_iamg(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "out"), "--iamg", str(tmp_path / "iamg.pth")]) == 2
    assert "--iamg: weight file not found" in _err(capsys)
    assert not (tmp_path / "out").exists()


def test_demo_iamg_unknown_extension(tmp_path, capsys):
    bad = tmp_path / "iamg.onnx"
    bad.write_bytes(b"\x08\x01")
    assert main(["demo", "--out", str(tmp_path / "out"), "--iamg", str(bad)]) == 2
    assert "--iamg: iamg.onnx: unsupported extension '.onnx'; expected one of .safetensors" in _err(capsys)
    assert not (tmp_path / "out").exists()


def test_train_masks_without_iamg_names_the_missing_options(tmp_path, capsys):
    assert main(["train", "masks", "--data", str(tmp_path), "--out", str(tmp_path / "masks")]) == 2
    assert "interact-custom train masks: missing --iamg" in _err(capsys)
    assert not (tmp_path / "masks").exists()


# Sampling settings the sampler cannot run: one line and exit 2, before IAMG draws anything
# (demo's IAMG runs first, so a bad MGIG guidance used to cost an IAMG run and a traceback).
@pytest.mark.parametrize("option, value, says", [
    ("--steps", "-3", "steps: expected a whole number from 1 to 500 for the euler_a sampler, got -3"),
    ("--steps", "0", "steps: expected a whole number from 1 to 500 for the euler_a sampler, got 0"),
    ("--guidance", "nan", "guidance: expected a finite number >= 0, got nan"),
    ("--guidance", "-1", "guidance: expected a finite number >= 0, got -1.0"),
])
def test_demo_bad_sampling_settings(tmp_path, capsys, option, value, says):
    assert main(["demo", "--out", str(tmp_path / "out"), option, value]) == 2
    captured = capsys.readouterr()
    assert f"interact-custom demo: {says}" in captured.err
    assert "Traceback" not in captured.err and captured.err.count("\n") == 1
    assert "IAMG" not in captured.out + captured.err.replace(says, "")  # nothing was sampled
    assert not (tmp_path / "out").exists()


def test_synthbench_bad_iamg_steps(tmp_path, capsys):
    assert main(["synthbench", "--out", str(tmp_path / "bench"), "--iamg-steps", "-3"]) == 2
    assert "synthbench: steps: expected a whole number from 1 to 500 for the euler_a sampler, got -3" in _err(capsys)
    assert not (tmp_path / "bench").exists()


def test_train_masks_bad_guidance(tmp_path, capsys):
    assert main(["train", "masks", "--iamg", str(EMBEDDED_FILES["iamg"]), "--data", str(tmp_path),
                 "--out", str(tmp_path / "masks"), "--guidance", "inf"]) == 2
    assert "interact-custom train: guidance: expected a finite number >= 0, got inf" in _err(capsys)
    assert not (tmp_path / "masks").exists()


@no_cuda
def test_demo_cuda_index_out_of_range(tmp_path, capsys, monkeypatch):
    # A one-GPU machine asked for its second GPU (CUDA faked: this machine has none).
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert main(["demo", "--out", str(tmp_path / "out"), "--device", "cuda:1"]) == 2
    assert "--device cuda:1: this machine has 1 CUDA device(s) (cuda:0 to cuda:0)" in _err(capsys)
    assert not (tmp_path / "out").exists()


@no_cuda
@pytest.mark.parametrize("device", ["cuda", "gpu", "cuda:1"])
def test_demo_device_without_cuda(tmp_path, capsys, device):
    assert main(["demo", "--out", str(tmp_path / "out"), "--device", device]) == 2
    err = _err(capsys)
    assert f"--device {device}: no CUDA device is available; use --device cpu" in err
    assert not (tmp_path / "out").exists()


@no_cuda
def test_train_masks_device_without_cuda(tmp_path, capsys):
    assert main(["train", "masks", "--iamg", str(EMBEDDED_FILES["iamg"]), "--data", str(tmp_path),
                 "--out", str(tmp_path / "masks"), "--device", "cuda"]) == 2
    assert "--device cuda: no CUDA device is available; use --device cpu" in _err(capsys)
    assert not (tmp_path / "masks").exists()


@no_cuda
def test_evaluate_device_without_cuda(tmp_path, capsys):
    assert main(["evaluate", "--dataset", str(tmp_path), "--generated", str(tmp_path),
                 "--out", str(tmp_path / "report"), "--device", "cuda"]) == 2
    assert "--device cuda: no CUDA device is available; use --device cpu" in _err(capsys)
    assert not (tmp_path / "report").exists()


@pytest.mark.parametrize("text,problem", [("{not json", "not valid JSON"), ("", "empty"),
                                          ("[1, 2]", "expected a JSON object, found a list")])
def test_verify_bad_manifest(tmp_path, capsys, text, problem):
    (tmp_path / "manifest.json").write_text(text)
    assert main(["verify", "--vectors", str(tmp_path)]) == 2
    err = _err(capsys)
    assert f"{tmp_path / 'manifest.json'}: " in err and problem in err and err.count("\n") == 1


def test_failed_demo_leaves_no_empty_output_folder(tmp_path, capsys):
    bad = tmp_path / "mgig.ckpt"
    bad.write_text("<html>404 not found</html>\n")
    out = tmp_path / "a" / "b" / "out"
    assert main(["demo", "--out", str(out), "--mask", "example", "--mgig", str(bad)]) == 2
    err = _err(capsys)
    assert "interact-custom demo: mgig.ckpt: not a checkpoint (unreadable): a text file" in err
    assert not (tmp_path / "a").exists()


def test_an_unexpected_exception_still_shows_its_traceback(monkeypatch, tmp_path):
    from interact_custom.cli import demo

    def broken(args):
        raise ZeroDivisionError("a genuine bug")

    monkeypatch.setattr(demo, "run", broken)
    with pytest.raises(ZeroDivisionError):
        main(["demo", "--out", str(tmp_path / "out")])
