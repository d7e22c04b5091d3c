"""What this machine runs fast: whether bf16 maths is native here. Hardware knowledge only
(no ComfyUI, no models); used to pick dtypes (`nodes`' "auto"), training's
``mixed_precision: auto`` and the benchmark's recommended column."""
from __future__ import annotations

from pathlib import Path

import torch


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU has bf16 instructions (AMX or AVX512-bf16); without them torch
    emulates bf16 maths, many times slower than fp32 (docs/BENCHMARKS.md)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def fast_bf16(device_type: str) -> bool:
    """Whether bf16 is native on a ``device_type`` ("cuda" / "cpu") device of this machine."""
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return device_type == "cpu" and cpu_has_fast_bf16()
