"""Bad model files (a shared ComfyUI server runs our nodes; workflows and model folders are
not to be trusted): one clear error naming the file, never a dead process, never a silent
wrong result, never the content of a file that is no model.

1. A file rewritten in place (truncated, then written again) or renamed over while it
   loads: the process never dies of a signal (SIGBUS, under a memory map); a load either
   reads one whole version of the file or fails with "<file>: ... try again"; an atomic
   replace never makes a load fail.
2. A symlink in the model folder to a file that is no model (/etc/passwd, an HTML page,
   a short secret, binary data), as .ckpt / .pth / .safetensors: the error says what was
   expected and quotes none of it. A folder named like a weight file is not listed and,
   if asked for, is "a folder, not a weight file"; a name cannot leave the model folder.
3. Settings stored in a model file (our safetensors' ``config`` / ``tokenizer`` metadata,
   an official file's schedule buffers and head count) and weight dtypes are validated at
   load: NaN / 1e6 latent scales, image sizes 8 / 0 / −256, a negative schedule, a
   latent_shift of 'abc', an unknown activation, a broken tokenizer, uint8 weights, ...
   each give one error naming the file and the setting.
4. A full disk while `convert` or `train` writes a weight file or checkpoint: one line
   naming the file ("No space left on device"), the CLI's exit code 2, no partial file.
"""
from __future__ import annotations

import errno
import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from interact_custom.cli.research.training.config import CONFIGS_DIR
from interact_custom.cli import main
from interact_custom.nodes import NODE_CLASS_MAPPINGS as NODES
from interact_custom.nodes import comfy_bridge
from interact_custom.pipelines import files
from interact_custom.pipelines.files import WeightsError, read_weights
from interact_custom.weights_manager.loader import EMBEDDED_FILES
from interact_custom.weights_manager.native_iamg import load_iamg
from interact_custom.weights_manager.native_mgig import load_mgig

REPO = Path(__file__).resolve().parents[1]
CONFIGS = CONFIGS_DIR


def _embedded(kind: str) -> Path:
    if not EMBEDDED_FILES[kind].is_file():
        pytest.skip(f"the embedded {kind} default is not installed")
    return EMBEDDED_FILES[kind]


# --- 1. files that change while they load ------------------------------------------------

# Runs in a child process, so that a SIGBUS kills only the child and the test sees it.
# Two versions of one file (A, B: different sizes and marker values) alternate on disk
# while the main thread loads it: "rename" = atomic replace, "rewrite" = truncate in place
# (to a third, a short pause), then write the other version.
_RACE = textwrap.dedent("""
    import json, os, sys, threading, time
    import torch
    from interact_custom.pipelines.files import WeightsError, check_finite, read_weights

    torch.set_num_threads(1)
    path, mode, loads = sys.argv[1], sys.argv[2], int(sys.argv[3])
    versions = [open(path + ".A", "rb").read(), open(path + ".B", "rb").read()]
    open(path, "wb").write(versions[0])
    stop = threading.Event()

    def writer():
        i = 0
        while not stop.is_set():
            i += 1
            data = versions[i % 2]
            if mode == "rename":
                with open(path + ".tmp", "wb") as f:
                    f.write(data)
                os.replace(path + ".tmp", path)
            else:
                os.truncate(path, len(data) // 3)
                time.sleep(0.002)
                with open(path, "r+b") as f:
                    f.write(data)
                    f.truncate(len(data))
            time.sleep(0.03)  # loads in this pause see a whole file

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    ok, failures = 0, []
    for _ in range(loads):
        try:
            obj, metadata = read_weights(path)
            check_finite(obj, os.path.basename(path))
        except WeightsError as e:
            failures.append(str(e))
            continue
        marker = float(obj["marker"].flatten()[0])
        version = metadata.get("version") if metadata else ("B" if "pad" in obj else "A")
        assert (marker, version) in ((1.0, "A"), (2.0, "B")), f"mixed versions: {marker} {version}"
        ok += 1
    stop.set()
    thread.join()
    print(json.dumps({"ok": ok, "failures": failures}))
""")


def _first_mib(sd: dict, mib: float = 3) -> dict:
    out, size = {}, 0
    for k, v in sd.items():
        if size > mib * 2**20:
            break
        out[k], size = v, size + v.numel() * v.element_size()
    return out


def _two_versions(tmp_path: Path, kind: str) -> Path:
    """file.A and file.B beside ``file``: a few MB of real weights plus a marker (1 or 2);
    B has an extra tensor, so the two differ in size and layout."""
    if kind == "safetensors":
        sd = _first_mib(load_file(str(_embedded("iamg"))))
        path = tmp_path / "iamg.safetensors"
        save_file({**sd, "marker": torch.ones(4)}, str(path) + ".A", metadata={"version": "A"})
        save_file({**sd, "marker": torch.full((4,), 2.0), "pad": torch.randn(50_000)}, str(path) + ".B",
                  metadata={"version": "B"})
    else:
        from conftest import find_vectors_dir

        vectors = find_vectors_dir()
        if vectors is None:
            pytest.skip("test vectors not found")
        ckpt = torch.load(vectors / "iamg_reduced.pth", map_location="cpu", weights_only=True)
        sd = _first_mib(dict(ckpt["model"]))
        path = tmp_path / "iamg.ckpt"
        torch.save({**sd, "marker": torch.ones(4)}, str(path) + ".A")
        torch.save({**sd, "marker": torch.full((4,), 2.0), "pad": torch.randn(50_000)}, str(path) + ".B")
    return path


LOADS = 12


@pytest.mark.parametrize("kind", ["safetensors", "ckpt"])
@pytest.mark.parametrize("mode", ["rewrite", "rename"])
@pytest.mark.slow
def test_a_file_changing_under_a_load_never_kills_the_process(tmp_path, kind, mode):
    path = _two_versions(tmp_path, kind)
    proc = subprocess.run([sys.executable, "-c", _RACE, str(path), mode, str(LOADS)], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, f"the loading process died (exit {proc.returncode}): {proc.stderr[-2000:]}"
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for message in result["failures"]:  # only the clear "try again" error, naming the file
        assert message.startswith(f"{path.name}: ") and "try again" in message and "NaN" not in message, message
        assert "\n" not in message
    if mode == "rename":  # an atomic replace leaves the open file whole: every load succeeds
        assert result["failures"] == [] and result["ok"] == LOADS
    assert result["ok"] + len(result["failures"]) == LOADS


def test_a_file_that_changes_during_the_read_is_reported_as_changed(tmp_path, monkeypatch):
    # Deterministic: the file grows between the moment it is opened and the end of the read.
    src = _embedded("iamg")
    path = tmp_path / "model.safetensors"
    path.write_bytes(src.read_bytes())
    real = files._read_safetensors

    def read_then_append(f, size, name, dtype=None):
        result = real(f, size, name, dtype)
        with open(path, "ab") as other:
            other.write(b"\0" * 16)
        return result

    monkeypatch.setattr(files, "_read_safetensors", read_then_append)
    with pytest.raises(files.FileChangedError, match=r"^model\.safetensors: the file changed while it was being "
                                                     r"loaded .*try again"):
        read_weights(path)


# --- 2. files that are no model, through a symlink in the model folder ---------------------

SECRET = "SECRET-7f3a9c"


@pytest.fixture
def models(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "models" / "interact_custom"
    folder.mkdir(parents=True)
    monkeypatch.setenv("INTERACT_CUSTOM_MODELS", str(folder))
    return folder


@pytest.mark.parametrize("name, content, says", [
    ("passwd.ckpt", f"root:x:0:0:root:/root:/bin/bash\n{SECRET}:x:1000:1000::/home/s:/bin/sh\n".encode(),
     "a text file of"),
    ("page.pth", f"<!DOCTYPE html><html><body>{SECRET} token=abc</body></html>".encode(), "looks like HTML/XML"),
    ("short.pt", b"hunter2-pw", "only 10 bytes"),
    ("blob.bin", bytes.fromhex("0badc0ffee5ec7e7") + os.urandom(4000), "unrecognised binary data"),
    ("passwd.safetensors", f"root:x:0:0:{SECRET}\n".encode() * 4, "does not start with a safetensors header"),
])
def test_a_symlink_to_a_file_that_is_no_model_leaks_nothing(models, tmp_path, name, content, says):
    secret = tmp_path / "outside" / "secret"
    secret.parent.mkdir()
    secret.write_bytes(content)
    (models / name).symlink_to(secret)
    assert name in NODES["InteractCustomLoadMGIG"].INPUT_TYPES()["required"]["model_name"][0]  # followed
    with pytest.raises(WeightsError) as info:
        NODES["InteractCustomLoadMGIG"]().load(name, "fp32", "cpu", True)
    msg = str(info.value)
    assert msg.startswith(f"{name}: ") and says in msg and "\n" not in msg
    assert "expected a" in msg.lower() or "Expected a" in msg
    for piece in (SECRET, "root:x", "hunter2", "DOCTYPE", "0b ad c0", "0badc0", "token"):
        assert piece not in msg, f"{piece!r} leaked: {msg}"
    # the u64 of the first 8 bytes (what a safetensors header length would be) is not shown either
    assert str(int.from_bytes(content[:8], "little")) not in msg


def test_a_folder_named_like_a_weight_file(models):
    (models / "x.safetensors").mkdir()
    (models / "real.safetensors").symlink_to(_embedded("mgig"))
    choices = NODES["InteractCustomLoadMGIG"].INPUT_TYPES()["required"]["model_name"][0]
    assert "x.safetensors" not in choices and "real.safetensors" in choices
    with pytest.raises(IsADirectoryError, match=r"model file 'x\.safetensors' is a folder in .*, not a weight "
                                                r"file; choose a file"):
        NODES["InteractCustomLoadMGIG"]().load("x.safetensors", "fp32", "cpu", True)
    with pytest.raises(WeightsError, match=r"is a folder, not a weight file"):
        read_weights(models / "x.safetensors")


def test_a_model_name_cannot_leave_the_model_folder(models, tmp_path):
    outside = tmp_path / "models" / "escape.ckpt"
    outside.write_bytes(b"not a model")
    for name in ("../escape.ckpt", str(outside)):
        with pytest.raises(FileNotFoundError, match="not found"):
            comfy_bridge.model_file_path(name)


def test_a_broken_symlink_and_a_device_say_what_they_are(models, tmp_path):
    (models / "gone.ckpt").symlink_to(tmp_path / "nowhere.ckpt")
    with pytest.raises(WeightsError, match="symbolic link to a file that does not exist"):
        read_weights(models / "gone.ckpt")
    (models / "zero.ckpt").symlink_to("/dev/null")
    with pytest.raises(WeightsError, match="is not a regular file"):
        read_weights(models / "zero.ckpt")


# --- 3. settings stored in a model file ------------------------------------------------------

def _tampered(tmp_path: Path, kind: str, edit=None, *, metadata_edit=None, tensors_edit=None) -> Path:
    """A copy of the embedded default with its ``config`` metadata changed by ``edit``
    (a function of the config dict), its metadata by ``metadata_edit`` or its tensors by
    ``tensors_edit``."""
    src = _embedded(kind)
    sd = load_file(str(src))
    with safe_open(str(src), framework="pt") as f:
        metadata = dict(f.metadata())
    if edit is not None:
        config = json.loads(metadata["config"])
        edit(config)
        metadata["config"] = json.dumps(config)
    if metadata_edit is not None:
        metadata_edit(metadata)
    if tensors_edit is not None:
        tensors_edit(sd)
    path = tmp_path / f"{kind}_tampered.safetensors"
    save_file(sd, str(path), metadata=metadata)
    return path


def _refused(load, path: Path, field: str, expected: str) -> str:
    with pytest.raises(WeightsError) as info:
        load(path)
    msg = str(info.value)
    assert msg.startswith(f"{path.name}: "), msg
    assert f"'{field}'" in msg and expected in msg and "\n" not in msg, msg
    return msg


def _set(*keys_value):
    *keys, value = keys_value

    def edit(config):
        d = config
        for k in keys[:-1]:
            d = d[k]
        d[keys[-1]] = value
    return edit


@pytest.mark.parametrize("keys, value, expected", [
    (("vae", "scaling_factor"), math.nan, "a finite number"),
    (("vae", "scaling_factor"), 1e6, "<= 1000"),
    (("vae", "scaling_factor"), 0.0, "a finite number >= 0.001"),
    (("vae", "scaling_factor"), "0.18", "a finite number"),
    (("image_size",), 8, "a multiple of 64"),
    (("image_size",), 0, "a multiple of 64"),
    (("image_size",), -256, "a multiple of 64"),
    (("image_size",), 100_000, "a multiple of 64"),
    (("image_size",), 256.0, "a multiple of 64"),
    (("prediction_type",), "x0", "one of epsilon, v_prediction"),
    (("schedule", "linear_start"), -0.01, "a finite number > 0"),
    (("schedule", "linear_end"), 2.0, "<= 1"),
    (("schedule", "num_train_timesteps"), 10, "expected 1000 (the samplers' training steps)"),
    (("unet", "attention_head_dim"), [0, 2, 4, 4], "a head count per level"),
    (("unet", "norm_num_groups"), 0, "a whole number from 1"),
    (("controlnet", "norm_num_groups"), 7, "divides every width"),
    (("id_encoder", "dinov2", "num_attention_heads"), 5, "divides the width 96"),
    (("vae", "norm_num_groups"), -1, "a whole number from 1"),
    (("refiner",), "wide", "an object"),
    (("brand_new",), 1, "one of the known settings"),
])
def test_mgig_stored_settings_are_validated(tmp_path, keys, value, expected):
    path = _tampered(tmp_path, "mgig", _set(*keys, value))
    _refused(load_mgig, path, ".".join(keys), expected)


@pytest.mark.parametrize("keys, value, expected", [
    (("scale_factor",), math.nan, "a finite number"),
    (("scale_factor",), 1e6, "<= 1000"),
    (("scale_factor",), -0.5, "a finite number >= 0.001"),
    (("vae", "scaling_factor"), math.inf, "a finite number"),
    (("image_size",), 8, "a multiple of 32"),
    (("image_size",), 0, "a multiple of 32"),
    (("image_size",), -256, "a multiple of 32"),
    (("latent_shift",), "abc", "null or a list of 8 finite numbers"),
    (("latent_shift",), [math.nan] * 8, "null or a list of 8 finite numbers"),
    (("latent_shift",), [0.0] * 3, "null or a list of 8 finite numbers"),
    (("prediction_type",), "sample", "one of epsilon, v_prediction"),
    (("text_encoder", "hidden_act"), "definitely_not_an_activation", "one of quick_gelu, gelu"),
    (("text_encoder", "eos_token_id"), 5000, "a whole number from 0 to 1023"),
    (("text_encoder", "num_attention_heads"), 3, "divides the width 128"),
    (("unet", "num_heads"), 0, "a whole number from 1"),
    (("unet", "attention_resolutions"), 4, "a list of down-sampling factors"),
    (("vae", "norm_num_groups"), 0, "a whole number from 1"),
])
def test_iamg_stored_settings_are_validated(tmp_path, keys, value, expected):
    path = _tampered(tmp_path, "iamg", _set(*keys, value))
    _refused(load_iamg, path, ".".join(keys), expected)


@pytest.mark.parametrize("kind, load", [("mgig", load_mgig), ("iamg", load_iamg)])
@pytest.mark.parametrize("field, value, expected", [
    ("config", "{not json", "a JSON object (it is not valid JSON)"),
    ("config", "[1, 2]", "a JSON object"),
    ("format_version", "2", "'1' (is the file from a newer version"),
    ("dtype", "fp8", "one of fp32, bf16, fp16"),
])
def test_unreadable_metadata_is_refused(tmp_path, kind, load, field, value, expected):
    path = _tampered(tmp_path, kind, metadata_edit=lambda m: m.update({field: value}))
    _refused(load, path, field, expected)


@pytest.mark.parametrize("value, expected", [
    ("{oops", "a JSON object of tokenizer files (it is not valid JSON)"),
    (json.dumps(["tokenizer.json"]), "a JSON object mapping vocab.json, merges.txt, tokenizer.json"),
    (json.dumps({"tokenizer.json": 42}), "a JSON object mapping"),
    (json.dumps({"tokenizer.json": "{\"not\": \"a tokenizer\"}"}), "it cannot be read as a tokenizer"),
    (json.dumps({"vocab.json": "{", "merges.txt": "x"}), "it cannot be read as a tokenizer"),
])
def test_an_unreadable_stored_tokenizer_is_refused(tmp_path, value, expected):
    path = _tampered(tmp_path, "iamg", metadata_edit=lambda m: m.update({"tokenizer": value}))
    msg = _refused(load_iamg, path, "tokenizer", expected)
    assert "a tokenizer\"" not in msg and "{" not in msg.split("'tokenizer'")[1]  # the stored text is not quoted


@pytest.mark.parametrize("kind, load", [("mgig", load_mgig), ("iamg", load_iamg)])
def test_weights_stored_as_integers_are_refused(tmp_path, kind, load):
    def to_uint8(sd):
        name = next(k for k, v in sd.items() if v.ndim == 4)
        sd[name] = (sd[name].float().abs() * 100).clamp(0, 255).to(torch.uint8)
        to_uint8.name = name

    path = _tampered(tmp_path, kind, tensors_edit=to_uint8)
    with pytest.raises(WeightsError) as info:
        load(path)
    msg = str(info.value)
    assert msg.startswith(f"{path.name}: tensor {to_uint8.name!r} is stored as uint8; weights must be floating "
                          "point"), msg


def test_official_iamg_stored_schedule_and_head_count_are_validated(vectors, tmp_path):
    ckpt = torch.load(vectors.checkpoint("iamg"), map_location="cpu", weights_only=True)
    cases = {
        "negative": ("diffusion", "alphas_cumprod", -ckpt["diffusion"]["alphas_cumprod"],
                     "'diffusion.alphas_cumprod': expected a falling sequence of values in (0, 1]"),
        "short": ("diffusion", "alphas_cumprod", ckpt["diffusion"]["alphas_cumprod"][:10],
                  "'diffusion.alphas_cumprod': expected 1000 values (one per training step), got 'shape (10,)'"),
        "heads": ("config_dict", "model", None, "'config_dict.model.params.num_heads': expected a whole number "
                                                "from 1 to 65536, got 0"),
    }
    for case, (entry, key, value, says) in cases.items():
        changed = {**ckpt, entry: dict(ckpt[entry])}
        if case == "heads":
            changed["config_dict"]["model"] = {**ckpt["config_dict"]["model"],
                                               "params": {**ckpt["config_dict"]["model"]["params"], "num_heads": 0}}
        else:
            changed[entry][key] = value
        path = tmp_path / f"iamg_{case}.pth"
        torch.save(changed, path)
        with pytest.raises(WeightsError) as info:
            load_iamg(path)
        assert str(info.value).startswith(f"{path.name}: stored setting {says}"), str(info.value)


@pytest.mark.parametrize("betas, says", [
    (lambda b: -b, "'betas': expected values between 0 and 1"),
    (lambda b: b[:0], "'betas': expected 1000 values"),
])
def test_official_mgig_stored_schedule_is_validated(vectors, tmp_path, betas, says):
    ckpt = torch.load(vectors.checkpoint("mgig"), map_location="cpu", weights_only=True)
    ckpt["state_dict"] = {**ckpt["state_dict"], "betas": betas(ckpt["state_dict"]["betas"])}
    path = tmp_path / "mgig_schedule.ckpt"
    torch.save(ckpt, path)
    with pytest.raises(WeightsError) as info:
        load_mgig(path)
    assert str(info.value).startswith(f"{path.name}: stored setting {says}"), str(info.value)


def test_a_vae_file_with_a_bad_latent_scale_is_refused(tmp_path):
    from interact_custom.cli.train import load_vae_file

    def only_vae(sd):
        for k in [k for k in sd if not k.startswith("vae.")]:
            del sd[k]

    path = _tampered(tmp_path, "iamg", _set("vae", "scaling_factor", math.nan), tensors_edit=only_vae)
    _refused(load_vae_file, path, "vae.scaling_factor", "a finite number")


# --- 4. a full disk while convert / train write ----------------------------------------------

def _disk_full(monkeypatch, kind: str, when=lambda path: True):
    """Make safetensors' writer fail as on a full disk, after writing part of the file."""
    import safetensors
    import safetensors.torch

    real = safetensors.torch.save_file

    def save_file(tensors, filename, metadata=None):
        if not when(Path(filename)):
            return real(tensors, filename, metadata=metadata)
        Path(filename).write_bytes(b"\0" * 1000)  # what got written before the disk filled up
        if kind == "safetensors":
            raise safetensors.SafetensorError("Error while serializing: I/O error: No space left on device "
                                              "(os error 28)")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", save_file)


@pytest.mark.parametrize("kind", ["safetensors", "oserror"])
def test_convert_on_a_full_disk(tmp_path, capsys, monkeypatch, kind):
    _disk_full(monkeypatch, kind)
    out = tmp_path / "iamg.safetensors"
    assert main(["convert", str(_embedded("iamg")), str(out)]) == 2
    err = capsys.readouterr().err
    assert err == (f"interact-custom convert: {out}: No space left on device (the disk is full); nothing was "
                   "written\n"), err
    assert list(tmp_path.iterdir()) == []  # no partial or temp file


def test_train_checkpoint_on_a_full_disk(tmp_path, capsys, monkeypatch, training_cpu):
    from interact_custom.cli.research.data import synth

    data = tmp_path / "data"
    synth.generate(data, count=4, seed=0, size=64, val_fraction=0.5)
    run = tmp_path / "run"
    _disk_full(monkeypatch, "safetensors", when=lambda path: path.name == "trainable.safetensors")
    rc = main(["train", "vae", "--config", str(CONFIGS / "tiny_vae.json"), "--set", f"data_root={data}",
               "--set", f"output_dir={run}", "--set", "steps=1", "--set", "checkpoint_every=1",
               "--set", "validate_every=0", "--set", "validation_samples=0", "--set", "data_limit=2",
               "--set", "batch_size=1"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last == (f"interact-custom train: {run / 'checkpoints' / 'step_000001'}: No space left on device (the "
                     "disk is full); checkpoint step_000001 was not written (the earlier ones are kept); free some "
                     "space, then continue the run with --resume"), last
    assert list((run / "checkpoints").iterdir()) == []  # the partial checkpoint was removed
    assert not (run / "final.safetensors").exists()


def test_train_final_file_on_a_full_disk(tmp_path, capsys, monkeypatch, training_cpu):
    from interact_custom.cli.research.data import synth

    data = tmp_path / "data"
    synth.generate(data, count=4, seed=0, size=64, val_fraction=0.5)
    run = tmp_path / "run"
    _disk_full(monkeypatch, "oserror", when=lambda path: "final.safetensors" in path.name)
    rc = main(["train", "vae", "--config", str(CONFIGS / "tiny_vae.json"), "--set", f"data_root={data}",
               "--set", f"output_dir={run}", "--set", "steps=1", "--set", "checkpoint_every=0",
               "--set", "validate_every=0", "--set", "validation_samples=0", "--set", "data_limit=2",
               "--set", "batch_size=1"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == (f"interact-custom train: {run / 'final.safetensors'}: No space left "
                                            "on device (the disk is full); nothing was written")
    assert not [p.name for p in run.iterdir() if "final" in p.name]  # no partial or temp file


def test_a_torch_writer_failure_is_read_as_a_full_disk_only_when_it_is(tmp_path, monkeypatch):
    # torch.save's zip writer gives no errno: the free space of the folder decides.
    exc = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")
    monkeypatch.setattr(files, "_free_bytes", lambda folder: 4096)
    failure = files.write_failure(exc, tmp_path / "optimizer.bin")
    assert failure.errno == errno.ENOSPC and failure.filename == str(tmp_path / "optimizer.bin")
    monkeypatch.setattr(files, "_free_bytes", lambda folder: 2**40)
    assert files.write_failure(exc, tmp_path / "optimizer.bin").errno == errno.EIO
    assert files.write_failure(ZeroDivisionError("a bug"), tmp_path / "x") is None


def test_read_weights_casts_floating_tensors_as_it_reads(tmp_path):
    # The cast happens tensor by tensor inside the read, so loading an fp16 file as fp32
    # never holds both copies of the weights (peak: docs/BENCHMARKS.md).
    g = torch.Generator().manual_seed(0)
    stored = {"a": torch.randn(3, 5, generator=g).half(), "b": torch.arange(4), "c": torch.randn(7, generator=g).bfloat16(),
              "d": torch.randn(2, generator=g), "e": torch.zeros(0, 3, dtype=torch.float16)}
    save_file(stored, tmp_path / "w.safetensors", metadata={"k": "v"})
    same, _ = read_weights(tmp_path / "w.safetensors")
    cast, metadata = read_weights(tmp_path / "w.safetensors", dtype=torch.float32)
    assert metadata == {"k": "v"}
    for k, v in stored.items():
        assert same[k].dtype == v.dtype and torch.equal(same[k], v), k
        want = v.float() if v.is_floating_point() else v
        assert cast[k].dtype == want.dtype and cast[k].shape == v.shape and torch.equal(cast[k], want), k


def test_the_loader_casts_while_reading_and_loads_what_load_mgig_loads():
    from interact_custom.weights_manager.loader import load_mgig_model

    for dtype in (torch.float32, torch.float16):
        a = load_mgig_model(EMBEDDED_FILES["mgig"], dtype=dtype).state_dict()
        b = load_mgig(EMBEDDED_FILES["mgig"], dtype=dtype).state_dict()
        assert list(a) == list(b)
        assert all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)
