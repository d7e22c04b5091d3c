"""MGIG: strict loading of the official checkpoint format (and ours), parity with every
single-forward reference array of the `mgig` vectors, loader errors, the ControlNet's
independence from x_t, batched guidance, presets, and the LDM VAE converter."""
from __future__ import annotations

import argparse
from dataclasses import replace

import pytest
import torch

from interact_custom.pipelines import samplers
from interact_custom.pipelines.mgig import MGIGModel, default_head_dim, mgig_config, preset_name_of
from interact_custom.weights_manager import ldm_vae
from interact_custom.pipelines import files
from interact_custom.weights_manager import native_mgig as nm
from interact_custom.weights_manager import official_mgig as om
from interact_custom.cli.research import vectors_mgig
from interact_custom.pipelines.files import WeightsError


@pytest.fixture(scope="module")
def official_sd(vectors):
    return om.read_state_dict(vectors.checkpoint("mgig"))[0]


@pytest.fixture(scope="module")
def model(vectors):
    return vectors_mgig.load_model(vectors)


@pytest.fixture(scope="module")
def inputs(vectors, model):
    A = vectors.arrays("mgig")
    with torch.no_grad():
        ctx = model.encode_id(torch.from_numpy(A["in_ref"]))
        uctx = model.uncond_context(1)
    return {"x_t": torch.from_numpy(A["in_x_t"]), "t": torch.from_numpy(A["in_timesteps"]),
            "ctx": ctx, "uctx": uctx, "hint": vectors_mgig._hint(vectors)}


@pytest.fixture(scope="module")
def small_inputs(inputs):
    """A 16x16 latent / 128x128 hint crop of the reference inputs, for behaviour tests."""
    return {**inputs, "x_t": inputs["x_t"][..., :16, :16].clone(), "hint": inputs["hint"][..., :128, :128].clone()}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


# --- loading -------------------------------------------------------------------------------

def test_detects_reduced_architecture(model, vectors):
    params = vectors.part("mgig")["config"]["model"]["params"]["unet_config"]["params"]
    unet = model.unet.config
    assert list(unet.block_out_channels) == [params["model_channels"] * m for m in params["channel_mult"]]
    assert unet.layers_per_block == params["num_res_blocks"]
    assert unet.cross_attention_dim == params["context_dim"]
    assert [w // h for w, h in zip(unet.block_out_channels, unet.attention_head_dim)][0] == \
        params["num_head_channels"]
    dino = vectors.reduced_configs["mgig_overrides"]["dino"]
    cfg = model.id_encoder.dinov2.config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.patch_size, cfg.image_size) == \
        (dino["embed_dim"], dino["depth"], dino["num_heads"], dino["patch_size"], dino["img_size"])
    # the reduced file is the `tiny` preset, and the head-width convention finds its heads
    assert model.config.to_dict() == mgig_config("tiny").to_dict()
    assert default_head_dim(params["model_channels"]) == params["num_head_channels"]


def test_strict_load_uses_every_tensor(official_sd, model, vectors):
    native = om.official_to_native(official_sd)
    loaded = model.state_dict()
    assert set(native) == set(loaded)
    assert all(torch.equal(loaded[k], v) for k, v in native.items())
    weights = {k for k in official_sd if k not in om.SCHEDULE_BUFFERS and k not in om.DROPPED_OFFICIAL_KEYS}
    # DINOv2's fused qkv becomes q, k, v; its fused w12 becomes gate + up (transformers 5)
    n_qkv = sum(k.endswith((".attn.qkv.weight", ".attn.qkv.bias")) for k in weights)
    n_w12 = sum(k.endswith((".mlp.w12.weight", ".mlp.w12.bias")) for k in weights)
    split_w12 = om.installed_dinov2_scheme() == "v5"
    assert len(native) == len(weights) + 2 * n_qkv + (n_w12 if split_w12 else 0)
    n_params = sum(p.numel() for p in model.parameters())
    dropped = sum(official_sd[k].numel() for k in om.DROPPED_OFFICIAL_KEYS)
    assert n_params == vectors.part("mgig")["notes"]["param_count"] - dropped
    assert torch.equal(model.alphas_cumprod, official_sd["alphas_cumprod"])
    assert torch.equal(model.alphas_cumprod, samplers.ldm_alphas_cumprod())


def test_full_size_key_listing_is_the_official_preset(vectors):
    """keys_mgig_full.txt (shapes only, meta device) -> detection -> the `official` preset."""
    listing = vectors.path / "keys_mgig_full.txt"
    if not listing.is_file():
        pytest.skip("no keys_mgig_full.txt in this vector folder")
    sd = {}
    for line in listing.read_text().splitlines():
        key, shape, _ = line.split("\t")
        sd[key] = torch.empty([int(v) for v in shape.strip("[]").split(",") if v.strip()], device="meta")
    native = om.official_to_native(sd)
    config = nm.detect_mgig_config(native)
    assert config.to_dict() == mgig_config("official").to_dict()
    with torch.device("meta"):
        full = MGIGModel(config)
    assert files.state_dict_mismatch(full.state_dict(), native, "full") is None
    counts = {name: sum(p.numel() for p in getattr(full, name).parameters()) / 1e6
              for name in ("unet", "controlnet", "id_encoder", "vae")}
    assert counts["unet"] == pytest.approx(865.9, abs=0.1)          # docs/METHOD.md §4.1
    assert counts["controlnet"] == pytest.approx(364.2, abs=0.1)
    assert counts["id_encoder"] == pytest.approx(1136.5 + 1.6, abs=0.1)
    assert counts["vae"] == pytest.approx(83.7, abs=0.1)


def test_presets_build(tmp_path):
    for name, max_params in (("tiny", 5e6), ("small", 6e6)):
        model = MGIGModel(mgig_config(name))
        n = sum(p.numel() for p in model.parameters())
        assert 1e6 < n < max_params, (name, n)
        detected = nm.detect_mgig_config(model.state_dict()).to_dict()
        for part in ("unet", "controlnet", "vae"):  # GroupNorm groups do not show in shapes
            detected[part]["norm_num_groups"] = model.config.to_dict()[part]["norm_num_groups"]
        assert model.config.to_dict() == detected
        assert preset_name_of(model.config) == name
        # Our files keep what shapes do not show (groups, latent scale, working size,
        # prediction type).
        model.config = replace(model.config, image_size=256, prediction_type="v_prediction",
                               vae={**model.config.vae, "scaling_factor": 0.5})
        model.vae.register_to_config(scaling_factor=0.5)
        again = nm.load_mgig(nm.save_mgig(model, tmp_path / f"{name}.safetensors"))
        assert again.config.to_dict() == model.config.to_dict() and again.latent_scale == 0.5
        assert again.config.prediction_type == "v_prediction" and preset_name_of(again.config) == name
    with pytest.raises(ValueError, match="unknown MGIG preset"):
        mgig_config("huge")


def test_native_round_trip(model, inputs, tmp_path):
    path = nm.save_mgig(model, tmp_path / "mgig.safetensors", dtype="fp32")
    again = nm.load_mgig(path)
    assert again.config.to_dict() == model.config.to_dict()
    sd = model.state_dict()
    assert all(torch.equal(v, sd[k]) for k, v in again.state_dict().items())
    with pytest.raises(FileExistsError):
        nm.save_mgig(model, path)
    # a file written under the other transformers naming of Dinov2 loads the same
    prefix = "id_encoder.dinov2."
    other = "v4" if om.installed_dinov2_scheme() == "v5" else "v5"
    dino = om._dinov2_hf_to_official({k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)})
    renamed = {k: v for k, v in sd.items() if not k.startswith(prefix)}
    renamed.update({prefix + k: v for k, v in om.dinov2_official_to_hf(dino, other)[0].items()})
    assert set(renamed) != set(sd)
    third = nm.load_mgig(renamed, unet_head_dim=16, dino_num_heads=3)
    assert all(torch.equal(v, sd[k]) for k, v in third.state_dict().items())


# --- parity with the reference arrays --------------------------------------------------------

def test_single_forward_parity(vectors, model, inputs):
    """Every dino_*, ctx_*, cn_* and eps_* array of the vectors (one Result each)."""
    with torch.no_grad(), vectors.reference_threads():  # see VectorFolder.reference_threads
        gen = vectors_mgig.check_id_encoder(vectors, model)
        results = list(gen)
        results += list(vectors_mgig.check_single_forwards(vectors, model, inputs["ctx"], inputs["uctx"],
                                                           inputs["hint"]))
    names = {r.name for r in results}
    expected = {n for n in vectors.array_names("mgig") if n.startswith(("dino_", "ctx_", "cn_", "eps_", "in_"))}
    assert names == expected
    failed = [f"{r.name}: {r.max_rel:.2e} {r.note}" for r in results if r.failed]
    assert not failed, failed
    assert all(r.max_rel < 1e-5 for r in results if r.status == "PASS")


@pytest.mark.slow
def test_every_reference_array(vectors):
    """The whole `verify` check of the part: DDIM step by step, decoding, the final image."""
    with vectors.reference_threads():
        results = list(vectors_mgig.check(vectors))
    assert {r.name for r in results} == set(vectors.array_names("mgig"))
    failed = [f"{r.name}: {r.max_rel:.2e} {r.note}" for r in results if r.failed]
    assert not failed, failed


# --- behaviour ------------------------------------------------------------------------------

def test_controlnet_ignores_x_t(model, small_inputs):
    x, t, ctx, hint = (small_inputs[k] for k in ("x_t", "t", "ctx", "hint"))
    with torch.no_grad():
        a = model.control_residuals(x, t[:1], ctx, hint)
        b = model.control_residuals(torch.full_like(x, float("nan")), t[:1], ctx, hint)
    assert len(a) == 13
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    assert "controlnet.conv_in.weight" not in model.state_dict()


def test_batched_cond_uncond_equals_separate_calls(model, small_inputs):
    x, t, ctx, uctx, hint = (small_inputs[k] for k in ("x_t", "t", "ctx", "uctx", "hint"))
    with torch.no_grad():
        both = model.predict_eps(torch.cat([x, x]), t[1:], torch.cat([uctx, ctx]), hint)
        uncond = model.predict_eps(x, t[1:], uctx, hint)
        cond = model.predict_eps(x, t[1:], ctx, hint)
    assert _rel(both[:1], uncond) < 1e-5 and _rel(both[1:], cond) < 1e-5
    with torch.no_grad():  # control strength scales the residuals
        half = model.control_residuals(x, t[1:], ctx, hint, control_scale=0.5)
        full = model.control_residuals(x, t[1:], ctx, hint)
    assert all(torch.allclose(h * 2, f) for h, f in zip(half, full))


def test_uncond_context_is_the_zero_image(model, inputs):
    with torch.no_grad():
        zero = model.encode_id(torch.zeros(2, 3, 224, 224))
        assert torch.equal(model.uncond_context(2), zero)
    assert model.uncond_context(3).shape == (3, 257, model.config.id_encoder["context_dim"])


def test_encode_latent_is_the_posterior_mean(model):
    image = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        z = model.encode_latent(image)
        mean = model.vae.encode(image).latent_dist.mean
    assert z.shape == (1, 4, 4, 4)
    assert torch.allclose(z, mean * 0.18215)


# --- errors ---------------------------------------------------------------------------------

class NotATensor:  # module level so that torch.save can pickle it by reference
    pass


def test_plain_sd_checkpoint_is_rejected(official_sd, tmp_path):
    plain = {k: v for k, v in official_sd.items() if not k.startswith(("control_model.", "cond_stage_model."))}
    path = tmp_path / "sd.ckpt"
    torch.save({"state_dict": plain}, path)
    with pytest.raises(om.MGIGCheckpointError, match="plain Stable Diffusion"):
        nm.load_mgig(path)
    with pytest.raises(om.MGIGCheckpointError, match="not an MGIG checkpoint"):
        nm.load_mgig({"foo.weight": torch.zeros(1)})


def test_truncated_and_corrupt_files(vectors, tmp_path):
    data = vectors.checkpoint("mgig").read_bytes()
    truncated = tmp_path / "mgig.ckpt"
    truncated.write_bytes(data[: len(data) // 3])
    with pytest.raises(WeightsError, match="truncated or corrupt"):
        nm.load_mgig(truncated)
    broken = tmp_path / "mgig.safetensors"
    broken.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(WeightsError, match="safetensors"):
        nm.load_mgig(broken)


def test_pickled_code_is_refused(official_sd, tmp_path):
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": dict(list(official_sd.items())[:3]), "callbacks": NotATensor()}, path)
    with pytest.raises(WeightsError, match="refused"):
        nm.load_mgig(path)
    path = tmp_path / "hparams.pth"  # Lightning-style hyper-parameters are pickled objects too
    torch.save({"state_dict": {}, "hparams": argparse.Namespace(lr=1e-5)}, path)
    with pytest.raises(WeightsError, match="refused"):
        nm.load_mgig(path)


def test_missing_and_unexpected_keys_are_reported(official_sd):
    missing = dict(official_sd)
    del missing["model.diffusion_model.output_blocks.3.1.proj_out.weight"]
    with pytest.raises(om.MGIGCheckpointError, match=r"missing keys \(1\): unet.up_blocks.1.attentions.0.proj_out"):
        nm.load_mgig(missing)
    extra = dict(official_sd)
    extra["control_model.extra_block.weight"] = torch.zeros(3)
    with pytest.raises(om.MGIGCheckpointError, match="unexpected tensor.*control_model.extra_block.weight"):
        nm.load_mgig(extra)
    wrong = dict(official_sd)
    wrong["cond_stage_model.projector.bias"] = torch.zeros(7)
    with pytest.raises(om.MGIGCheckpointError, match="shape mismatches: id_encoder.projector.bias"):
        nm.load_mgig(wrong)


def test_schedule_buffers_are_checked(official_sd):
    other = dict(official_sd)
    other["alphas_cumprod"] = official_sd["alphas_cumprod"] * 0.99
    with pytest.raises(om.MGIGCheckpointError, match="schedule"):
        om.detect_schedule(other)
    without = {k: v for k, v in official_sd.items() if k not in om.SCHEDULE_BUFFERS}
    assert om.detect_schedule(without) == mgig_config("tiny").schedule


# --- LDM VAE converter ----------------------------------------------------------------------

def test_ldm_vae_matches_iamg_vectors(vectors):
    """The IAMG file's VAE (ch_mult [1,1,1,1]) against its reference encode/decode."""
    sd = torch.load(vectors.checkpoint("iamg"), map_location="cpu", weights_only=True)["autoencoder"]
    config = ldm_vae.detect_vae_config(sd)
    assert config["block_out_channels"] == [32, 32, 32, 32] and config["mid_block_add_attention"]
    vae = ldm_vae.load_ldm_vae(sd)
    A = vectors.arrays("iamg")
    with torch.no_grad():  # decoding is checked by the iamg vectors (test_iamg.py)
        moments = vae.quant_conv(vae.encoder(torch.from_numpy(A["vae_in"])))
    assert _rel(moments, torch.from_numpy(A["vae_moments"])) < 1e-5
    back = ldm_vae.convert_diffusers_vae_to_ldm(ldm_vae.convert_ldm_vae(sd))
    assert set(back) == set(sd) and all(torch.equal(back[k], sd[k]) for k in sd)


def test_ldm_vae_level_attention_round_trip():
    config = ldm_vae.detect_vae_config(ldm_vae.convert_diffusers_vae_to_ldm(
        ldm_vae.build_vae({**mgig_config("tiny").vae,
                           "down_block_types": ["DownEncoderBlock2D", "AttnDownEncoderBlock2D"],
                           "up_block_types": ["AttnUpDecoderBlock2D", "UpDecoderBlock2D"],
                           "block_out_channels": [32, 64]}).state_dict()))
    assert config["down_block_types"] == ["DownEncoderBlock2D", "AttnDownEncoderBlock2D"]
    assert config["up_block_types"] == ["AttnUpDecoderBlock2D", "UpDecoderBlock2D"]
    with pytest.raises(files.WeightsError, match="unexpected key"):
        ldm_vae.convert_ldm_vae({"encoder.conv_in.weight": torch.zeros(1), "loss.logvar": torch.zeros(1)})


@pytest.mark.slow
def test_reference_threads_reproduce_the_ill_conditioned_residuals_on_any_thread_count(vectors, model, inputs):
    # The control: with another thread count the t = 981 ControlNet residuals land ~1e-3
    # away from the reference (GroupNorm of a nearly constant embedding, split by thread).
    assert vectors.torch_threads == 2
    before = torch.get_num_threads()

    def failures():
        with torch.no_grad():
            return [r.name for r in vectors_mgig.check_single_forwards(vectors, model, inputs["ctx"], inputs["uctx"],
                                                                       inputs["hint"]) if r.failed]
    try:
        torch.set_num_threads(3)
        assert any(name.startswith("cn_t0_") for name in failures())
        with vectors.reference_threads():
            assert torch.get_num_threads() == 2 and failures() == []
        assert torch.get_num_threads() == 3  # restored
    finally:
        torch.set_num_threads(before)
