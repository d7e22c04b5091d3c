"""The example inputs shipped with the package (`pipelines/assets/examples/`)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from ....pipelines.paths import EXAMPLES_DIR
from ....pipelines.readers import as_image, as_mask


def _mask(source, name: str) -> np.ndarray:
    return as_mask(source, name, allow_empty=True) > 0


def load_examples(folder: Path = EXAMPLES_DIR) -> dict:
    """The shipped example inputs: RGBA cut-outs (alpha = mask), a background, a mask."""
    meta = json.loads((folder / "example.json").read_text())
    human = np.array(Image.open(folder / "human.png").convert("RGBA"))
    obj = np.array(Image.open(folder / "object.png").convert("RGBA"))
    return {
        "caption": meta["caption"],
        "box": meta["box"],
        "human_image": human[..., :3], "human_mask": _mask(Image.fromarray(human[..., 3]), "human.png alpha"),
        "object_image": obj[..., :3], "object_mask": _mask(Image.fromarray(obj[..., 3]), "object.png alpha"),
        "background": as_image(folder / "background.png", "background.png"),
        "interaction_mask": _mask(folder / "interaction_mask.png", "interaction_mask.png"),
    }
