"""`python -m interact_custom demo --out DIR`: the CHOI pipeline on the shipped examples.

Writes `interaction_mask.png`, `result.png` (the generation pasted into the background),
`crop.png` (the generated square crop), `reference_canvas.png`, `detail_map.png` and
`sheet.png` (human | object | background | mask | result).
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from . import choi, preprocess, samplers

EXAMPLES = Path(__file__).resolve().parents[1] / "assets" / "examples"


def load_examples(folder: Path = EXAMPLES) -> dict:
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


def contact_sheet(panels: list[tuple[str, np.ndarray]], height: int = 256) -> np.ndarray:
    """Panels side by side at one height, each with a caption underneath."""
    tiles = []
    for title, img in panels:
        img = np.asarray(img)
        if img.ndim == 2:
            img = np.repeat((img.astype(np.float32) * (255 if img.max() <= 1 else 1)).astype(np.uint8)[..., None], 3, -1)
        w = max(1, round(img.shape[1] * height / img.shape[0]))
        tile = Image.new("RGB", (w, height + 20), (255, 255, 255))
        tile.paste(Image.fromarray(img[..., :3]).resize((w, height), Image.BILINEAR), (0, 0))
        ImageDraw.Draw(tile).text((4, height + 4), title, fill=(0, 0, 0))
        tiles.append(tile)
    sheet = Image.new("RGB", (sum(t.width for t in tiles) + 8 * (len(tiles) - 1), height + 20), (255, 255, 255))
    x = 0
    for t in tiles:
        sheet.paste(t, (x, 0))
        x += t.width + 8
    return np.array(sheet)


def add_arguments(parser):
    parser.add_argument("--out", required=True, help="output folder (created; existing files are not overwritten)")
    parser.add_argument("--mgig", default=None, help="MGIG weights (official mgig.ckpt or ours); default: embedded")
    parser.add_argument("--steps", type=int, default=25, help="sampling steps (default 25)")
    parser.add_argument("--sampler", default="dpmpp_2m", choices=samplers.SAMPLER_NAMES,
                        help="sampler (official: ddim with 50 steps)")
    parser.add_argument("--guidance", type=float, default=choi.DEFAULT_GUIDANCE, help="CFG scale (official 5.0)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")


def run(args) -> int:
    from ..weights_manager.loader import EMBEDDED, embedded_is_random, load_mgig_model

    out = Path(args.out)
    names = ["interaction_mask.png", "result.png", "crop.png", "reference_canvas.png", "detail_map.png", "sheet.png"]
    existing = [n for n in names if (out / n).exists()]
    if existing and not args.overwrite:
        print(f"demo: {out} already holds {', '.join(existing)}; choose another --out or pass --overwrite",
              file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)

    ex = load_examples()
    print(f"interaction: {ex['caption']!r}")
    notes = []
    # Until IAMG's trained default ships, the interaction mask is the shipped example mask.
    mask = ex["interaction_mask"]
    notes.append("interaction mask: the SHIPPED EXAMPLE MASK (no trained IAMG default ships yet)")
    source = args.mgig or EMBEDDED
    if args.mgig is None and embedded_is_random("mgig"):
        notes.append("MGIG weights: the embedded 'small' preset with SEEDED RANDOM WEIGHTS (no trained default "
                     "ships yet) - the result shows the pipeline working, not a meaningful image; pass "
                     "--mgig path/to/mgig.ckpt for real results")
    for n in notes:
        print(f"NOTE: {n}")

    t0 = time.perf_counter()
    model = load_mgig_model(source, device=args.device)
    print(f"loaded MGIG ({sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters) "
          f"in {time.perf_counter() - t0:.1f} s")
    features = choi.id_features(model, ex["human_image"], ex["human_mask"], ex["object_image"], ex["object_mask"])
    detail = preprocess.detail_map(features.canvas.image, features.canvas.mask)

    def progress(i, total, x, x0):
        print(f"\rsampling step {i + 1}/{total}", end="", flush=True)

    t0 = time.perf_counter()
    result = choi.generate(model, features, detail, mask, ex["background"], steps=args.steps,
                           sampler=args.sampler, guidance=args.guidance, seed=args.seed, callback=progress)
    print(f"\nsampled {args.steps} steps ({args.sampler}, guidance {args.guidance}) in "
          f"{time.perf_counter() - t0:.1f} s")

    mask_u8 = mask.astype(np.uint8) * 255
    sheet = contact_sheet([("human", ex["human_image"]), ("object", ex["object_image"]),
                           ("background", ex["background"]), ("interaction mask", mask_u8),
                           ("result", result.images[0])])
    for name, img in [("interaction_mask.png", mask_u8), ("result.png", result.images[0]),
                      ("crop.png", result.crops[0]), ("reference_canvas.png", features.canvas.image),
                      ("detail_map.png", detail), ("sheet.png", sheet)]:
        Image.fromarray(img).save(out / name)
    print(f"wrote {', '.join(names)} to {out}")
    for n in notes:
        print(f"NOTE: {n}")
    return 0
