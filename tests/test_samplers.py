"""Samplers: official DDIM / PLMS reproduced step by step from the reference vectors,
guidance batching, scheduler plumbing, seeds."""
import numpy as np
import pytest
import torch

from interact_custom.pipelines import samplers as S


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.abs(a - b).max() / np.abs(b).max()


def test_schedule_matches_official_buffers(vectors):
    sd = torch.load(vectors.checkpoint("mgig"), map_location="cpu", weights_only=True)["state_dict"]
    assert torch.equal(S.ldm_alphas_cumprod(), sd["alphas_cumprod"])


def test_ddim_timesteps_official():
    assert S.ddim_timesteps(50).tolist() == list(range(1, 1000, 20))
    assert S.ddim_timesteps(4).tolist() == [1, 251, 501, 751]
    assert S.ddim_timesteps(1000).tolist() == list(range(1000))  # official code would overflow
    assert S.ddim_timesteps(600)[-1] == 600
    with pytest.raises(ValueError, match="steps"):
        S.ddim_timesteps(0)


def test_ddim_steps_match_reference(vectors):
    m = vectors.arrays("mgig")
    ts = m["ddim_timesteps"]
    assert S.ddim_timesteps(len(ts)).tolist() == ts.tolist()
    a_t, a_prev = S.ddim_alphas(S.ldm_alphas_cumprod(), ts)
    np.testing.assert_array_equal(a_t.numpy(), m["ddim_alphas"])
    np.testing.assert_array_equal(a_prev.numpy(), m["ddim_alphas_prev"].astype(np.float32))
    # Replay the sampler with the recorded ε of each step: every latent must match.
    xs = [m["ddim_x_T"]] + [m[f"ddim_step{k}_x_in"] for k in range(1, len(ts))] + [m["ddim_final_latent"]]
    recorded = iter(range(len(ts)))

    def eps_fn(x, t):
        k = next(recorded)
        assert int(t[0]) == ts[len(ts) - 1 - k]
        assert rel(x, xs[k]) < 1e-5
        e_c = torch.from_numpy(m[f"ddim_step{k}_eps_cond"])
        e_u = torch.from_numpy(m[f"ddim_step{k}_eps_uncond"])
        return e_u + 5.0 * (e_c - e_u)

    out = S.sample_ddim(eps_fn, torch.from_numpy(m["ddim_x_T"]), S.ldm_alphas_cumprod(), len(ts))
    assert rel(out, m["ddim_final_latent"]) < 1e-5


def test_plms_matches_reference_call_sequence(vectors):
    m = vectors.arrays("iamg")
    calls = m["plms_call_timesteps"].tolist()
    outs = torch.from_numpy(m["plms_call_outputs"])
    seen = []

    def eps_fn(x, t):
        i = 2 * len(seen)
        seen.append(int(t[0]))
        e_c, e_u = outs[i:i + 1], outs[i + 1:i + 2]  # official order: cond, then uncond
        return e_u + 5.0 * (e_c - e_u)

    steps = len(m["plms_timesteps"])
    out = S.sample_plms(eps_fn, torch.from_numpy(m["plms_x_T"]), S.ldm_alphas_cumprod(), steps)
    assert seen == calls[::2]  # first step: t, t_next; then one call per step
    assert len(seen) == steps + 1
    assert rel(out, m["plms_final_latent"]) < 1e-5


def toy_model(x, t, context, hint):
    return torch.tanh(x * context.mean(dim=(1, 2), keepdim=True)[..., None] + hint[:, :4]) * (t[:, None, None, None] / 1000.0)


def test_guidance_batched_equals_separate_and_official_formula():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, 8, generator=g)
    t = torch.tensor([500, 500])
    cond = {"context": torch.randn(2, 3, 5, generator=g), "hint": torch.randn(2, 4, 8, 8, generator=g)}
    uncond = {"context": torch.randn(2, 3, 5, generator=g), "hint": cond["hint"]}
    batched = S.guided_eps(toy_model, cond, uncond, 5.0, batched=True)(x, t)
    separate = S.guided_eps(toy_model, cond, uncond, 5.0, batched=False)(x, t)
    e_c, e_u = toy_model(x, t, **cond), toy_model(x, t, **uncond)
    torch.testing.assert_close(batched, e_u + 5.0 * (e_c - e_u), rtol=0, atol=1e-6)
    torch.testing.assert_close(separate, batched, rtol=0, atol=1e-6)


def test_guidance_without_uncond_is_one_call():
    calls = []

    def model(x, t, **kw):
        calls.append(x.shape[0])
        return x * 2

    x = torch.ones(1, 4, 2, 2)
    out = S.guided_eps(model, {}, None, 5.0)(x, torch.tensor([1]))
    assert calls == [1] and torch.equal(out, x * 2)


@pytest.mark.parametrize("name", ["dpmpp_2m", "unipc", "euler", "ddim_diffusers"])
def test_diffusers_schedulers_denoise_a_known_image(name):
    # With the exact ε of a known x0, every sampler must land on x0.
    ac = S.ldm_alphas_cumprod()
    x0 = torch.linspace(-1, 1, 64).reshape(1, 1, 8, 8).repeat(1, 4, 1, 1)
    noise = S.initial_noise((1, 4, 8, 8), seed=3)

    def eps_fn(x, t):
        # invert whatever the scheduler fed us: for ε-prediction x = √ᾱ x0 + √(1-ᾱ) ε,
        # after scale_model_input (sigma schedulers divide by √(σ²+1) = 1/√ᾱ).
        a = ac[t].view(-1, 1, 1, 1)
        return (x - a.sqrt() * x0) / (1 - a).sqrt()

    out = S.sample(eps_fn, noise, ac, 20, sampler=name)
    assert torch.isfinite(out).all()
    # DDIM-style samplers stop at ᾱ_0 (√(1-ᾱ_0) ≈ 0.03 of noise left), hence the margin.
    assert (out - x0).abs().max() < 0.15


def test_initial_noise_is_seeded():
    a = S.initial_noise((2, 4, 8, 8), seed=42)
    b = S.initial_noise((2, 4, 8, 8), seed=42)
    c = S.initial_noise((2, 4, 8, 8), seed=43)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert S.initial_noise((1, 1, 2, 2), seed=2**64 - 1).shape == (1, 1, 2, 2)


def test_step_generator_is_seeded_and_not_the_initial_noise():
    a = torch.randn(64, generator=S.step_generator(3))
    assert torch.equal(a, torch.randn(64, generator=S.step_generator(3)))
    assert not torch.allclose(a, torch.randn(64, generator=S.step_generator(4)))
    # The first ancestral step's noise must not repeat x_T.
    assert not torch.allclose(a, S.initial_noise((64,), 3))


def test_unknown_sampler_is_a_clear_error():
    with pytest.raises(ValueError, match="sampler: unknown 'nope'"):
        S.sample(lambda x, t: x, torch.zeros(1, 4, 2, 2), S.ldm_alphas_cumprod(), 2, sampler="nope")


@pytest.mark.parametrize("name", S.SAMPLER_NAMES)
def test_every_sampler_runs_its_maximum_steps_and_refuses_more(name):
    # The widget maximum (1000) used to crash the diffusers samplers with IndexError /
    # AssertionError; now each sampler runs its own maximum and says so beyond it.
    ac = S.ldm_alphas_cumprod()
    top = S.max_steps(name)
    out = S.sample(lambda x, t: torch.zeros_like(x), torch.ones(1, 1, 2, 2), ac, top, sampler=name,
                   generator=S.step_generator(0))
    assert torch.isfinite(out).all()
    with pytest.raises(ValueError, match=f"steps: expected a whole number from 1 to {top} for the {name} sampler"):
        S.sample(lambda x, t: torch.zeros_like(x), torch.ones(1, 1, 2, 2), ac, top + 1, sampler=name)


@pytest.mark.parametrize("steps", [0, -3, 2.5, True])
def test_bad_step_counts_are_refused(steps):
    with pytest.raises(ValueError, match="steps: expected a whole number"):
        S.check_settings("euler_a", steps)


@pytest.mark.parametrize("name,value", [("guidance", float("nan")), ("guidance", -1.0), ("guidance", float("inf")),
                                        ("control strength", float("nan")), ("control strength", -0.5)])
def test_bad_guidance_and_control_strength_are_refused(name, value):
    kwargs = {"guidance": 3.0, "control_scale": 1.0}
    kwargs["guidance" if name == "guidance" else "control_scale"] = value
    with pytest.raises(ValueError, match=f"{name}: expected a finite number >= 0"):
        S.check_settings("ddim", 20, **kwargs)


@pytest.mark.parametrize("name", ["ddim", "dpmpp_2m"])
def test_v_prediction_denoises_a_known_image(name):
    # A v model's exact output (√ᾱ·ε − √(1−ᾱ)·x0 of a known x0), turned into ε by
    # `eps_from_v`, must land every sampler on x0 like the exact ε does.
    ac = S.ldm_alphas_cumprod()
    x0 = torch.linspace(-1, 1, 64).reshape(1, 1, 8, 8).repeat(1, 4, 1, 1)

    def v_fn(x, t):
        a = ac[t].view(-1, 1, 1, 1)
        eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
        return S.v_target(x0, eps, ac[t])

    out = S.sample(lambda x, t: S.eps_from_v(v_fn(x, t), x, ac[t]), S.initial_noise((1, 4, 8, 8), seed=3), ac, 20,
                   sampler=name)
    assert (out - x0).abs().max() < 0.15
    # The trivial v = 0 means "x_t is mostly noise": ε̂ = √(1−ᾱ)·x_t, ≈ x_t at t = 999.
    x = torch.randn(2, 4, 8, 8)
    t = torch.tensor([0, 999])
    eps = S.eps_from_v(torch.zeros_like(x), x, ac[t])
    assert torch.allclose(eps, (1 - ac[t]).sqrt().view(-1, 1, 1, 1) * x)
    assert (eps[1] - x[1]).abs().max() < 0.01 * x.abs().max()
