"""Full-size MGIG (`official` preset, ≈2.45 B parameters) on the CPU with random weights:
one `encode_id` (224² reference) and one `predict_eps` (64² latent, 512² hint, ControlNet
+ UNet); prints wall times and the peak resident memory.

    python tests/slow_official_forward.py [--dtype fp32|bf16] [--threads N]

Not collected by pytest (needs ~10-15 GB of RAM and minutes on a 2-core machine).
"""
from __future__ import annotations

import argparse
import resource
import time

import torch

from interact_custom.pipelines.mgig import MGIGModel, mgig_config


def random_weights_(model: torch.nn.Module, seed: int = 0) -> None:
    """Fill a meta-built model with random weights that keep activations finite:
    matrices/kernels ~ N(0, 1/fan_in), vectors named weight/gamma/lambda ~ 1, others 0,
    token/position embeddings ~ N(0, 0.02)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2 and "embeddings" not in name:
                fan_in = p[0].numel()
                p.normal_(0.0, fan_in ** -0.5, generator=g)
            elif p.ndim >= 2:
                p.normal_(0.0, 0.02, generator=g)
            elif name.endswith(("weight", "lambda1")):
                p.fill_(1.0)
            else:
                p.zero_()


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]

    t0 = time.perf_counter()
    with torch.device("meta"):
        model = MGIGModel(mgig_config("official"))
    model = model.to_empty(device="cpu")
    random_weights_(model)
    model = model.to(dtype).eval().requires_grad_(False)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"build: {n_params / 1e9:.3f} B parameters ({args.dtype}) in {time.perf_counter() - t0:.1f} s, "
          f"peak RSS {peak_rss_gib():.1f} GiB", flush=True)

    g = torch.Generator().manual_seed(1)
    reference = torch.rand(1, 3, 224, 224, generator=g)
    x_t = torch.randn(1, 4, 64, 64, generator=g).to(dtype)
    hint = (torch.rand(1, 4, 512, 512, generator=g) * 2 - 1).to(dtype)
    with torch.inference_mode():
        t0 = time.perf_counter()
        context = model.encode_id(reference)
        t_id = time.perf_counter() - t0
        print(f"encode_id: context {tuple(context.shape)} in {t_id:.1f} s, peak RSS {peak_rss_gib():.1f} GiB",
              flush=True)
        t0 = time.perf_counter()
        eps = model.predict_eps(x_t, 500, context, hint)
        t_eps = time.perf_counter() - t0
    print(f"predict_eps: eps {tuple(eps.shape)} in {t_eps:.1f} s (ControlNet + UNet, 64x64 latent), "
          f"finite: {bool(torch.isfinite(eps).all())}, std {eps.float().std():.3f}")
    print(f"peak RSS: {peak_rss_gib():.1f} GiB; threads {torch.get_num_threads()}")


if __name__ == "__main__":
    main()
