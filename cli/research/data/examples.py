"""The example inputs shipped with the package (`pipelines/assets/examples/`)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from ....pipelines.paths import EXAMPLES_DIR


def load_examples(folder: Path = EXAMPLES_DIR) -> dict:
    """The shipped example inputs: RGBA cut-outs (alpha = mask), a background, a mask."""
    meta = json.loads((folder / "example.json").read_text())
    human = np.array(Image.open(folder / "human.png").convert("RGBA"))
    obj = np.array(Image.open(folder / "object.png").convert("RGBA"))
    return {
        "caption": meta["caption"],
        "box": meta["box"],
        "human_image": human[..., :3], "human_mask": human[..., 3] > 127,
        "object_image": obj[..., :3], "object_mask": obj[..., 3] > 127,
        "background": np.array(Image.open(folder / "background.png").convert("RGB")),
        "interaction_mask": np.array(Image.open(folder / "interaction_mask.png").convert("L")) > 127,
    }
