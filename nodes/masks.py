"""Boxes and interaction masks: CHOI Box, CHOI Box From Mask, IAMG Generate Mask,
IAMG-R Retrieve Mask, Fit Mask To Box."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from . import comfy_bridge as bridge
from . import tensors
from .common import MAX_CANVAS, MAX_RES, Node, batch_input, check_box, outputs, seed_input, shown
from .sampling import resolve_sampling, sampling_inputs
from ..pipelines import iamg, memory, retrieval
from ..pipelines.geometry import mask_box
from ..pipelines.paths import BANK_DIR

SHIPPED_BANK = "(shipped) example bank"
_ADD_A_BANK = (f"To add a bank, put its folder (with bank.json) into ComfyUI's models/{bridge.BANK_FOLDER}/ folder "
               f"(or a folder registered as '{bridge.BANK_FOLDER}' in extra_model_paths.yaml), then refresh")


def available_banks() -> dict[str, Path]:
    """The mask banks the IAMG-R node offers, by dropdown name: the shipped example bank,
    then the banks in the registered bank folders (`comfy_bridge.bank_folders`,
    `retrieval.bank_choices`). A workflow can pick only these, never a path."""
    return retrieval.bank_choices(bridge.bank_folders(), SHIPPED_BANK, BANK_DIR)


class CHOIBox(Node):
    DESCRIPTION = "A box in background pixels where the human-object pair should appear; feeds both stages."
    RETURN_TYPES, RETURN_NAMES, OUTPUT_TOOLTIPS = outputs(
        ("CHOI_BOX", "box", "(x, y, width, height) in pixels of the background image."))
    FUNCTION = "make"

    @classmethod
    def INPUT_TYPES(cls):
        def px(default, tip):
            return ("INT", {"default": default, "min": 0, "max": MAX_RES, "step": 1, "tooltip": tip})
        return {"required": {
            "x": px(0, "Left edge, pixels from the background's left side."),
            "y": px(0, "Top edge, pixels from the background's top."),
            "width": px(256, "Box width in pixels (x + width must fit in the background)."),
            "height": px(256, "Box height in pixels (y + height must fit in the background)."),
        }}

    def make(self, x, y, width, height):
        if width <= 0 or height <= 0:
            raise ValueError(f"box needs a positive width and height, got {width}x{height}")
        return ((int(x), int(y), int(width), int(height)),)


class CHOIBoxFromMask(Node):
    DESCRIPTION = "The bounding box of a mask (e.g. a region painted in the mask editor), optionally padded."
    RETURN_TYPES, RETURN_NAMES, OUTPUT_TOOLTIPS = outputs(
        ("CHOI_BOX", "box", "(x, y, width, height) of the mask's pixels above 0.5, padded and clipped to the image."))
    FUNCTION = "make"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "mask": ("MASK", {"tooltip": "Mask whose bounding box to take (first item of a batch)."}),
            "padding": ("INT", {"default": 0, "min": 0, "max": MAX_RES, "tooltip": "Pixels added on every side."}),
        }}

    def make(self, mask, padding):
        count = tensors.mask_size(mask, "mask")[0]
        first = mask if mask.ndim == 2 else mask[:1]
        m = tensors.mask_batch(first, "mask", binary=True)[0]
        box = mask_box(m)
        if box is None:
            raise ValueError("mask is empty (no pixel above 0.5): paint the region in the mask editor, or invert "
                             "a Load Image alpha mask with InvertMask")
        out = (box.grown(int(padding)).clipped(*m.shape).xywh,)
        if count > 1:  # one box out: say which mask it is the box of
            warning = (f"mask is a batch of {count} masks; the box is the first one's (the others are not used): "
                       "connect a single mask to box another one")
            bridge.warn(warning)
            return shown(out, [warning])
        return out


class IAMGGenerateMask(Node):
    DESCRIPTION = ("IAMG: generates the interaction mask (human ∪ object silhouette) for the text, optionally "
                   "inside a box of a background. Preview it, then edit or swap it before the sampler.")
    RETURN_TYPES, RETURN_NAMES, OUTPUT_TOOLTIPS = outputs(
        ("MASK", "mask", "Binary interaction mask (soft_mask > threshold), at the background's size."),
        ("MASK", "soft_mask", "The model's foreground probability, 0..1."),
        ("IMAGE", "preview", "The mask tinted over the background (or black canvas) for a quick look."))
    FUNCTION = "generate"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "iamg_model": ("IAMG_MODEL", {"tooltip": "From Load IAMG."}),
                "interaction": ("STRING", {"default": "a person is pushing the bicycle", "multiline": True,
                                           "tooltip": "The interaction, e.g. 'a person is kicking the ball'. "
                                                      "The official iamg.pth ignores text; the text-conditioned "
                                                      "variant follows it."}),
                **sampling_inputs("iamg"),
                "seed": seed_input("Same seed, same mask."),
                "batch_size": batch_input("Masks to generate (per background, for a batch of backgrounds)."),
                "threshold": ("FLOAT", {"default": 0.5, "min": 0.01, "max": 0.99, "step": 0.01,
                                        "tooltip": "Foreground where the soft mask exceeds this."}),
                "clip_to_box": ("BOOLEAN", {"default": True, "tooltip": "Zero the mask outside the box, so the "
                                            "pair never spills over the scene (no effect without a box)."}),
                "width": ("INT", {"default": 512, "min": 64, "max": MAX_CANVAS, "step": 8,
                                  "tooltip": "Mask width when no background is connected."}),
                "height": ("INT", {"default": 512, "min": 64, "max": MAX_CANVAS, "step": 8,
                                   "tooltip": "Mask height when no background is connected."}),
            },
            "optional": {
                "background": ("IMAGE", {"tooltip": "Scene to place the pair in; the mask is generated to fit it. A "
                                         "batch of backgrounds gets batch_size masks each."}),
                "box": ("CHOI_BOX", {"tooltip": "Where in the background the pair goes (needs a background)."}),
            },
        }

    def generate(self, iamg_model, interaction, steps, sampler, guidance, seed, batch_size, threshold, clip_to_box,
                 width, height, background=None, box=None):
        if box is not None and background is None:
            raise ValueError("box is connected but background is not: the box is in background pixels, so "
                             "connect the background image too (or remove the box)")
        if background is not None:
            count, *size_hw = tensors.image_size(background, "background")
        else:
            count, size_hw = 1, [height, width]
        size_hw = tuple(size_hw)
        if box is not None:
            box = check_box(box, size_hw).xywh
        items = count * batch_size
        what = (f"IAMG Generate Mask: {items} mask(s) of {size_hw[1]}x{size_hw[0]} ("
                + (f"{count} backgrounds x " if count > 1 else "") + f"batch_size {batch_size})")
        advice = ("lower batch_size" + (", use fewer backgrounds" if count > 1 else "")
                  + (" or a smaller background (e.g. Upscale Image By < 1)" if background is not None
                     else " or width / height"))
        memory.check_fits(iamg.masks_memory(size_hw, items, count if background is not None else 0), what, advice)
        backgrounds = tensors.image_batch(background, "background") if background is not None else [None]
        with memory.explained_out_of_memory(what, advice), iamg_model as model:
            settings = resolve_sampling("iamg", model, sampler, steps, guidance)
            progress = bridge.Progress(settings.steps * count)
            result = iamg.generate_masks(
                model, backgrounds, prompt=interaction, size_hw=size_hw, box=box, settings=settings, seed=seed,
                batch=batch_size, threshold=threshold, clip_to_box=clip_to_box,
                callback=lambda i, total, x, x0: progress.update(i + 1, tensors.latent_preview(x0)))
            previews = _previews(backgrounds, result.binary, size_hw)
        for warning in result.warnings:
            bridge.warn(warning)
        return shown((result.binary, result.soft, previews), result.warnings)


def _previews(backgrounds: list, masks: torch.Tensor, size_hw: tuple[int, int]) -> torch.Tensor:
    """IMAGE [N, H, W, 3]: each mask tinted over its background (a black canvas for None);
    the masks come in equal runs, one per background."""
    per_background = len(masks) // len(backgrounds)
    previews = torch.empty((len(masks), *size_hw, 3))
    blank = None
    for j, mask in enumerate(masks):
        base = backgrounds[j // per_background]
        if base is None:
            blank = base = np.zeros((*size_hw, 3), np.uint8) if blank is None else blank
        previews[j] = torch.from_numpy(tensors.overlay(base, mask.numpy()))
    return previews.div_(255.0)


class IAMGRRetrieveMask(Node):
    DESCRIPTION = ("IAMG-R: retrieves an interaction mask from a mask bank by text similarity. Pick a candidate, "
                   "then place it with Fit Mask To Box.")
    RETURN_TYPES, RETURN_NAMES, OUTPUT_TOOLTIPS = outputs(
        ("MASK", "mask", "The chosen candidate's mask, cropped to its bounding box."),
        ("STRING", "caption", "Caption of the chosen bank entry."),
        ("IMAGE", "candidates", "Grid of the top-k candidates with their scores."))
    FUNCTION = "retrieve"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "bank": (list(available_banks()), {
                "default": SHIPPED_BANK,
                "tooltip": f"Mask bank: the shipped example bank, or a bank folder (with bank.json) in ComfyUI's "
                           f"models/{bridge.BANK_FOLDER}/ (or an '{bridge.BANK_FOLDER}' path in "
                           "extra_model_paths.yaml); refresh after adding one. Build one with: "
                           "python -m interact_custom bank build."}),
            "query": ("STRING", {"default": "a person is pushing the bicycle", "multiline": True,
                                 "tooltip": "Describe the interaction; paraphrases work."}),
            "category": ("STRING", {"default": "", "tooltip": "Optional HOI category filter, e.g. 'ride bicycle' "
                                    "(empty = all)."}),
            "top_k": ("INT", {"default": 8, "min": 1, "max": 64, "tooltip": "Candidates shown in the grid."}),
            "candidate": ("INT", {"default": 1, "min": 1, "max": 64, "tooltip": "Which candidate to output "
                                  "(1 = best match)."}),
        }}

    def retrieve(self, bank, query, category, top_k, candidate):
        folder = retrieval.chosen_bank(bank, available_banks(), _ADD_A_BANK)
        if candidate > top_k:
            raise ValueError(f"candidate {candidate} is beyond top_k {top_k}; raise top_k or pick a lower candidate")
        mask_bank = retrieval.MaskBank.load(folder, name=bank)  # messages name the bank, not its folder
        found = retrieval.retrieve(mask_bank, query, encoder=retrieval.LexicalEncoder(), top_k=top_k,
                                   category=category.strip() or None, cache_root=bridge.embedding_cache_root())
        if candidate > len(found):
            raise ValueError(f"only {len(found)} candidate(s) match; pick candidate <= {len(found)}")
        chosen = found[candidate - 1]
        grid = retrieval.candidates_grid(found)
        return (tensors.to_mask([chosen.mask]), chosen.caption, tensors.to_image([grid]))


class FitMaskToBox(Node):
    DESCRIPTION = ("Places a mask (retrieved, hand-made or loaded) into a box of the canvas, so a swapped mask "
                   "lines up with the background.")
    RETURN_TYPES, RETURN_NAMES, OUTPUT_TOOLTIPS = outputs(
        ("MASK", "mask", "The mask at the canvas size, its content fitted into the box."))
    FUNCTION = "fit"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "mask": ("MASK", {"tooltip": "Mask to place; its content (bounding box) is what gets fitted."}),
                "box": ("CHOI_BOX", {"tooltip": "Target box in canvas pixels."}),
                "mode": (["keep_aspect", "stretch"], {"default": "keep_aspect",
                                                      "tooltip": "keep_aspect centres and scales to fit; "
                                                                 "stretch fills the box."}),
                "width": ("INT", {"default": 512, "min": 8, "max": MAX_CANVAS,
                                  "tooltip": "Canvas width when no image is connected."}),
                "height": ("INT", {"default": 512, "min": 8, "max": MAX_CANVAS,
                                   "tooltip": "Canvas height when no image is connected."}),
            },
            "optional": {"image": ("IMAGE", {"tooltip": "Canvas (e.g. the background): its size is used."})},
        }

    def fit(self, mask, box, mode, width, height, image=None):
        size_hw = tuple(tensors.image_size(image, "image")[1:]) if image is not None else (height, width)
        box = check_box(box, size_hw).xywh
        count = tensors.mask_size(mask, "mask")[0]
        memory.check("fit_masks", *size_hw, count, f"Fit Mask To Box: {count} mask(s) on a {size_hw[1]}x{size_hw[0]} "
                     "canvas", "use a smaller canvas (width / height, or a smaller image) or fewer masks")
        masks = tensors.mask_batch(mask, "mask")
        out = torch.empty((len(masks), *size_hw))
        for i, m in enumerate(masks):
            out[i] = torch.from_numpy(np.asarray(retrieval.fit_mask_to_box(m, box, size_hw, mode=mode), np.float32))
        return (out,)
