"""`python -m interact_custom verify --vectors DIR [--parts preproc,mgig,iamg]`.

Recomputes every reference array of a test-vector folder with our code and prints one
row per array: max abs error, max relative error, tolerance, PASS/FAIL (or SKIPPED with
the reason, or INPUT). Exits non-zero on any failure, on an array no checker produced,
and on a part without a checker.
"""
from __future__ import annotations

import importlib
import sys
import time
import traceback

from .research.vectors import Result, VectorFolder

CHECKERS = {"preproc": ".research.vectors_preproc", "mgig": ".research.vectors_mgig", "iamg": ".research.vectors_iamg"}


def verify_part(folder: VectorFolder, part: str) -> list[Result]:
    """All results for one part, with uncovered arrays reported as failures."""
    if part not in CHECKERS:
        return [Result(f"<part {part}>", "FAIL", note=f"no checker for part {part!r}")]
    try:
        module = importlib.import_module(CHECKERS[part], package=__package__)
        with folder.reference_threads():
            results = list(module.check(folder))
    except Exception as e:  # report, don't crash: the other parts still run
        tb = traceback.format_exception_only(type(e), e)[-1].strip()
        return [Result(f"<part {part}>", "FAIL", note=f"checker crashed: {tb}")]
    covered = {r.name for r in results}
    for name in folder.array_names(part):
        if name not in covered:
            results.append(Result(name, "FAIL", note="not computed by our code"))
    return results


def format_rows(part: str, results: list[Result]) -> list[str]:
    rows = []
    for r in results:
        nums = (f"{r.max_abs:11.3e} {r.max_rel:11.3e}" if r.status in ("PASS", "FAIL") and r.max_abs == r.max_abs
                else f"{'-':>11} {'-':>11}")
        rows.append(f"{part:8} {r.name:38} {nums}  {r.tolerance:18} {r.status:8} {r.note}".rstrip())
    return rows


def add_arguments(parser):
    parser.add_argument("--vectors", required=True, help="test-vector folder (contains manifest.json)")
    parser.add_argument("--parts", default=None,
                        help="comma-separated parts to check (default: every part in the manifest)")


def run(args) -> int:
    try:
        folder = VectorFolder(args.vectors)
    except (FileNotFoundError, ValueError) as e:
        print(f"verify: {e}", file=sys.stderr)
        return 2
    parts = [p.strip() for p in args.parts.split(",")] if args.parts else folder.parts
    unknown = [p for p in parts if p not in folder.parts]
    if unknown:
        print(f"verify: {folder.path} has no part(s) {', '.join(unknown)} (it has: {', '.join(folder.parts)})",
              file=sys.stderr)
        return 2
    print(f"test vectors: {folder.path}  (set {folder.manifest.get('set')}, scene "
          f"{folder.manifest.get('scene_variant')}, seed {folder.manifest.get('seed')})")
    print(f"{'part':8} {'array':38} {'max abs':>11} {'max rel':>11}  {'tolerance':18} status")
    counts: dict[str, int] = {}
    for part in parts:
        t0 = time.perf_counter()
        results = verify_part(folder, part)
        for row in format_rows(part, results):
            print(row, flush=True)
        for r in results:
            counts[r.status] = counts.get(r.status, 0) + 1
        print(f"{part:8} ({time.perf_counter() - t0:.1f} s)")
    summary = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
    failed = counts.get("FAIL", 0)
    print(f"summary: {summary} -> {'FAILED' if failed else 'OK'}")
    return 1 if failed else 0
