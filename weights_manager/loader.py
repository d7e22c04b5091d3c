"""One entry point per model for "a name a user picked": the embedded default or a file
(official or ours).

The embedded default is the trained small model shipped in `weights_manager/default_weights/` when present;
until it ships, the `small` preset with seeded random weights (stated wherever it is used).
"""
from __future__ import annotations

import logging
from pathlib import Path

from ..pipelines.paths import DEFAULT_WEIGHTS_DIR

import torch


log = logging.getLogger("interact_custom")

EMBEDDED = "(embedded) default"
PACKAGE_ROOT = Path(__file__).resolve().parents[1]
WEIGHTS_DIR = DEFAULT_WEIGHTS_DIR
EMBEDDED_MGIG_FILE = WEIGHTS_DIR / "mgig_default.safetensors"
EMBEDDED_SEED = 0
EMBEDDED_PRESET = "small"


def embedded_is_random(kind: str = "mgig") -> bool:
    """True while no trained default of this model kind ships with the package."""
    return not (WEIGHTS_DIR / f"{kind}_default.safetensors").is_file()


def load_mgig_model(source: str | Path = EMBEDDED, *, device: str | torch.device = "cpu",
                    dtype: torch.dtype | None = None):
    """MGIG from ``EMBEDDED`` or a file path (official `mgig.ckpt` or our safetensors), in
    ``dtype`` (None: float32 — fp16 files would otherwise run in fp16, ~10x slower on a CPU)."""
    from .official_mgig import load_mgig

    dtype = dtype or torch.float32
    if str(source) != EMBEDDED:
        return load_mgig(source, device=device, dtype=dtype)
    if EMBEDDED_MGIG_FILE.is_file():
        return load_mgig(EMBEDDED_MGIG_FILE, device=device, dtype=dtype)
    from ..pipelines.mgig import MGIGModel, mgig_config

    log.warning("MGIG: no trained default ships yet; using the '%s' preset with seeded random weights "
                "(seed %d) — outputs are not meaningful images", EMBEDDED_PRESET, EMBEDDED_SEED)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(EMBEDDED_SEED)
        model = MGIGModel(mgig_config(EMBEDDED_PRESET))
    return model.to(device=device, dtype=dtype).eval()


def load_iamg_model(source: str | Path = EMBEDDED, *, device: str | torch.device = "cpu",
                    dtype: torch.dtype | None = None):
    """IAMG from ``EMBEDDED`` or a file path (official `iamg.pth` or our safetensors)."""
    from . import native_iamg

    name = native_iamg.EMBEDDED if str(source) == EMBEDDED else source
    return native_iamg.load_iamg(name, device=device, dtype=dtype or torch.float32)
