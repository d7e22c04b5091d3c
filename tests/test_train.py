"""Training (`cli/research/training/`, `cli/train.py`): configs, training items,
loss going down on a tiny synthetic set, bitwise-identical resume after an interruption,
atomic checkpoints, and final files that load in the inference pipelines.

Tiny presets on 64-px synthetic data (MGIG at 128 px: its 4-level tiny UNet needs it)."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from interact_custom.cli.research.training.config import CONFIGS_DIR
from interact_custom import cli
from interact_custom.pipelines import iamg, samplers
from interact_custom.pipelines import text as prompt_text
from interact_custom.pipelines.mgig import pipeline as choi
from interact_custom.pipelines.mgig import inputs as preprocess
from interact_custom.cli.research.data import synth
from interact_custom.cli import train as train_cli
from interact_custom.cli.research.training import config as train_config
from interact_custom.cli.research.training import data as train_data
from interact_custom.cli.research.training import loop, losses, models
from interact_custom.cli.research.training import runs as train_runs
from interact_custom.pipelines.mgig import mgig_config
from interact_custom.weights_manager.native_iamg import load_iamg
from interact_custom.weights_manager.native_mgig import load_mgig

CONFIGS = CONFIGS_DIR


pytestmark = pytest.mark.usefixtures("training_cpu")  # conftest: one thread, denormals flushed


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("choi") / "data"
    synth.generate(root, count=8, seed=0, size=64, val_fraction=0.5)  # 4 train, 4 val samples
    return root


def config(name: str, data: Path, out: Path, **overrides) -> train_config.TrainConfig:
    """A shipped config with the test's data and output folders."""
    raw = json.loads((CONFIGS / name).read_text(encoding="utf-8"))
    raw.pop("_comment", None)
    raw.update(data_root=str(data), output_dir=str(out), **overrides)
    return train_config.make_config(raw)


def fixed_batch_loss(cfg: train_config.TrainConfig, model, data_items: list[dict], seeds=range(4)) -> float:
    """The loss on fixed items with fixed t / noise draws, no dropout."""
    quiet = train_config.make_config({**cfg.to_dict(), "box_dropout": 0.0, "text_dropout": 0.0})
    module = losses.LOSSES[cfg.model](model, quiet).eval()
    batch = torch.utils.data.default_collate(data_items)
    with torch.no_grad():
        return float(np.mean([module(batch, 1000 + s).item() for s in seeds]))


def shipped_configs_are_valid():
    return sorted(CONFIGS.glob("*.json"))


# --- configs -----------------------------------------------------------------------------

@pytest.mark.parametrize("path", shipped_configs_are_valid(), ids=lambda p: p.name)
def test_shipped_configs_parse(path):
    cfg = train_config.load_config(path)
    assert cfg.model in train_config.MODEL_KINDS


def test_config_errors_name_the_key(data, tmp_path):
    base = {"model": "iamg", "preset": "tiny_text", "data_root": str(data), "output_dir": str(tmp_path)}
    with pytest.raises(train_config.ConfigError, match="unknown config key.*learning_rate"):
        train_config.make_config({**base, "learning_rate": 1e-4})
    with pytest.raises(train_config.ConfigError, match="box_dropout: expected a probability"):
        train_config.make_config({**base, "box_dropout": 1.5})
    with pytest.raises(train_config.ConfigError, match="stage 2 trains MGIG on IAMG-generated masks"):
        train_config.make_config({**base, "model": "mgig", "preset": "tiny", "stage": 2})
    with pytest.raises(train_config.ConfigError, match="config is for 'iamg' but the command trains 'mgig'"):
        train_config.make_config(base, model="mgig")
    with pytest.raises(train_config.ConfigError, match="set `preset`"):
        train_config.make_config({**base, "preset": None})
    with pytest.raises(train_config.ConfigError, match="figure_loss_weight: expected a finite number >= 1"):
        train_config.make_config({**base, "model": "mgig", "preset": "tiny", "figure_loss_weight": 0.5})
    with pytest.raises(train_config.ConfigError, match="figure_loss_weight: expected 1 except for mgig"):
        train_config.make_config({**base, "figure_loss_weight": 2})
    with pytest.raises(train_config.ConfigError, match="trainable: unknown part"):
        models.set_trainable(train_config.make_config({**base, "trainable": ["controlnet"]}),
                            iamg.build_iamg("tiny_text"))
    assert train_config.parse_override("lr=3e-4") == ("lr", 3e-4)
    assert train_config.parse_override("trainable=[\"unet\"]") == ("trainable", ["unet"])
    assert train_config.parse_override("init=models/a b.pth") == ("init", "models/a b.pth")
    path = tmp_path / "c.json"
    path.write_text(json.dumps(base))
    cfg = train_config.load_config(path, ["steps=7", "seed=3"], model="iamg")
    assert (cfg.steps, cfg.seed, cfg.model) == (7, 3, "iamg")
    assert "box_dropout" in train_config.describe_keys()


# --- training items ----------------------------------------------------------------------

def test_positions_split_processes_and_resume():
    take = lambda s, n: [p for _, p in zip(range(n), iter(s))]  # noqa: E731
    p0 = take(train_data.PositionSampler(2, num_processes=2, process_index=0), 6)
    p1 = take(train_data.PositionSampler(2, num_processes=2, process_index=1), 6)
    assert p0 == [0, 1, 4, 5, 8, 9] and p1 == [2, 3, 6, 7, 10, 11]
    assert take(train_data.PositionSampler(2, num_processes=2, process_index=0, start=1), 4) == p0[2:]


def test_iamg_items(data):
    ds = train_data.IAMGTrainData(data, size=64, background_dropout=0.0, tokenize=prompt_text.words_tokenizer())
    a, b = ds[5], ds[5]
    assert all(torch.equal(a[k], b[k]) for k in ("condition", "target", "input_ids"))  # position-determined
    assert a["condition"].shape == a["target"].shape == (3, 64, 64) and a["input_ids"].shape == (77,)
    sample = ds.choi[ds.index_of(5)]
    assert a["caption"] == sample.caption
    # Target: the union mask drawn white on black; condition: background with the box black.
    np.testing.assert_array_equal(a["target"].numpy(), iamg.target_image(sample.interaction_mask, 64))
    box = iamg.union_box(sample.interaction_mask > 0)
    np.testing.assert_array_equal(a["condition"].numpy(),
                                  iamg.condition_image(sample.background, box, 64))
    # Background dropout: a white canvas with only the box blanked.
    white = train_data.IAMGTrainData(data, size=64, background_dropout=1.0)[5]["condition"]
    np.testing.assert_array_equal(white.numpy(), iamg.condition_image(np.full_like(sample.background, 255),
                                                                      box, 64))
    # The validation item (no rng) never drops anything.
    assert torch.equal(train_data.IAMGTrainData(data, size=64, background_dropout=1.0).item(0)["condition"],
                       ds.item(0)["condition"])


def test_mgig_items_and_stage2_masks(data, tmp_path):
    ds = train_data.MGIGTrainData(data, size=128)
    item = ds[3]
    assert item["reference"].shape == (3, 224, 224) and item["hint"].shape == (4, 128, 128)
    assert item["target"].shape == (3, 128, 128)
    assert set(item["hint"][3].unique().tolist()) <= {-1.0, 0.0, 1.0}
    assert torch.equal(ds[3]["hint"], item["hint"])
    no_layout = train_data.MGIGTrainData(data, size=128, box_dropout=1.0)[3]["hint"][3]
    assert set(no_layout.unique().tolist()) <= {-1.0, 0.0} and torch.equal(no_layout < 0, item["hint"][3] < 0)
    assert not train_data.MGIGTrainData(data, size=128, id_dropout=1.0)[3]["reference"].any()

    # "figure": where the human ∪ object lies in the target crop (for ★ figure_loss_weight).
    # The validation item's layout channel is the target box, which holds the whole figure.
    val = train_data.MGIGTrainData(data, size=512).item(1)
    figure, box = val["figure"][0], val["hint"][3] == 1
    assert val["figure"].shape == (1, 512, 512) and 0.0 <= figure.min() and figure.max() <= 1.0
    inside = figure > 0.5
    assert inside.any() and not (inside & ~box).any()
    assert 0.2 < inside.sum() / box.sum() < 0.95  # the box is the union's bbox ×1.1

    # Stage 2: the generated mask replaces the union mask for box, crop and layout.
    sample = ds.choi[0]
    h, w = sample.target.shape[:2]
    generated = np.zeros((h, w), np.uint8)
    generated[h // 4:h // 2, w // 3:w // 2] = 255
    masks = tmp_path / "masks"
    masks.mkdir()
    from PIL import Image

    Image.fromarray(generated, "L").save(masks / f"{sample.id}.png")
    stage2 = train_data.MGIGTrainData(data, size=512, generated_masks=masks)
    canvas = preprocess.reference_canvas(sample.human_ref, sample.human_ref_mask, sample.object_ref,
                                         sample.object_ref_mask)
    expected = preprocess.build_hint(sample.target, generated, preprocess.detail_map(canvas.image, canvas.mask),
                                     mask_channel="box")
    got = stage2.item(0)
    np.testing.assert_array_equal(got["hint"].permute(1, 2, 0).numpy(), expected.hint)
    np.testing.assert_array_equal(got["target"].permute(1, 2, 0).numpy(), expected.target)
    with pytest.raises(FileNotFoundError, match="train masks"):
        stage2.item(1)
    # The crop follows the generated mask; the loss weights the true figure inside it:
    # the same pixels as a layout channel drawn from the true union in that crop.
    detail = preprocess.detail_map(canvas.image, canvas.mask)
    true_in_crop = preprocess.build_hint(sample.target, generated, detail, mask_channel="mask",
                                         mask=sample.interaction_mask).hint[:, :, 3] == 1
    figure = got["figure"][0].numpy() > 0.5
    assert true_in_crop.any() and (figure & true_in_crop).sum() / (figure | true_in_crop).sum() > 0.9


def test_figure_weighted_mse():
    # An error of 1 on the figure only: plain MSE gives the covered fraction f; weight w
    # gives w·f / (1 + (w - 1)·f); an error off the figure is diluted accordingly.
    figure = torch.zeros(2, 1, 64, 64)
    figure[:, :, :16, :32] = 1.0  # f = 1/8 of every latent pixel grid it is pooled to
    target = torch.zeros(2, 4, 8, 8)
    on = torch.zeros_like(target)
    on[:, :, :2, :4] = 1.0
    f, w = 1 / 8, 4.0
    assert losses.figure_weighted_mse(on, target, figure, 1.0).item() == pytest.approx(f)
    assert losses.figure_weighted_mse(on, target, figure, w).item() == pytest.approx(w * f / (1 + (w - 1) * f))
    assert losses.figure_weighted_mse(1 - on, target, figure, w).item() == pytest.approx((1 - f) / (1 + (w - 1) * f))


# --- training runs -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def iamg_run(data, tmp_path_factory):
    """The tiny text IAMG trained through the command line (12 steps on 2 samples)."""
    out = tmp_path_factory.mktemp("runs") / "iamg"
    rc = cli.main(["train", "iamg", "--config", str(CONFIGS / "tiny_iamg.json"), "--set", f"data_root={data}",
                   "--set", f"output_dir={out}", "--set", "data_limit=2", "--set", "ema_decay=0.5"])
    assert rc == 0
    return out


def test_iamg_loss_drops_and_final_loads(iamg_run, data):
    cfg = train_config.load_config(iamg_run / "config.json")
    ds = train_data.IAMGTrainData(data, size=64, limit=2, tokenize=prompt_text.words_tokenizer())
    items = [ds.item(0), ds.item(1)]
    trained = load_iamg(iamg_run / "final.safetensors")
    before = fixed_batch_loss(cfg, train_cli.build_model(cfg), items)
    after = fixed_batch_loss(cfg, trained, items)
    assert after < 0.8 * before, (before, after)

    # The final file (EMA weights; raw ones beside it) runs in the inference pipeline.
    assert trained.uses_text and (iamg_run / train_runs.FINAL_NOEMA_FILE).is_file()
    # It records the words of its training captions, so IAMG can warn about the others.
    captions = [train_data.IAMGTrainData(data, size=64, tokenize=prompt_text.words_tokenizer()).choi[i].caption
                for i in range(len(ds.choi))]
    assert trained.tokenizer.trained_words == {w for c in captions for w in trained.tokenizer.words(c)}
    # It works at the size it was trained at (64 px: an 8² latent), whatever the canvas.
    assert trained.image_size == 64 and trained.latent_shape == (4, 8, 8)
    sample = ds.choi[0]
    result = iamg.generate_mask(trained, prompt=sample.caption, background=sample.background,
                                box=(8, 8, 40, 48), steps=1)
    assert result.binary.shape == (1, 64, 64) and torch.isfinite(result.soft).all()

    log = [json.loads(line) for line in (iamg_run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == list(range(1, 13))
    assert {r["validation"] for r in log if "validation" in r} == {"samples/step_000006.png",
                                                                   "samples/step_000012.png"}
    assert (iamg_run / "samples" / "step_000012.png").is_file()
    assert (iamg_run / "checkpoints" / "latest").read_text().strip() == "step_000012"


@pytest.mark.slow
def test_mgig_trains_official_parts_from_an_official_file(vectors, data, tmp_path):
    # Starting from an official-format checkpoint: the official trainable set only.
    cfg = config("tiny_mgig.json", data, tmp_path / "mgig", init=str(vectors.checkpoint("mgig")), preset=None,
                 steps=8, data_limit=1, validate_every=0, checkpoint_every=8, lr=1e-3, id_dropout=0.0)
    start = train_cli.build_model(cfg)
    items = [train_data.MGIGTrainData(data, size=128, limit=1).item(0)]
    before = fixed_batch_loss(cfg, start, items)
    result = train_cli.train(cfg, progress=False)
    trained = load_mgig(result.final)
    after = fixed_batch_loss(cfg, trained, items)
    assert after < before, (before, after)

    initial = start.state_dict()
    changed = {k for k, v in trained.state_dict().items() if not torch.equal(v, initial[k])}
    assert any(k.startswith("controlnet.") for k in changed)
    assert any(k.startswith("unet.up_blocks.") for k in changed)
    assert any(k.startswith("id_encoder.projector.") for k in changed)
    frozen = ("unet.down_blocks.", "unet.mid_block.", "unet.conv_in.", "id_encoder.dinov2.", "vae.")
    assert not [k for k in changed if k.startswith(frozen)]

    # The trained file runs in the CHOI pipeline.
    sample = train_data.MGIGTrainData(data, size=128).choi[0]
    features = choi.id_features(trained, sample.human_ref, sample.human_ref_mask, sample.object_ref,
                                sample.object_ref_mask)
    detail = preprocess.detail_map(features.canvas.image, features.canvas.mask)
    out = choi.generate(trained, features, detail, sample.interaction_mask, sample.background, steps=1)
    assert out.images[0].shape == sample.background.shape


@pytest.mark.slow
def test_mgig_from_scratch_stage2_on_generated_masks(iamg_run, data, tmp_path):
    masks = tmp_path / "masks"
    rc = cli.main(["train", "masks", "--iamg", str(iamg_run / "final.safetensors"), "--data", str(data),
                   "--out", str(masks), "--steps", "1", "--limit", "2"])
    assert rc == 0 and len(list(masks.glob("*.png"))) == 2
    cfg = config("tiny_mgig.json", data, tmp_path / "mgig2", stage=2, generated_masks=str(masks), data_limit=2,
                 steps=2, checkpoint_every=2, validate_every=2, validation_samples=1, perturb_prob=0.0,
                 latent_scale="auto")
    result = train_cli.train(cfg, progress=False)
    model = load_mgig(result.final)
    # latent_scale "auto": 1/std of the training targets' latents, logged and saved with the model.
    log = [json.loads(line) for line in (tmp_path / "mgig2" / "log.jsonl").read_text().splitlines()]
    scale = next(r["latent_scale"] for r in log if "latent_scale" in r)
    built = train_cli.build_model(cfg)
    ds = loop.build_dataset(cfg, built)
    with torch.no_grad():
        z = torch.cat([built.vae.encode(ds.item(i)["target"][None]).latent_dist.mean for i in range(len(ds))])
    assert scale == pytest.approx(1 / float(z.std()), rel=1e-3) and scale != pytest.approx(0.18215, rel=0.05)
    assert model.latent_scale == scale
    expected = mgig_config("tiny")
    # trained at 128 px: saved with the weights
    expected = replace(expected, image_size=128, vae={**expected.vae, "scaling_factor": scale})
    assert model.config.to_dict() == expected.to_dict()
    assert (tmp_path / "mgig2" / "samples" / "step_000002.png").is_file()

    # Inference feeds the model its training size and returns the official 512² crop.
    seen = []
    predict = model.predict_eps
    model.predict_eps = lambda x, t, context, hint, **kw: seen.append((x.shape, hint.shape)) or \
        predict(x, t, context, hint, **kw)
    sample = train_data.MGIGTrainData(data, size=128).choi[0]
    features = choi.id_features(model, sample.human_ref, sample.human_ref_mask, sample.object_ref,
                                sample.object_ref_mask)
    detail = preprocess.detail_map(features.canvas.image, features.canvas.mask)
    out = choi.generate(model, features, detail, sample.interaction_mask, sample.background, steps=2)
    assert {s[0][-2:] for s in seen} == {(16, 16)} and {s[1][-2:] for s in seen} == {(128, 128)}
    assert out.crops[0].shape == (512, 512, 3) and out.images[0].shape == sample.background.shape


@pytest.mark.slow
def test_mgig_v_prediction_trains_and_samples(data, tmp_path):
    # ★ v-prediction: the loss that drops is the v loss, the file remembers the type, and
    # the pipeline samples it (its ε comes from `samplers.eps_from_v`).
    cfg = config("tiny_mgig.json", data, tmp_path / "v", prediction_type="v_prediction", steps=8, data_limit=1,
                 validate_every=0, checkpoint_every=8, lr=1e-3, id_dropout=0.0, background_dropout=0.0)
    start = train_cli.build_model(cfg)
    assert start.config.prediction_type == "v_prediction"
    items = [train_data.MGIGTrainData(data, size=128, limit=1).item(0)]
    before = fixed_batch_loss(cfg, start, items)
    trained = load_mgig(train_cli.train(cfg, progress=False).final)
    assert trained.config.prediction_type == "v_prediction"
    assert fixed_batch_loss(cfg, trained, items) < before
    # The model's ε is the conversion of its UNet output.
    x = torch.randn(1, trained.latent_channels, 16, 16)
    context = trained.uncond_context(1)
    t = torch.tensor([900])
    with torch.no_grad():
        v = trained.unet_output(x, t, context)
        eps = trained.predict_eps(x, t, context, None)
    assert torch.allclose(eps, samplers.eps_from_v(v, x, trained.alphas_cumprod[t]), atol=1e-6)
    sample = train_data.MGIGTrainData(data, size=128).choi[0]
    features = choi.id_features(trained, sample.human_ref, sample.human_ref_mask, sample.object_ref,
                                sample.object_ref_mask)
    detail = preprocess.detail_map(features.canvas.image, features.canvas.mask)
    out = choi.generate(trained, features, detail, sample.interaction_mask, sample.background, steps=2)
    assert out.images[0].shape == sample.background.shape and np.isfinite(out.images[0]).all()
    with pytest.raises(train_config.ConfigError, match="prediction_type"):
        config("tiny_vae.json", data, tmp_path / "x", prediction_type="v_prediction")
    with pytest.raises(train_config.ConfigError, match="prediction_type"):
        config("tiny_mgig.json", data, tmp_path / "x", prediction_type="x0")


def test_iamg_v_prediction_trains_and_generates(data, tmp_path):
    cfg = config("tiny_iamg.json", data, tmp_path / "iv", prediction_type="v_prediction", steps=12, data_limit=2,
                 validate_every=0, checkpoint_every=12, box_dropout=0.0, text_dropout=0.0)
    ds = train_data.IAMGTrainData(data, size=64, limit=2, tokenize=prompt_text.words_tokenizer())
    items = [ds.item(0), ds.item(1)]
    start = train_cli.build_model(cfg)
    assert start.prediction_type == "v_prediction"
    before = fixed_batch_loss(cfg, start, items)
    trained = load_iamg(train_cli.train(cfg, progress=False).final)
    assert trained.prediction_type == "v_prediction"
    assert fixed_batch_loss(cfg, trained, items) < before
    x = torch.randn(1, *trained.latent_shape)
    cond, t = trained.empty_condition(1), torch.tensor([950])
    context = trained.encode_prompts(["a person"])
    with torch.no_grad():
        eps = trained.predict_eps(x, t, cond, context)
        v = trained.unet_output(x, t, cond, context)
    assert torch.allclose(eps, samplers.eps_from_v(v, x, trained.alphas_cumprod[t]), atol=1e-6)
    result = iamg.generate_mask(trained, prompt=ds.choi[0].caption, background=ds.choi[0].background,
                                box=(8, 8, 40, 48), steps=2)
    assert result.binary.shape == (1, 64, 64) and torch.isfinite(result.soft).all()


def test_vae_trains_and_initialises_iamg(data, tmp_path):
    cfg = config("tiny_vae.json", data, tmp_path / "vae", data_limit=2, validate_every=0)
    items = [train_data.VAETrainData(data, size=64, limit=2).item(i) for i in range(2)]
    before = fixed_batch_loss(cfg, train_cli.build_model(cfg), items)
    result = train_cli.train(cfg, progress=False)
    vae = train_cli.load_vae_file(result.final)
    assert fixed_batch_loss(cfg, vae, items) < 0.8 * before
    model = train_cli.build_model(config("tiny_iamg.json", data, tmp_path / "x", init_vae=str(result.final)))
    assert all(torch.equal(v, vae.state_dict()[k]) for k, v in model.vae.state_dict().items())


@pytest.mark.slow
def test_resume_is_identical_and_checkpoints_are_atomic(data, tmp_path, monkeypatch):
    overrides = dict(steps=4, checkpoint_every=2, validate_every=0, data_limit=2, ema_decay=0.9)
    straight = train_cli.train(config("tiny_iamg.json", data, tmp_path / "A", **overrides), progress=False)

    cfg_b = config("tiny_iamg.json", data, tmp_path / "B", **overrides)
    first = train_cli.train(train_config.make_config({**cfg_b.to_dict(), "max_steps_per_run": 2}), progress=False)
    assert first.step == 2 and first.final is None
    ckpts = tmp_path / "B" / "checkpoints"
    assert (ckpts / "latest").read_text().strip() == "step_000002"
    with pytest.raises(train_config.ConfigError, match="already holds a run"):
        train_cli.train(cfg_b, progress=False)

    # An interruption while saving step 4: the half-written folder stays a temp folder.
    publish = train_runs.RunDir.publish

    def crash(self, tmp, name):
        if name == "step_000004":
            raise KeyboardInterrupt("simulated kill during the checkpoint")
        return publish(self, tmp, name)

    monkeypatch.setattr(train_runs.RunDir, "publish", crash)
    with pytest.raises(KeyboardInterrupt):
        train_cli.train(cfg_b, resume=True, progress=False)
    monkeypatch.setattr(train_runs.RunDir, "publish", publish)
    assert (ckpts / ".tmp_step_000004").is_dir() and not (ckpts / "step_000004").exists()
    assert (ckpts / "latest").read_text().strip() == "step_000002"
    (ckpts / ".tmp_step_000004" / train_runs.TRAINABLE_FILE).write_bytes(b"half-written")  # garbage is ignored

    resumed = train_cli.train(cfg_b, resume=True, progress=False)
    assert resumed.step == 4 and not (ckpts / ".tmp_step_000004").exists()
    assert straight.losses == first.losses + resumed.losses

    a, b = tmp_path / "A" / "checkpoints" / "step_000004", ckpts / "step_000004"
    for name in (train_runs.TRAINABLE_FILE, train_runs.EMA_FILE):
        ta, tb = load_file(a / name), load_file(b / name)
        assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta), name
    oa = torch.load(a / "optimizer.bin", weights_only=True)
    ob = torch.load(b / "optimizer.bin", weights_only=True)
    assert oa["param_groups"] == ob["param_groups"]
    assert all(torch.equal(oa["state"][i][k], ob["state"][i][k]) for i in oa["state"] for k in oa["state"][i])
    fa, fb = load_file(tmp_path / "A" / "final.safetensors"), load_file(tmp_path / "B" / "final.safetensors")
    assert all(torch.equal(fa[k], fb[k]) for k in fa)
    log = [json.loads(line) for line in (tmp_path / "B" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == [1, 2, 3, 4]  # the interrupted steps are not duplicated


def test_grad_checkpointing_changes_nothing_but_memory(data, tmp_path):
    # The IAMG UNet gets activation checkpointing by wrapping its blocks' forward (it has
    # no diffusers switch); gradients must be bitwise those of the plain run.
    runs = {}
    for on in (False, True):
        cfg = config("tiny_iamg.json", data, tmp_path / str(on), steps=2, checkpoint_every=2, validate_every=0,
                     data_limit=2, grad_checkpointing=on)
        runs[on] = (train_cli.train(cfg, progress=False).losses,
                    load_file(tmp_path / str(on) / "checkpoints" / "step_000002" / train_runs.TRAINABLE_FILE))
    assert runs[False][0] == runs[True][0]
    assert all(torch.equal(v, runs[True][1][k]) for k, v in runs[False][1].items())


def test_iamg_text_variant_from_a_released_model(vectors, data, tmp_path):
    # The paper's IAMG from the released network (a file in our format here, converted
    # from the official-format vector): zero-initialised cross-attention, trained alone.
    from interact_custom.weights_manager import official_iamg as oi
    from interact_custom.weights_manager.native_iamg import save_iamg

    ckpt = torch.load(vectors.checkpoint("iamg"), map_location="cpu", weights_only=True)
    released = oi.load_official_iamg(ckpt, text_encoder_num_heads=2)
    init = save_iamg(released, tmp_path / "released.safetensors", dtype="fp32")
    tokenizer = tmp_path / "tokenizer"
    tokenizer.mkdir()
    (tokenizer / "tokenizer.json").write_text(prompt_text.WORDS_TOKENIZER_FILE.read_text(encoding="utf-8"))
    cfg = config("tiny_iamg.json", data, tmp_path / "run", preset=None, init=str(init), text=True,
                 tokenizer_dir=str(tokenizer), trainable=["unet_cross_attention"], steps=2, checkpoint_every=2,
                 validate_every=0, data_limit=2)
    trained = load_iamg(train_cli.train(cfg, progress=False).final)
    assert trained.uses_text and trained.tokenizer is not None
    initial = released.unet.state_dict()
    changed = {k for k, v in trained.unet.state_dict().items() if k not in initial or not torch.equal(v, initial[k])}
    assert changed and all(".cross_attn." in k for k in changed)
    assert {k for k in changed if k.endswith("cross_attn.to_out.0.weight")}


def test_iamg_latent_shift_and_scale_centre_the_training_latents(data, tmp_path):
    cfg = config("tiny_iamg.json", data, tmp_path / "shift", steps=2, checkpoint_every=2, validate_every=0,
                 data_limit=4, latent_shift="auto", latent_scale="auto")
    trained = load_iamg(train_cli.train(cfg, progress=False).final)
    log = [json.loads(line) for line in (tmp_path / "shift" / "log.jsonl").read_text().splitlines()]
    first = log[0]
    assert first["step"] == 0 and trained.latent_shift == first["latent_shift"]
    assert trained.scale_factor == first["latent_scale"]
    # The diffusion latents of the training targets are centred and of unit spread.
    ds = train_data.IAMGTrainData(data, size=64, limit=4, tokenize=prompt_text.words_tokenizer())
    with torch.no_grad():
        z = trained.encode_condition(torch.stack([ds.item(i)["target"] for i in range(4)]))
    assert z.mean((0, 2, 3)).abs().max() < 0.02 and float(z.std()) == pytest.approx(1.0, abs=0.05)
    with pytest.raises(train_config.ConfigError, match="latent_shift"):
        config("tiny_mgig.json", data, tmp_path / "x", latent_shift="auto")
