"""Bad inputs and interruptions in training runs and IAMG-R mask banks: each gives the
user one actionable line (or is repaired, saying so), never a raw traceback.

Training (`cli/research/training/runs.py`, `loop.py`), on a tiny 4-step IAMG run:

1. ``log.jsonl`` with a torn last line (a kill mid-write): ``--resume`` drops it and says
   so; a corrupt line in the middle is an error naming the file and the line number.
2. A truncated ``trainable.safetensors`` in the latest checkpoint: ``--resume`` falls back
   to the previous complete checkpoint, saying which and why; none complete → an error.
3. Orphan temp files / folders of an interrupted write (``.<name>.<pid>.tmp``,
   ``.<name>.*.tmp``, ``checkpoints/.tmp_step_*``) are removed on the next start or
   resume; other files are left alone.
4. Publishing a checkpoint fsyncs its files and its folder before the rename, and the
   ``latest`` pointer before it replaces the old one.
4b. One run per folder: a second ``train`` (fresh or ``--resume``) in a folder another
   process trains in is refused, naming it (`RunDir.locked`, released when the process
   dies); a folder of the user's own files is refused without ``--overwrite``; NaN / huge
   config numbers (``lr 1e10``) are refused before anything runs.

Mask banks (`pipelines/retrieval/`):

5. A mask that is not a PNG (text renamed .png, a truncated file): the error names the
   bank, the entry id and the file.
6. The embedding cache lives in the user cache folder (`paths.cache_dir`:
   ``$INTERACT_CUSTOM_CACHE``, ``$XDG_CACHE_HOME/interact_custom``,
   ``~/.cache/interact_custom``), never in the (package's) bank folder; it is keyed by
   the bank's path, so two banks never share it, and is reused by a second call.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from interact_custom.cli.research.training.config import CONFIGS_DIR
from interact_custom.cli import train as train_cli
from interact_custom.pipelines import paths
from interact_custom.pipelines import retrieval as R
from interact_custom.cli.research import banks
from interact_custom.cli.research.data import synth
from interact_custom.cli.research.training import config as train_config
from interact_custom.cli.research.training import runs as train_runs

CONFIGS = CONFIGS_DIR
STEPS = dict(steps=4, checkpoint_every=2, validate_every=0, data_limit=2, ema_decay=0.9)


pytestmark = pytest.mark.usefixtures("training_cpu")  # conftest: one thread, denormals flushed


def _config(data: Path, out: Path, **overrides) -> train_config.TrainConfig:
    raw = json.loads((CONFIGS / "tiny_iamg.json").read_text(encoding="utf-8"))
    raw.pop("_comment", None)
    raw.update(data_root=str(data), output_dir=str(out), **{**STEPS, **overrides})
    return train_config.make_config(raw)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished 4-step run (checkpoints at steps 2 and 4) and its data folder."""
    base = tmp_path_factory.mktemp("run")
    synth.generate(base / "data", count=8, seed=0, size=64, val_fraction=0.5)
    result = train_cli.train(_config(base / "data", base / "run"), progress=False)
    assert result.step == 4 and (base / "run" / "checkpoints" / "step_000002").is_dir()
    return base / "data", base / "run", result


@pytest.fixture()
def run_copy(finished_run, tmp_path):
    """A copy of the finished run this test may damage: (data, run folder, its config)."""
    data, run, result = finished_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    return data, copy, _config(data, copy), result


# ----------------------------------------------------------------------------- 1. log.jsonl


def test_torn_last_log_line_is_dropped_on_resume(run_copy, capsys):
    _, run, cfg, _ = run_copy
    log = run / "log.jsonl"
    good = log.read_text(encoding="utf-8")
    n = len(good.splitlines()) + 1
    log.write_text(good + '{"step": 5, "loss": 0.12', encoding="utf-8")  # killed mid-write
    train_cli.train(cfg, resume=True, progress=False)
    err = capsys.readouterr().err
    assert f"{log}: dropped its torn last line {n}" in err
    assert log.read_text(encoding="utf-8") == good  # every line parses again
    [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]


def test_corrupt_log_line_in_the_middle_is_an_error_naming_file_and_line(run_copy, capsys):
    data, run, cfg, _ = run_copy
    log = run / "log.jsonl"
    lines = log.read_text(encoding="utf-8").splitlines()
    lines.insert(2, '{"step": 2, "loss": 0.1 garbage')
    log.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(train_config.ConfigError) as e:
        train_cli.train(cfg, resume=True, progress=False)
    assert str(e.value).startswith(f"{log} line 3 is not valid JSON")
    assert "fix or delete that line" in str(e.value)
    # what the user sees on the command line: one line, exit code 2
    rc = train_cli.run(train_cli_args(data, run, resume=True))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and f"{log} line 3 is not valid JSON" in err[0]


def train_cli_args(data: Path, run: Path, *, resume: bool):
    import argparse

    parser = argparse.ArgumentParser()
    train_cli.add_arguments(parser)
    sets = [f"{k}={json.dumps(v)}" for k, v in {**STEPS, "data_root": str(data), "output_dir": str(run)}.items()]
    argv = ["iamg", "--config", str(CONFIGS / "tiny_iamg.json")]
    for s in sets:
        argv += ["--set", s]
    return parser.parse_args(argv + (["--resume"] if resume else []))


# ----------------------------------------------------------------------------- 2. checkpoints


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def test_truncated_latest_checkpoint_falls_back_to_the_previous_one(run_copy, capsys):
    _, run, cfg, first = run_copy
    ckpts = run / "checkpoints"
    _truncate(ckpts / "step_000004" / train_runs.TRAINABLE_FILE)
    resumed = train_cli.train(cfg, resume=True, progress=False)
    err = capsys.readouterr().err
    assert ("--resume: checkpoint step_000004 is unusable: trainable.safetensors is truncated or corrupt"
            in err)
    assert "resuming from step_000002 (step 2) instead" in err
    assert resumed.step == 4 and resumed.losses == first.losses[2:]  # steps 3, 4 recomputed exactly
    assert train_runs.RunDir(run).checkpoint_problem(ckpts / "step_000004") is None  # re-saved whole


def test_no_complete_checkpoint_is_a_clear_error(run_copy):
    _, run, cfg, _ = run_copy
    ckpts = run / "checkpoints"
    _truncate(ckpts / "step_000004" / train_runs.TRAINABLE_FILE)
    _truncate(ckpts / "step_000002" / "optimizer.bin")
    with pytest.raises(train_config.ConfigError) as e:
        train_cli.train(cfg, resume=True, progress=False)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"--resume: no usable checkpoint in {ckpts}: ")
    assert "step_000004: trainable.safetensors is truncated or corrupt" in msg
    assert "step_000002: optimizer.bin is truncated or corrupt" in msg
    assert "delete the step_* folders to start again from step 0" in msg


# ----------------------------------------------------------------------------- 3. temp leftovers


def test_leftover_temp_files_are_removed_on_resume(run_copy, capsys):
    _, run, cfg, _ = run_copy
    ckpts = run / "checkpoints"
    ours = [run / ".final.safetensors.k2j4h1.tmp", run / ".log.jsonl.4242.tmp", run / ".config.json.17.tmp",
            ckpts / ".latest.99.tmp", run / "samples" / ".step_000004.png.5.tmp"]
    (run / "samples").mkdir(exist_ok=True)
    for p in ours:
        p.write_bytes(b"half")
    for d in (ckpts / ".tmp_step_000006", ckpts / ".tmp_old_step_000002"):
        d.mkdir()
        (d / train_runs.TRAINABLE_FILE).write_bytes(b"half")
    others = [run / "notes.tmp", run / ".notes.1.tmp", run / ".final.safetensors", ckpts / ".tmp_mine",
              run / "samples" / "step_000004.png.tmp"]
    for p in others:
        p.write_bytes(b"keep")

    train_cli.train(cfg, resume=True, progress=False)
    err = capsys.readouterr().err
    assert f"removed 7 leftover temp files/folders of an interrupted write in {run}" in err
    assert not any(p.exists() for p in ours)
    assert not (ckpts / ".tmp_step_000006").exists() and not (ckpts / ".tmp_old_step_000002").exists()
    assert all(p.read_bytes() == b"keep" for p in others)


def test_leftover_temp_files_are_removed_on_a_fresh_start(tmp_path):
    run = train_runs.RunDir(tmp_path / "run")
    run.checkpoints.mkdir(parents=True)
    (run.root / ".final.safetensors.abc.tmp").write_bytes(b"x")
    (run.checkpoints / ".tmp_step_000002").mkdir()
    (run.root / "mine.txt").write_bytes(b"x")
    assert sorted(p.name for p in run.remove_temp_leftovers()) == [".final.safetensors.abc.tmp",
                                                                    ".tmp_step_000002"]
    assert sorted(p.name for p in run.root.rglob("*")) == ["checkpoints", "mine.txt"]


# ----------------------------------------------------------------------------- 4. fsync


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd to name a synced fd")
def test_publish_fsyncs_files_and_folder_before_renaming(tmp_path, monkeypatch):
    run = train_runs.RunDir(tmp_path.resolve() / "run")
    run.checkpoints.mkdir(parents=True)
    tmp = run.checkpoints / ".tmp_step_000002"
    tmp.mkdir()
    for name in (train_runs.TRAINABLE_FILE, "optimizer.bin", train_runs.STATE_FILE):
        (tmp / name).write_bytes(b"data")
    events: list[tuple] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", str(src), str(dst)))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    run.publish(tmp, "step_000002")

    final = run.checkpoints / "step_000002"
    renames = [i for i, e in enumerate(events) if e[0] == "replace"]
    assert events[renames[0]] == ("replace", str(tmp), str(final))
    before = {e[1] for e in events[:renames[0]] if e[0] == "fsync"}
    assert {str(tmp / n) for n in (train_runs.TRAINABLE_FILE, "optimizer.bin", train_runs.STATE_FILE)} <= before
    assert str(tmp) in before  # the folder itself, after its files
    # latest: its temp file is synced before it replaces the pointer, then the folder
    latest = [i for i in renames if events[i][2] == str(run.checkpoints / train_runs.LATEST)]
    assert latest, events
    src = events[latest[0]][1]
    assert ("fsync", src) in events[:latest[0]]
    assert ("fsync", str(run.checkpoints)) in events[latest[0] + 1:]
    assert (run.checkpoints / train_runs.LATEST).read_text() == "step_000002\n"


# ----------------------------------------------------------------------------- 4b. one run per folder


_HOLD_LOCK = """
import sys, time
from interact_custom.cli.research.training.runs import RunDir
with RunDir(sys.argv[1]).locked():
    print("locked", flush=True)
    time.sleep(120)
"""


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_second_train_in_a_run_folder_is_refused_until_the_first_ends(run_copy, capsys):
    # Another `train` process holds the folder (as a run still training does): a fresh
    # start and --resume are both refused, naming the process, and the run's files stay as
    # they were; once that process is killed the system drops its lock and --resume works.
    import subprocess
    import sys

    data, run, cfg, _ = run_copy
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = _snapshot(run)
        for resume in (False, True):
            assert train_cli.run(train_cli_args(data, run, resume=resume)) == 2
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and err[0].startswith(
                f"interact-custom train: output_dir {run} is in use by another train process (pid {holder.pid} on ")
            assert "Wait for it to finish (then pass --resume to continue it)" in err[0]
            assert _snapshot(run) == before
    finally:
        holder.kill()
        holder.wait()
    assert train_cli.run(train_cli_args(data, run, resume=True)) == 0
    assert not (run / train_runs.LOCK_FILE).exists()  # released and removed when the run ends


def test_the_lock_is_held_for_the_whole_run_and_released_after_an_error(finished_run, tmp_path):
    data, _, _ = finished_run
    cfg = _config(data, tmp_path / "run")
    with train_runs.RunDir(cfg.output_dir).locked():  # e.g. a run in this same process
        with pytest.raises(train_config.ConfigError, match="is in use by another train process"):
            train_cli.train(cfg, progress=False)
    with pytest.raises(FileNotFoundError, match="is not a CHOI dataset"):  # fails inside the lock ...
        train_cli.train(_config(tmp_path / "nothing", tmp_path / "run2"), progress=False)
    with train_runs.RunDir(tmp_path / "run2").locked():  # ... and leaves it free
        pass


def test_a_folder_of_the_users_own_files_is_refused_without_overwrite(finished_run, tmp_path, capsys):
    # A folder holding the user's own config.json and log.jsonl is not a run folder: train
    # (fresh or --resume) refuses it and leaves it untouched; --overwrite trains there.
    data, _, _ = finished_run
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.json").write_text('{"my": "settings"}')
    (mine / "log.jsonl").write_text("my notes\n")
    before = _snapshot(mine)
    for resume in (False, True):
        assert train_cli.run(train_cli_args(data, mine, resume=resume)) == 2
        err = capsys.readouterr().err
        assert (f"output_dir {mine} holds files that are not a training run (config.json, log.jsonl); a run writes "
                "config.json, log.jsonl, checkpoints/ and final.safetensors there") in err
        assert "Choose an empty or new folder, or pass --overwrite to train there anyway" in err
        assert _snapshot(mine) == before
    args = train_cli_args(data, mine, resume=False)
    args.overwrite = True
    assert train_cli.run(args) == 0
    assert json.loads((mine / "config.json").read_text())["model"] == "iamg"


def test_a_run_folder_without_a_checkpoint_yet_is_ours(tmp_path):
    run = train_runs.RunDir(tmp_path / "run")
    assert run.foreign_files() == []  # missing
    run.root.mkdir()
    assert run.foreign_files() == []  # empty
    run.checkpoints.mkdir()
    run.config.write_text(json.dumps({"model": "iamg", "output_dir": str(run.root)}))
    (run.root / "log.jsonl").write_text("")
    assert run.foreign_files() == []  # a run killed before its first checkpoint
    run.config.write_text('{"my": "settings"}')
    assert run.foreign_files() == ["checkpoints", "config.json", "log.jsonl"]


@pytest.mark.parametrize("override, says", [
    ("lr=1e10", "lr: expected null or a number in (0, 1] (AdamW with a larger step diverges at once"),
    ("lr=NaN", "lr: expected null or a number in (0, 1]"),
    ("weight_decay=Infinity", "weight_decay: expected a finite number >= 0, got inf"),
    ("adam_betas=[0.9, NaN]", "adam_betas: expected [beta1, beta2], each in [0, 1), got [0.9, nan]"),
    ("max_grad_norm=NaN", "max_grad_norm: expected null or a finite positive number, got nan"),
    ("crop_ratio=[1.3, Infinity]", "crop_ratio: expected [lo, hi] with 1 <= lo <= hi (finite), got [1.3, inf]"),
    ("vae_logvar_init=NaN", "vae_logvar_init: expected null or a finite number, got nan"),
    ("lr_scheduler=cosyne", "lr_scheduler: expected linear | cosine"),
])
def test_config_numbers_are_checked_before_anything_runs(finished_run, tmp_path, capsys, override, says):
    from interact_custom import cli

    data, _, _ = finished_run
    out = tmp_path / "run"
    rc = cli.main(["train", "iamg", "--config", str(CONFIGS / "tiny_iamg.json"), "--set", f"data_root={data}",
                   "--set", f"output_dir={out}", "--set", override])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith(f"interact-custom train: {says}")
    assert not out.exists()


# ----------------------------------------------------------------------------- 5. bank masks


@pytest.fixture()
def small_bank(tmp_path):
    def rect(y0, y1, x0, x1):
        m = np.zeros((32, 32), np.uint8)
        m[y0:y1, x0:x1] = 255
        return m

    sources = [banks.BankSource(id=f"{i:06d}", caption=c, verb=v, object=o, human_mask=rect(2, 20, 4, 12),
                            object_mask=rect(10, 30, 8, 28))
               for i, (c, v, o) in enumerate([("a man riding a bike", "ride", "bicycle"),
                                              ("a girl kicking a ball", "kick", "ball")])]
    return banks.build_bank(None, tmp_path / "bank", sources=sources)


@pytest.mark.parametrize("damage", ["text", "truncated"])
def test_mask_that_is_not_a_png_names_entry_and_file(small_bank, damage, monkeypatch, tmp_path):
    monkeypatch.setenv("INTERACT_CUSTOM_CACHE", str(tmp_path / "cache"))
    entry = small_bank.entries[1]
    path = small_bank.root / entry.mask
    if damage == "text":
        path.write_text("this is not an image\n")
    else:
        _truncate(path)
    expected = f"bank {small_bank.root}: entry 000001: masks/000001.png is not a readable PNG image"
    with pytest.raises(ValueError) as e:
        small_bank.load_mask(entry)
    assert str(e.value).startswith(expected) and "\n" not in str(e.value)
    with pytest.raises(ValueError) as e:
        R.retrieve(small_bank, "a girl kicks a ball", encoder=R.LexicalEncoder(), top_k=2)
    assert str(e.value).startswith(expected)


# ----------------------------------------------------------------------------- 6. embedding cache


def _tree(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")
            if "__pycache__" not in p.parts}


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("INTERACT_CUSTOM_CACHE", str(tmp_path / "mine"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert paths.cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("INTERACT_CUSTOM_CACHE")
    assert paths.cache_dir() == tmp_path / "xdg" / "interact_custom"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert paths.cache_dir() == tmp_path / "home" / ".cache" / "interact_custom"


def test_shipped_bank_cache_goes_to_the_user_cache_not_the_package(monkeypatch, tmp_path):
    cache = tmp_path / "cache"
    monkeypatch.setenv("INTERACT_CUSTOM_CACHE", str(cache))
    before = _tree(paths.PIPELINES_DIR)
    bank = R.MaskBank.load(paths.BANK_DIR)

    class Counting(R.LexicalEncoder):
        calls: list[int] = []

        def encode(self, texts):
            self.calls.append(len(texts))
            return super().encode(texts)

    enc = Counting()
    first = R.retrieve(bank, "a person riding a horse", encoder=enc, top_k=3)
    assert _tree(paths.PIPELINES_DIR) == before  # nothing written under the package
    folder = R.bank_cache_dir(bank)
    assert folder.is_relative_to(cache) and sorted(p.suffix for p in folder.iterdir()) == [".json", ".npy"]
    meta = json.loads(next(folder.glob("*.json")).read_text())
    assert meta["bank"] == str(paths.BANK_DIR.resolve()) and meta["index_hash"] == bank.index_hash
    assert meta["encoder"] == enc.identity

    again = R.retrieve(R.MaskBank.load(paths.BANK_DIR), "a person riding a horse", encoder=enc, top_k=3)
    assert enc.calls == [1, len(bank), 1]  # the bank's embeddings came from the cache
    assert [(c.id, c.score) for c in again] == [(c.id, c.score) for c in first]
    assert _tree(paths.PIPELINES_DIR) == before


def test_two_banks_with_the_same_captions_never_share_a_cache(monkeypatch, tmp_path, small_bank):
    monkeypatch.setenv("INTERACT_CUSTOM_CACHE", str(tmp_path / "cache"))
    other = tmp_path / "other"
    shutil.copytree(small_bank.root, other)
    a, b = small_bank, R.MaskBank.load(other)
    assert a.index_hash == b.index_hash
    assert R.bank_cache_dir(a) != R.bank_cache_dir(b)
    enc = R.LexicalEncoder()
    R.bank_embeddings(a, enc)
    R.bank_embeddings(b, enc)
    for bank in (a, b):
        meta = json.loads(next(R.bank_cache_dir(bank).glob("*.json")).read_text())
        assert meta["bank"] == str(bank.root.resolve())
    assert not (a.root / ".embeddings").exists() and not (b.root / ".embeddings").exists()


def test_checkpoint_tensor_files_get_the_umask_mode(tmp_path):
    from interact_custom.pipelines.files import new_file_mode
    from interact_custom.cli.research.training.runs import save_tensors

    path = tmp_path / "trainable.safetensors"
    save_tensors({"w": torch.zeros(2)}, path)
    assert (path.stat().st_mode & 0o777) == new_file_mode() == 0o666 & ~_umask()


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current
