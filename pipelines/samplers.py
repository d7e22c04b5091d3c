"""Samplers as small functions over tensors (k-diffusion style).

The official models sample with LDM's DDIM (MGIG, `cldm/ddim_hacked.py`) and PLMS
(IAMG, `PLMSSampler_shape`). Both are reproduced here exactly, step for step, so the
reference vectors can be checked one step at a time. Everything else goes through
diffusers schedulers (`sample_with_scheduler`), e.g. DPM-Solver++ for fewer steps.

Conventions
- ``eps_fn(x, t) -> eps``: the denoiser with guidance already applied (see
  :func:`guided_eps`); ``t`` is a LongTensor [B] of DDPM timesteps (0..999).
- ``alphas_cumprod``: the model's 1000-entry ᾱ table (float32, as the official buffers).
- ``callback(i, total, x, pred_x0)`` is called after each step; raising from it (e.g.
  ComfyUI's interrupt) cancels sampling within one step.
"""
from __future__ import annotations

import inspect
import math
from contextlib import contextmanager
from typing import Callable, Mapping

import numpy as np
import torch

EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Callback = Callable[[int, int, torch.Tensor, torch.Tensor], None]

LINEAR_START = 0.00085
LINEAR_END = 0.012
NUM_TRAIN_TIMESTEPS = 1000


def ldm_linear_betas(num_train: int = NUM_TRAIN_TIMESTEPS, start: float = LINEAR_START,
                     end: float = LINEAR_END) -> np.ndarray:
    """LDM "linear" schedule: linspace(√start, √end)², computed in float64 as the official
    `make_beta_schedule` does (diffusers calls it "scaled_linear")."""
    return np.linspace(start ** 0.5, end ** 0.5, num_train, dtype=np.float64) ** 2


def ldm_alphas_cumprod(num_train: int = NUM_TRAIN_TIMESTEPS, start: float = LINEAR_START,
                       end: float = LINEAR_END) -> torch.Tensor:
    """ᾱ_t as the official models store it: cumprod in float64, then cast to float32."""
    betas = ldm_linear_betas(num_train, start, end)
    return torch.tensor(np.cumprod(1.0 - betas), dtype=torch.float32)


PREDICTION_TYPES = ("epsilon", "v_prediction")


def _expand(a: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return a.to(device=like.device, dtype=like.dtype).reshape(-1, *([1] * (like.ndim - 1)))


def eps_from_v(v: torch.Tensor, x_t: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """ε̂ from a v-prediction (Salimans & Ho 2022): v = √ᾱ·ε − √(1−ᾱ)·x₀ and
    x_t = √ᾱ·x₀ + √(1−ᾱ)·ε give ε = √ᾱ·v + √(1−ᾱ)·x_t. `alpha_bar` is ᾱ per row [B] (or a
    scalar); every sampler here then runs a v model unchanged."""
    a = _expand(torch.as_tensor(alpha_bar), x_t)
    return a.sqrt() * v + (1.0 - a).sqrt() * x_t


def v_target(x0: torch.Tensor, noise: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """The v-prediction training target √ᾱ·ε − √(1−ᾱ)·x₀ (`alpha_bar` per row [B])."""
    a = _expand(torch.as_tensor(alpha_bar), x0)
    return a.sqrt() * noise - (1.0 - a).sqrt() * x0


def add_noise(x0: torch.Tensor, noise: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """The forward (noising) process x_t = √ᾱ·x₀ + √(1−ᾱ)·ε that the training objectives
    invert (`alpha_bar`: ᾱ per row, [B] or [B, 1, 1, 1])."""
    a = _expand(torch.as_tensor(alpha_bar), x0)
    return a.sqrt() * x0 + (1.0 - a).sqrt() * noise


def check_prediction_type(value: str) -> str:
    """`value` if it is one of `PREDICTION_TYPES`, else a ValueError naming the choices."""
    if value not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type: expected one of {', '.join(PREDICTION_TYPES)}, got {value!r}")
    return value


def eps_from_prediction(prediction_type: str, output: torch.Tensor, x_t: torch.Tensor, t,
                        alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """ε̂ from a denoiser's output: itself for "epsilon", `eps_from_v` for "v_prediction"
    (`t`: a DDPM timestep or one per row; `alphas_cumprod`: the model's ᾱ table)."""
    if prediction_type == "epsilon":
        return output
    t = torch.as_tensor(t).expand(x_t.shape[0]).cpu()
    return eps_from_v(output, x_t, alphas_cumprod[t])


def training_target(prediction_type: str, x0: torch.Tensor, noise: torch.Tensor,
                    alpha_bar: torch.Tensor) -> torch.Tensor:
    """What the denoiser learns for x_t = √ᾱ·x₀ + √(1−ᾱ)·ε: ε, or `v_target`."""
    return noise if prediction_type == "epsilon" else v_target(x0, noise, alpha_bar.flatten())


def ddim_timesteps(num_steps: int, num_train: int = NUM_TRAIN_TIMESTEPS) -> np.ndarray:
    """Official "uniform" DDIM/PLMS timesteps, ascending: range(0, T, T // n) + 1.

    For 50 steps: 1, 21, …, 981. The official code uses the same table for PLMS.
    """
    if not 1 <= num_steps <= num_train:
        raise ValueError(f"steps must be between 1 and {num_train}, got {num_steps}")
    stride = num_train // num_steps
    timesteps = np.asarray(range(0, num_train, stride), dtype=np.int64)[:num_steps] + 1
    if timesteps[-1] >= num_train:
        # stride 1 (more than T/2 steps): the official "+1" would index past the table
        # (its code fails there); shift the schedule down instead.
        timesteps -= 1
    return timesteps


def ddim_alphas(alphas_cumprod: torch.Tensor, timesteps: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(ᾱ_t, ᾱ_prev) per DDIM index, float32; ᾱ_prev of the first index is ᾱ_0 (official)."""
    ac = alphas_cumprod.detach().float().cpu()
    a_t = ac[torch.as_tensor(timesteps)]
    a_prev = torch.cat([ac[:1], ac[torch.as_tensor(timesteps[:-1])]])
    return a_t, a_prev


def ddim_step(x: torch.Tensor, eps: torch.Tensor, a_t: float | torch.Tensor,
              a_prev: float | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One deterministic DDIM update (eta = 0). Returns (x_prev, pred_x0).

    Same operation order as the official sampler so float32 results match closely.
    """
    a_t = torch.as_tensor(a_t, dtype=x.dtype, device=x.device)
    a_prev = torch.as_tensor(a_prev, dtype=x.dtype, device=x.device)
    pred_x0 = (x - (1.0 - a_t).sqrt() * eps) / a_t.sqrt()
    x_prev = a_prev.sqrt() * pred_x0 + (1.0 - a_prev).sqrt() * eps
    return x_prev, pred_x0


def _t(step: int, x: torch.Tensor) -> torch.Tensor:
    return torch.full((x.shape[0],), int(step), dtype=torch.long, device=x.device)


def sample_ddim(eps_fn: EpsFn, x_T: torch.Tensor, alphas_cumprod: torch.Tensor, steps: int,
                callback: Callback | None = None) -> torch.Tensor:
    """Official DDIM (eta 0): one ``eps_fn`` call per step."""
    timesteps = ddim_timesteps(steps, len(alphas_cumprod))
    a_t, a_prev = ddim_alphas(alphas_cumprod, timesteps)
    x = x_T
    for i, index in enumerate(reversed(range(len(timesteps)))):
        eps = eps_fn(x, _t(timesteps[index], x))
        x, pred_x0 = ddim_step(x, eps, a_t[index], a_prev[index])
        if callback is not None:
            callback(i, len(timesteps), x, pred_x0)
    return x


def plms_eps_prime(eps: torch.Tensor, old_eps: list[torch.Tensor]) -> torch.Tensor:
    """Adams-Bashforth combination of the current and previous ε (orders 2–4)."""
    if len(old_eps) == 1:
        return (3 * eps - old_eps[-1]) / 2
    if len(old_eps) == 2:
        return (23 * eps - 16 * old_eps[-1] + 5 * old_eps[-2]) / 12
    return (55 * eps - 59 * old_eps[-1] + 37 * old_eps[-2] - 9 * old_eps[-3]) / 24


def sample_plms(eps_fn: EpsFn, x_T: torch.Tensor, alphas_cumprod: torch.Tensor, steps: int,
                callback: Callback | None = None) -> torch.Tensor:
    """Official PLMS (IAMG's `PLMSSampler_shape`).

    The first step is a pseudo improved-Euler step (a second ``eps_fn`` call at the next
    timestep, on the DDIM-predicted x_prev), the following ones use linear multistep
    formulas on the stored *raw* ε history. ``steps + 1`` ``eps_fn`` calls in total.
    """
    timesteps = ddim_timesteps(steps, len(alphas_cumprod))
    a_t, a_prev = ddim_alphas(alphas_cumprod, timesteps)
    order = list(reversed(range(len(timesteps))))
    x = x_T
    old_eps: list[torch.Tensor] = []
    for i, index in enumerate(order):
        t = _t(timesteps[index], x)
        eps = eps_fn(x, t)
        if not old_eps:
            # The official t_next of the last step is the last step itself.
            next_index = order[min(i + 1, len(order) - 1)]
            x_euler, _ = ddim_step(x, eps, a_t[index], a_prev[index])
            eps_next = eps_fn(x_euler, _t(timesteps[next_index], x))
            eps_prime = (eps + eps_next) / 2
        else:
            eps_prime = plms_eps_prime(eps, old_eps)
        x, pred_x0 = ddim_step(x, eps_prime, a_t[index], a_prev[index])
        old_eps.append(eps)
        if len(old_eps) > 3:
            old_eps.pop(0)
        if callback is not None:
            callback(i, len(order), x, pred_x0)
    return x


def guided_eps(model_fn: Callable[..., torch.Tensor], cond: Mapping[str, torch.Tensor],
               uncond: Mapping[str, torch.Tensor] | None, guidance: float,
               batched: bool = True) -> EpsFn:
    """Classifier-free guidance around ``model_fn(x, t, **cond) -> eps``.

    ε = ε_u + s·(ε_c − ε_u), the official formula. With ``batched`` the conditional and
    unconditional passes run as one forward of batch 2B (uncond first); otherwise as two
    calls like the official samplers. With ``uncond=None`` or ``guidance == 1`` there is
    no unconditional pass at all (half the calls) — exact when the network ignores the
    conditioning, as the released IAMG does.
    """
    if uncond is None or guidance == 1.0:
        return lambda x, t: model_fn(x, t, **cond)
    missing = set(cond) ^ set(uncond)
    if missing:
        raise ValueError(f"cond and uncond must carry the same inputs; differ in {sorted(missing)}")

    if batched:
        both = {k: torch.cat([uncond[k], cond[k]]) for k in cond}

        def eps_fn(x, t):
            e_u, e_c = model_fn(torch.cat([x, x]), torch.cat([t, t]), **both).chunk(2)
            return e_u + guidance * (e_c - e_u)
    else:
        def eps_fn(x, t):
            e_c = model_fn(x, t, **cond)
            e_u = model_fn(x, t, **uncond)
            return e_u + guidance * (e_c - e_u)
    return eps_fn


# --- diffusers schedulers -------------------------------------------------------------

# name -> (diffusers class name, extra config). Official samplers are listed first.
SCHEDULERS: dict[str, tuple[str, dict]] = {
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "unipc": ("UniPCMultistepScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "ddim_diffusers": ("DDIMScheduler", {"set_alpha_to_one": False}),
}
SAMPLER_NAMES = ["ddim", "plms", *SCHEDULERS]


def make_scheduler(name: str, alphas_cumprod: torch.Tensor):
    """A diffusers scheduler on exactly the model's schedule (betas recovered from ᾱ in
    float64, so no float32 re-derivation differs from the official buffers)."""
    import diffusers

    if name not in SCHEDULERS:
        raise ValueError(f"unknown sampler {name!r}; choose from {', '.join(SAMPLER_NAMES)}")
    cls_name, extra = SCHEDULERS[name]
    ac = alphas_cumprod.double().cpu().numpy()
    betas = 1.0 - ac / np.concatenate([[1.0], ac[:-1]])
    cls = getattr(diffusers, cls_name)
    return cls(num_train_timesteps=len(ac), trained_betas=betas.tolist(), prediction_type="epsilon",
               timestep_spacing="leading", steps_offset=1, **extra)


def sample_with_scheduler(eps_fn: EpsFn, x_T: torch.Tensor, alphas_cumprod: torch.Tensor, steps: int,
                          name: str, callback: Callback | None = None,
                          generator: torch.Generator | None = None) -> torch.Tensor:
    """Generic diffusers scheduler loop (handles sigma-scaled schedulers such as Euler)."""
    scheduler = make_scheduler(name, alphas_cumprod)
    scheduler.set_timesteps(steps, device=x_T.device)
    x = x_T * scheduler.init_noise_sigma
    total = len(scheduler.timesteps)
    # The stochastic schedulers (euler_a) take the per-step noise generator; the others
    # do not accept the argument.
    takes_generator = "generator" in inspect.signature(scheduler.step).parameters
    step_kwargs = {"generator": generator} if takes_generator else {}
    for i, t in enumerate(scheduler.timesteps):
        x_in = scheduler.scale_model_input(x, t)
        eps = eps_fn(x_in, _t(int(t), x))
        out = scheduler.step(eps, t, x, **step_kwargs)
        x = out.prev_sample
        if callback is not None:
            pred_x0 = getattr(out, "pred_original_sample", None)
            callback(i, total, x, x if pred_x0 is None else pred_x0)
    return x


_flush_depth = 0


@contextmanager
def flush_denormals(enabled: bool):
    """Flush denormal floats to zero (x86 FTZ/DAZ) while working on the CPU: nearly
    constant inputs (a white-canvas hint, an all-zero reference) drive activations into
    the denormal range, where every CPU op becomes many times slower. torch cannot report the
    setting, so nested uses are counted and the outermost one restores torch's default
    (off)."""
    global _flush_depth
    if not enabled:
        yield
        return
    torch.set_flush_denormal(True)
    _flush_depth += 1
    try:
        yield
    finally:
        _flush_depth -= 1
        if _flush_depth == 0:
            torch.set_flush_denormal(False)


# Most steps a sampler takes on the 1000-step training schedule. DDIM / PLMS use the
# official table (`ddim_timesteps`, any count up to T). diffusers' schedulers index their
# tables past the end near T steps (IndexError / AssertionError at 999-1000): half the
# schedule keeps every timestep distinct, far beyond any useful count.
MAX_STEPS = {"ddim": NUM_TRAIN_TIMESTEPS, "plms": NUM_TRAIN_TIMESTEPS}
MAX_SCHEDULER_STEPS = NUM_TRAIN_TIMESTEPS // 2


def max_steps(sampler: str) -> int:
    return MAX_STEPS.get(sampler, MAX_SCHEDULER_STEPS)


class SettingsError(ValueError):
    """A sampling setting that cannot work (the package's own error: the CLI shows its
    message as one line)."""


def check_settings(sampler: str, steps, guidance=None, control_scale=None) -> None:
    """The one check of sampling settings (a run's settings are checked by it when they are
    made, `sampling_settings.settings_for`; `sample` checks its own arguments): a known
    sampler, a whole number of steps in 1..`max_steps`, a finite guidance >= 0 and a finite
    control strength >= 0. Raises `SettingsError` naming the input and what was expected."""
    if sampler not in SAMPLER_NAMES:
        raise SettingsError(f"sampler: unknown {sampler!r}; choose from {', '.join(SAMPLER_NAMES)}")
    top = max_steps(sampler)
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or not 1 <= steps <= top:
        raise SettingsError(f"steps: expected a whole number from 1 to {top} for the {sampler} sampler, got {steps!r}")
    for name, value in (("guidance", guidance), ("control strength", control_scale)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)) \
                or not math.isfinite(value) or value < 0:
            raise SettingsError(f"{name}: expected a finite number >= 0, got {value!r}")


def sample(eps_fn: EpsFn, x_T: torch.Tensor, alphas_cumprod: torch.Tensor, steps: int,
           sampler: str = "ddim", callback: Callback | None = None,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """Run the named sampler ("ddim" and "plms" are the official ones). On the CPU,
    denormals are flushed while sampling (see :func:`flush_denormals`)."""
    check_settings(sampler, steps)
    with flush_denormals(x_T.device.type == "cpu"):
        if sampler == "ddim":
            return sample_ddim(eps_fn, x_T, alphas_cumprod, steps, callback)
        if sampler == "plms":
            return sample_plms(eps_fn, x_T, alphas_cumprod, steps, callback)
        return sample_with_scheduler(eps_fn, x_T, alphas_cumprod, steps, sampler, callback, generator)


def step_generator(seed: int) -> torch.Generator:
    """The CPU generator the stochastic samplers (euler_a) draw their per-step noise from:
    seeded from ``seed`` through a different stream than :func:`initial_noise`, so the
    first step's fresh noise is not a copy of x_T."""
    state = np.random.SeedSequence([int(seed) & 0xFFFF_FFFF_FFFF_FFFF, 1]).generate_state(1, np.uint64)[0]
    return torch.Generator(device="cpu").manual_seed(int(state))


def initial_noise(shape: tuple[int, ...], seed: int, device: torch.device | str = "cpu",
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """x_T drawn on the CPU from ``torch.Generator(seed)`` so a seed gives the same image on
    every device; moved afterwards."""
    g = torch.Generator(device="cpu").manual_seed(int(seed) & 0xFFFF_FFFF_FFFF_FFFF)
    return torch.randn(shape, generator=g, dtype=torch.float32).to(device=device, dtype=dtype)
