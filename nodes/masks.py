"""Boxes and interaction masks: CHOI Box, CHOI Box From Mask, IAMG Generate Mask,
IAMG-R Retrieve Mask, Fit Mask To Box."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from . import comfy_bridge as bridge
from . import tensors
from ..pipelines.geometry import Box, check_xywh, mask_box
from ..pipelines.paths import BANK_DIR
from .loaders import CATEGORY
from .sampling import resolve_sampling, sampling_inputs

MAX_RES = 8192
SHIPPED_BANK = "(shipped) example bank"
SHIPPED_BANK_DIR = BANK_DIR


def check_box(box, size_hw: tuple[int, int]) -> Box:
    """A CHOI_BOX (x, y, width, height) that lies inside a background of ``size_hw``."""
    return check_xywh(box, *size_hw)


class CHOIBox:
    DESCRIPTION = "A box in background pixels where the human-object pair should appear; feeds both stages."
    CATEGORY = CATEGORY
    RETURN_TYPES = ("CHOI_BOX",)
    RETURN_NAMES = ("box",)
    OUTPUT_TOOLTIPS = ("(x, y, width, height) in pixels of the background image.",)
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


class CHOIBoxFromMask:
    DESCRIPTION = "The bounding box of a mask (e.g. a region painted in the mask editor), optionally padded."
    CATEGORY = CATEGORY
    RETURN_TYPES = ("CHOI_BOX",)
    RETURN_NAMES = ("box",)
    OUTPUT_TOOLTIPS = ("(x, y, width, height) of the mask's pixels >= 0.5, padded and clipped to the image.",)
    FUNCTION = "make"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "mask": ("MASK", {"tooltip": "Mask whose bounding box to take (first item of a batch)."}),
            "padding": ("INT", {"default": 0, "min": 0, "max": MAX_RES, "tooltip": "Pixels added on every side."}),
        }}

    def make(self, mask, padding):
        m = tensors.mask_batch(mask, "mask", threshold=0.5)[0]
        box = mask_box(m)
        if box is None:
            raise ValueError("mask is empty (no pixel >= 0.5): paint the region in the mask editor, or invert "
                             "a Load Image alpha mask with InvertMask")
        return (box.grown(int(padding)).clipped(*m.shape).xywh,)


class IAMGGenerateMask:
    DESCRIPTION = ("IAMG: generates the interaction mask (human ∪ object silhouette) for the text, optionally "
                   "inside a box of a background. Preview it, then edit or swap it before the sampler.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("MASK", "MASK", "IMAGE")
    RETURN_NAMES = ("mask", "soft_mask", "preview")
    OUTPUT_TOOLTIPS = ("Binary interaction mask (soft_mask > threshold), at the background's size.",
                       "The model's foreground probability, 0..1.",
                       "The mask tinted over the background (or black canvas) for a quick look.")
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
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True,
                                 "tooltip": "Same seed, same mask."}),
                "batch_size": ("INT", {"default": 1, "min": 1, "max": 64, "tooltip": "Masks to generate."}),
                "threshold": ("FLOAT", {"default": 0.5, "min": 0.01, "max": 0.99, "step": 0.01,
                                        "tooltip": "Foreground where the soft mask exceeds this."}),
                "clip_to_box": ("BOOLEAN", {"default": True, "tooltip": "Zero the mask outside the box, so the "
                                            "pair never spills over the scene (no effect without a box)."}),
                "width": ("INT", {"default": 512, "min": 64, "max": MAX_RES, "step": 8,
                                  "tooltip": "Mask width when no background is connected."}),
                "height": ("INT", {"default": 512, "min": 64, "max": MAX_RES, "step": 8,
                                   "tooltip": "Mask height when no background is connected."}),
            },
            "optional": {
                "background": ("IMAGE", {"tooltip": "Scene to place the pair in; the mask is generated to fit it."}),
                "box": ("CHOI_BOX", {"tooltip": "Where in the background the pair goes (needs a background)."}),
            },
        }

    def generate(self, iamg_model, interaction, steps, sampler, guidance, seed, batch_size, threshold, clip_to_box,
                 width, height, background=None, box=None):
        from ..pipelines import iamg

        bg = tensors.image_batch(background, "background")[0] if background is not None else None
        if box is not None and bg is None:
            raise ValueError("box is connected but background is not: the box is in background pixels, so "
                             "connect the background image too (or remove the box)")
        size_hw = bg.shape[:2] if bg is not None else (height, width)
        if box is not None:
            box = check_box(box, size_hw).xywh
        with iamg_model as model:
            run = resolve_sampling("iamg", model, sampler, steps, guidance)
            steps, sampler, guidance = run.steps, run.sampler, run.guidance
            progress = bridge.Progress(steps)
            result = iamg.generate_mask(
                model, prompt=interaction, background=bg, box=box, size_hw=size_hw, steps=steps,
                sampler=sampler, guidance=guidance, seed=seed, batch=batch_size, threshold=threshold,
                clip_to_box=clip_to_box, callback=lambda i, total, x, x0: progress.update(i + 1, tensors.latent_preview(x0)))
        soft, binary = np.asarray(result.soft), np.asarray(result.binary)
        base = bg if bg is not None else np.zeros((*size_hw, 3), np.uint8)
        previews = [tensors.overlay(base, m) for m in binary]
        outputs = (tensors.to_mask(list(binary)), tensors.to_mask(list(soft)), tensors.to_image(previews))
        for warning in result.warnings:
            bridge.warn(warning)
        if result.warnings:  # also shown on the node (ComfyUI sends "ui" to the front end)
            return {"ui": {"text": result.warnings}, "result": outputs}
        return outputs


class IAMGRRetrieveMask:
    DESCRIPTION = ("IAMG-R: retrieves an interaction mask from a mask bank by text similarity. Pick a candidate, "
                   "then place it with Fit Mask To Box.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("MASK", "STRING", "IMAGE")
    RETURN_NAMES = ("mask", "caption", "candidates")
    OUTPUT_TOOLTIPS = ("The chosen candidate's mask, cropped to its bounding box.",
                       "Caption of the chosen bank entry.",
                       "Grid of the top-k candidates with their scores.")
    FUNCTION = "retrieve"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "bank": ("STRING", {"default": SHIPPED_BANK, "tooltip": "Mask bank folder (with bank.json), or the "
                                "shipped example bank. Build one with: python -m interact_custom bank build."}),
            "query": ("STRING", {"default": "a person is pushing the bicycle", "multiline": True,
                                 "tooltip": "Describe the interaction; paraphrases work."}),
            "category": ("STRING", {"default": "", "tooltip": "Optional HOI category filter, e.g. 'ride bicycle' "
                                    "(empty = all)."}),
            "top_k": ("INT", {"default": 8, "min": 1, "max": 64, "tooltip": "Candidates shown in the grid."}),
            "candidate": ("INT", {"default": 1, "min": 1, "max": 64, "tooltip": "Which candidate to output "
                                  "(1 = best match)."}),
        }}

    def retrieve(self, bank, query, category, top_k, candidate):
        from ..pipelines import retrieval

        folder = SHIPPED_BANK_DIR if bank.strip() in ("", SHIPPED_BANK) else Path(bank.strip()).expanduser()
        if candidate > top_k:
            raise ValueError(f"candidate {candidate} is beyond top_k {top_k}; raise top_k or pick a lower candidate")
        mask_bank = retrieval.MaskBank.load(folder)
        found = retrieval.retrieve(mask_bank, query, encoder=retrieval.LexicalEncoder(), top_k=top_k,
                                   category=category.strip() or None)
        if candidate > len(found):
            raise ValueError(f"only {len(found)} candidate(s) match; pick candidate <= {len(found)}")
        chosen = found[candidate - 1]
        grid = retrieval.candidates_grid(found)
        return (tensors.to_mask([chosen.mask]), chosen.caption, tensors.to_image([grid]))


class FitMaskToBox:
    DESCRIPTION = ("Places a mask (retrieved, hand-made or loaded) into a box of the canvas, so a swapped mask "
                   "lines up with the background.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("MASK",)
    RETURN_NAMES = ("mask",)
    OUTPUT_TOOLTIPS = ("The mask at the canvas size, its content fitted into the box.",)
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
                "width": ("INT", {"default": 512, "min": 8, "max": MAX_RES,
                                  "tooltip": "Canvas width when no image is connected."}),
                "height": ("INT", {"default": 512, "min": 8, "max": MAX_RES,
                                   "tooltip": "Canvas height when no image is connected."}),
            },
            "optional": {"image": ("IMAGE", {"tooltip": "Canvas (e.g. the background): its size is used."})},
        }

    def fit(self, mask, box, mode, width, height, image=None):
        from ..pipelines.retrieval import fit_mask_to_box

        size_hw = tuple(image.shape[1:3]) if image is not None else (height, width)
        box = check_box(box, size_hw).xywh
        masks = tensors.mask_batch(mask, "mask")
        return (tensors.to_mask([fit_mask_to_box(m, box, size_hw, mode=mode) for m in masks]),)
