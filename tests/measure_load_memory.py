"""Peak resident memory of loading our fp16 MGIG safetensors at official size
(≈2.45 B parameters, 4.6 GiB) into fp32 and fp16, each load in a fresh process.

    python tests/measure_load_memory.py [--file F.safetensors] [--dtypes fp32 fp16]

Without --file, a seeded random official-size model (`benchmark.random_model`, built in
fp16) is written to a temporary folder first (~5 GiB of RAM and disk). Each load runs
the benchmark's ``load`` worker (``python -m interact_custom.cli.benchmark --worker``),
so with PYTHONPATH pointing at an older checkout (a folder holding ``interact_custom``)
the same measurement runs that checkout's loader. Peak RSS is ``ru_maxrss``; "above
baseline" subtracts the process's RSS after importing torch / diffusers / transformers.
Not collected by pytest (needs ~15 GB of RAM; one load at a time). Results:
docs/BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path


def write_random_official(path: Path) -> None:
    from interact_custom.cli.research.evaluation.benchmark import random_model
    from interact_custom.weights_manager.native_mgig import save_mgig

    save_mgig(random_model("mgig", "official", "fp16"), path, dtype="fp16")


def measure(path: Path, dtype: str, work: Path) -> dict:
    spec = {"task": "load", "model": "mgig", "format": "ours", "dtype": dtype, "cold": False, "path": str(path),
            "result": str(work / f"load_{dtype}.json")}
    spec_path = work / f"spec_{dtype}.json"
    spec_path.write_text(json.dumps(spec))
    subprocess.run([sys.executable, "-m", "interact_custom.cli.benchmark", "--worker", str(spec_path)], check=True)
    return json.loads(Path(spec["result"]).read_text())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--file", type=Path, help="an official-size MGIG file in our format (default: write one)")
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "fp16"], choices=["fp32", "fp16", "bf16"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ic_loadmem_") as tmp:
        work = Path(tmp)
        path = args.file
        if path is None:
            path = work / "mgig_official_ours.safetensors"
            write_random_official(path)
        gib = 2 ** 30
        print(f"{path.name}: {path.stat().st_size / gib:.2f} GiB")
        for dtype in args.dtypes:
            r = measure(path, dtype, work)
            model_gib = r["params_m"] * 1e6 * {"fp32": 4, "fp16": 2, "bf16": 2}[dtype] / gib
            print(f"load as {dtype}: peak RSS {r['peak_rss_mib'] / 1024:.2f} GiB "
                  f"({(r['peak_rss_mib'] - r['rss_baseline_mib']) / 1024:.2f} GiB above the "
                  f"{r['rss_baseline_mib'] / 1024:.2f} GiB baseline; the model itself {model_gib:.2f} GiB), "
                  f"{r['load_s']:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
