"""Speed, memory and FLOPs of IAMG and MGIG: the official procedure against ours
(docs/METHOD.md §9): the measuring pieces. ``python -m interact_custom benchmark --out DIR
[--quick] [--presets ...]`` (`cli.benchmark`) runs them and writes the report.

Three columns, side by side, for each model and preset (random weights: speed does not
depend on the values):

1. **official** — the official procedure reproduced faithfully: fp32, the official
   sampler (DDIM 50 for MGIG, PLMS 50 for IAMG), conditional and unconditional passes
   as two separate calls; IAMG *with* its no-op guidance pass (empty prompt, 102 UNet
   calls for the released network) and its CLIP prompt encoding.
2. **ours_same** — our pipeline at the same settings: batched guidance (one call of
   batch 2), the released IAMG's no-op unconditional pass skipped (51 calls).
3. **ours_fast** — our recommended settings: bf16 model (fp32 on a CPU without native
   bf16, `RECOMMENDED_DTYPE`), the recommended sampler and
   steps of `sampling_settings.RECOMMENDED` (ancestral Euler 20; one model call per step,
   as DPM-Solver++(2M) 20, which the tables in docs/BENCHMARKS.md were measured with),
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
`cli.research.official_export`'s `mgig_official_state_dict` /
`iamg_official_checkpoint`) with our safetensors file; that part needs the weight-file
code, so it lives in `cli.benchmark` with the orchestration.

FLOPs are counted with `torch.utils.flop_counter.FlopCounterMode` on the *meta* device:
there PyTorch's attention decomposes into matmuls the counter sees, while the CPU's
fused attention kernel has no FLOP formula and would count as 0. Counted: matmuls,
convolutions and attention (2 FLOPs per multiply-add); norms and element-wise ops are
not counted.

Here: what is compared (`VARIANTS`), the measurement helpers, seeded random models
built on the meta device, the worker tasks that need only the pipelines
(`time_configuration`, `time_forward`) and the quality proxy (`compare_outputs`). The
report is rendered by `cli.research.evaluation.benchmark_report`.
"""
from __future__ import annotations

import math
import os
import platform
import resource
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterable, Mapping

import numpy as np
import torch
from torch import nn

from ....pipelines import iamg, samplers
from ....pipelines.files import DTYPES
from ....pipelines.geometry import Box
from ....pipelines.hardware import cpu_has_fast_bf16
from ....pipelines.mgig import ID_IMAGE_SIZE, MGIGModel, mgig_config
from ....pipelines.mgig import inputs as preprocess
from ....pipelines.mgig import pipeline as choi
from ....pipelines.sampling_settings import OFFICIAL, RECOMMENDED
from ....pipelines.text import TEXT_MAX_LENGTH, words_tokenizer
from ....pipelines.vae import build_vae


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
OFFICIAL_SAMPLER = {m: OFFICIAL[m].sampler for m in MODELS}
OFFICIAL_STEPS = {m: OFFICIAL[m].steps for m in MODELS}
GUIDANCE = {m: OFFICIAL[m].guidance for m in MODELS}
# Column 3: the recommended sampler and steps (`sampling_settings.RECOMMENDED`), one
# setting for both models (the tables and --fast-steps name one).
RECOMMENDED_SAMPLER = RECOMMENDED["mgig"].sampler
RECOMMENDED_STEPS = RECOMMENDED["mgig"].steps
if any((RECOMMENDED[m].sampler, RECOMMENDED[m].steps) != (RECOMMENDED_SAMPLER, RECOMMENDED_STEPS) for m in MODELS):
    raise RuntimeError("benchmark: column 3 assumes one recommended sampler / step count for IAMG and MGIG")
# Seeds of the random weights and of the initial noise (the same in every column, so
# the columns' outputs are comparable).
WEIGHT_SEED = 0
NOISE_SEED = 0
# MGIG's hint channel 4: the box, as the official inference does (all columns alike).
MGIG_MASK_CHANNEL = "box"
# Sampling steps timed (after one warm-up step) when an image is extrapolated.
TIMED_STEPS = 3


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


# Column (3)'s dtype: bf16 where this CPU runs it natively (AMX / AVX512-bf16), else fp32
# (emulated bf16 is many times slower than fp32: docs/BENCHMARKS.md).
RECOMMENDED_DTYPE = "bf16" if cpu_has_fast_bf16() else "fp32"

VARIANTS: dict[str, Variant] = {v.key: v for v in (
    Variant("official", "(1) official procedure", "fp32", None, None, batched=False, official_procedure=True),
    Variant("ours_same", "(2) ours, same settings", "fp32", None, None, batched=True),
    Variant("ours_fast", "(3) ours, recommended", RECOMMENDED_DTYPE, RECOMMENDED_SAMPLER, RECOMMENDED_STEPS,
            batched=True),
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
    from transformers import CLIPTextConfig, CLIPTextModel

    p = iamg.model_preset(preset)
    unet_cfg = replace(p.unet, cross_attention_dim=None) if released else p.unet
    with torch.device("meta"):
        unet = iamg.IAMGUNet(unet_cfg)
        vae = build_vae(p.vae)
        text_encoder = CLIPTextModel(CLIPTextConfig(**p.text_encoder)) if p.text_encoder else None
    tokenizer = words_tokenizer() if p.tokenizer == "words" else None
    return iamg.IAMGModel(unet, vae, text_encoder, tokenizer=tokenizer, preset=preset)


def random_model(model: str, preset: str, dtype: str = "fp32", seed: int = WEIGHT_SEED, *,
                 released: bool = False) -> nn.Module:
    """A seeded random MGIG or IAMG model of a (model-specific) preset (``released``:
    an IAMG preset without cross-attention, see `meta_iamg`)."""
    meta = meta_mgig(preset) if model == "mgig" else meta_iamg(preset, released=released)
    return materialize_(meta, DTYPES[dtype], seed)


def mgig_input_shapes(model: MGIGModel) -> dict[str, tuple[int, ...]]:
    """Batch-1 shapes of what ``model``'s denoiser and identity encoder read, from its own
    config as `mgig.pipeline.generate` builds them: the latent (the small preset's VAE has 8
    channels, SD's 4), the hint (4 channels, ★ more with the colour hint) at
    `MGIGConfig.image_size`, the reference canvas. Hard-coded official shapes fail on
    every other architecture ("Invalid channel dimensions")."""
    size = int(model.config.image_size)
    factor = 2 ** (len(model.vae.config.block_out_channels) - 1)
    return {"latent": (1, model.latent_channels, size // factor, size // factor),
            "hint": (1, int(model.controlnet.config.conditioning_channels), size, size),
            "id_image": (1, 3, ID_IMAGE_SIZE, ID_IMAGE_SIZE)}


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _weight_mib(module: nn.Module) -> float:
    return sum(p.numel() * p.element_size() for p in module.parameters()) / 2 ** 20



# ---------------------------------------------------------------------------------------
# Workers: each runs in its own process (`--worker SPEC.json`, see `cli.benchmark`)
# ---------------------------------------------------------------------------------------

def _examples() -> dict:
    from ..data.examples import load_examples

    return load_examples()


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
        box = Box.from_xywh(*(int(v) for v in box_xywh))
        cond = model.encode_condition(iamg.condition_image(background, box)).float()
        context = uncond = None
        if model.text_encoder is not None:
            ids = model.tokenize([prompt, ""]) if model.uses_text else \
                torch.zeros(2, TEXT_MAX_LENGTH, dtype=torch.long)
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
    c = model.unet.config
    x = torch.empty(1, *model.latent_shape, device="meta")
    t = torch.full((1,), 500, dtype=torch.long, device="meta")
    ctx = None if c.cross_attention_dim is None else torch.empty(1, TEXT_MAX_LENGTH, c.cross_attention_dim,
                                                                 device="meta")
    flops = {"forward": count_flops(lambda: model.predict_eps(x, t, x, ctx))}
    cond = {"cond_latent": x, "context": ctx}
    if variant.official_procedure:
        eps_fn = samplers.guided_eps(model.predict_eps, cond, dict(cond), GUIDANCE["iamg"], batched=False)
    else:  # what `iamg.sample_mask_latent` builds
        uncond = dict(cond) if model.uses_text else None
        eps_fn = samplers.guided_eps(model.predict_eps, cond, uncond, GUIDANCE["iamg"], batched=True)
    flops["step"] = count_flops(lambda: eps_fn(x, t))
    image = torch.empty(1, 3, model.image_size, model.image_size, device="meta")
    flops["encode"] = count_flops(lambda: model.vae.encode(image).latent_dist.mean)
    prompts = 2 if (model.uses_text or (variant.official_procedure and model.text_encoder is not None)) else 0
    flops["text"] = count_flops(lambda: model.text_encoder(
        input_ids=torch.zeros(prompts, TEXT_MAX_LENGTH, dtype=torch.long, device="meta"))) if prompts else 0
    flops["decode"] = count_flops(lambda: model.vae.decode(x).sample)
    return flops


def _mgig_flops(model: MGIGModel, variant: Variant) -> dict:
    """Counted FLOPs (meta device) of one UNet+ControlNet forward, one sampling step of
    ``variant`` (what `mgig.pipeline.generate` builds), the two identity encodings and the decode."""
    shapes = mgig_input_shapes(model)
    x = torch.empty(shapes["latent"], device="meta")
    t = torch.full((1,), 500, dtype=torch.long, device="meta")
    hint = torch.empty(shapes["hint"], device="meta")
    id_image = torch.empty(shapes["id_image"], device="meta")
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
    random weights, then times the real pipeline (`mgig.pipeline.id_features` + `generate`
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
    result["params_m"] = n_params(model) / 1e6
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
        inputs = mgig_input_shapes(meta)
        tokens = meta.encode_id(torch.empty(inputs["id_image"], device="meta")).shape
        shapes = [inputs["latent"], tuple(tokens), inputs["hint"]]
        x_m, ctx_m, hint_m = (torch.empty(s, device="meta") for s in shapes)
        result["flops"] = count_flops(lambda: meta.predict_eps(x_m, t.to("meta"), ctx_m, hint_m))
        t0 = time.perf_counter()
        for part in (meta.unet, meta.controlnet):
            materialize_(part, DTYPES[dtype])
        result["build_s"] = time.perf_counter() - t0
        result["params_m"] = (n_params(meta.unet) + n_params(meta.controlnet)) / 1e6
        g = torch.Generator().manual_seed(0)
        x, ctx, hint = (torch.randn(s, generator=g).to(DTYPES[dtype]) for s in shapes)
        fn = lambda: meta.predict_eps(x, t, ctx, hint)  # noqa: E731
        result["what"] = f"UNet + ControlNet forward, batch 1, {inputs['latent'][-1]}² latent"
    else:
        meta = meta_iamg(preset)
        shape = (1, *meta.latent_shape)
        width = meta.unet.config.cross_attention_dim  # ★ text presets: a prompt context too
        ctx_shape = None if width is None else (1, TEXT_MAX_LENGTH, width)
        x = torch.empty(shape, device="meta")
        ctx_m = None if ctx_shape is None else torch.empty(ctx_shape, device="meta")
        result["flops"] = count_flops(lambda: meta.predict_eps(x, t.to("meta"), x, ctx_m))
        t0 = time.perf_counter()
        materialize_(meta.unet, DTYPES[dtype])
        result["build_s"] = time.perf_counter() - t0
        result["params_m"] = n_params(meta.unet) / 1e6
        g = torch.Generator().manual_seed(0)
        xr = torch.randn(shape, generator=g).to(DTYPES[dtype])
        ctx = None if ctx_shape is None else torch.randn(ctx_shape, generator=g).to(DTYPES[dtype])
        fn = lambda: meta.predict_eps(xr, t, xr, ctx)  # noqa: E731
        result["what"] = f"UNet forward, batch 1, {shape[-1]}² latent"
    with torch.inference_mode():
        if spec.get("warmup", False):
            fn()
        result["forward_s"], _ = _timed(fn)
    result["cold"] = not spec.get("warmup", False)
    result["tflops"] = result["flops"] / result["forward_s"] / 1e12
    result["peak_rss_mib"] = peak_rss_mib()
    result["loadavg_after"] = os.getloadavg()[0]
    return result


# ---------------------------------------------------------------------------------------
# Checkpoint-load timing helpers (the load worker itself: `cli.benchmark.time_load`)
# ---------------------------------------------------------------------------------------

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
    """Read one value per memory page of every parameter: weights a loader left
    memory-mapped would then be read from the file, as the first forward would. (Our
    loaders no longer memory-map: `files.read_weights` reads every file into memory.)"""
    with torch.no_grad():
        for p in module.parameters():
            flat = p.detach().reshape(-1)
            flat[::max(1, 4096 // p.element_size())].float().sum()


# ---------------------------------------------------------------------------------------
# Quality proxy
# ---------------------------------------------------------------------------------------

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
