"""Speed and memory of the released IAMG UNet (DESIGN.md §1, §6): time per UNet call and
per PLMS mask, fp32 and bf16, peak RSS.

A mask at the official settings is 50 PLMS steps = 51 UNet calls at a 32² latent (the
256² image space): the released network has no cross-attention, so the no-op
classifier-free guidance pass is skipped (DESIGN §1). The model is the ``official``
preset with random weights (timing does not depend on the values). bf16 means the
**model is cast to bf16** (weights and activations; the sampler state stays fp32), not
autocast.

On a shared CPU a full mask takes minutes, so by default a few calls are timed and the
mask time is extrapolated: (steps + 1) × mean call + the sampler's own arithmetic
(timed with a free ε function); ``full_mask=True`` times the real loop instead. Each
dtype runs in its own process so that its peak RSS is its own.

``python -m interact_custom.pipelines.benchmark_iamg [--dtypes fp32 bf16] [--calls 3]
[--latent 32] [--steps 50] [--full-mask] [--vae] [--preset official] [--json]``
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch

from . import iamg, samplers

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _peak_rss_mib() -> float:
    # Linux reports ru_maxrss in KiB.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _random_module(factory, dtype: torch.dtype, seed: int) -> torch.nn.Module:
    """Build on the meta device, allocate directly in ``dtype`` and re-initialise every
    layer: no fp32 copy of a bf16 model ever exists, so peak RSS is the dtype's own."""
    with torch.device("meta"):
        module = factory()
    module = module.to_empty(device="cpu").to(dtype)
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        for m in module.modules():
            if hasattr(m, "reset_parameters") and m is not module:
                m.reset_parameters()
    return module.eval().requires_grad_(False)


def unet_flops(config: iamg.IAMGUNetConfig, latent: int) -> float | None:
    """FLOPs of one UNet call at batch 1 (counted on the meta device; None if the
    counter cannot handle an operation)."""
    try:
        from torch.utils.flop_counter import FlopCounterMode

        with torch.device("meta"):
            unet = iamg.IAMGUNet(config)
            x = torch.empty(1, config.in_channels, latent, latent)
            ctx = None if config.cross_attention_dim is None else torch.empty(1, 77, config.cross_attention_dim)
            with FlopCounterMode(display=False) as counter, torch.no_grad():
                unet(x, torch.tensor([500]), ctx)
        return float(counter.get_total_flops())
    except Exception:  # an op without a meta/flop formula: report no number rather than fail
        return None


def benchmark(*, preset: str = "official", dtype: str = "fp32", latent: int = 32, calls: int = 3,
              steps: int = iamg.DEFAULT_STEPS, full_mask: bool = False, vae: bool = False,
              seed: int = 0) -> dict:
    """Time the UNet of ``preset`` (random weights) on the CPU in one ``dtype``.

    Returns a dict: ``call_s`` (mean of ``calls`` timed calls after one warm-up),
    ``call_min_s``, ``call_cpu_s`` (process CPU seconds per call), ``mask_s`` (50-step
    PLMS: measured with ``full_mask``, else
    extrapolated — ``mask_extrapolated`` says which), ``unet_calls_per_mask``,
    ``sampler_overhead_s``, optional ``vae_encode_s``/``vae_decode_s`` (SD VAE at 256²,
    one call each), ``gflop_per_call``, ``tflops`` achieved (best call), ``peak_rss_mib``,
    threads and the 1-minute load average before/after (the CPU may be shared).
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype: choose from {', '.join(DTYPES)}, got {dtype!r}")
    torch.set_flush_denormal(True)  # random weights must not hit slow denormal paths
    dt = DTYPES[dtype]
    cfg = iamg.preset(preset)
    result = {"preset": preset, "dtype": dtype, "how": "model cast to this dtype (weights + activations); "
              "sampler state fp32" if dtype != "fp32" else "fp32 throughout", "latent": latent,
              "threads": torch.get_num_threads(), "device": "cpu", "loadavg_before": os.getloadavg()[0]}

    t0 = time.perf_counter()
    unet = _random_module(lambda: iamg.IAMGUNet(cfg), dt, seed)
    result["build_s"] = time.perf_counter() - t0
    result["params_m"] = sum(p.numel() for p in unet.parameters()) / 1e6

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, cfg.latent_channels, latent, latent, generator=g)
    cond = torch.randn(1, cfg.latent_channels, latent, latent, generator=g)
    context = None if cfg.cross_attention_dim is None else torch.randn(1, 77, cfg.cross_attention_dim, generator=g)

    def eps_fn(x_t, t):
        return unet(torch.cat([x_t, cond], dim=1), t, context).float()

    with torch.inference_mode():
        t_mid = torch.tensor([500])
        eps_fn(x, t_mid)  # warm-up: kernel selection, allocator
        times, cpu = [], []
        for _ in range(int(calls)):
            t0, c0 = time.perf_counter(), time.process_time()
            eps_fn(x, t_mid)
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        result["call_s"] = sum(times) / len(times)
        result["call_min_s"] = min(times)
        # CPU seconds of this process per call: less sensitive than wall time to other
        # processes sharing the cores (cpu / threads ≈ the wall time of an idle machine).
        result["call_cpu_s"] = sum(cpu) / len(cpu)
        result["unet_calls_per_mask"] = steps + 1  # PLMS: the first step calls twice
        ac = samplers.ldm_alphas_cumprod()
        t0 = time.perf_counter()
        samplers.sample_plms(lambda x_t, t: torch.zeros_like(x_t), x, ac, steps)
        result["sampler_overhead_s"] = time.perf_counter() - t0
        if full_mask:
            t0 = time.perf_counter()
            samplers.sample_plms(eps_fn, x, ac, steps)
            result["mask_s"] = time.perf_counter() - t0
            result["mask_extrapolated"] = False
        else:
            result["mask_s"] = (steps + 1) * result["call_s"] + result["sampler_overhead_s"]
            result["mask_extrapolated"] = True
        result["rss_after_unet_mib"] = _peak_rss_mib()
        if vae:
            from ..weights_manager.ldm_vae import build_vae

            del unet
            model_vae = _random_module(lambda: build_vae(iamg.SD_VAE), dt, seed)
            img = torch.rand(1, 3, iamg.IMAGE_SIZE, iamg.IMAGE_SIZE, generator=g).to(dt) * 2 - 1
            model_vae.encode(img)  # warm-up
            t0 = time.perf_counter()
            z = model_vae.encode(img).latent_dist.mean
            result["vae_encode_s"] = time.perf_counter() - t0
            model_vae.decode(z)
            t0 = time.perf_counter()
            model_vae.decode(z)
            result["vae_decode_s"] = time.perf_counter() - t0
    flops = unet_flops(cfg, latent)
    result["gflop_per_call"] = flops / 1e9 if flops else None
    result["tflops"] = flops / result["call_min_s"] / 1e12 if flops else None
    result["peak_rss_mib"] = _peak_rss_mib()
    result["loadavg_after"] = os.getloadavg()[0]
    return result


def _run_isolated(args: argparse.Namespace, dtype: str) -> dict:
    cmd = [sys.executable, "-m", __spec__.name if __spec__ else "interact_custom.pipelines.benchmark_iamg",
           "--in-process", "--json", "--dtypes", dtype, "--preset", args.preset, "--latent", str(args.latent),
           "--calls", str(args.calls), "--steps", str(args.steps)]
    cmd += ["--full-mask"] if args.full_mask else []
    cmd += ["--vae"] if args.vae else []
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _format(r: dict) -> str:
    mask = f"{r['mask_s']:.1f} s ({'extrapolated' if r['mask_extrapolated'] else 'measured'})"
    lines = [f"[{r['dtype']}] {r['preset']} UNet {r['params_m']:.1f} M params, latent {r['latent']}², "
             f"{r['threads']} threads — {r['how']}",
             f"  UNet call: mean {r['call_s']:.3f} s, min {r['call_min_s']:.3f} s, "
             f"{r['call_cpu_s']:.2f} CPU-s"
             + (f" ({r['gflop_per_call']:.1f} GFLOP → {r['tflops']:.3f} TFLOP/s)" if r.get("tflops") else ""),
             f"  {r['unet_calls_per_mask'] - 1}-step PLMS mask ({r['unet_calls_per_mask']} UNet calls, no CFG pass): "
             f"{mask}; sampler arithmetic {r['sampler_overhead_s'] * 1e3:.1f} ms"]
    if "vae_encode_s" in r:
        lines.append(f"  SD VAE at 256²: encode {r['vae_encode_s']:.2f} s, decode {r['vae_decode_s']:.2f} s")
    lines.append(f"  peak RSS {r['peak_rss_mib']:.0f} MiB (after UNet timing {r['rss_after_unet_mib']:.0f} MiB); "
                 f"random init {r['build_s']:.1f} s; load average {r['loadavg_before']:.1f} → "
                 f"{r['loadavg_after']:.1f} on {os.cpu_count()} CPUs")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="official", choices=list(iamg.PRESETS), help="UNet preset")
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=list(DTYPES))
    parser.add_argument("--latent", type=int, default=32, help="latent side (32 = the official 256² images)")
    parser.add_argument("--calls", type=int, default=3, help="timed UNet calls (after one warm-up)")
    parser.add_argument("--steps", type=int, default=iamg.DEFAULT_STEPS, help="PLMS steps of one mask")
    parser.add_argument("--full-mask", action="store_true", help="time a real PLMS loop instead of extrapolating")
    parser.add_argument("--vae", action="store_true", help="also time the SD VAE encode/decode at 256²")
    parser.add_argument("--json", action="store_true", help="print one JSON object per dtype")
    parser.add_argument("--in-process", action="store_true", help="run in this process (peak RSS is shared)")


def run(args: argparse.Namespace) -> int:
    for dtype in args.dtypes:
        kwargs = dict(preset=args.preset, dtype=dtype, latent=args.latent, calls=args.calls, steps=args.steps,
                      full_mask=args.full_mask, vae=args.vae)
        r = benchmark(**kwargs) if args.in_process else _run_isolated(args, dtype)
        print(json.dumps(r) if args.json else _format(r), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m interact_custom.pipelines.benchmark_iamg",
                                     description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
