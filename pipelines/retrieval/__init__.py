"""IAMG-R: interaction-mask retrieval from a bank of captioned masks (docs/METHOD.md §3).

The official IAMG-R keeps HICO-DET masks with LLaVA captions, embeds the query caption
with CLIP ViT-L/14 (`clip.encode_text`), scores it against the bank captions of the
requested HOI category with an *unnormalised* dot product and returns the union of the
arg-max entry's human and object masks. Ours (★) generalises that:

* `.bank` — the mask-bank folder format (``bank.json``/``bank.jsonl`` + PNG masks),
  loading it (confined to the bank folder, with size limits); `find_banks` lists the
  banks in a set of folders, `bank_choices` / `chosen_bank` the ones a user may pick by
  name (building one: `cli/research/banks.py`);
* `.encoders` — caption embedding: the CLIP text model found in the IAMG checkpoint
  (:class:`CLIPTextEncoder`) or a weight-free lexical fallback (:class:`LexicalEncoder`);
* `.ranking` — bank embeddings (cached in the caller's cache folder or the user cache
  folder, `paths.cache_dir`: ``$INTERACT_CUSTOM_CACHE``, ``$XDG_CACHE_HOME/interact_custom``
  or ``~/.cache/interact_custom``; never in the bank folder; size-capped), ranking (cosine,
  or ``similarity="dot"`` for the official score), fitting a mask into a box, a preview
  grid of the candidates.

This package re-exports the public API (``from interact_custom.pipelines import
retrieval``; ``retrieval.retrieve(...)``). CLI: ``python -m interact_custom bank
build|query`` (``cli/bank.py``).
"""
from .bank import (BANK_FORMAT, BANK_VERSION, INDEX_NAMES, MAX_BANK_ENTRIES, MAX_INDEX_BYTES, MAX_MASK_PIXELS,
                   BankEntry, MaskBank, MaskImageError, bank_choices, chosen_bank, find_banks,
                   load_mask_png, normalize_category, save_mask_png, write_index)
from .encoders import (CLIPTextEncoder, LexicalEncoder, TextEncoder, clip_text_state_dict, lexical_tokens,
                       make_encoder)
from .ranking import (CACHE_DIR, CACHE_MAX_BYTES, TIE_DECIMALS, Candidate, bank_cache_dir, bank_embeddings,
                      candidates_grid, fit_mask_to_box, retrieve)

__all__ = [
    # bank
    "BANK_FORMAT", "BANK_VERSION", "INDEX_NAMES", "MAX_BANK_ENTRIES", "MAX_INDEX_BYTES", "MAX_MASK_PIXELS",
    "BankEntry", "MaskBank", "MaskImageError", "bank_choices", "chosen_bank", "find_banks",
    "load_mask_png", "normalize_category", "save_mask_png", "write_index",
    # encoders
    "CLIPTextEncoder", "LexicalEncoder", "TextEncoder", "clip_text_state_dict", "lexical_tokens", "make_encoder",
    # retrieve
    "CACHE_DIR", "CACHE_MAX_BYTES", "TIE_DECIMALS", "Candidate", "bank_cache_dir", "bank_embeddings",
    "candidates_grid", "fit_mask_to_box", "retrieve",
]
