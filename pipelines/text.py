"""Text: the prompt tokenizers and the CLIP text-encoder configuration, shared by the
★ text-conditioned IAMG and IAMG-R's CLIP encoder.

Nothing is downloaded: a tokenizer is files — the word-level one shipped with the
package (`words_tokenizer`), the files stored in a weight file's metadata, or a CLIP
BPE folder (``vocab.json`` + ``merges.txt``) the user or the host application names.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import torch

from .paths import WORDS_TOKENIZER_FILE


# CLIP's context length: the official FrozenCLIPEmbedder truncates/pads to 77 tokens.
TEXT_MAX_LENGTH = 77
# Token-embedding rows of CLIP ViT-L/14's text model (the BPE vocabulary).
CLIP_VOCAB_SIZE = 49408
# The word-level tokenizer shipped with the package (small presets). Its vocabulary is
# FROZEN: trained weights index its rows, so words may only ever be appended.
# Token-embedding rows of the small presets: the shipped vocabulary (~840 words) with
# room to append words without changing the weights' shapes.
WORDS_VOCAB_CAPACITY = 1024
# Stored with a trained word-level tokenizer's files (and so in the model file's metadata):
# the words of the captions the model was trained on (`PromptTokenizer.trained_words`).
TRAINED_WORDS_FILE = "trained_words.json"


class PromptTokenizer:
    """Prompt → token ids [B, 77] the way the official FrozenCLIPEmbedder tokenises:
    start token, the prompt's tokens, end token; truncated to 77 (the end token kept) and
    padded with the end token. Two kinds, each fully defined by its files (``files``:
    name → text, so a saved model can carry its tokenizer, see `native_iamg`):

    - ``"clip_bpe"``: ``vocab.json`` + ``merges.txt`` — CLIP ViT-L/14's BPE (49 408
      tokens, e.g. ComfyUI's ``comfy/sd1_tokenizer``), run by transformers'
      CLIPTokenizer; for the full-size presets.
    - ``"words"``: ``tokenizer.json``, a `tokenizers` WordLevel tokenizer (NFKC, lower
      case, split on whitespace and punctuation, unknown words → ``<|unk|>``,
      ``<|startoftext|>`` = 0, ``<|endoftext|>`` = 1). The package ships one
      (`words_tokenizer`) so the small presets work and train without any download.
    """

    CLIP_FILES = ("vocab.json", "merges.txt")
    WORDS_FILE = "tokenizer.json"

    def __init__(self, files: Mapping[str, str], *, source: str = "", max_length: int = TEXT_MAX_LENGTH,
                 _clip=None):
        self.files = {str(k): str(v) for k, v in files.items()}
        self.source = source or "embedded files"
        self.max_length = int(max_length)
        if all(n in self.files for n in self.CLIP_FILES):
            self.kind = "clip_bpe"
            if _clip is None:
                with tempfile.TemporaryDirectory(prefix="iamg_tok_") as tmp:
                    for name in self.CLIP_FILES:
                        Path(tmp, name).write_text(self.files[name], encoding="utf-8")
                    _clip = load_clip_tokenizer(tmp)
            self._tok = _clip
            self.vocab_size = len(_clip)
        elif self.WORDS_FILE in self.files:
            from tokenizers import Tokenizer

            self.kind = "words"
            try:
                tok = Tokenizer.from_str(self.files[self.WORDS_FILE])
            except Exception as e:  # tokenizers raises its own exception type
                raise ValueError(f"tokenizer ({self.source}): {self.WORDS_FILE} is not a `tokenizers` "
                                 f"JSON file: {e}") from e
            start, end = tok.token_to_id("<|startoftext|>"), tok.token_to_id("<|endoftext|>")
            if start is None or end is None:
                raise ValueError(f"tokenizer ({self.source}): {self.WORDS_FILE} lacks the "
                                 "<|startoftext|>/<|endoftext|> tokens of a prompt tokenizer")
            # Set here, not trusted from the file: the behaviour must match CLIP's.
            tok.enable_truncation(self.max_length)
            tok.enable_padding(length=self.max_length, pad_id=end, pad_token="<|endoftext|>")
            self._tok = tok
            self.vocab_size = tok.get_vocab_size()
        else:
            raise ValueError(f"tokenizer ({self.source}): expected {' + '.join(self.CLIP_FILES)} "
                             f"(CLIP BPE) or {self.WORDS_FILE} (word level); found {sorted(self.files) or 'nothing'}")

    @classmethod
    def from_folder(cls, folder: str | os.PathLike, *, max_length: int = TEXT_MAX_LENGTH) -> "PromptTokenizer":
        """A tokenizer folder: ``vocab.json`` + ``merges.txt`` (CLIP) or ``tokenizer.json``
        (word level). Nothing is downloaded."""
        d = Path(folder)
        if not d.is_dir():
            raise FileNotFoundError(f"tokenizer folder {d} does not exist")
        if all((d / n).is_file() for n in cls.CLIP_FILES):
            files = {n: (d / n).read_text(encoding="utf-8") for n in cls.CLIP_FILES}
            return cls(files, source=str(d), max_length=max_length, _clip=load_clip_tokenizer(d))
        if (d / cls.WORDS_FILE).is_file():
            return cls({cls.WORDS_FILE: (d / cls.WORDS_FILE).read_text(encoding="utf-8")}, source=str(d),
                       max_length=max_length)
        raise FileNotFoundError(f"tokenizer folder {d} holds neither {' + '.join(cls.CLIP_FILES)} (CLIP BPE) "
                                f"nor {cls.WORDS_FILE} (word level)")

    def __call__(self, prompts: Sequence[str]) -> torch.Tensor:
        if isinstance(prompts, str):
            prompts = [prompts]
        prompts = [str(p) for p in prompts]
        if self.kind == "clip_bpe":
            return self._tok(prompts, truncation=True, max_length=self.max_length, padding="max_length",
                             return_tensors="pt")["input_ids"]
        return torch.tensor([e.ids for e in self._tok.encode_batch(prompts)], dtype=torch.long)

    def __len__(self) -> int:
        return self.vocab_size

    def unknown_words(self, prompt: str) -> tuple[list[str], int] | None:
        """(the words of ``prompt`` outside the vocabulary, as written, in order; the number
        of words) for the word-level tokenizer: such words become ``<|unk|>`` and carry no
        meaning. None for CLIP's BPE, which spells any text."""
        if self.kind != "words":
            return None
        prompt = str(prompt)
        unk = self._tok.token_to_id("<|unk|>")
        enc = self._tok.encode(prompt)
        spans = [(i, span) for i, span, m in zip(enc.ids, enc.offsets, enc.attention_mask) if m][1:-1]  # no start / end
        return [prompt[a:b] for i, (a, b) in spans if i == unk], len(spans)

    def words(self, prompt: str) -> list[str]:
        """The words of ``prompt`` as the word-level tokenizer reads them (normalised, in
        its vocabulary; punctuation left out); [] for CLIP's BPE."""
        if self.kind != "words":
            return []
        unk = self._tok.token_to_id("<|unk|>")
        enc = self._tok.encode(str(prompt))
        return [t for i, t, m in zip(enc.ids, enc.tokens, enc.attention_mask)
                if m and i != unk and t.isalpha() and not t.startswith("<|")]

    @property
    def trained_words(self) -> frozenset[str] | None:
        """The words of the captions the model was trained on, when `train` recorded them
        with the tokenizer (`with_trained_words`); None otherwise."""
        text = self.files.get(TRAINED_WORDS_FILE)
        return None if text is None else frozenset(json.loads(text))

    def with_trained_words(self, captions: Iterable[str]) -> "PromptTokenizer":
        """This tokenizer with the words of ``captions`` recorded as trained (added to those
        already recorded), so the model's file says which words it has learned; itself for
        CLIP's BPE (which has no word list)."""
        if self.kind != "words":
            return self
        words = set(self.trained_words or ())
        for caption in captions:
            words.update(self.words(caption))
        files = {**self.files, TRAINED_WORDS_FILE: json.dumps(sorted(words))}
        return PromptTokenizer(files, source=self.source, max_length=self.max_length)

    def untrained_words(self, prompt: str) -> list[str]:
        """The words of ``prompt`` in the vocabulary but in none of the training captions
        (`trained_words`): the model has not learned what they mean. [] when not recorded."""
        trained = self.trained_words
        if trained is None:
            return []
        return list(dict.fromkeys(w for w in self.words(prompt) if w not in trained))

    def closest_words(self, word: str, n: int = 2, among: Iterable[str] | None = None) -> list[str]:
        """Words of the vocabulary (or of ``among``) spelled most like ``word`` (for a suggestion)."""
        import difflib

        if self.kind != "words":
            return []
        vocab = [w for w in (self._tok.get_vocab() if among is None else among) if not w.startswith("<|")]
        return difflib.get_close_matches(word.lower(), vocab, n=n, cutoff=0.75)

    def __repr__(self) -> str:
        return f"PromptTokenizer({self.kind}, {self.vocab_size} tokens, from {self.source})"


def words_tokenizer() -> PromptTokenizer:
    """The word-level prompt tokenizer shipped with the package (small presets)."""
    return PromptTokenizer({PromptTokenizer.WORDS_FILE: WORDS_TOKENIZER_FILE.read_text(encoding="utf-8")},
                           source=f"the package's {WORDS_TOKENIZER_FILE.name}")


def resolve_prompt_tokenizer(tokenizer_dir: str | os.PathLike | None = None, *,
                             embedded: Mapping[str, str] | None = None, vocab_size: int | None = None,
                             clip_fallback_dir: str | os.PathLike | None = None,
                             what: str = "IAMG text encoder") -> PromptTokenizer:
    """Find the tokenizer for a text encoder with ``vocab_size`` token rows, in order:

    1. ``tokenizer_dir``, an explicit folder (`PromptTokenizer.from_folder`);
    2. ``embedded``, the files stored with our safetensors (metadata ``tokenizer``);
    3. for a CLIP-vocabulary encoder, ``clip_fallback_dir``: a CLIP ViT-L/14 BPE folder
       the host application offers (the nodes pass ComfyUI's ``comfy/sd1_tokenizer``);
    4. otherwise a `FileNotFoundError` saying what to pass.

    The tokenizer must not produce ids beyond the embedding (checked).
    """
    tok = None
    if tokenizer_dir is not None:
        tok = PromptTokenizer.from_folder(tokenizer_dir)
    elif embedded:
        tok = PromptTokenizer(embedded, source="the weight file's metadata")
    elif vocab_size == CLIP_VOCAB_SIZE and clip_fallback_dir is not None:
        tok = PromptTokenizer.from_folder(clip_fallback_dir)
    if tok is None:
        kind = ("a CLIP BPE folder (vocab.json + merges.txt, e.g. ComfyUI's comfy/sd1_tokenizer)"
                if vocab_size in (None, CLIP_VOCAB_SIZE) else
                "the tokenizer folder it was trained with (tokenizer.json or vocab.json + merges.txt)")
        raise FileNotFoundError(f"{what}: no prompt tokenizer found — the weights carry none and no CLIP "
                                f"tokenizer folder was offered. Pass tokenizer_dir= {kind}.")
    if vocab_size is not None and len(tok) > vocab_size:
        raise ValueError(f"{what}: tokenizer from {tok.source} has {len(tok)} tokens but the text encoder "
                         f"embeds only {vocab_size}: they do not belong together")
    return tok


def load_clip_tokenizer(tokenizer_dir: str | os.PathLike):
    """A CLIPTokenizer from a local folder with vocab.json + merges.txt (never downloads)."""
    from transformers import CLIPTokenizer

    d = Path(tokenizer_dir)
    missing = [n for n in ("vocab.json", "merges.txt") if not (d / n).is_file()]
    if missing:
        raise FileNotFoundError(f"CLIP tokenizer folder {d} lacks {', '.join(missing)} "
                                "(expected a CLIP BPE tokenizer, e.g. ComfyUI's comfy/sd1_tokenizer)")
    return CLIPTokenizer.from_pretrained(str(d), local_files_only=True)


def clip_text_config(*, vocab_size: int, hidden_size: int, intermediate_size: int, num_hidden_layers: int,
                     num_attention_heads: int, bos_token_id: int, eos_token_id: int) -> dict:
    """transformers `CLIPTextConfig` kwargs (OpenAI CLIP: quick-GELU, 77 positions, the
    end token doubles as padding)."""
    return {"vocab_size": vocab_size, "hidden_size": hidden_size, "intermediate_size": intermediate_size,
            "num_hidden_layers": num_hidden_layers, "num_attention_heads": num_attention_heads,
            "max_position_embeddings": TEXT_MAX_LENGTH, "hidden_act": "quick_gelu",
            "bos_token_id": bos_token_id, "eos_token_id": eos_token_id, "pad_token_id": eos_token_id}
