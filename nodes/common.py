"""What the nodes share: their base class (the category), the widgets' limits, the box
check, how outputs are declared and how warnings are shown on a node."""
from __future__ import annotations

from ..pipelines.geometry import Box, check_xywh

CATEGORY = "Interact-Custom"
MAX_RES = 8192
# Canvas sizes and batches the widgets offer: what a machine with a few GiB to spare can
# hold (`pipelines.memory` estimates each run and refuses, naming the inputs, what does not
# fit; a background's size is taken as it comes).
MAX_CANVAS = 4096
MAX_BATCH = 16


class Node:
    """Base of this package's nodes (classic API: ComfyUI reads these class attributes)."""

    CATEGORY = CATEGORY


def outputs(*rows: tuple[str, str, str]) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """``RETURN_TYPES, RETURN_NAMES, OUTPUT_TOOLTIPS`` of a node from one ``(type, name,
    tooltip)`` row per output."""
    types, names, tooltips = zip(*rows)
    return types, names, tooltips


def seed_input(tooltip: str) -> tuple:
    """A seed widget (ComfyUI adds its control_after_generate menu)."""
    return ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True,
                    "tooltip": tooltip})


def batch_input(tooltip: str) -> tuple:
    return ("INT", {"default": 1, "min": 1, "max": MAX_BATCH, "tooltip": tooltip})


def check_box(box, size_hw: tuple[int, int]) -> Box:
    """A CHOI_BOX (x, y, width, height) that lies inside a background of ``size_hw``."""
    return check_xywh(box, *size_hw)


def shown(result: tuple, warnings: list[str]):
    """A node's return value: ``result``, with ``warnings`` also shown on the node (ComfyUI
    sends "ui" to the front end) when there are any."""
    if warnings:
        return {"ui": {"text": list(warnings)}, "result": result}
    return result
