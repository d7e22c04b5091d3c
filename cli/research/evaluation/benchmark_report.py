"""The benchmark's report: ratios against the official procedure and the markdown tables.

`ratios` derives the speed-up / FLOP / memory ratios of columns (2) and (3) against (1)
from the measured rows; `markdown_report` renders the dict that `cli.benchmark`'s
`run_benchmark` writes as ``benchmark.json`` into ``benchmark.md``. The columns and
measurements themselves: `cli.research.evaluation.benchmark`.
"""
from __future__ import annotations

from typing import Mapping

from .benchmark import COLUMNS, MODELS, RECOMMENDED_SAMPLER, RECOMMENDED_STEPS, VARIANTS


def ratios(rows: list[dict]) -> list[dict]:
    """Per model and preset with an ``official`` row: image / step speed-up, FLOPs per
    image and peak RSS of each other column relative to it."""
    out = []
    by = {(r["model"], r["preset"], r["variant"]): r for r in rows if "error" not in r}
    for (model, preset, variant), base in by.items():
        if variant != "official":
            continue
        entry = {"model": model, "preset": preset}
        for key in COLUMNS[1:]:
            r = by.get((model, preset, key))
            if r is None:
                continue
            entry[key] = {"image_speedup": base["image_s"] / r["image_s"],
                          "step_speedup": base["step_s"] / r["step_s"],
                          "flops_per_image_ratio": r["flops"]["image"] / base["flops"]["image"],
                          "peak_rss_ratio": r["peak_rss_mib"] / base["peak_rss_mib"]}
        out.append(entry)
    return out


# ---------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------

def _s(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    if seconds < 1.0:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds:.3g} s" if seconds < 100 else f"{seconds:.0f} s"


def _x(ratio: float | None) -> str:
    return "–" if ratio is None else f"{ratio:.2f}×"


def _g(flops: float | None) -> str:
    return "–" if flops is None else f"{flops / 1e9:.4g}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    def line(cells):  # a "|" inside a cell (|Δ|, error text) must not split the cell
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return [line(header), "|" + "---|" * len(header)] + [line(r) for r in rows]


def markdown_report(report: Mapping) -> str:
    """The human-readable benchmark report (tables of `run_benchmark`'s dict)."""
    m = report["machine"]
    mm = report["matmul"]
    lines = ["# Benchmark: official procedure vs ours", "",
             f"- date: {report['date']}",
             f"- command: `{report['command']}`",
             f"- machine: {m['cpu']}, {m['cores']} cores, {m['ram_gib']:.1f} GiB RAM"
             if m.get("ram_gib") else f"- machine: {m['cpu']}, {m['cores']} cores",
             f"- CPU flags: {', '.join(m['cpu_flags']) or 'none of note'}; torch {m['torch']} "
             f"({m['threads']} threads), diffusers {m['diffusers']}, transformers {m['transformers']}, "
             f"Python {m['python']}",
             f"- 1-min load average: {report['loadavg_start'][0]:.2f} at the start, "
             f"{report.get('loadavg_end', [float('nan')])[0]:.2f} at the end; "
             f"wall time {report.get('wall_s', 0):.0f} s",
             f"- measured matmul peak (best square n×n product): fp32 {mm['fp32']['tflops']:.3f} TFLOP/s, "
             f"bf16 {mm['bf16']['tflops']:.3f} TFLOP/s", "",
             "Columns: **(1)** the official procedure reproduced (fp32, DDIM 50 for MGIG / PLMS 50 for IAMG, "
             "cond and uncond as separate calls, IAMG with its no-op guidance pass); **(2)** ours at the same "
             "settings (batched guidance, IAMG's no-op pass skipped); **(3)** ours at the recommended settings "
             f"(bf16, {RECOMMENDED_SAMPLER} {RECOMMENDED_STEPS} steps, batched guidance). Random weights. "
             "FLOPs are counted (matmul, conv, attention); achieved = counted FLOPs per step / time per step.", ""]
    rows = report.get("configurations", [])
    for model in MODELS:
        mrows = [r for r in rows if r["model"] == model]
        if not mrows:
            continue
        lines += [f"## {model.upper()}", ""]
        for preset in dict.fromkeys(r["preset"] for r in mrows):
            prow = [r for r in mrows if r["preset"] == preset]
            ok = [r for r in prow if "error" not in r]
            params = f", {ok[0]['params_m']:.1f} M parameters" if ok else ""
            lines += [f"### preset `{preset}` ({prow[0]['model_preset']}{params})", ""]
            table = []
            for r in prow:
                if "error" in r:
                    table.append([VARIANTS[r["variant"]].label, "failed: " + r["error"][:150]] + [""] * 8)
                    continue
                k = r.get("extrapolated_from_steps")
                image = _s(r["image_s"]) + (f" (extrapolated from {k} steps)" if k else " (measured)")
                util = f"{r['step_tflops']:.3f} ({100 * r['utilisation']:.0f} %)" if r.get("utilisation") is not None \
                    else f"{r['step_tflops']:.3f}"
                table.append([r["label"], r["dtype"], f"{r['sampler']} {r['steps']}", r["passes"], _s(r["step_s"]),
                              image, _g(r["flops"]["step"]), f"{r['flops']['image'] / 1e12:.3g}", util,
                              f"{r['peak_rss_mib']:.0f}"])
            lines += _table(["column", "dtype", "sampler", "model calls per image", "time / step", "time / image",
                             "GFLOP / step", "TFLOP / image", "achieved TFLOP/s (% of matmul peak)",
                             "peak RSS MiB"], table) + [""]
            timed = [r for r in ok if r.get("components_s")]
            if timed:
                parts = "; ".join(f"{r['variant']}: " + ", ".join(f"{k[:-2]} {_s(v)}"
                                                                  for k, v in r["components_s"].items())
                                  for r in timed)
                lines += [f"Per-image costs outside the sampling loop (included above) — {parts}.", ""]
            if ok:
                lines += ["Random initialisation of the model (not per image): "
                          + ", ".join(f"{r['variant']} {_s(r['build_s'])}" for r in ok) + ".", ""]
    if report.get("ratios"):
        lines += ["## Ratios against (1)", "",
                  "Speed-up = time of (1) / time of the column (> 1: faster than the official procedure).", ""]
        table = []
        for e in report["ratios"]:
            two, three = e.get("ours_same", {}), e.get("ours_fast", {})
            table.append([e["model"].upper(), e["preset"], _x(two.get("image_speedup")), _x(two.get("step_speedup")),
                          _x(two.get("peak_rss_ratio")), _x(three.get("image_speedup")),
                          _x(three.get("step_speedup")), _x(three.get("flops_per_image_ratio")),
                          _x(three.get("peak_rss_ratio"))])
        lines += _table(["model", "preset", "(2) image speed-up", "(2) step speed-up", "(2) peak RSS",
                         "(3) image speed-up", "(3) step speed-up", "(3) FLOPs / image", "(3) peak RSS"], table)
        lines.append("")
    if report.get("quality"):
        lines += ["## Quality proxy (same seed and weights, against (1))", ""]
        table = []
        for e in report["quality"]:
            for key in [k for k in VARIANTS if k in e]:
                q = e[key]
                extra = f"image mean |Δ| {q['image_mean_abs_levels']:.2f} levels, PSNR {q['image_psnr_db']:.1f} dB" \
                    if "image_psnr_db" in q else f"mask mean |Δ| {q['mask_mean_abs']:.4f}, IoU {q['mask_iou']:.3f}"
                table.append([e["model"].upper(), e["preset"], VARIANTS[key].label, f"{q['latent_rel_max']:.3g}",
                              f"{q['latent_rel_rms']:.3g}", extra])
        lines += _table(["model", "preset", "column", "latent max |Δ| / max |ref|", "latent RMS Δ / RMS ref",
                         "decoded output"], table) + [""]
    if report.get("forwards"):
        lines += ["## Official-size denoiser forwards (quick mode)", ""]
        table = []
        for r in report["forwards"]:
            if "error" in r:
                table.append([r["model"].upper(), "failed: " + r["error"][:150], "", "", "", "", ""])
                continue
            util = f"{r['tflops']:.3f} ({100 * r['utilisation']:.0f} %)" if r.get("utilisation") is not None else \
                f"{r['tflops']:.3f}"
            table.append([r["model"].upper(), f"{r['what']} ({r['params_m']:.0f} M params)"
                          + (", first (cold) call" if r.get("cold") else ""), r["dtype"],
                          _s(r["forward_s"]), _g(r["flops"]), util, f"{r['peak_rss_mib']:.0f}"])
        lines += _table(["model", "what", "dtype", "time", "GFLOP", "achieved TFLOP/s (% of peak)", "peak RSS MiB"],
                        table) + [""]
    if report.get("checkpoint_load"):
        lines += ["## Checkpoint loading (our loader; official-format file vs our safetensors)", "",
                  "Both files hold the same random model: official format fp32 (Lightning `mgig.ckpt` / trainer "
                  "dict `iamg.pth`), ours fp16 safetensors. Cold = the file's pages dropped from the page cache "
                  "first (posix_fadvise, best effort); warm = read again right after. *Ready* = every weight "
                  "in memory; *returned* = when the loader returned (official files are memory-mapped, so "
                  "their weights are read later, by the first forward, unless touched).", ""]
        table = []
        for e in report["checkpoint_load"]:
            if "error" in e:
                table.append([e["model"].upper(), e["preset"], "failed: " + e["error"][:150], "", "", "", "", ""])
                continue
            for fmt, f in e["files"].items():
                for dtype in ("fp32", "bf16"):
                    got = {bool(x.get("cold")): x for x in e["loads"]
                           if x.get("format") == fmt and x.get("dtype") == dtype and "error" not in x}
                    if not got:
                        continue
                    rss = max(x["peak_rss_mib"] for x in got.values())

                    def timing(cold):
                        x = got.get(cold)
                        return f"{_s(x['ready_s'])} ({_s(x['load_s'])})" if x else "–"

                    table.append([e["model"].upper(), f"{e['preset']} ({e['architecture']}, {e['params_m']:.0f} M)",
                                  fmt, f"{f['size_mib']:.0f}", _s(f["write_s"]), dtype, timing(True), timing(False),
                                  f"{rss:.0f}"])
        lines += _table(["model", "preset", "file", "size MiB", "write", "load into", "cold: ready (returned)",
                         "warm: ready (returned)", "peak RSS MiB"], table) + [""]
    if report.get("notes"):
        lines += ["## Notes", ""] + [f"- {n}" for n in report["notes"]] + [""]
    return "\n".join(lines)
