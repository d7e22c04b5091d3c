"""IAMG-R text encoders: what turns a caption into the vector a bank is ranked by.

* :class:`TextEncoder`, the protocol (``identity`` + ``encode``); the embedding cache in
  `.ranking` is keyed by ``identity``.
* :class:`LexicalEncoder`, the weight-free fallback, and its lexicon: word forms of
  interaction verbs, HOI objects and person words mapped to lemmas, concept groups,
  stop words, light stemming (:func:`lexical_tokens`). These are *matching* tables
  (surface forms -> lemma), not the dataset vocabulary of `pipelines.vocabulary`.
* :class:`CLIPTextEncoder`, the CLIP text model found in the IAMG checkpoint, with its
  state-dict helpers (:func:`clip_text_state_dict`).
* :func:`make_encoder`, choosing one by name (what the CLI and nodes call).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping, Protocol, runtime_checkable

import numpy as np

from ..text import load_clip_tokenizer


# --------------------------------------------------------------------------------------
# Text encoders
# --------------------------------------------------------------------------------------

@runtime_checkable
class TextEncoder(Protocol):
    """Anything that embeds captions. ``identity`` changes whenever the embeddings would."""

    identity: str

    def encode(self, texts: list[str]) -> np.ndarray:  # [N, D] float32
        ...


# Weight-free lexical encoder tables. Each canonical lemma lists the surface forms that
# HOI captions use for it (inflections, spelling variants, everyday synonyms).
_VERB_FORMS = {
    "ride": "ride rides riding rode ridden",
    "kick": "kick kicks kicking kicked",
    "hold": "hold holds holding held grip grips gripping grasp grasps grasping",
    "carry": "carry carries carrying carried",
    "grab": "grab grabs grabbing grabbed",
    "lift": "lift lifts lifting lifted raise raises raising raised",
    "push": "push pushes pushing pushed",
    "pull": "pull pulls pulling pulled drag drags dragging dragged",
    "throw": "throw throws throwing threw thrown toss tosses tossing tossed",
    "catch": "catch catches catching caught",
    "hit": "hit hits hitting strike strikes striking struck",
    "swing": "swing swings swinging swung",
    "sit": "sit sits sitting sat seated",
    "stand": "stand stands standing stood",
    "lie": "lie lies lying lay laying",
    "straddle": "straddle straddles straddling straddled",
    "walk": "walk walks walking walked",
    "run": "run runs running ran",
    "jump": "jump jumps jumping jumped leap leaps leaping leapt hop hops hopping",
    "drive": "drive drives driving drove driven",
    "fly": "fly flies flying flew flown",
    "eat": "eat eats eating ate eaten",
    "drink": "drink drinks drinking drank sip sips sipping",
    "hug": "hug hugs hugging hugged embrace embraces embracing cuddle cuddling",
    "kiss": "kiss kisses kissing kissed",
    "pet": "pet pets petting petted stroke strokes stroking",
    "feed": "feed feeds feeding fed",
    "wash": "wash washes washing washed clean cleans cleaning cleaned",
    "look": "look looks looking watch watches watching watched inspect inspects inspecting "
            "inspected observe observing view viewing",
    "read": "read reads reading",
    "type": "type types typing typed",
    "talk": "talk talks talking call calls calling",
    "cut": "cut cuts cutting slice slices slicing",
    "open": "open opens opening opened",
    "wear": "wear wears wearing wore worn",
    "play": "play plays playing played",
    "board": "board boards boarding boarded",
    "repair": "repair repairs repairing repaired fix fixes fixing fixed",
    "brush": "brush brushes brushing brushed",
    "wave": "wave waves waving waved",
    "point": "point points pointing pointed",
    "lean": "lean leans leaning leaned",
    "row": "row rows rowing rowed paddle paddles paddling",
    "sail": "sail sails sailing sailed",
    "surf": "surf surfs surfing surfed",
    "ski": "ski skis skiing skied",
    "skate": "skate skates skating skated",
    "serve": "serve serves serving served",
    "blow": "blow blows blowing blew",
    "stab": "stab stabs stabbing stabbed",
    "load": "load loads loading loaded",
    "launch": "launch launches launching launched",
    "park": "park parks parking parked",
    "chase": "chase chases chasing chased",
}
_OBJECT_FORMS = {
    "bicycle": "bicycle bicycles bike bikes cycle cycles bmx",
    "motorcycle": "motorcycle motorcycles motorbike motorbikes scooter scooters moped",
    "ball": "ball balls football footballs soccerball basketball basketballs volleyball",
    "horse": "horse horses pony ponies",
    "dog": "dog dogs puppy puppies pup pups",
    "cat": "cat cats kitten kittens kitty",
    "car": "car cars automobile automobiles",
    "airplane": "airplane airplanes aeroplane aeroplanes plane planes aircraft jet jets",
    "boat": "boat boats ship ships canoe canoes kayak kayaks",
    "phone": "phone phones cellphone cellphones smartphone smartphones mobile",
    "laptop": "laptop laptops notebook computer computers",
    "cup": "cup cups mug mugs",
    "couch": "couch couches sofa sofas",
    "chair": "chair chairs seat seats stool stools bench benches",
    "television": "television televisions tv tvs",
    "bag": "bag bags handbag handbags backpack backpacks suitcase suitcases",
    "racket": "racket rackets racquet racquets",
    "skateboard": "skateboard skateboards",
    "surfboard": "surfboard surfboards",
    "umbrella": "umbrella umbrellas",
    "kite": "kite kites",
    "frisbee": "frisbee frisbees",
    "bottle": "bottle bottles",
    "book": "book books",
    "table": "table tables desk desks",
    "truck": "truck trucks lorry lorries",
    "bus": "bus buses",
    "cow": "cow cows cattle",
    "sheep": "sheep lamb lambs",
    "elephant": "elephant elephants",
}
# Person words: every caption has one, so they carry little evidence (half weight).
_PERSON_FORMS = ("person people persons man men woman women boy boys girl girls guy guys lady "
                 "ladies kid kids child children he she him someone player rider human adult")
# Lemmas that describe nearly the same interaction shape share an extra concept token
# (half weight), so "carry" scores above "kick" against "hold" without equalling it.
_CONCEPTS = {
    "grasp": "hold carry grab lift",
    "strike": "hit swing kick",
    "seated": "sit straddle ride",
    "toss": "throw catch",
    "affection": "hug kiss pet",
    "travel": "ride drive fly sail row",
}
_STOPWORDS = set("a an the is are was were be been being am of and to this that these those "
                 "there here it its his her their them photo picture image shows showing show "
                 "depicts depicting while very".split())


def _lexicon() -> tuple[dict[str, str], dict[str, str]]:
    lemma: dict[str, str] = {}
    for canon, forms in {**_VERB_FORMS, **_OBJECT_FORMS}.items():
        for f in forms.split():
            lemma.setdefault(f, canon)
    for f in _PERSON_FORMS.split():
        lemma[f] = "person"
    concept = {l: c for c, ls in _CONCEPTS.items() for l in ls.split()}
    return lemma, concept


_LEMMA, _CONCEPT = _lexicon()
_LEXICON_HASH = hashlib.sha256(json.dumps(
    [_VERB_FORMS, _OBJECT_FORMS, _PERSON_FORMS, _CONCEPTS, sorted(_STOPWORDS)],
    sort_keys=True).encode()).hexdigest()[:12]


def _light_stem(w: str) -> str:
    """Crude suffix stripping for words outside the table (applied to query and bank alike)."""
    def undouble(b: str) -> str:
        return b[:-1] if len(b) > 2 and b[-1] == b[-2] and b[-1] not in "lsz" else b
    if len(w) > 4 and w.endswith("ies"):
        return w[:-3] + "y"
    if len(w) > 5 and w.endswith("ing"):
        return undouble(w[:-3])
    if len(w) > 4 and w.endswith("ed"):
        return undouble(w[:-2])
    if len(w) > 4 and w.endswith(("ches", "shes", "sses", "xes", "zes")):
        return w[:-2]
    if len(w) > 3 and w.endswith("s") and not w.endswith(("ss", "us", "is")):
        return w[:-1]
    return w


def lexical_tokens(text: str) -> list[tuple[str, float]]:
    """(feature, weight) pairs the lexical encoder hashes: lemmas, concepts, trigrams."""
    feats: list[tuple[str, float]] = []
    for w in re.findall(r"[a-z0-9]+", text.lower()):
        if w in _STOPWORDS:
            continue
        lem = _LEMMA.get(w) or _LEMMA.get(_light_stem(w)) or _light_stem(w)
        feats.append(("w:" + lem, 0.5 if lem == "person" else 1.0))
        if lem in _CONCEPT:
            feats.append(("c:" + _CONCEPT[lem], 0.5))
        padded = f"<{w}>"
        feats.extend(("t:" + padded[i:i + 3], 1.0) for i in range(len(padded) - 2))
    return feats


@lru_cache(maxsize=65536)
def _hash_slot(feature: str, dim: int) -> tuple[int, float]:
    # blake2b, not hash(): Python's string hash is salted per process, and the cache
    # files must stay valid across runs.
    h = int.from_bytes(hashlib.blake2b(feature.encode("utf-8"), digest_size=8).digest(), "little")
    return h % dim, (1.0 if (h >> 63) & 1 else -1.0)


class LexicalEncoder:
    """Weight-free caption embedding for when no CLIP text model is available.

    Lower-cases and tokenises on letters/digits, drops stop words, maps each word to a
    lemma through a small built-in table of interaction verbs, HOI objects and person
    words (riding/rides/rode -> ride, bike/bicycle -> bicycle, man/woman -> person; other
    words get light suffix stripping), adds a shared concept token for near-synonymous
    interactions (hold/carry/grab/lift) and character trigrams of the surface words
    (robust to unseen inflections and typos). Word features and trigram features are
    signed-hashed into two ``dim``-sized vectors, each L2-normalised, mixed with weight
    ``trigram_weight`` for the trigram part, and L2-normalised again. Thus "a man rides a
    bike" and "a person is riding the bicycle" share all word features.
    """

    def __init__(self, dim: int = 2048, trigram_weight: float = 0.5):
        if dim < 16:
            raise ValueError(f"LexicalEncoder dim must be >= 16, got {dim}")
        self.dim = int(dim)
        self.trigram_weight = float(trigram_weight)
        self.identity = f"lexical-v1:dim={self.dim}:tri={self.trigram_weight:g}:lex={_LEXICON_HASH}"

    def encode(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), np.float32)
        for n, text in enumerate(texts):
            words = np.zeros(self.dim, np.float64)
            grams = np.zeros(self.dim, np.float64)
            for feat, weight in lexical_tokens(text):
                slot, sign = _hash_slot(feat, self.dim)
                (grams if feat.startswith("t:") else words)[slot] += sign * weight
            v = _unit(words) + self.trigram_weight * _unit(grams)
            out[n] = _unit(v)
        return out


def _unit(v: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(v)
    return v / n if n > 0 else v


def _load_state_dict(source: Any) -> Mapping[str, Any]:
    if isinstance(source, Mapping):
        return source
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"text encoder weights {path} do not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(path))
    import torch
    try:  # mmap: the full IAMG file is ~3 GB and we only need its text encoder
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:
        return torch.load(path, map_location="cpu", weights_only=True)


def clip_text_state_dict(source: Any) -> tuple[dict, Any | None, str]:
    """Extract the HF CLIP text-model tensors from a checkpoint (path or mapping).

    Accepts the official IAMG dict (its ``text_encoder`` entry, keys
    ``transformer.text_model.*``), a Lightning ``state_dict``, or any dict with
    ``*text_model.*`` keys (HF CLIPTextModel / CLIPTextModelWithProjection, safetensors).
    Returns (keys relative to ``text_model.``, text projection or None, its layout:
    "linear" = HF ``text_projection.weight`` [proj, hidden], "matrix" = OpenAI
    ``text_projection`` [hidden, proj]).
    """
    sd = _load_state_dict(source)
    if "text_encoder" in sd and isinstance(sd["text_encoder"], Mapping):
        sd = sd["text_encoder"]
    elif "state_dict" in sd and isinstance(sd["state_dict"], Mapping):
        sd = sd["state_dict"]
    text = {k.split("text_model.", 1)[1]: v for k, v in sd.items()
            if "text_model." in k and not k.endswith("position_ids")}
    if not text:
        sample = ", ".join(list(sd)[:5])
        raise ValueError("no CLIP text-model tensors ('*text_model.*' keys, HF CLIPTextModel naming) "
                         f"in {source if not isinstance(source, Mapping) else 'the given dict'}; "
                         f"first keys: {sample}")
    proj, layout = None, ""
    for k, v in sd.items():
        if k.endswith("text_projection.weight"):
            proj, layout = v, "linear"
        elif k.endswith("text_projection") and proj is None:
            proj, layout = v, "matrix"
    return text, proj, layout


def _fingerprint(tensors: Mapping[str, Any]) -> str:
    # Names, shapes and two full-tensor sums: cheap (no hashing of 500 MB of floats) and
    # any retrained or different checkpoint changes it.
    h = hashlib.sha256()
    for k in sorted(tensors):
        t = tensors[k].detach().double()
        h.update(f"{k}{tuple(t.shape)}{float(t.sum()):.10e}{float(t.abs().sum()):.10e}".encode())
    return h.hexdigest()[:16]


class CLIPTextEncoder:
    """CLIP text features from local files (transformers CLIPTextModel + CLIPTokenizer).

    Tokenisation follows the official FrozenCLIPEmbedder: truncate to ``max_length``
    (77), pad to it with the end token, no attention mask (CLIP's causal mask makes the
    padding irrelevant). The feature is the pooled output: the final-layer-normed hidden
    state at the first end token, the token the official retrieval's ``clip.encode_text``
    reads. ``clip.encode_text`` then multiplies by CLIP's ``text_projection``, which the
    IAMG file does not contain; it is applied when the weights provide it, otherwise the
    768-d pooled feature is used (cosine ranking then differs slightly from the official
    projected dot product). Long captions are truncated (the official code would replace
    them by "a man and a object").
    """

    def __init__(self, text_model, tokenizer, *, projection=None, projection_layout: str = "linear",
                 max_length: int = 77, device="cpu", dtype=None, batch_size: int = 32,
                 identity: str | None = None):
        import torch
        self.device = torch.device(device)
        self.dtype = dtype or torch.float32
        self.model = text_model.to(self.device, self.dtype).eval()
        self.tokenizer = tokenizer
        self.max_length = int(max_length)
        self.batch_size = int(batch_size)
        self.projection = None
        if projection is not None:
            p = projection.detach().to(self.device, self.dtype)
            self.projection = p.t() if projection_layout == "linear" else p  # as [hidden, proj]
        self.identity = identity or (
            f"clip-text:pooled{'+proj' if projection is not None else ''}:len={self.max_length}:"
            f"w={_fingerprint(dict(self.model.state_dict()))}:tok={_tokenizer_hash(tokenizer)}")

    @classmethod
    def from_files(cls, weights: Any, tokenizer_dir: str | os.PathLike, *,
                   num_attention_heads: int | None = None, hidden_act: str = "quick_gelu",
                   max_length: int = 77, device="cpu", dtype=None) -> "CLIPTextEncoder":
        """Build from a checkpoint (see :func:`clip_text_state_dict`) and a tokenizer folder
        holding ``vocab.json`` + ``merges.txt`` (e.g. ComfyUI's ``comfy/sd1_tokenizer``,
        which the nodes find with `comfy_bridge.clip_tokenizer_dir`). Nothing is downloaded.

        The architecture is read from the tensors; the head count is not visible in them:
        ``num_attention_heads`` defaults to hidden/64 (CLIP's 64-dim heads: 12 for ViT-L/14).
        """
        import torch
        from transformers import CLIPTextConfig, CLIPTextModel

        tokenizer = load_clip_tokenizer(tokenizer_dir)
        text, proj, layout = clip_text_state_dict(weights)
        try:
            vocab, hidden = text["embeddings.token_embedding.weight"].shape
            max_pos = text["embeddings.position_embedding.weight"].shape[0]
            inter = text["encoder.layers.0.mlp.fc1.weight"].shape[0]
        except KeyError as e:
            raise ValueError(f"CLIP text weights lack {e.args[0]!r}: not a CLIPTextModel state dict") from None
        layers = 1 + max(int(m.group(1)) for k in text if (m := re.match(r"encoder\.layers\.(\d+)\.", k)))
        if num_attention_heads is None:
            if hidden % 64:
                raise ValueError(f"CLIP text model width {hidden} is not a multiple of 64: pass "
                                 "num_attention_heads explicitly (it cannot be read from the weights)")
            num_attention_heads = hidden // 64
        if len(tokenizer) > vocab:
            raise ValueError(f"tokenizer {tokenizer_dir} has {len(tokenizer)} tokens but the text "
                             f"model's embedding has only {vocab}: they do not belong together")
        config = CLIPTextConfig(
            vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
            num_attention_heads=num_attention_heads, max_position_embeddings=max_pos,
            hidden_act=hidden_act, projection_dim=hidden,
            # Pool at the first end token (the tokenizer pads with it too).
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id)
        model = CLIPTextModel(config)
        # transformers 4 names keys "text_model.*", transformers 5 drops the prefix.
        prefix = "text_model." if any(k.startswith("text_model.") for k in model.state_dict()) else ""
        missing, unexpected = model.load_state_dict({prefix + k: v for k, v in text.items()},
                                                    strict=False, assign=True)
        missing = [k for k in missing if not k.endswith("position_ids")]
        if missing or unexpected:
            raise ValueError(f"CLIP text weights do not match a CLIPTextModel: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}")
        return cls(model.float(), tokenizer, projection=proj, projection_layout=layout,
                   max_length=min(max_length, max_pos), device=device, dtype=dtype or torch.float32)

    def encode(self, texts: list[str]) -> np.ndarray:
        import torch
        chunks = []
        with torch.inference_mode():
            for i in range(0, len(texts), self.batch_size):
                batch = self.tokenizer(list(texts[i:i + self.batch_size]), truncation=True,
                                       max_length=self.max_length, padding="max_length",
                                       return_tensors="pt")
                out = self.model(input_ids=batch["input_ids"].to(self.device))
                feats = out.pooler_output
                if self.projection is not None:
                    feats = feats @ self.projection
                chunks.append(feats.float().cpu().numpy())
        if not chunks:
            dim = self.model.config.hidden_size if self.projection is None else self.projection.shape[1]
            return np.zeros((0, dim), np.float32)
        return np.concatenate(chunks).astype(np.float32)


def _tokenizer_hash(tokenizer) -> str:
    h = hashlib.sha256(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    return h.hexdigest()[:12]


# --------------------------------------------------------------------------------------
# Choosing an encoder
# --------------------------------------------------------------------------------------

def make_encoder(kind: str = "lexical", *, clip_weights: Any = None, tokenizer_dir: Any = None,
                 num_attention_heads: int | None = None, device="cpu") -> TextEncoder:
    """"lexical" (weight-free) or "clip" (needs ``clip_weights`` and ``tokenizer_dir``)."""
    if kind == "lexical":
        return LexicalEncoder()
    if kind == "clip":
        if clip_weights is None or tokenizer_dir is None:
            raise ValueError("the clip encoder needs a weights file (e.g. iamg.pth) and a tokenizer folder "
                             "(vocab.json + merges.txt, e.g. ComfyUI's comfy/sd1_tokenizer)")
        return CLIPTextEncoder.from_files(clip_weights, tokenizer_dir,
                                          num_attention_heads=num_attention_heads, device=device)
    raise ValueError(f"unknown text encoder {kind!r}; choose 'lexical' or 'clip'")

