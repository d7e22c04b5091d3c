"""Speed, memory and FLOPs of IAMG and MGIG: the official procedure against ours
(docs/METHOD.md §9; results: docs/BENCHMARKS.md).
``python -m interact_custom benchmark --out DIR [--quick] [--presets ...]``

What is measured and how: `cli.research.evaluation.benchmark` (the columns, the timing and
FLOP counting, the pipelines-only workers); the tables: `cli.research.evaluation.benchmark_report`.
This module runs it: the workers that need the weight-file code (`make_checkpoints`
writes one random model in the official format, `cli.research.official_export`, and
as our safetensors; `time_load` times our loaders on both), each worker task in a fresh
subprocess (``python -m interact_custom.cli.benchmark --worker SPEC.json``, so each
configuration's peak RSS is its own), `run_benchmark` (``benchmark.json`` +
``benchmark.md``) and the command line.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable, Iterable, Mapping

import numpy as np
import torch

from . import output_folder, whole_number
from ..pipelines import iamg, samplers
from ..pipelines.files import check_output_dir
from ..pipelines.memory import available_bytes
from .research.evaluation.benchmark import (COLUMNS, DTYPES, MODELS, OFFICIAL_STEPS, PRESETS, RECOMMENDED_SAMPLER,
                                              RECOMMENDED_STEPS, TIMED_STEPS, VARIANTS, compare_outputs,
                                              evict_from_page_cache, machine_info, matmul_tflops, meta_iamg,
                                              meta_mgig, n_params, peak_rss_mib, random_model, time_configuration,
                                              time_forward, touch_weights)
from .research.evaluation.benchmark_report import markdown_report, ratios

WORKER_TIMEOUT_S = 1800


# ---------------------------------------------------------------------------------------
# Workers that need the weight-file code (the others: `cli.research.evaluation.benchmark`).
# They import `weights_manager` themselves, so that the other workers' processes (whose
# peak RSS is measured) hold no more than the pipelines.
# ---------------------------------------------------------------------------------------

def make_checkpoints(spec: Mapping) -> dict:
    """Worker: one seeded random model written twice into ``spec["dir"]`` — the official
    format (fp32, as released) and our safetensors (fp16, what `convert` writes)."""
    from ..weights_manager.native_iamg import save_iamg
    from .research.official_export import iamg_official_checkpoint, mgig_official_state_dict
    from ..weights_manager.native_mgig import save_mgig

    model_kind, preset = spec["model"], spec["model_preset"]
    folder = Path(spec["dir"])
    model = random_model(model_kind, preset, released=bool(spec.get("released")))
    files = {}
    t0 = time.perf_counter()
    if model_kind == "mgig":
        official_path = folder / f"{model_kind}_{preset}_official.ckpt"
        sd = mgig_official_state_dict(model)
        torch.save({"state_dict": sd}, official_path)
    else:
        official_path = folder / f"{model_kind}_{preset}_official.pth"
        sd = iamg_official_checkpoint(model)
        torch.save(sd, official_path)
    del sd
    files["official"] = {"path": str(official_path), "write_s": time.perf_counter() - t0}
    ours_path = folder / f"{model_kind}_{preset}_ours.safetensors"
    t0 = time.perf_counter()
    (save_mgig if model_kind == "mgig" else save_iamg)(model, ours_path, dtype="fp16")
    files["ours"] = {"path": str(ours_path), "write_s": time.perf_counter() - t0}
    for f in files.values():
        f["size_mib"] = Path(f["path"]).stat().st_size / 2 ** 20
    return {"model": model_kind, "model_preset": preset, "params_m": n_params(model) / 1e6, "files": files,
            "peak_rss_mib": peak_rss_mib()}


def time_load(spec: Mapping) -> dict:
    """Worker: load one checkpoint file with the loader the nodes use
    (`loader.load_mgig_model` / `load_iamg_model`) into ``spec["dtype"]``; cold (page
    cache dropped first) or warm. ``load_s``: until the loader returns; ``ready_s``:
    until every weight is in memory (`touch_weights`). Peak RSS: `tests/measure_load_memory.py`."""
    from ..weights_manager.loader import load_iamg_model, load_mgig_model

    path, dtype = spec["path"], DTYPES[spec["dtype"]]
    _import_model_libraries()  # not part of the load time: ComfyUI has them imported already
    evicted = evict_from_page_cache(path) if spec["cold"] else False
    rss0 = peak_rss_mib()
    t0 = time.perf_counter()
    if spec["model"] == "mgig":
        model = load_mgig_model(path, dtype=dtype)
    else:
        model = load_iamg_model(path, dtype=dtype)
    load_s = time.perf_counter() - t0
    touch_weights(model)
    ready_s = time.perf_counter() - t0
    return {"model": spec["model"], "format": spec["format"], "dtype": spec["dtype"], "cold": spec["cold"],
            "evicted": evicted, "load_s": load_s, "ready_s": ready_s, "params_m": n_params(model) / 1e6,
            "rss_baseline_mib": rss0, "peak_rss_mib": peak_rss_mib()}


def _import_model_libraries() -> None:
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel  # noqa: F401
    from transformers import CLIPTextModel, Dinov2Model  # noqa: F401


WORKERS: dict[str, Callable[[Mapping], dict]] = {
    "configuration": time_configuration, "forward": time_forward, "checkpoints": make_checkpoints,
    "load": time_load,
}


def _worker_main(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    out = WORKERS[spec["task"]](spec)
    Path(spec["result"]).write_text(json.dumps(out))
    return 0


# ---------------------------------------------------------------------------------------
# Orchestration
# ---------------------------------------------------------------------------------------

def _module_name() -> str:
    return __spec__.name if __name__ == "__main__" and __spec__ is not None else __name__


class _Runner:
    """Runs worker tasks in fresh subprocesses (``isolate``) or in this process (tests:
    fast, but peak RSS is then shared), turning failures into ``{"error": ...}`` rows."""

    def __init__(self, work_dir: Path, isolate: bool, log: Callable[[str], None]):
        self.work_dir, self.isolate, self.log = work_dir, isolate, log
        self.n = 0

    def __call__(self, task: str, **spec) -> dict:
        self.n += 1
        spec = {"task": task, **spec, "result": str(self.work_dir / f"result_{self.n}.json")}
        what = " ".join(f"{k}={v}" for k, v in spec.items() if k in ("model", "preset", "variant", "dtype",
                                                                       "format", "cold"))
        self.log(f"[{task}] {what}")
        t0 = time.perf_counter()
        try:
            if not self.isolate:
                out = WORKERS[task](spec)
            else:
                spec_path = self.work_dir / f"spec_{self.n}.json"
                spec_path.write_text(json.dumps(spec))
                proc = subprocess.run([sys.executable, "-m", _module_name(), "--worker", str(spec_path)],
                                      capture_output=True, text=True, timeout=WORKER_TIMEOUT_S)
                if proc.returncode != 0:
                    why = f"killed by signal {-proc.returncode} (out of memory?)" if proc.returncode < 0 else \
                        f"exit status {proc.returncode}"
                    tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
                    raise RuntimeError(f"worker {why}: {tail}")
                out = json.loads(Path(spec["result"]).read_text())
        except Exception as e:  # one failed configuration must not lose the others
            self.log(f"  failed: {e}")
            return {**{k: v for k, v in spec.items() if k not in ("task", "result")}, "error": str(e)[-2000:],
                    "traceback": traceback.format_exc()[-2000:] if not self.isolate else None}
        self.log(f"  done in {time.perf_counter() - t0:.1f} s")
        return out


def _official_files_fit(params: int, folder: Path) -> tuple[bool, str]:
    # official fp32 + ours fp16 on disk; the fp32 model + an fp16 copy in memory.
    need_disk, need_ram = 6 * params + 2 ** 30, 7 * params
    free = shutil.disk_usage(folder).free
    if free < need_disk:
        return False, f"needs {need_disk / 2 ** 30:.1f} GiB of disk in {folder}, {free / 2 ** 30:.1f} GiB free"
    ram = available_bytes()
    if ram is not None and ram < need_ram:
        return False, f"needs ~{need_ram / 2 ** 30:.1f} GiB of free memory, {ram / 2 ** 30:.1f} GiB available"
    return True, ""


def run_benchmark(out_dir: str | os.PathLike, *, presets: Iterable[str] = ("official", "small"), quick: bool = False,
                  isolate: bool = True, steps: int | None = None, fast_steps: int = RECOMMENDED_STEPS,
                  timed_steps: int = TIMED_STEPS, warmup: bool = True, checkpoints: bool = True,
                  matmul_sizes: Iterable[int] | None = None, tmp_dir: str | None = None,
                  command: str | None = None, log: Callable[[str], None] | None = None) -> dict:
    """Run the benchmark and write ``benchmark.json`` + ``benchmark.md`` to ``out_dir``.

    presets: benchmark presets (`PRESETS`). ``official`` runs extrapolated images (or,
      with ``quick``, only one fp32 denoiser forward per model); the others complete images
      with a quality proxy. steps: override the official 50 (tests); fast_steps: column 3's;
      warmup: one untimed step before each complete-image run (off only to make tests quicker);
      matmul_sizes: the square matmuls that measure the machine's peak (default by ``quick``).
    checkpoints: time checkpoint loading; official-size files only when not ``quick``
      and disk / memory allow (else the smaller presets, said in the notes).
    isolate: each measurement in its own subprocess (peak RSS per configuration).
    """
    presets = list(dict.fromkeys(presets))
    unknown = [p for p in presets if p not in PRESETS]
    if unknown or not presets:
        raise ValueError(f"presets: unknown {unknown or presets!r}; choose from {', '.join(PRESETS)}")
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    report: dict = {"date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
                    "command": command or f"run_benchmark({out_dir}, presets={presets}, quick={quick})",
                    "quick": quick, "presets": presets, "isolated": isolate, "machine": machine_info(),
                    "loadavg_start": list(os.getloadavg()), "notes": []}
    notes = report["notes"]
    sizes = tuple(matmul_sizes or ((1024, 2048) if quick else (1024, 2048, 4096)))
    log("[matmul] fp32, bf16")
    report["matmul"] = {d: matmul_tflops(d, sizes) for d in ("fp32", "bf16")}
    peak = {d: v["tflops"] for d, v in report["matmul"].items()}

    with tempfile.TemporaryDirectory(prefix="ic_bench_", dir=tmp_dir) as tmp:
        tmp = Path(tmp)
        runner = _Runner(tmp, isolate, log)
        rows, forwards, quality = [], [], []
        for preset in presets:
            extrapolate = preset == "official" or quick
            if preset == "official" and quick:
                for model in MODELS:
                    forwards.append(runner("forward", model=model, preset=preset,
                                           model_preset=PRESETS[preset][model], dtype="fp32"))
                continue
            for model in MODELS:
                variants = list(COLUMNS) + ([] if extrapolate else ["ours_fast_fp32"])
                arrays = {}
                for key in variants:
                    v = VARIANTS[key]
                    n = fast_steps if v.steps is not None else (steps or OFFICIAL_STEPS[model])
                    arrays[key] = str(tmp / f"{model}_{preset}_{key}.npz")
                    rows.append(runner("configuration", model=model, preset=preset,
                                       model_preset=PRESETS[preset][model], variant=key, steps=n,
                                       extrapolate=extrapolate, timed_steps=timed_steps, warmup=warmup,
                                       arrays=None if extrapolate else arrays[key]))
                if not extrapolate and all(Path(p).is_file() for p in arrays.values()):
                    ref = dict(np.load(arrays["official"]))
                    entry = {"model": model, "preset": preset}
                    for key in variants[1:]:
                        entry[key] = compare_outputs(model, dict(np.load(arrays[key])), ref)
                    quality.append(entry)
        for r in rows + forwards:
            r.pop("arrays", None)  # temporary files, gone with the temporary folder
            if "error" in r:
                continue
            tf = r.get("step_tflops", r.get("tflops"))
            r["matmul_peak_tflops"] = peak[r["dtype"]] if r["dtype"] in peak else None
            r["utilisation"] = tf / peak[r["dtype"]] if r["dtype"] in peak else None
        report["configurations"] = rows
        report["forwards"] = forwards
        report["ratios"] = ratios(rows)
        report["quality"] = quality
        if quick:
            notes.append(f"--quick: images extrapolated from {timed_steps} timed steps at every preset and no "
                         "quality proxy (it needs complete images); official sizes: one cold fp32 denoiser "
                         "forward per model.")
        if any(r.get("extrapolated_from_steps") for r in rows):
            notes.append("Extrapolated images: the first k steps are timed in a fresh process (no warm-up), "
                         "time per step is the median of steps 2..k, and the image time = the time to step k "
                         "(including the set-up and first-call overheads once) + the remaining steps × time per "
                         "step + one decode (+ the identity encoding for MGIG).")
        if quality:
            notes.append("Quality proxy: random weights, so the numbers measure how far solver/precision "
                         "changes move the output, not image quality; real quality numbers need trained "
                         "weights (the synthetic-benchmark quality numbers come with the trained default).")
        report["checkpoint_load"] = []
        if checkpoints and quick:
            notes.append("--quick: checkpoint load times not measured.")
        elif checkpoints:
            report["checkpoint_load"] = _checkpoint_loads(runner, presets, tmp, notes)

    report["loadavg_end"] = list(os.getloadavg())
    report["wall_s"] = time.perf_counter() - t_start
    if max(report["loadavg_start"][0], report["loadavg_end"][0]) > 0.75 * (os.cpu_count() or 1):
        notes.append(f"The machine was shared (1-min load average {report['loadavg_start'][0]:.1f} at the start, "
                     f"{report['loadavg_end'][0]:.1f} at the end, on {os.cpu_count()} cores): absolute times are "
                     "pessimistic; ratios between columns are more robust.")
    if not isolate:
        notes.append("Measured in one process (isolate=False): peak RSS values are cumulative, not per configuration.")
    (out_dir / "benchmark.json").write_text(json.dumps(report, indent=1, default=_json_default))
    (out_dir / "benchmark.md").write_text(markdown_report(report))
    return report


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _checkpoint_loads(runner: _Runner, presets: list[str], tmp: Path, notes: list[str]) -> list[dict]:
    load_presets = [p for p in presets if p != "official"] or ["small"]
    if "official" in presets:
        load_presets.append("official")
    results = []
    for preset in load_presets:
        for model in MODELS:
            model_preset = PRESETS[preset][model]
            # The official IAMG format cannot hold the ★ variant's cross-attention: its
            # files are written from the same architecture without it.
            released = model == "iamg" and iamg.model_preset(model_preset).unet.cross_attention_dim is not None
            name = f"{model_preset} without cross-attention" if released else model_preset
            if preset == "official":
                meta = meta_mgig(model_preset) if model == "mgig" else meta_iamg(model_preset)
                fits, why = _official_files_fit(n_params(meta), tmp)
                del meta
                if not fits:
                    notes.append(f"Checkpoint loading of the official-size {model.upper()} skipped: {why}.")
                    continue
            entry = {"model": model, "preset": preset, "architecture": name}
            made = runner("checkpoints", model=model, preset=preset, model_preset=model_preset, dir=str(tmp),
                          released=released)
            if "error" in made:
                entry["error"] = made["error"]
                results.append(entry)
                continue
            entry["params_m"] = made["params_m"]
            entry["files"] = {fmt: {k: v for k, v in f.items() if k != "path"} for fmt, f in made["files"].items()}
            loads = []
            for fmt, dtype, cold in (("official", "fp32", True), ("official", "fp32", False),
                                     ("ours", "fp32", True), ("ours", "fp32", False), ("ours", "bf16", False)):
                loads.append(runner("load", model=model, preset=preset, format=fmt, dtype=dtype, cold=cold,
                                    path=made["files"][fmt]["path"]))
            entry["loads"] = loads
            for f in made["files"].values():
                Path(f["path"]).unlink(missing_ok=True)
            results.append(entry)
    return results


# ---------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=output_folder, help="output folder for benchmark.json and benchmark.md")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test (< 2 min): small presets plus one official-size fp32 forward per model")
    parser.add_argument("--presets", nargs="+", default=None, choices=list(PRESETS),
                        help="benchmark presets (default: official small; official = the released sizes, "
                             "extrapolated from a few steps)")
    parser.add_argument("--steps", type=whole_number(1), default=None,
                        help="override the official 50 sampling steps of columns 1 and 2")
    parser.add_argument("--fast-steps", type=whole_number(1), default=RECOMMENDED_STEPS,
                        help=f"column 3's {RECOMMENDED_SAMPLER} steps (default {RECOMMENDED_STEPS})")
    parser.add_argument("--timed-steps", type=whole_number(2), default=TIMED_STEPS,
                        help=f"steps timed before extrapolating, >= 2 (default {TIMED_STEPS})")
    parser.add_argument("--no-checkpoints", action="store_true", help="skip the checkpoint load-time comparison")
    parser.add_argument("--tmp", default=None, help="folder for temporary checkpoint files (default: system temp)")
    parser.add_argument("--in-process", action="store_true",
                        help="run every measurement in this process (faster; peak RSS becomes cumulative)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing benchmark.json / .md")
    parser.add_argument("--worker", help=argparse.SUPPRESS)


def _command_line(args: argparse.Namespace) -> str:
    parts = ["python -m interact_custom benchmark", "--out", shlex.quote(str(args.out))]
    parts += ["--quick"] if args.quick else []
    parts += ["--presets", *args.presets] if args.presets else []
    parts += ["--steps", str(args.steps)] if args.steps else []
    parts += ["--fast-steps", str(args.fast_steps)] if args.fast_steps != RECOMMENDED_STEPS else []
    parts += ["--timed-steps", str(args.timed_steps)] if args.timed_steps != TIMED_STEPS else []
    parts += ["--no-checkpoints"] if args.no_checkpoints else []
    parts += ["--in-process"] if args.in_process else []
    return " ".join(parts)


def run(args: argparse.Namespace) -> int:
    if args.worker:
        return _worker_main(args.worker)
    if not args.out:
        print("benchmark: --out DIR is required", file=sys.stderr)
        return 2
    # Everything the measurements will use, before the first one (they take minutes).
    official_steps = args.steps or max(OFFICIAL_STEPS.values())
    for option, sampler, steps in (("--fast-steps", RECOMMENDED_SAMPLER, args.fast_steps),
                                   ("--steps", "plms", official_steps), ("--steps", "ddim", official_steps)):
        try:
            samplers.check_settings(sampler, steps)
        except samplers.SettingsError as e:
            print(f"benchmark: {option}: {e}", file=sys.stderr)
            return 2
    if args.tmp is not None and not Path(args.tmp).is_dir():
        print(f"benchmark: --tmp {args.tmp}: no such folder; create it or leave --tmp out", file=sys.stderr)
        return 2
    check_output_dir(args.out, "--out")
    out = Path(args.out)
    existing = [n for n in ("benchmark.json", "benchmark.md") if (out / n).exists()]
    if existing and not args.overwrite:
        print(f"benchmark: {out} already holds {', '.join(existing)}; choose another --out or pass --overwrite",
              file=sys.stderr)
        return 2
    presets = args.presets or (["small", "official"] if args.quick else ["official", "small"])
    report = run_benchmark(out, presets=presets, quick=args.quick, isolate=not args.in_process, steps=args.steps,
                           fast_steps=args.fast_steps, timed_steps=args.timed_steps,
                           checkpoints=not args.no_checkpoints, tmp_dir=args.tmp, command=_command_line(args))
    failed = [r for r in report["configurations"] + report["forwards"] if "error" in r]
    print(f"wrote {out / 'benchmark.json'} and {out / 'benchmark.md'} ({report['wall_s']:.0f} s"
          + (f"; {len(failed)} measurement(s) failed" if failed else "") + ")")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m interact_custom benchmark", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
