"""One entry point per model for "a name a user picked": the embedded default or a file
(official or ours). The one place that knows what "embedded" means.

The embedded default is the trained small model shipped in
`weights_manager/default_weights/`; should a file be missing (a stripped install), a
stand-in of the same architecture with seeded random weights is used, and said so.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch

log = logging.getLogger("interact_custom")

# Trained embedded defaults (`<kind>_default.safetensors`), shipped beside this module.
DEFAULT_WEIGHTS_DIR = Path(__file__).resolve().parent / "default_weights"

# The name the nodes list first and the CLI's default; "embedded" is accepted too.
EMBEDDED = "(embedded) default"
EMBEDDED_FILES = {"mgig": DEFAULT_WEIGHTS_DIR / "mgig_default.safetensors",
                  "iamg": DEFAULT_WEIGHTS_DIR / "iamg_default.safetensors"}
EMBEDDED_MGIG_FILE = EMBEDDED_FILES["mgig"]
EMBEDDED_IAMG_FILE = EMBEDDED_FILES["iamg"]
# The stand-in for a missing file: preset and weight seed.
EMBEDDED_PRESETS = {"mgig": "small", "iamg": "small_text"}
EMBEDDED_SEED = 0


def is_embedded(source) -> bool:
    """True for the embedded default's names (`EMBEDDED`, or "embedded")."""
    return str(source) in (EMBEDDED, "embedded")


def embedded_is_random(kind: str = "mgig") -> bool:
    """True when the trained default of this model kind is missing from the package."""
    return not EMBEDDED_FILES[kind].is_file()


def _stand_in_warning(kind: str) -> None:
    log.warning("%s: the trained default is missing from the package; using the '%s' preset with seeded "
                "random weights (seed %d) — outputs are not meaningful images", kind.upper(),
                EMBEDDED_PRESETS[kind], EMBEDDED_SEED)


def load_mgig_model(source: str | Path = EMBEDDED, *, device: str | torch.device = "cpu",
                    dtype: torch.dtype | None = None):
    """MGIG from ``EMBEDDED`` or a file path (official `mgig.ckpt` or our safetensors), in
    ``dtype`` (None: float32 — fp16 files would otherwise run in fp16, many times slower on a CPU)."""
    dtype = dtype or torch.float32
    if not is_embedded(source):
        return _load_mgig_file(source, device, dtype)
    if not embedded_is_random("mgig"):
        return _load_mgig_file(EMBEDDED_FILES["mgig"], device, dtype)
    from ..pipelines.mgig import build_mgig

    _stand_in_warning("mgig")
    return build_mgig(EMBEDDED_PRESETS["mgig"], seed=EMBEDDED_SEED, device=device, dtype=dtype)


def _load_mgig_file(path: str | Path, device, dtype: torch.dtype):
    # `load_mgig` casts the tensors to `dtype` as they are read (`files.read_weights`): an
    # fp16 file loaded as fp32 then peaks at the fp32 model plus one tensor (docs/BENCHMARKS.md).
    from .native_mgig import load_mgig

    return load_mgig(path, device=device, dtype=dtype)


def load_iamg_model(source: str | Path = EMBEDDED, *, device: str | torch.device = "cpu",
                    dtype: torch.dtype | None = None, tokenizer_dir=None, clip_fallback_dir=None):
    """IAMG from ``EMBEDDED`` or a file path (official `iamg.pth` or our safetensors).

    tokenizer_dir: a prompt-tokenizer folder that overrides the one stored with the weights;
    clip_fallback_dir: a CLIP BPE folder for CLIP-vocabulary text models whose file carries
    no tokenizer (the nodes pass ComfyUI's `comfy/sd1_tokenizer`)."""
    from . import native_iamg

    dtype = dtype or torch.float32
    if not is_embedded(source):
        return native_iamg.load_iamg(source, device=device, dtype=dtype, tokenizer_dir=tokenizer_dir,
                                     clip_fallback_dir=clip_fallback_dir)
    if not embedded_is_random("iamg"):
        return native_iamg.load_native_iamg(EMBEDDED_FILES["iamg"], device=device, dtype=dtype,
                                            tokenizer_dir=tokenizer_dir)
    from ..pipelines import iamg
    from ..pipelines.text import resolve_prompt_tokenizer

    _stand_in_warning("iamg")
    preset = EMBEDDED_PRESETS["iamg"]
    tokenizer = None
    if tokenizer_dir is not None:
        tokenizer = resolve_prompt_tokenizer(tokenizer_dir,
                                             vocab_size=iamg.model_preset(preset).text_encoder["vocab_size"])
    # Cross-attention not zeroed, so the prompt matters even untrained.
    return iamg.build_iamg(preset, seed=EMBEDDED_SEED, device=device, dtype=dtype, tokenizer=tokenizer,
                           zero_init_cross_attention=False).requires_grad_(False)
