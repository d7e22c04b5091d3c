"""The memory a call will need, estimated before it allocates, so that sizes no machine
can hold fail at once with one line naming the inputs (`check_fits`), instead of pushing
the machine into swap or getting the process killed.

An estimate counts what a call holds at the sizes the user chose: the arrays it keeps
for every batch item (its outputs, at the image's size) and the transient arrays of the
one item being worked on; the loaded model (a fixed cost, already paid) is not counted.
Every call that allocates in proportion to a user's image size or batch has an entry in
`FOOTPRINTS`; `tests/test_bad_inputs_nodes.py` measures each call's peak memory and checks
the entry covers it.

The limit is a share (`MEMORY_SHARE`) of the memory the system says is available now
(``MemAvailable`` of /proc/meminfo, else the free pages `os.sysconf` reports); where
neither can be read nothing is refused. The model's own work (a fixed-size square on the
GPU) is not proportional to the user's sizes: what is, runs on the CPU.
"""
from __future__ import annotations

import math
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

# One run may plan to use at most this share of the available memory: the rest is for the
# model's working memory, the host application (ComfyUI's caches) and the system.
MEMORY_SHARE = 0.8


class MemoryLimitError(ValueError):
    """A call whose inputs need more memory than this machine has (the message names them)."""


# Pixels of an input converted at a time (`nodes.tensors.image_batch`): its float
# temporaries stay this size whatever the image's.
CONVERSION_BLOCK_PIXELS = 1 << 20


@dataclass(frozen=True)
class Footprint:
    """Bytes a call holds per pixel of its working size: ``per_item`` for every batch item
    (kept until the call returns), ``per_call`` for the one item in work (transient),
    ``per_square`` per pixel of the square on the long side (``max(h, w)²``: masks are
    enlarged from the model's square before the padding is cut off); plus ``fixed`` bytes."""

    per_item: float
    per_call: float = 0.0
    per_square: float = 0.0
    fixed: int = 0

    def bytes(self, height: int, width: int, items: int = 1) -> int:
        pixels = int(height) * int(width)
        square = max(int(height), int(width)) ** 2
        return math.ceil(pixels * (self.per_item * int(items) + self.per_call) + square * self.per_square) + self.fixed


# What each call holds (bytes per pixel), from the arrays it makes:
FOOTPRINTS: dict[str, Footprint] = {
    # IMAGE -> uint8 HxWx3 (`nodes.tensors.image_batch`): the uint8 copy of each item; the
    # float temporaries of one block of rows at a time.
    "image_input": Footprint(per_item=3, fixed=64 * CONVERSION_BLOCK_PIXELS),
    # MASK -> float32 HxW (`nodes.tensors.mask_batch`): the float32 copy of each item, a
    # resized / thresholded one of the item in work.
    "mask_input": Footprint(per_item=4, per_call=12),
    # IAMG Generate Mask: mask, soft mask (float32) and preview (float32 RGB) per item, the
    # pipeline's soft / binary of the background in work; the square enlargement, the
    # despeckling and the preview blend of one item.
    "iamg_masks": Footprint(per_item=32, per_call=16, per_square=8),
    # Mask-Guided Sampler: the pasted image (float32 RGB + its uint8 copy) and the paste
    # alpha (float32) per item; the hint, crop-back and blend of one item.
    "mgig_images": Footprint(per_item=20, per_call=48),
    # Fit Mask To Box: the fitted float32 mask per item; its float64 placement of one item.
    "fit_masks": Footprint(per_item=8, per_call=16),
    # CHOI ID Features: cropping and resizing one reference (its mask box) into the canvas.
    "id_reference": Footprint(per_item=0, per_call=8),
    # CHOI Detail Map: Sobel in float64 (x, y, magnitude, per channel) of one canvas.
    "detail_map": Footprint(per_item=16, per_call=24),
}


def available_bytes() -> int | None:
    """Memory the system can give a process now without swapping (``MemAvailable``), else
    its free pages (`os.sysconf`); None where neither can be read."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, OSError, ValueError):
        return None


def gib(n: float) -> str:
    return f"{n / 2 ** 30:.1f} GiB"


def estimate(kind: str, height: int, width: int, items: int = 1) -> int:
    """Bytes the call ``kind`` (a key of `FOOTPRINTS`) holds for ``items`` items of
    ``height`` x ``width`` pixels."""
    return FOOTPRINTS[kind].bytes(height, width, items)


def check_fits(need: int, what: str, advice: str) -> None:
    """Raise `MemoryLimitError` when ``need`` bytes exceed `MEMORY_SHARE` of the available
    memory. ``what`` says which call with which inputs ("IAMG Generate Mask: 64 masks of
    8192x8192"), ``advice`` what to lower."""
    available = available_bytes()
    if available is None:
        return
    limit = available * MEMORY_SHARE
    if need > limit:
        raise MemoryLimitError(f"{what} needs about {gib(need)} of memory, but this machine has {gib(available)} "
                               f"available (a run may use {MEMORY_SHARE:.0%} of it, {gib(limit)}); {advice}")


def check(kind: str, height: int, width: int, items: int, what: str, advice: str) -> int:
    """`check_fits` of `estimate`; returns the estimate."""
    need = estimate(kind, height, width, items)
    check_fits(need, what, advice)
    return need


@contextmanager
def explained_out_of_memory(what: str, advice: str):
    """Turn an allocation failure inside the block (torch's CPU / CUDA out-of-memory, a
    NumPy `MemoryError`) into a `MemoryLimitError` saying which call and what to lower."""
    import torch

    try:
        yield
    except torch.OutOfMemoryError as e:
        raise MemoryLimitError(f"{what}: the device ran out of memory ({_first_line(e)}); {advice}") from e
    except MemoryError as e:
        raise MemoryLimitError(f"{what}: out of memory ({_first_line(e) or 'MemoryError'}); {advice}") from e
    except RuntimeError as e:
        if "can't allocate memory" not in str(e) and "out of memory" not in str(e).lower():
            raise
        raise MemoryLimitError(f"{what}: out of memory ({_first_line(e)}); {advice}") from e


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [""])[0]
