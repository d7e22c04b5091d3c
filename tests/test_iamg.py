"""IAMG: strict loading of the official checkpoint format, parity with every reference
array of the `iamg` vectors, loader errors, the no-op classifier-free guidance of the
released network, the ★ text variant, and the crop-back for portrait/landscape images."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from interact_custom.cli.research.vectors_iamg import box_from_fractions, official_mask_png
from interact_custom.pipelines.geometry import Box
from interact_custom.pipelines import iamg, samplers
from interact_custom.weights_manager import official_iamg as oi
from interact_custom.pipelines.files import WeightsError


@pytest.fixture(scope="module")
def ckpt(vectors):
    return torch.load(vectors.checkpoint("iamg"), map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def model(ckpt):
    return oi.load_official_iamg(ckpt, text_encoder_num_heads=2)


# --- loading -----------------------------------------------------------------------------

def test_detects_reduced_architecture(ckpt, vectors):
    cfg = oi.detect_unet_config(ckpt["model"], config_dict=ckpt.get("config_dict"))
    params = vectors.reduced_configs["effective"]["iamg"]["model"]["params"]
    assert cfg.model_channels == params["model_channels"]
    assert list(cfg.channel_mult) == params["channel_mult"]
    assert cfg.num_res_blocks == params["num_res_blocks"]
    assert sorted(cfg.attention_resolutions) == sorted(params["attention_resolutions"])
    assert cfg.num_heads == params["num_heads"]
    assert cfg.in_channels == 2 * params["in_channels"]  # CondModel doubles it
    assert cfg == iamg.PRESETS["reduced"]


def test_strict_load_uses_every_tensor(ckpt, model):
    converted = oi.convert_official_unet(ckpt["model"], model.unet.config)
    assert set(converted) == set(model.unet.state_dict())
    # 3 q/k/v tensors per official qkv tensor: one more key per attention weight/bias.
    n_attn = sum(k.endswith(".qkv.weight") or k.endswith(".qkv.bias") for k in ckpt["model"])
    assert len(converted) == len(ckpt["model"]) + 2 * n_attn
    assert torch.equal(model.alphas_cumprod, ckpt["diffusion"]["alphas_cumprod"])
    assert torch.equal(model.alphas_cumprod, samplers.ldm_alphas_cumprod())
    assert model.text_encoder is not None and not model.uses_text


def test_full_size_key_listing_loads_strictly(vectors):
    """The full iamg.pth key listing (shapes only, on the meta device) → official preset."""
    listing = vectors.path / "keys_iamg_full.txt"
    if not listing.is_file():
        pytest.skip("no keys_iamg_full.txt in this vector folder")
    entries: dict[str, dict] = {}
    for line in listing.read_text().splitlines():
        key, shape, _ = line.split("\t")
        entry, _, name = key.partition("/")
        dims = [int(v) for v in shape.strip("[]").split(",") if v.strip()]
        entries.setdefault(entry, {})[name] = torch.empty(dims, device="meta")
    unet = oi.unet_from_official(entries["model"])
    assert unet.config == iamg.PRESETS["official"]
    assert abs(sum(p.numel() for p in unet.parameters()) / 1e6 - 701.5) < 0.1
    te = oi.detect_text_encoder_config(entries["text_encoder"])
    assert (te["hidden_size"], te["num_hidden_layers"], te["num_attention_heads"]) == (768, 12, 12)


def test_legacy_qkv_rows_are_regrouped_per_head():
    heads, ch = 2, 3
    rows = torch.arange(3 * heads * ch).float()  # [h0: q k v | h1: q k v]
    q, k, v = oi._split_legacy_qkv(rows, heads)
    assert q.tolist() == [0, 1, 2, 9, 10, 11]
    assert k.tolist() == [3, 4, 5, 12, 13, 14]
    assert v.tolist() == [6, 7, 8, 15, 16, 17]


def test_missing_and_unexpected_keys_are_refused(ckpt):
    bad = dict(ckpt)
    bad["model"] = {k: v for k, v in ckpt["model"].items() if k != "input_blocks.1.0.in_layers.2.weight"}
    with pytest.raises(WeightsError, match=r"missing.*down_blocks\.0\.resnets\.0\.conv1\.weight"):
        oi.load_official_iamg(bad, load_text_encoder=False)
    bad["model"] = dict(ckpt["model"], **{"input_blocks.1.0.extra.weight": torch.zeros(1)})
    with pytest.raises(WeightsError, match=r"unexpected.*input_blocks\.1\.0\.extra\.weight"):
        oi.load_official_iamg(bad, load_text_encoder=False)
    bad = dict(ckpt, text_encoder=dict(ckpt["text_encoder"], **{"transformer.text_model.x": torch.zeros(1)}))
    with pytest.raises(WeightsError, match="unexpected"):
        oi.load_official_iamg(bad, text_encoder_num_heads=2)


def test_not_an_iamg_file(tmp_path):
    mgig_like = tmp_path / "mgig.ckpt"
    torch.save({"state_dict": {"control_model.input_hint_block.0.weight": torch.zeros(1)}}, mgig_like)
    with pytest.raises(WeightsError, match="MGIG"):
        oi.read_official_iamg(mgig_like)
    bare = tmp_path / "bare.pth"
    torch.save({"conv.weight": torch.zeros(1)}, bare)
    with pytest.raises(WeightsError, match="not an IAMG checkpoint.*bare state dict"):
        oi.read_official_iamg(bare)


def test_truncated_file(tmp_path, vectors):
    data = vectors.checkpoint("iamg").read_bytes()
    cut = tmp_path / "iamg.pth"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="truncated or corrupt"):
        oi.read_official_iamg(cut)


class _Payload:  # any class outside torch's weights_only allow-list
    pass


def test_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": {}, "autoencoder": {}, "x": _Payload()}, path)
    with pytest.raises(WeightsError, match="refused"):
        oi.read_official_iamg(path)


# --- parity with the reference arrays ------------------------------------------------------

def test_every_iamg_array_matches(vectors):
    from interact_custom.cli.verify import verify_part

    results = verify_part(vectors, "iamg")
    failed = [f"{r.name}: {r.note} (rel {r.max_rel:.2e})" for r in results if r.failed]
    assert not failed, failed
    by_name = {r.name: r for r in results}
    assert set(vectors.array_names("iamg")) <= set(by_name)
    assert by_name["crop_generation"].status == "SKIPPED"
    for name in ("eps_t0", "plms_call_outputs", "plms_final_latent", "vae_latent_mean"):
        assert by_name[name].status == "PASS" and by_name[name].max_rel < 1e-5


def test_condition_image_leaves_input_untouched(vectors):
    image = vectors.arrays("preproc")["scene_hoi_image"]
    before = image.copy()
    cond = iamg.condition_image(image, Box.from_yyxx(10, 50, 20, 80))
    assert np.array_equal(image, before)
    assert cond.shape == (3, 256, 256) and cond.dtype == np.float32


def test_box_validation():
    img = np.zeros((40, 60, 3), np.uint8)
    with pytest.raises(ValueError, match="box"):
        iamg.condition_image(img, Box.from_yyxx(10, 5, 0, 10))
    with pytest.raises(ValueError, match="box"):
        iamg.condition_image(img, Box.from_yyxx(0, 41, 0, 10))
    with pytest.raises(ValueError, match="fractions"):
        box_from_fractions(40, 60, [0.5, 0.2, 0.0, 1.0])
    assert box_from_fractions(300, 420, [0.3, 0.8, 0.3, 0.8]).yyxx == (90, 240, 126, 336)
    with pytest.raises(ValueError, match="background"):
        iamg.condition_image(img[:, :, 0], None)


# --- classifier-free guidance is a no-op for the released network -------------------------

def test_skipping_uncond_pass_is_bitwise_identical(model, vectors):
    A = vectors.arrays("iamg")
    # A 16² corner of the latents keeps this fast; the UNet takes any multiple of 8.
    cond = torch.from_numpy(A["in_cond_latent"])[..., :16, :16].contiguous()
    ctx, uc = torch.from_numpy(A["in_context"]), torch.from_numpy(A["in_uc"])
    x_T = torch.from_numpy(A["plms_x_T"])[..., :16, :16].contiguous()
    steps = 3
    calls = {"n": 0}

    def counting(x, t, **kw):
        calls["n"] += 1
        return model.predict_eps(x, t, **kw)

    with torch.no_grad():
        official = samplers.sample_plms(
            samplers.guided_eps(counting, {"cond_latent": cond, "context": ctx},
                                {"cond_latent": cond, "context": uc}, 5.0, batched=False),
            x_T, model.alphas_cumprod, steps)
        with_uncond = calls["n"]
        calls["n"] = 0
        skipped = samplers.sample_plms(samplers.guided_eps(counting, {"cond_latent": cond, "context": ctx},
                                                           None, 5.0), x_T, model.alphas_cumprod, steps)
        ours = iamg.sample_mask_latent(model, cond, steps=steps, x_T=x_T, context=ctx, uncond_context=uc)
    assert with_uncond == 2 * (steps + 1) and calls["n"] == steps + 1
    assert torch.equal(official, skipped)
    assert torch.equal(official, ours)


# --- ★ text-conditioned variant --------------------------------------------------------

def test_text_variant_starts_as_the_official_function():
    torch.manual_seed(0)
    base = iamg.IAMGUNet(iamg.preset("tiny")).eval()
    text = iamg.IAMGUNet(iamg.preset("tiny", cross_attention_dim=16)).eval()
    missing, unexpected = text.load_state_dict(base.state_dict(), strict=False)
    assert not unexpected and missing and all(".cross_attn." in k for k in missing)
    x, t = torch.randn(2, 8, 16, 16), torch.tensor([10, 900])
    ctx_a, ctx_b = torch.randn(2, 5, 16), torch.randn(2, 5, 16)
    with torch.no_grad():
        ref = base(x, t)
        assert torch.equal(text(x, t, ctx_a), ref)  # zero-initialised cross-attention output
        for m in text.modules():
            if isinstance(m, iamg.IAMGAttention):
                torch.nn.init.normal_(m.cross_attn.to_out[0].weight, std=0.1)
        assert not torch.allclose(text(x, t, ctx_a), text(x, t, ctx_b))
    with pytest.raises(ValueError, match="context"):
        text(x, t)


# --- crop-back of the square padding ------------------------------------------------------

def _ellipse_mask(h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return (((yy - 0.55 * h) / (0.3 * h)) ** 2 + ((xx - 0.4 * w) / (0.25 * w)) ** 2 <= 1).astype(np.uint8)


@pytest.mark.parametrize("h,w", [(300, 180), (180, 300), (257, 255), (128, 128)])
def test_crop_back_recovers_the_mask(h, w):
    """target_image (pad to square + 256²) followed by mask_from_decoded must give the
    same mask back at the original size, for portrait and landscape images alike."""
    mask = _ellipse_mask(h, w)
    square = torch.from_numpy(iamg.target_image(mask))[None]
    soft, binary = iamg.mask_from_decoded(square, h, w)
    assert soft.shape == binary.shape == (1, h, w)
    got = binary[0].numpy()
    iou = (got & (mask > 0)).sum() / (got | (mask > 0)).sum()
    assert iou > 0.97, iou
    ys, xs = np.nonzero(got)
    y0, x0 = np.nonzero(mask)
    assert abs(ys.mean() - y0.mean()) < 1.0 and abs(xs.mean() - x0.mean()) < 1.0


def test_official_height_crop_is_wrong_for_portrait():
    """The defect we fix: cropping the height of a portrait image's square keeps the
    width padding and cuts the mask."""
    h, w = 300, 180
    mask = _ellipse_mask(h, w)
    square = (torch.from_numpy(iamg.target_image(mask))[0] + 1) / 2
    pad = int((h - w) / 2 * 256 / h)
    official = square[pad:256 - pad, :]  # resize_forward's slice, along the height
    resized = torch.nn.functional.interpolate(official[None, None], size=(h, w), mode="bilinear")[0, 0] > 0.5
    iou = (resized.numpy() & (mask > 0)).sum() / (resized.numpy() | (mask > 0)).sum()
    assert iou < 0.8


def test_official_mask_png_matches_save_image_rounding():
    x = torch.tensor([-1.0, -0.2, 0.0, 0.4, 0.50196, 1.0, 1.7]).reshape(1, 1, 1, 7).expand(1, 3, 1, 7)
    png = official_mask_png(x)
    assert png.shape == (1, 1, 7, 3)
    assert png[0, 0, :, 0].tolist() == [0, 0, 0, 102, 128, 255, 255]
