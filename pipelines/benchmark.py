"""Speed, memory and FLOPs of IAMG and MGIG: the official procedure against ours
(DESIGN.md §6). ``python -m interact_custom benchmark --out DIR [--quick] [--presets ...]``

Three columns, side by side, for each model and preset (random weights: speed does not
depend on the values):

1. **official** — the official procedure reproduced faithfully: fp32, the official
   sampler (DDIM 50 for MGIG, PLMS 50 for IAMG), conditional and unconditional passes
   as two separate calls; IAMG *with* its no-op guidance pass (empty prompt, 102 UNet
   calls for the released network) and its CLIP prompt encoding.
2. **ours_same** — our pipeline at the same settings: batched guidance (one call of
   batch 2), the released IAMG's no-op unconditional pass skipped (51 calls).
3. **ours_fast** — our recommended settings: bf16 model, DPM-Solver++(2M) 20 steps,
   batched guidance.

Per configuration: time per sampling step and per image, model FLOPs per step and per
image, achieved FLOP/s against this machine's measured matmul throughput for the dtype,
peak RSS. Each configuration runs in its own subprocess so its peak RSS is its own.
At the ``official`` preset a full 50-step image takes many minutes on a small CPU, so
the first few steps are timed and the image time is extrapolated (the tables say
"extrapolated from k steps"); smaller presets run complete images, and their final
latents / decoded outputs give a quality proxy (difference of column 3 and of column 2
from column 1 on the same seed and weights — with random weights this measures solver
and precision drift, not image quality, which needs trained weights).

Checkpoint load time compares an official-format file (Lightning ``mgig.ckpt`` /
trainer-dict ``iamg.pth``, written from the same random model by
`mgig_official_state_dict` / `iamg_official_checkpoint`) with our safetensors file.

FLOPs are counted with `torch.utils.flop_counter.FlopCounterMode` on the *meta* device:
there PyTorch's attention decomposes into matmuls the counter sees, while the CPU's
fused attention kernel has no FLOP formula and would count as 0. Counted: matmuls,
convolutions and attention (2 FLOPs per multiply-add); norms and element-wise ops are
not counted.

The IAMG-only UNet micro-benchmark (`benchmark_iamg`) stays as a small standalone tool;
this module covers its numbers as the IAMG rows.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterable, Mapping

import numpy as np
import torch
from torch import nn

from . import choi, iamg, preprocess, samplers
from .mgig import MGIGModel, mgig_config

# ---------------------------------------------------------------------------------------
# What is compared
# ---------------------------------------------------------------------------------------

MODELS = ("iamg", "mgig")
# Benchmark preset -> the model presets it means. IAMG's small/tiny presets are the ★
# text-conditioned ones (`iamg.MODEL_PRESETS`; small_text is the shipped default's shape).
PRESETS: dict[str, dict[str, str]] = {
    "official": {"mgig": "official", "iamg": "official"},
    "small": {"mgig": "small", "iamg": "small_text"},
    "tiny": {"mgig": "tiny", "iamg": "tiny_text"},
}
OFFICIAL_SAMPLER = {"mgig": "ddim", "iamg": "plms"}
OFFICIAL_STEPS = {"mgig": choi.DEFAULT_STEPS, "iamg": iamg.DEFAULT_STEPS}
GUIDANCE = {"mgig": choi.DEFAULT_GUIDANCE, "iamg": iamg.DEFAULT_GUIDANCE}
RECOMMENDED_SAMPLER = "dpmpp_2m"
RECOMMENDED_STEPS = 20
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# Seeds of the random weights and of the initial noise (the same in every column, so
# the columns' outputs are comparable).
WEIGHT_SEED = 0
NOISE_SEED = 0
# MGIG's hint channel 4: the box, as the official inference does (all columns alike).
MGIG_MASK_CHANNEL = "box"
# Sampling steps timed (after one warm-up step) when an image is extrapolated.
TIMED_STEPS = 3
WORKER_TIMEOUT_S = 1800


@dataclass(frozen=True)
class Variant:
    """One column: how an image is produced. ``sampler``/``steps`` None = the model's
    official ones; ``batched``: cond and uncond in one call (ours) or two (official)."""

    key: str
    label: str
    dtype: str
    sampler: str | None
    steps: int | None
    batched: bool
    official_procedure: bool = False

    def sampler_for(self, model: str) -> str:
        return self.sampler or OFFICIAL_SAMPLER[model]


VARIANTS: dict[str, Variant] = {v.key: v for v in (
    Variant("official", "(1) official procedure", "fp32", None, None, batched=False, official_procedure=True),
    Variant("ours_same", "(2) ours, same settings", "fp32", None, None, batched=True),
    Variant("ours_fast", "(3) ours, recommended", "bf16", RECOMMENDED_SAMPLER, RECOMMENDED_STEPS, batched=True),
    # Quality decomposition only: the recommended sampler without bf16.
    Variant("ours_fast_fp32", "(3') recommended sampler, fp32", "fp32", RECOMMENDED_SAMPLER, RECOMMENDED_STEPS,
            batched=True),
)}
COLUMNS = ("official", "ours_same", "ours_fast")


# ---------------------------------------------------------------------------------------
# Measurement helpers
# ---------------------------------------------------------------------------------------

def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs (2 per multiply-add) of the matmuls, convolutions and attention that ``fn()``
    runs, counted by `FlopCounterMode`. Run it on meta tensors (see the module docstring)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        fn()
    return int(counter.get_total_flops())


def matmul_tflops(dtype: str, sizes: Iterable[int] = (1024, 2048, 4096), repeats: int = 3) -> dict:
    """This machine's dense matmul throughput in ``dtype``: best TFLOP/s of square
    n×n @ n×n products (one warm-up each), the reference for "achieved FLOP/s"."""
    dt = DTYPES[dtype]
    g = torch.Generator().manual_seed(0)
    best, per_size = 0.0, {}
    for n in sizes:
        a = torch.randn(n, n, generator=g).to(dt)
        b = torch.randn(n, n, generator=g).to(dt)
        a @ b
        t_best = math.inf
        for _ in range(repeats):
            t0 = time.perf_counter()
            a @ b
            t_best = min(t_best, time.perf_counter() - t0)
        per_size[n] = 2.0 * n ** 3 / t_best / 1e12
        best = max(best, per_size[n])
    return {"dtype": dtype, "tflops": best, "per_size_tflops": per_size, "threads": torch.get_num_threads()}


def machine_info() -> dict:
    """CPU model, cores, RAM, library versions and thread count of this machine."""
    cpu, flags = platform.processor() or "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu in ("unknown", platform.processor()):
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    ram_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                ram_gib = int(line.split()[1]) / 2 ** 20
    except OSError:
        pass
    import diffusers
    import transformers

    return {"cpu": cpu, "cores": os.cpu_count(), "ram_gib": ram_gib,
            "cpu_flags": sorted(flags & {"avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile"}),
            "python": platform.python_version(), "torch": torch.__version__, "diffusers": diffusers.__version__,
            "transformers": transformers.__version__, "threads": torch.get_num_threads(),
            "platform": platform.platform()}


class _StopSampling(Exception):
    """Raised from the step callback to end an extrapolated run early."""


class StepRecorder:
    """Sampler callback: the wall-clock time after every step and the latest x; raises
    `_StopSampling` after ``stop_after`` steps (None = run to the end)."""

    def __init__(self, stop_after: int | None = None):
        self.stop_after = stop_after
        self.start = time.perf_counter()
        self.times: list[float] = []
        self.x: torch.Tensor | None = None
        self.total = 0

    def __call__(self, i: int, total: int, x: torch.Tensor, pred_x0: torch.Tensor) -> None:
        self.times.append(time.perf_counter())
        self.x, self.total = x, total
        if self.stop_after is not None and len(self.times) >= self.stop_after:
            raise _StopSampling

    @property
    def durations(self) -> list[float]:
        """Seconds per step; the first includes everything from `start` (set-up)."""
        edges = [self.start, *self.times]
        return [b - a for a, b in zip(edges, edges[1:])]


def _timed(fn: Callable[[], object], repeats: int = 1) -> tuple[float, object]:
    best, out = math.inf, None
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


# ---------------------------------------------------------------------------------------
# Random models: built on the meta device (FLOPs are counted there), then materialised
# ---------------------------------------------------------------------------------------

def materialize_(module: nn.Module, dtype: torch.dtype = torch.float32, seed: int = WEIGHT_SEED) -> nn.Module:
    """Give every meta-device parameter of ``module`` seeded random values, in place.

    Module by module in a fixed order: torch.nn layers get their own initialisation
    (``reset_parameters``, in float32), other parameters (DINOv2's class token, position
    embeddings, LayerScale) N(0, 0.02); each is cast to ``dtype`` right away, so no
    float32 copy of a bf16 model ever exists and the same seed gives the same weights
    (up to rounding) in every dtype. Zero-initialised layers (ControlNet zero convs)
    become random too, so every layer does real work. Meta buffers: ``position_ids``
    (arange) is the only kind these models have; any other raises.
    """
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        for name, m in module.named_modules():
            own = [(k, p) for k, p in m._parameters.items() if p is not None and p.is_meta]
            for k, p in own:
                m._parameters[k] = nn.Parameter(torch.empty(p.shape, dtype=torch.float32), requires_grad=False)
            if own and type(m).__module__.startswith("torch.nn") and hasattr(m, "reset_parameters"):
                m.reset_parameters()
            else:
                for k, _ in own:
                    m._parameters[k].normal_(0.0, 0.02)
            for k, _ in own:
                m._parameters[k] = nn.Parameter(m._parameters[k].to(dtype), requires_grad=False)
            for k, b in list(m._buffers.items()):
                if b is None or not b.is_meta:
                    continue
                if k != "position_ids":
                    raise RuntimeError(f"materialize_: no rule for the meta buffer {name}.{k}")
                m._buffers[k] = torch.arange(b.shape[-1], dtype=b.dtype).expand(b.shape).clone()
    return module.eval().requires_grad_(False)


def meta_mgig(preset: str) -> MGIGModel:
    """An MGIG model of ``preset`` on the meta device (no memory, no initialisation)."""
    with torch.device("meta"):
        return MGIGModel(mgig_config(preset))


def meta_iamg(preset: str, *, released: bool = False) -> iamg.IAMGModel:
    """An IAMG model of a `iamg.MODEL_PRESETS` name on the meta device; the shipped word
    tokenizer for the "words" presets (the official preset's CLIP BPE is not needed:
    the released network never reads the text). ``released``: without cross-attention
    (the released architecture at this preset's size)."""
    from ..weights_manager.ldm_vae import build_vae
    from ..weights_manager.official_iamg import build_text_encoder

    p = iamg.model_preset(preset)
    unet_cfg = replace(p.unet, cross_attention_dim=None) if released else p.unet
    with torch.device("meta"):
        unet = iamg.IAMGUNet(unet_cfg)
        vae = build_vae(p.vae)
        text_encoder = build_text_encoder(p.text_encoder) if p.text_encoder else None
    tokenizer = iamg.words_tokenizer() if p.tokenizer == "words" else None
    return iamg.IAMGModel(unet, vae, text_encoder, tokenizer=tokenizer, preset=preset)


def random_model(model: str, preset: str, dtype: str = "fp32", seed: int = WEIGHT_SEED, *,
                 released: bool = False) -> nn.Module:
    """A seeded random MGIG or IAMG model of a (model-specific) preset (``released``:
    an IAMG preset without cross-attention, see `meta_iamg`)."""
    meta = meta_mgig(preset) if model == "mgig" else meta_iamg(preset, released=released)
    return materialize_(meta, DTYPES[dtype], seed)


def _n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _weight_mib(module: nn.Module) -> float:
    return sum(p.numel() * p.element_size() for p in module.parameters()) / 2 ** 20


# ---------------------------------------------------------------------------------------
# Official-format checkpoints of a model (for the load-time comparison)
# ---------------------------------------------------------------------------------------

def ldm_schedule_buffers(schedule: Mapping | None = None, *, logvar: bool = True) -> dict[str, torch.Tensor]:
    """The DDPM buffers an LDM model registers (``register_schedule``, v_posterior 0),
    float64 maths then float32 as stored; ``logvar`` (zeros) is LatentDiffusion's extra."""
    s = dict(schedule or {"num_train_timesteps": samplers.NUM_TRAIN_TIMESTEPS,
                          "linear_start": samplers.LINEAR_START, "linear_end": samplers.LINEAR_END})
    betas = samplers.ldm_linear_betas(s["num_train_timesteps"], s["linear_start"], s["linear_end"])
    alphas = 1.0 - betas
    ac = np.cumprod(alphas)
    ac_prev = np.append(1.0, ac[:-1])
    post_var = betas * (1.0 - ac_prev) / (1.0 - ac)
    out = {
        "betas": betas, "alphas_cumprod": ac, "alphas_cumprod_prev": ac_prev,
        "sqrt_alphas_cumprod": np.sqrt(ac), "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - ac),
        "log_one_minus_alphas_cumprod": np.log(1.0 - ac), "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / ac),
        "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / ac - 1.0), "posterior_variance": post_var,
        "posterior_log_variance_clipped": np.log(np.maximum(post_var, 1e-20)),
        "posterior_mean_coef1": betas * np.sqrt(ac_prev) / (1.0 - ac),
        "posterior_mean_coef2": (1.0 - ac_prev) * np.sqrt(alphas) / (1.0 - ac),
    }
    if logvar:
        out["logvar"] = np.zeros(len(betas))
    return {k: torch.tensor(v, dtype=torch.float32) for k, v in out.items()}


def _ldm_unet_to_official(native: Mapping[str, torch.Tensor], unet_cfg: Mapping, prefix: str, *,
                          hint_convs: int = 0) -> dict[str, torch.Tensor]:
    # The inverse of official_mgig's module map (one source of truth for the names).
    from ..weights_manager.official_mgig import _RESBLOCK_NAMES, _unet_module_map

    attention = [t.startswith("CrossAttn") for t in unet_cfg["down_block_types"]]
    modules = {v: k for k, v in _unet_module_map(len(unet_cfg["block_out_channels"]), unet_cfg["layers_per_block"],
                                                 attention, hint_convs=hint_convs).items()}
    resnet_names = {v: k for k, v in _RESBLOCK_NAMES.items()}
    out = {}
    for key, value in native.items():
        parts = key.split(".")
        for cut in range(len(parts) - 1, 0, -1):
            module = ".".join(parts[:cut])
            if module in modules:
                head, param = ".".join(parts[cut:-1]), parts[-1]
                if ".resnets." in module:
                    head = resnet_names.get(head, head)
                out[f"{prefix}{modules[module]}.{head + '.' if head else ''}{param}"] = value
                break
        else:
            raise KeyError(f"no official name for {key!r}")
    return out


def mgig_official_state_dict(model: MGIGModel, seed: int = WEIGHT_SEED) -> dict[str, torch.Tensor]:
    """``model`` as the official AnyDoor/MGIG Lightning ``state_dict`` (prefixes
    ``model.diffusion_model.``, ``control_model.``, ``cond_stage_model.model.``,
    ``cond_stage_model.projector.``, ``first_stage_model.`` + the 13 schedule buffers):
    what `weights_manager.official_mgig.load_mgig` reads back to the same model. The
    ControlNet's input conv, which the official file holds but never uses, gets seeded
    random values."""
    from ..weights_manager.files import strip_prefix
    from ..weights_manager.ldm_vae import convert_diffusers_vae_to_ldm
    from ..weights_manager.official_mgig import OFFICIAL_PREFIXES, _dinov2_hf_to_official

    cfg, sd = model.config, model.state_dict()
    out = _ldm_unet_to_official(strip_prefix(sd, "unet."), cfg.unet, OFFICIAL_PREFIXES["unet"])
    control = strip_prefix(sd, "controlnet.")
    blocks = {k.split(".")[2] for k in control if k.startswith("controlnet_cond_embedding.blocks.")}
    out.update(_ldm_unet_to_official(control, cfg.controlnet, OFFICIAL_PREFIXES["controlnet"],
                                     hint_convs=len(blocks) + 2))
    width, in_ch = cfg.controlnet["block_out_channels"][0], cfg.controlnet["in_channels"]
    g = torch.Generator().manual_seed(seed)
    unused_conv = f"{OFFICIAL_PREFIXES['controlnet']}input_blocks.0.0."
    out[unused_conv + "weight"] = torch.randn(width, in_ch, 3, 3, generator=g) * 0.02
    out[unused_conv + "bias"] = torch.zeros(width)
    dino = _dinov2_hf_to_official(strip_prefix(sd, "id_encoder.dinov2."))
    out.update({OFFICIAL_PREFIXES["dinov2"] + k: v for k, v in dino.items()})
    out.update({OFFICIAL_PREFIXES["projector"] + k: v for k, v in strip_prefix(sd, "id_encoder.projector.").items()})
    vae = convert_diffusers_vae_to_ldm(strip_prefix(sd, "vae."))
    out.update({OFFICIAL_PREFIXES["vae"] + k: v for k, v in vae.items()})
    out.update(ldm_schedule_buffers(cfg.schedule))
    return out


def iamg_official_checkpoint(model: iamg.IAMGModel) -> dict:
    """``model`` as the official IAMG trainer's ``iamg.pth`` dict: ``model`` (official
    UNet names, legacy per-head interleaved qkv as 1×1 conv1d), ``text_encoder``
    (``transformer.text_model.*``), ``autoencoder`` (LDM names), ``diffusion`` (12
    schedule buffers), ``iters`` and ``config_dict`` (the head count, which shapes do not
    show). The optimizer state of a training checkpoint is not written (the loader never
    reads it). Only the released architecture fits (no cross-attention)."""
    from ..weights_manager.ldm_vae import convert_diffusers_vae_to_ldm
    from ..weights_manager.native_iamg import TEXT_MODEL, native_state_dict
    from ..weights_manager.official_iamg import _RESNET, TEXT_PREFIX, unet_module_map

    cfg = model.unet.config
    if cfg.cross_attention_dim is not None:
        raise ValueError("the official IAMG format has no place for cross-attention (★ text variant); "
                         "use our safetensors format for it")
    sd = model.unet.state_dict()
    resnet_names = {v: k for k, v in _RESNET.items()}
    unet, used = {}, set()
    for src, dst, kind in unet_module_map(cfg):
        for key in [k for k in sd if k.startswith(dst + ".")]:
            module, _, param = key[len(dst) + 1:].rpartition(".")
            if kind == "plain":
                unet[f"{src}.{key[len(dst) + 1:]}"] = sd[key]
            elif kind == "resnet":
                unet[f"{src}.{resnet_names[module]}.{param}"] = sd[key]
            elif module == "group_norm":
                unet[f"{src}.norm.{param}"] = sd[key]
            elif module == "to_out.0":
                unet[f"{src}.proj_out.{param}"] = sd[key][..., None] if param == "weight" else sd[key]
            elif module == "to_q":
                # legacy layout: rows [q_h, k_h, v_h] for each head h
                q, k, v = (sd[f"{dst}.{n}.{param}"] for n in ("to_q", "to_k", "to_v"))
                heads = cfg.num_heads
                qkv = torch.stack([t.reshape(heads, t.shape[0] // heads, *t.shape[1:]) for t in (q, k, v)], dim=1)
                qkv = qkv.reshape(3 * q.shape[0], *q.shape[1:])
                unet[f"{src}.qkv.{param}"] = qkv[..., None] if param == "weight" else qkv
                used.update(f"{dst}.{n}.{param}" for n in ("to_k", "to_v"))
            elif module not in ("to_k", "to_v"):
                raise KeyError(f"no official name for IAMG UNet key {key!r}")
            used.add(key)
    left = sorted(set(sd) - used)
    if left:
        raise KeyError(f"IAMG UNet keys without an official name: {', '.join(left[:5])}")
    text = {TEXT_PREFIX + "text_model." + k[len(TEXT_MODEL):]: v for k, v in native_state_dict(model).items()
            if k.startswith(TEXT_MODEL)}
    return {"model": unet, "text_encoder": text, "autoencoder": convert_diffusers_vae_to_ldm(model.vae.state_dict()),
            "diffusion": ldm_schedule_buffers(logvar=False), "iters": 0,
            "config_dict": {"model": {"params": {"num_heads": cfg.num_heads, "num_head_channels": -1}}}}


# ---------------------------------------------------------------------------------------
# Workers: each runs in its own process (`--worker SPEC.json`)
# ---------------------------------------------------------------------------------------

def _examples() -> dict:
    from .demo import load_examples

    return load_examples()


def _box_rows(box_xywh) -> tuple[int, int, int, int]:
    x, y, w, h = (int(v) for v in box_xywh)
    return y, y + h, x, x + w


def official_iamg_procedure(model: iamg.IAMGModel, *, prompt: str, background: np.ndarray, box_xywh,
                            steps: int = iamg.DEFAULT_STEPS, guidance: float = iamg.DEFAULT_GUIDANCE,
                            seed: int = NOISE_SEED, callback: samplers.Callback | None = None) -> dict:
    """The official IAMG demo's compute, step for step: encode the condition, encode the
    prompt and the empty prompt with the text encoder, PLMS with the conditional and
    unconditional passes as two separate UNet calls (for the released network the second
    is an exact no-op it still pays for), decode. The released network's prompt is
    encoded from placeholder token ids (same cost; the official BPE vocabulary may be
    absent and the network ignores the text). Returns ``latent`` and the soft ``square``
    mask, as `iamg.generate_mask` does."""
    with torch.inference_mode():
        cond = model.encode_condition(iamg.condition_image(background, _box_rows(box_xywh))).float()
        context = uncond = None
        if model.text_encoder is not None:
            ids = model.tokenize([prompt, ""]) if model.uses_text else \
                torch.zeros(2, iamg.TEXT_MAX_LENGTH, dtype=torch.long)
            text = model.encode_text(ids).to(model.dtype)
            context, uncond = text[:1], text[1:]
        eps_fn = samplers.guided_eps(model.predict_eps, {"cond_latent": cond, "context": context},
                                     {"cond_latent": cond, "context": uncond}, guidance, batched=False)
        x_T = samplers.initial_noise(tuple(cond.shape), seed, device=model.device)
        latent = samplers.sample_plms(eps_fn, x_T, model.alphas_cumprod, steps, callback)
        square = iamg.soft_mask_from_decoded(model.decode(latent))
    return {"latent": latent.float(), "square": square.float()}


def _iamg_flops(model: iamg.IAMGModel, variant: Variant) -> dict:
    """Counted FLOPs (meta device) of one UNet forward, one sampling step of ``variant``,
    the condition encoding, the prompt encoding and the decode."""
    c, side = model.unet.config, iamg.IMAGE_SIZE // 8
    x = torch.empty(1, c.latent_channels, side, side, device="meta")
    t = torch.full((1,), 500, dtype=torch.long, device="meta")
    ctx = None if c.cross_attention_dim is None else torch.empty(1, iamg.TEXT_MAX_LENGTH, c.cross_attention_dim,
                                                                 device="meta")
    flops = {"forward": count_flops(lambda: model.predict_eps(x, t, x, ctx))}
    cond = {"cond_latent": x, "context": ctx}
    if variant.official_procedure:
        eps_fn = samplers.guided_eps(model.predict_eps, cond, dict(cond), GUIDANCE["iamg"], batched=False)
    else:  # what `iamg.sample_mask_latent` builds
        uncond = dict(cond) if model.uses_text else None
        eps_fn = samplers.guided_eps(model.predict_eps, cond, uncond, GUIDANCE["iamg"], batched=True)
    flops["step"] = count_flops(lambda: eps_fn(x, t))
    image = torch.empty(1, 3, iamg.IMAGE_SIZE, iamg.IMAGE_SIZE, device="meta")
    flops["encode"] = count_flops(lambda: model.vae.encode(image).latent_dist.mean)
    prompts = 2 if (model.uses_text or (variant.official_procedure and model.text_encoder is not None)) else 0
    flops["text"] = count_flops(lambda: model.text_encoder(
        input_ids=torch.zeros(prompts, iamg.TEXT_MAX_LENGTH, dtype=torch.long, device="meta"))) if prompts else 0
    flops["decode"] = count_flops(lambda: model.vae.decode(x).sample)
    return flops


def _mgig_flops(model: MGIGModel, variant: Variant) -> dict:
    """Counted FLOPs (meta device) of one UNet+ControlNet forward, one sampling step of
    ``variant`` (what `choi.generate` builds), the two identity encodings and the decode."""
    x = torch.empty(1, 4, 64, 64, device="meta")
    t = torch.full((1,), 500, dtype=torch.long, device="meta")
    hint = torch.empty(1, 4, 512, 512, device="meta")
    id_image = torch.empty(1, 3, 224, 224, device="meta")
    context = []
    tokens = count_flops(lambda: context.append(model.encode_id(id_image)))
    context = torch.empty(context[0].shape, device="meta")
    flops = {"forward": count_flops(lambda: model.predict_eps(x, t, context, hint))}
    cond = {"context": context, "hint": hint}
    eps_fn = samplers.guided_eps(lambda x_, t_, context, hint: model.predict_eps(x_, t_, context, hint),
                                 cond, dict(cond), GUIDANCE["mgig"], batched=variant.batched)
    flops["step"] = count_flops(lambda: eps_fn(x, t))
    flops["id"] = 2 * tokens  # the reference canvas and the all-zero unconditional image
    flops["decode"] = count_flops(lambda: model.vae.decode(x).sample)
    return flops


def _eps_calls(sampler: str, steps: int) -> int:
    # PLMS's first step is a pseudo improved-Euler step with a second call.
    return steps + 1 if sampler == "plms" else steps


def time_configuration(spec: Mapping) -> dict:
    """Worker: one model × preset × variant. Counts FLOPs on the meta model, gives it
    random weights, then times the real pipeline (`choi.id_features` + `choi.generate`
    for MGIG; `iamg.generate_mask`, or `official_iamg_procedure` for column 1): a
    complete image after a warm-up step, or — ``spec["extrapolate"]`` — the first
    ``timed_steps`` steps, extrapolated to the full image. Writes the final latent and
    output of a complete image to ``spec["arrays"]``."""
    model_kind, preset, variant = spec["model"], spec["model_preset"], VARIANTS[spec["variant"]]
    steps = int(spec["steps"])
    sampler = variant.sampler_for(model_kind)
    extrapolate, k = bool(spec["extrapolate"]), int(spec.get("timed_steps", TIMED_STEPS))
    torch.set_flush_denormal(True)  # random weights must not hit slow denormal paths
    result = {"model": model_kind, "preset": spec["preset"], "model_preset": preset, "variant": variant.key,
              "label": variant.label, "dtype": variant.dtype, "sampler": sampler, "steps": steps,
              "guidance": GUIDANCE[model_kind], "threads": torch.get_num_threads(),
              "loadavg_before": os.getloadavg()[0], "rss_baseline_mib": peak_rss_mib()}
    meta = meta_mgig(preset) if model_kind == "mgig" else meta_iamg(preset)
    flops = _mgig_flops(meta, variant) if model_kind == "mgig" else _iamg_flops(meta, variant)
    t0 = time.perf_counter()
    model = materialize_(meta, DTYPES[variant.dtype], WEIGHT_SEED)
    result["build_s"] = time.perf_counter() - t0
    result["params_m"] = _n_params(model) / 1e6
    result["weights_mib"] = _weight_mib(model)
    ex = _examples()
    repeats = 1 if extrapolate else 2
    calls = _eps_calls(sampler, steps)
    components: dict[str, float] = {}

    if model_kind == "mgig":
        components["id_s"], features = _timed(lambda: choi.id_features(
            model, ex["human_image"], ex["human_mask"], ex["object_image"], ex["object_mask"]), repeats)
        components["detail_s"], detail = _timed(
            lambda: preprocess.detail_map(features.canvas.image, features.canvas.mask), repeats)
        fixed_s = components["id_s"] + components["detail_s"]

        def run(callback):
            return choi.generate(model, features, detail, ex["interaction_mask"], ex["background"], steps=steps,
                                 sampler=sampler, guidance=GUIDANCE["mgig"], seed=NOISE_SEED,
                                 mask_channel=MGIG_MASK_CHANNEL, batched_guidance=variant.batched,
                                 callback=callback)

        def decode(z):
            with torch.inference_mode():
                return model.decode_latent(z)

        passes = f"{calls} calls × batch 2 (UNet batched, ControlNet per sample)" if variant.batched else \
            f"{2 * calls} UNet+ControlNet calls × batch 1 (cond, uncond separately)"
        per_image_flops = flops["id"] + calls * flops["step"] + flops["decode"]
    else:
        prompt = ex["caption"]
        fixed_s = 0.0
        if variant.official_procedure:
            def run(callback):
                return official_iamg_procedure(model, prompt=prompt, background=ex["background"],
                                               box_xywh=ex["box"], steps=steps, callback=callback)
            passes = f"{2 * calls} UNet calls × batch 1 (cond, uncond separately" + \
                (", uncond a no-op)" if not model.uses_text else ")")
        else:
            def run(callback):
                r = iamg.generate_mask(model, prompt=prompt, background=ex["background"], box=ex["box"],
                                       steps=steps, sampler=sampler, guidance=GUIDANCE["iamg"], seed=NOISE_SEED,
                                       callback=callback)
                return {"latent": r.latent, "square": r.square}
            passes = f"{calls} UNet calls × batch 2" if model.uses_text else \
                f"{calls} UNet calls × batch 1 (no-op uncond pass skipped)"

        def decode(z):
            with torch.inference_mode():
                return iamg.soft_mask_from_decoded(model.decode(z))

        per_image_flops = flops["encode"] + flops["text"] + calls * flops["step"] + flops["decode"]
    result["passes"] = passes

    # One untimed step of the real pipeline first (allocator, kernel selection) for
    # complete images. Extrapolated runs skip it: their per-step time leaves the first
    # step out anyway, and their image time then includes the one-time set-up once.
    if spec.get("warmup", True) and not extrapolate:
        try:
            run(StepRecorder(stop_after=1))
        except _StopSampling:
            pass
    rec = StepRecorder(stop_after=k if extrapolate else None)
    output = None
    try:
        output = run(rec)
    except _StopSampling:
        pass
    total_s = time.perf_counter() - rec.start
    durations = rec.durations
    # The first step carries the set-up (condition / hint, noise) and, for PLMS, a second
    # call; the median of the others resists bursts of load from other processes.
    later = durations[1:] or durations
    result["step_s"] = float(np.median(later))
    result["step_times_s"] = durations
    if output is None:  # stopped after k steps
        components["decode_s"], _ = _timed(lambda: decode(rec.x))
        sampled_s = rec.times[-1] - rec.start
        remaining = rec.total - len(rec.times)
        result["image_s"] = fixed_s + sampled_s + remaining * result["step_s"] + components["decode_s"]
        result["extrapolated_from_steps"] = len(rec.times)
    else:
        result["image_s"] = fixed_s + total_s
        result["extrapolated_from_steps"] = None
    result["components_s"] = components
    result["flops"] = {**flops, "image": per_image_flops}
    result["eps_calls"] = calls
    result["step_tflops"] = flops["step"] / result["step_s"] / 1e12
    result["peak_rss_mib"] = peak_rss_mib()
    result["loadavg_after"] = os.getloadavg()[0]
    if output is not None and spec.get("arrays"):
        if model_kind == "mgig":
            arrays = {"latent": rec.x.float().numpy(), "image": output.crops[0]}
        else:
            arrays = {"latent": output["latent"].float().numpy(), "image": output["square"].float().numpy()}
        np.savez(spec["arrays"], **arrays)
        result["arrays"] = spec["arrays"]
    return result


def time_forward(spec: Mapping) -> dict:
    """Worker (quick mode): one denoiser forward at batch 1 of a preset — IAMG's UNet, or
    MGIG's ControlNet + UNet (only these are materialised) — the first one (cold: it
    includes one-time kernel set-up) unless ``spec["warmup"]``."""
    model_kind, preset, dtype = spec["model"], spec["model_preset"], spec["dtype"]
    torch.set_flush_denormal(True)
    result = {"model": model_kind, "preset": spec["preset"], "model_preset": preset, "dtype": dtype,
              "threads": torch.get_num_threads(), "loadavg_before": os.getloadavg()[0]}
    t = torch.full((1,), 500, dtype=torch.long)
    if model_kind == "mgig":
        meta = meta_mgig(preset)
        tokens = meta.encode_id(torch.empty(1, 3, 224, 224, device="meta")).shape
        shapes = [(1, 4, 64, 64), tuple(tokens), (1, 4, 512, 512)]
        x_m, ctx_m, hint_m = (torch.empty(s, device="meta") for s in shapes)
        result["flops"] = count_flops(lambda: meta.predict_eps(x_m, t.to("meta"), ctx_m, hint_m))
        t0 = time.perf_counter()
        for part in (meta.unet, meta.controlnet):
            materialize_(part, DTYPES[dtype])
        result["build_s"] = time.perf_counter() - t0
        result["params_m"] = (_n_params(meta.unet) + _n_params(meta.controlnet)) / 1e6
        g = torch.Generator().manual_seed(0)
        x, ctx, hint = (torch.randn(s, generator=g).to(DTYPES[dtype]) for s in shapes)
        fn = lambda: meta.predict_eps(x, t, ctx, hint)  # noqa: E731
        result["what"] = "UNet + ControlNet forward, batch 1, 64² latent"
    else:
        meta = meta_iamg(preset)
        side = iamg.IMAGE_SIZE // 8
        x = torch.empty(1, 4, side, side, device="meta")
        result["flops"] = count_flops(lambda: meta.predict_eps(x, t.to("meta"), x))
        t0 = time.perf_counter()
        materialize_(meta.unet, DTYPES[dtype])
        result["build_s"] = time.perf_counter() - t0
        result["params_m"] = _n_params(meta.unet) / 1e6
        xr = torch.randn(1, 4, side, side, generator=torch.Generator().manual_seed(0))
        fn = lambda: meta.predict_eps(xr, t, xr)  # noqa: E731
        result["what"] = "UNet forward, batch 1, 32² latent"
    with torch.inference_mode():
        if spec.get("warmup", False):
            fn()
        result["forward_s"], _ = _timed(fn)
    result["cold"] = not spec.get("warmup", False)
    result["tflops"] = result["flops"] / result["forward_s"] / 1e12
    result["peak_rss_mib"] = peak_rss_mib()
    result["loadavg_after"] = os.getloadavg()[0]
    return result


def make_checkpoints(spec: Mapping) -> dict:
    """Worker: one seeded random model written twice into ``spec["dir"]`` — the official
    format (fp32, as released) and our safetensors (fp16, what `convert` writes)."""
    from ..weights_manager.native_iamg import save_iamg
    from ..weights_manager.official_mgig import save_mgig

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
    return {"model": model_kind, "model_preset": preset, "params_m": _n_params(model) / 1e6, "files": files,
            "peak_rss_mib": peak_rss_mib()}


def evict_from_page_cache(path: str | os.PathLike) -> bool:
    """Ask the kernel to drop ``path``'s cached pages (``posix_fadvise DONTNEED``; best
    effort, no privileges needed) so the next read comes from disk."""
    if not hasattr(os, "posix_fadvise"):
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def touch_weights(module: nn.Module) -> None:
    """Read one value per memory page of every parameter: weights that a loader left
    memory-mapped (official files are read by ``torch.load`` with ``mmap=True``) are then
    actually read from the file, as the first forward would."""
    with torch.no_grad():
        for p in module.parameters():
            flat = p.detach().reshape(-1)
            flat[::max(1, 4096 // p.element_size())].float().sum()


def time_load(spec: Mapping) -> dict:
    """Worker: load one checkpoint file with our loader (`load_mgig` / `load_iamg`) into
    ``spec["dtype"]``; cold (page cache dropped first) or warm. ``load_s``: until the
    loader returns; ``ready_s``: until every weight is in memory (`touch_weights`)."""
    from ..weights_manager.native_iamg import load_iamg
    from ..weights_manager.official_mgig import load_mgig

    path, dtype = spec["path"], DTYPES[spec["dtype"]]
    _import_model_libraries()  # not part of the load time: ComfyUI has them imported already
    evicted = evict_from_page_cache(path) if spec["cold"] else False
    rss0 = peak_rss_mib()
    t0 = time.perf_counter()
    if spec["model"] == "mgig":
        model = load_mgig(path, dtype=dtype)
    else:
        model = load_iamg(path, dtype=dtype)
    load_s = time.perf_counter() - t0
    touch_weights(model)
    ready_s = time.perf_counter() - t0
    return {"model": spec["model"], "format": spec["format"], "dtype": spec["dtype"], "cold": spec["cold"],
            "evicted": evicted, "load_s": load_s, "ready_s": ready_s, "params_m": _n_params(model) / 1e6,
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


def _mem_available_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _official_files_fit(params: int, folder: Path) -> tuple[bool, str]:
    # official fp32 + ours fp16 on disk; the fp32 model + an fp16 copy in memory.
    need_disk, need_ram = 6 * params + 2 ** 30, 7 * params
    free = shutil.disk_usage(folder).free
    if free < need_disk:
        return False, f"needs {need_disk / 2 ** 30:.1f} GiB of disk in {folder}, {free / 2 ** 30:.1f} GiB free"
    ram = _mem_available_bytes()
    if ram is not None and ram < need_ram:
        return False, f"needs ~{need_ram / 2 ** 30:.1f} GiB of free memory, {ram / 2 ** 30:.1f} GiB available"
    return True, ""


def compare_outputs(model: str, test: Mapping[str, np.ndarray], ref: Mapping[str, np.ndarray]) -> dict:
    """Quality proxy of one column's output against the official procedure's (same seed
    and weights): relative max / RMS difference of the final latents; for MGIG the
    decoded 512² crops (mean |Δ| in 0..255 levels, PSNR), for IAMG the soft square masks
    (mean |Δ|) and the IoU of the binary masks (> 0.5)."""
    a, b = np.asarray(test["latent"], np.float64), np.asarray(ref["latent"], np.float64)
    out = {"latent_rel_max": float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12)),
           "latent_rel_rms": float(np.sqrt(np.mean((a - b) ** 2)) / max(np.sqrt(np.mean(b ** 2)), 1e-12))}
    ia, ib = np.asarray(test["image"], np.float64), np.asarray(ref["image"], np.float64)
    if model == "mgig":
        mse = float(np.mean((ia - ib) ** 2))
        out["image_mean_abs_levels"] = float(np.mean(np.abs(ia - ib)))
        out["image_psnr_db"] = float("inf") if mse == 0 else float(10 * np.log10(255.0 ** 2 / mse))
    else:
        ma, mb = ia > iamg.DEFAULT_THRESHOLD, ib > iamg.DEFAULT_THRESHOLD
        union = np.logical_or(ma, mb).sum()
        out["mask_mean_abs"] = float(np.mean(np.abs(ia - ib)))
        out["mask_iou"] = float(np.logical_and(ma, mb).sum() / union) if union else 1.0
    return out


def _ratios(rows: list[dict]) -> list[dict]:
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
        report["ratios"] = _ratios(rows)
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
                fits, why = _official_files_fit(_n_params(meta), tmp)
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


# ---------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", help="output folder for benchmark.json and benchmark.md")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test (< 2 min): small presets plus one official-size fp32 forward per model")
    parser.add_argument("--presets", nargs="+", default=None, choices=list(PRESETS),
                        help="benchmark presets (default: official small; official = the released sizes, "
                             "extrapolated from a few steps)")
    parser.add_argument("--steps", type=int, default=None,
                        help="override the official 50 sampling steps of columns 1 and 2")
    parser.add_argument("--fast-steps", type=int, default=RECOMMENDED_STEPS,
                        help=f"column 3's {RECOMMENDED_SAMPLER} steps (default {RECOMMENDED_STEPS})")
    parser.add_argument("--timed-steps", type=int, default=TIMED_STEPS,
                        help=f"steps timed at the official size before extrapolating (default {TIMED_STEPS})")
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
