"""IAMG-R mask retrieval: bank building/loading, encoders, cache, ranking, mask fitting."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from interact_custom.pipelines import retrieval as R

from interact_custom.cli.research import banks
from interact_custom.pipelines.geometry import mask_box

# (id, caption, verb, object, human box, object box) on a 64x64 canvas; boxes y0,y1,x0,x1.
SAMPLES = [
    ("r1", "a man rides a bike down the street", "ride", "bicycle", (8, 40, 20, 32), (30, 56, 10, 44)),
    ("r2", "a woman riding a horse on the beach", "ride", "horse", (4, 30, 24, 36), (24, 60, 6, 58)),
    ("k1", "a boy kicking a soccer ball", "kick", "ball", (6, 58, 10, 26), (48, 58, 30, 40)),
    ("h1", "a girl holding a cat in her arms", "hold", "cat", (2, 62, 20, 40), (20, 34, 24, 44)),
    ("c1", "a man carrying a surfboard", "carry", "surfboard", (10, 60, 30, 44), (4, 62, 40, 48)),
    ("s1", "a person sitting on a bench", "sit_on", "chair", (10, 50, 20, 36), (30, 56, 14, 54)),
]


def _rect(box, size=64):
    m = np.zeros((size, size), np.uint8)
    y0, y1, x0, x1 = box
    m[y0:y1, x0:x1] = 255
    return m


def _sources():
    return [banks.BankSource(id=i, caption=c, verb=v, object=o, human_mask=_rect(hb), object_mask=_rect(ob))
            for i, c, v, o, hb, ob in SAMPLES]


@pytest.fixture(autouse=True)
def _user_cache(tmp_path, monkeypatch):
    # The embedding cache goes to the user cache folder (`paths.cache_dir`); keep it per test.
    monkeypatch.setenv("INTERACT_CUSTOM_CACHE", str(tmp_path / "cache"))


@pytest.fixture()
def bank(tmp_path):
    return banks.build_bank(None, tmp_path / "bank", sources=_sources())


class CountingEncoder:
    """Wraps an encoder and records how many texts it embedded."""

    def __init__(self, inner):
        self.inner, self.identity, self.calls = inner, inner.identity, []

    def encode(self, texts):
        self.calls.append(len(texts))
        return self.inner.encode(texts)


# ----------------------------------------------------------------------------- bank


def test_build_bank_crops_union_to_its_bbox(bank):
    assert len(bank) == len(SAMPLES)
    assert "sit on chair" in bank.categories and "ride bicycle" in bank.categories
    for (sid, _, _, _, hb, ob), entry in zip(SAMPLES, bank.entries):
        union = np.maximum(_rect(hb), _rect(ob)) > 0
        box = mask_box(union)
        np.testing.assert_array_equal(bank.load_mask(entry) > 0.5, union[box.slices])
        # parts are cropped with the union's box, so they stay aligned with it
        human = bank.load_mask(entry, "human_mask") > 0.5
        np.testing.assert_array_equal(human, (_rect(hb) > 0)[box.slices])


def test_build_bank_from_choi_dataset(tmp_path):
    dataset = pytest.importorskip("interact_custom.cli.research.data.dataset")
    rgb = np.full((64, 64, 3), 128, np.uint8)
    with dataset.ChoiWriter(tmp_path / "ds") as w:
        for sid, cap, verb, obj, hb, ob in SAMPLES[:3]:
            w.add(sid, caption=cap, verb=verb, object_category=obj, target=rgb,
                  human_mask=_rect(hb), object_mask=_rect(ob), human_ref=rgb, human_ref_mask=_rect(hb),
                  object_ref=rgb, object_ref_mask=_rect(ob))
    bank = banks.build_bank(tmp_path / "ds", tmp_path / "bank")
    assert [e.id for e in bank.entries] == ["r1", "r2", "k1"]
    assert (bank.root / bank.entries[0].image).resolve() == (tmp_path / "ds/samples/r1/target.png").resolve()
    with pytest.raises(FileExistsError, match="overwrite"):
        banks.build_bank(tmp_path / "ds", tmp_path / "bank")

    from interact_custom.cli import main
    assert main(["bank", "build", "--dataset", str(tmp_path / "ds"), "--out", str(tmp_path / "b2")]) == 0
    assert R.MaskBank.load(tmp_path / "b2").categories == ["kick ball", "ride bicycle", "ride horse"]


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="bank.json or bank.jsonl"):
        R.MaskBank.load(tmp_path)
    (tmp_path / "bank.json").write_text(json.dumps({"entries": []}))
    with pytest.raises(ValueError, match="empty"):
        R.MaskBank.load(tmp_path)
    (tmp_path / "bank.json").unlink()
    (tmp_path / "bank.jsonl").write_text(json.dumps(
        {"id": "a", "caption": "x", "category": "ride horse", "mask": "masks/a.png"}) + "\n")
    with pytest.raises(FileNotFoundError, match=r"'a'.*masks/a.png"):
        R.MaskBank.load(tmp_path)


def test_empty_bank_and_unknown_category(bank):
    enc = R.LexicalEncoder()
    with pytest.raises(ValueError, match="empty"):
        R.retrieve(R.MaskBank(bank.root, []), "a person riding", encoder=enc)
    with pytest.raises(ValueError, match=r"unknown HOI category 'fly kite'.*known categories: "
                                         r"carry surfboard, hold cat, kick ball, ride bicycle"):
        R.retrieve(bank, "a person flying a kite", encoder=enc, category="fly kite")


# ----------------------------------------------------------------------------- lexical retrieval


@pytest.mark.parametrize("query, expected", [
    ("a person is riding the bicycle", "r1"),
    ("someone on a horse, riding", "r2"),
    ("kid kicks a football", "k1"),
    ("a lady holds a kitten", "h1"),
    ("guy carries his surfboard", "c1"),
    ("a woman sits on a chair", "s1"),
])
def test_lexical_paraphrases_retrieve_the_right_mask(bank, query, expected):
    cands = R.retrieve(bank, query, encoder=R.LexicalEncoder(), top_k=3)
    assert cands[0].id == expected
    assert cands[0].score > cands[1].score
    entry = next(e for e in bank.entries if e.id == expected)
    np.testing.assert_array_equal(cands[0].mask, bank.load_mask(entry))
    assert cands[0].mask.dtype == np.float32 and cands[0].mask.max() == 1.0


def test_lexical_encoder_paraphrase_scores_high():
    e = R.LexicalEncoder()
    a, b, c = e.encode(["a man rides a bike", "a person is riding the bicycle", "a man kicks a ball"])
    assert np.isclose(np.linalg.norm(a), 1.0) and a.shape == (2048,)
    assert a @ b > 0.7 > 0.2 > a @ c
    assert e.identity == R.LexicalEncoder().identity != R.LexicalEncoder(dim=1024).identity


def test_category_filter(bank):
    enc = R.LexicalEncoder()
    cands = R.retrieve(bank, "a person is riding the bicycle", encoder=enc, category="Ride_Horse")
    assert [c.id for c in cands] == ["r2"] and cands[0].category == "ride horse"
    cands = R.retrieve(bank, "a person is riding", encoder=enc, category="ride bicycle", top_k=10)
    assert [c.id for c in cands] == ["r1"]


def test_dot_similarity_is_official_unnormalised_score(bank):
    enc = R.LexicalEncoder()  # unit vectors: dot == cosine
    cos = R.retrieve(bank, "a boy kicks a ball", encoder=enc, top_k=6)
    dot = R.retrieve(bank, "a boy kicks a ball", encoder=enc, top_k=6, similarity="dot")
    assert [c.id for c in cos] == [c.id for c in dot]
    np.testing.assert_allclose([c.score for c in cos], [c.score for c in dot], atol=1e-6)


def test_tie_break_by_id(tmp_path):
    srcs = [banks.BankSource(id=i, caption="a person holding an umbrella", verb="hold", object="umbrella",
                         human_mask=_rect((0, 10, 0, 5)), object_mask=_rect((0, 4, 5, 12)))
            for i in ("b2", "a9", "b1")]
    bank = banks.build_bank(None, tmp_path / "bank", sources=srcs)
    for _ in range(2):
        cands = R.retrieve(bank, "someone holds an umbrella", encoder=R.LexicalEncoder())
        assert [c.id for c in cands] == ["a9", "b1", "b2"]
        assert [c.rank for c in cands] == [1, 2, 3]
        # identical captions; BLAS may still differ in the last bit, hence the tie rounding
        assert np.ptp([c.score for c in cands]) < 1e-9


# ----------------------------------------------------------------------------- cache


def test_embedding_cache_reused_and_rebuilt_when_index_changes(bank):
    enc = CountingEncoder(R.LexicalEncoder())
    R.retrieve(bank, "a man riding a bike", encoder=enc)
    assert enc.calls == [1, len(SAMPLES)]  # the query first: it is checked before the bank is embedded
    cache_files = sorted(p.suffix for p in R.bank_cache_dir(bank).iterdir())
    assert cache_files == [".json", ".npy"]
    R.retrieve(R.MaskBank.load(bank.root), "a man riding a bike", encoder=enc)
    assert enc.calls == [1, len(SAMPLES), 1]  # bank embeddings came from the cache

    index = json.loads((bank.root / "bank.json").read_text())
    index["entries"][2]["caption"] = "a man is riding a red bicycle"
    (bank.root / "bank.json").write_text(json.dumps(index))
    changed = R.MaskBank.load(bank.root)
    cands = R.retrieve(changed, "a man riding a red bicycle", encoder=enc)
    assert enc.calls[-2:] == [1, len(SAMPLES)]  # re-embedded the bank
    assert cands[0].id == "k1"
    meta = json.loads(next(R.bank_cache_dir(bank).glob("*.json")).read_text())
    assert meta["index_hash"] == changed.index_hash and meta["encoder"] == enc.identity

    other = CountingEncoder(R.LexicalEncoder(dim=512))  # another encoder: own cache file
    R.retrieve(changed, "x", encoder=other)
    assert other.calls == [1, len(SAMPLES)]
    assert len(list(R.bank_cache_dir(bank).glob("*.npy"))) == 2


# ----------------------------------------------------------------------------- fit_mask_to_box


def test_fit_mask_keep_aspect_and_stretch():
    mask = np.ones((10, 20), np.float32)  # h=10, w=20
    out = R.fit_mask_to_box(mask, (5, 2, 40, 40), (50, 60))
    assert out.shape == (50, 60) and out.dtype == np.float32
    expect = np.zeros((50, 60), np.float32)
    expect[2 + 10:2 + 30, 5:45] = 1.0  # scaled x2 to 20x40, centred vertically in the box
    np.testing.assert_array_equal(out, expect)

    out = R.fit_mask_to_box(mask, (5, 2, 40, 40), (50, 60), mode="stretch")
    expect = np.zeros((50, 60), np.float32)
    expect[2:42, 5:45] = 1.0
    np.testing.assert_array_equal(out, expect)


def test_fit_mask_crops_content_clips_and_validates():
    mask = np.zeros((30, 30), np.uint8)
    mask[10:20, 5:10] = 255  # content 10 tall, 5 wide
    out = R.fit_mask_to_box(mask, (0, 0, 10, 20), (20, 10), resample="nearest")
    np.testing.assert_array_equal(out, np.ones((20, 10), np.float32))
    # box half outside the canvas: the visible part is placed, the rest clipped
    out = R.fit_mask_to_box(np.ones((4, 4)), (-2, -2, 4, 4), (6, 6))
    assert out[:2, :2].min() == 1.0 and out.sum() == 4.0
    with pytest.raises(ValueError, match="empty"):
        R.fit_mask_to_box(np.zeros((8, 8)), (0, 0, 4, 4), (8, 8))
    with pytest.raises(ValueError, match="positive width"):
        R.fit_mask_to_box(np.ones((8, 8)), (0, 0, 0, 4), (8, 8))
    with pytest.raises(ValueError, match="mode"):
        R.fit_mask_to_box(np.ones((8, 8)), (0, 0, 4, 4), (8, 8), mode="cover")


def test_candidates_grid(bank):
    cands = R.retrieve(bank, "a person is riding the bicycle", encoder=R.LexicalEncoder(), top_k=5)
    grid = R.candidates_grid(cands, cell=64, columns=3, label_height=24)
    assert grid.dtype == np.uint8 and grid.shape == (2 * (64 + 24), 3 * 64, 3)
    assert grid[4:60, 4:60].max() == 255  # first mask drawn white
    label = grid[64:88, :64]
    assert (np.abs(label.astype(int) - 24).sum(-1) > 100).any()  # score text drawn


# ----------------------------------------------------------------------------- CLIP encoder

LETTERS = "abcdefghijklmnopqrstuvwxyz"


def _tiny_tokenizer(folder):
    """A minimal CLIP BPE tokenizer: single letters (+ end-of-word forms), one merge."""
    folder.mkdir()
    tokens = (["<|startoftext|>", "<|endoftext|>"] + list(LETTERS) + [c + "</w>" for c in LETTERS]
              + [",", ",</w>", ".", ".</w>", "in", "ing</w>"])
    vocab = {t: i for i, t in enumerate(tokens)}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\ni n\nin g</w>\n")
    return folder, len(vocab)


def _tiny_clip_checkpoint(path, vocab_size, *, projection=False):
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    model = CLIPTextModel(CLIPTextConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=2,
                                         max_position_embeddings=77, bos_token_id=0, eos_token_id=1,
                                         pad_token_id=1))
    # the official IAMG layout: {"text_encoder": {"transformer.text_model.*": ...}}
    sd = {"transformer.text_model." + k.removeprefix("text_model."): v for k, v in model.state_dict().items()}
    if projection:
        sd["transformer.text_projection.weight"] = torch.randn(16, 32)
    torch.save({"text_encoder": sd, "iters": 0}, path)
    return model, sd


def test_clip_encoder_pooled_eos_features_and_retrieval(tmp_path, bank):
    tok_dir, n_vocab = _tiny_tokenizer(tmp_path / "tok")
    model, _ = _tiny_clip_checkpoint(tmp_path / "iamg.pth", n_vocab)
    enc = R.CLIPTextEncoder.from_files(tmp_path / "iamg.pth", tok_dir, num_attention_heads=2)
    feats = enc.encode(["a man riding", "a dog, sitting."])
    assert feats.shape == (2, 32) and feats.dtype == np.float32

    # reference: the reference model's hidden state at the first end token (the official
    # FrozenCLIPEmbedder pooled output), inputs padded to 77 with the end token
    ids = enc.tokenizer(["a man riding"], truncation=True, max_length=77, padding="max_length",
                        return_tensors="pt")["input_ids"]
    assert ids.shape == (1, 77) and ids[0, 0] == 0 and (ids[0] == 1).any()
    assert ids[0].tolist()[-3:] == [1, 1, 1]
    with torch.no_grad():
        hidden = model(input_ids=ids).last_hidden_state
    eos = int((ids[0] == 1).nonzero()[0])
    np.testing.assert_allclose(feats[0], hidden[0, eos].numpy(), rtol=1e-5, atol=1e-6)

    runs = [R.retrieve(bank, "a person is riding the bicycle", encoder=enc, top_k=6) for _ in range(2)]
    assert [c.id for c in runs[0]] == [c.id for c in runs[1]]
    scores = np.array([c.score for c in runs[0]])
    assert np.all(scores <= 1.0 + 1e-6) and np.all(scores >= -1.0 - 1e-6)
    assert np.all(np.diff(scores) <= 1e-6)
    assert len(list(R.bank_cache_dir(bank).glob("*.npy"))) == 1
    again = R.CLIPTextEncoder.from_files(tmp_path / "iamg.pth", tok_dir, num_attention_heads=2)
    assert again.identity == enc.identity


def test_clip_encoder_projection_and_errors(tmp_path):
    tok_dir, n_vocab = _tiny_tokenizer(tmp_path / "tok")
    model, sd = _tiny_clip_checkpoint(tmp_path / "proj.pth", n_vocab, projection=True)
    enc = R.CLIPTextEncoder.from_files(tmp_path / "proj.pth", tok_dir, num_attention_heads=2)
    plain = R.CLIPTextEncoder.from_files({k: v for k, v in sd.items() if "projection" not in k},
                                         tok_dir, num_attention_heads=2)
    assert enc.identity != plain.identity
    np.testing.assert_allclose(enc.encode(["a cat"]),
                               plain.encode(["a cat"]) @ sd["transformer.text_projection.weight"].numpy().T,
                               rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="num_attention_heads"):
        R.CLIPTextEncoder.from_files(tmp_path / "proj.pth", tok_dir)
    with pytest.raises(ValueError, match="text_model"):
        R.CLIPTextEncoder.from_files({"model": {"x.weight": torch.zeros(1)}}, tok_dir)
    with pytest.raises(FileNotFoundError, match="merges.txt"):
        R.CLIPTextEncoder.from_files(tmp_path / "proj.pth", tmp_path, num_attention_heads=2)


def test_clip_encoder_loads_official_iamg_text_encoder(vectors, tmp_path):
    cfg = vectors.part("iamg")["notes"]["text_encoder_config"]
    tok_dir, _ = _tiny_tokenizer(tmp_path / "tok")
    enc = R.CLIPTextEncoder.from_files(vectors.checkpoint("iamg"), tok_dir,
                                       num_attention_heads=cfg["num_attention_heads"],
                                       hidden_act=cfg["hidden_act"])
    feats = enc.encode(["a person riding a horse", "a person kicking a ball"])
    assert feats.shape == (2, cfg["hidden_size"]) and np.isfinite(feats).all()
    assert not np.allclose(feats[0], feats[1])


# ----------------------------------------------------------------------------- CLI


def test_cli_bank_query(bank, capsys, tmp_path):
    from interact_custom.cli import main

    grid = tmp_path / "grid.png"
    rc = main(["bank", "query", "--bank", str(bank.root), "--text", "a kid kicks the ball",
               "--top-k", "2", "--grid", str(grid)])
    out = capsys.readouterr().out.splitlines()
    assert rc == 0
    assert out[1].split()[:3][0] == "1" and out[1].split()[2] == "k1"
    assert len([l for l in out if l.strip()[:1].isdigit()]) == 2
    assert Image.open(grid).size == (2 * 192, 192 + 30)
    rc = main(["bank", "query", "--bank", str(bank.root), "--text", "x", "--category", "nope"])
    assert rc == 1 and "known categories" in capsys.readouterr().err
