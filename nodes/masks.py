"""Boxes and interaction masks: CHOI Box, CHOI Box From Mask, IAMG Generate Mask,
IAMG-R Retrieve Mask, Fit Mask To Box."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from . import comfy_bridge as bridge
from . import tensors
from ..pipelines.geometry import Box, check_xywh, mask_box
from ..pipelines.paths import BANK_DIR
from .loaders import CATEGORY
from .sampling import resolve_sampling, sampling_inputs

MAX_RES = 8192
# Canvas sizes and batches the widgets offer: what a machine with a few GiB to spare can
# hold (`pipelines.memory` estimates each run and refuses, naming the inputs, what does not
# fit; a background's size is taken as it comes).
MAX_CANVAS = 4096
MAX_BATCH = 16
SHIPPED_BANK = "(shipped) example bank"
SHIPPED_BANK_DIR = BANK_DIR


def available_banks() -> dict[str, Path]:
    """The mask banks the IAMG-R node offers, by dropdown name: the shipped example bank,
    then each bank folder (with bank.json) in the registered bank folders
    (`comfy_bridge.bank_folders`). A workflow can pick only these, never a path."""
    from ..pipelines.retrieval import find_banks

    found = find_banks(bridge.bank_folders())
    found.pop(SHIPPED_BANK, None)
    return {SHIPPED_BANK: SHIPPED_BANK_DIR, **found}


def check_bank_name(bank, banks: dict[str, Path]) -> Path:
    """The folder of the bank chosen by ``bank``; an error listing the banks there are for
    any other value (the API accepts any string; the message says nothing about files)."""
    if isinstance(bank, str) and bank in banks:
        return banks[bank]
    shown = str(bank) if len(str(bank)) <= 80 else str(bank)[:77] + "..."
    raise ValueError(f"mask bank {shown!r} is not one of the available banks: {', '.join(banks)}. To add a bank, "
                     f"put its folder (with bank.json) into ComfyUI's models/{bridge.BANK_FOLDER}/ folder (or a "
                     f"folder registered as '{bridge.BANK_FOLDER}' in extra_model_paths.yaml), then refresh")


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
        count = tensors.mask_size(mask, "mask")[0]
        first = mask if mask.ndim == 2 else mask[:1]
        m = tensors.mask_batch(first, "mask", threshold=0.5)[0]
        box = mask_box(m)
        if box is None:
            raise ValueError("mask is empty (no pixel >= 0.5): paint the region in the mask editor, or invert "
                             "a Load Image alpha mask with InvertMask")
        out = (box.grown(int(padding)).clipped(*m.shape).xywh,)
        if count > 1:  # one box out: say which mask it is the box of
            warning = (f"mask is a batch of {count} masks; the box is the first one's (the others are not used): "
                       "connect a single mask to box another one")
            bridge.warn(warning)
            return {"ui": {"text": [warning]}, "result": out}
        return out


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
                "batch_size": ("INT", {"default": 1, "min": 1, "max": MAX_BATCH, "tooltip": "Masks to generate "
                                       "(per background, for a batch of backgrounds)."}),
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
        from ..pipelines import iamg, memory

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
        memory.check_fits(memory.estimate("iamg_masks", *size_hw, items)
                          + memory.estimate("image_input", *size_hw, count if background is not None else 0),
                          what, advice)
        backgrounds = tensors.image_batch(background, "background") if background is not None else [None]
        # Outputs filled background by background (one set of full-size arrays in work at a time).
        masks, softs = torch.empty((items, *size_hw)), torch.empty((items, *size_hw))
        previews = torch.empty((items, *size_hw, 3))
        warnings: list[str] = []
        with memory.explained_out_of_memory(what, advice), iamg_model as model:
            run = resolve_sampling("iamg", model, sampler, steps, guidance)
            steps, sampler, guidance = run.steps, run.sampler, run.guidance
            progress = bridge.Progress(steps * count)
            for k, bg in enumerate(backgrounds):
                def callback(i, total, x, x0, k=k):
                    progress.update(k * steps + i + 1, tensors.latent_preview(x0))

                result = iamg.generate_mask(
                    model, prompt=interaction, background=bg, box=box, size_hw=size_hw, steps=steps,
                    sampler=sampler, guidance=guidance, seed=seed, batch=batch_size, threshold=threshold,
                    clip_to_box=clip_to_box, callback=callback)
                first = k * batch_size
                masks[first:first + batch_size] = result.binary
                softs[first:first + batch_size] = result.soft
                base = bg if bg is not None else np.zeros((*size_hw, 3), np.uint8)
                for j, m in enumerate(result.binary):
                    previews[first + j] = torch.from_numpy(tensors.overlay(base, m.numpy()))
                warnings += [w for w in result.warnings if w not in warnings]
                del result
        outputs = (masks, softs, previews.div_(255.0))
        for warning in warnings:
            bridge.warn(warning)
        if warnings:  # also shown on the node (ComfyUI sends "ui" to the front end)
            return {"ui": {"text": warnings}, "result": outputs}
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
        from ..pipelines import retrieval

        folder = check_bank_name(bank, available_banks())
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
                "width": ("INT", {"default": 512, "min": 8, "max": MAX_CANVAS,
                                  "tooltip": "Canvas width when no image is connected."}),
                "height": ("INT", {"default": 512, "min": 8, "max": MAX_CANVAS,
                                   "tooltip": "Canvas height when no image is connected."}),
            },
            "optional": {"image": ("IMAGE", {"tooltip": "Canvas (e.g. the background): its size is used."})},
        }

    def fit(self, mask, box, mode, width, height, image=None):
        from ..pipelines import memory
        from ..pipelines.retrieval import fit_mask_to_box

        size_hw = tuple(tensors.image_size(image, "image")[1:]) if image is not None else (height, width)
        box = check_box(box, size_hw).xywh
        count = tensors.mask_size(mask, "mask")[0]
        memory.check("fit_masks", *size_hw, count, f"Fit Mask To Box: {count} mask(s) on a {size_hw[1]}x{size_hw[0]} "
                     "canvas", "use a smaller canvas (width / height, or a smaller image) or fewer masks")
        masks = tensors.mask_batch(mask, "mask")
        out = torch.empty((len(masks), *size_hw))
        for i, m in enumerate(masks):
            out[i] = torch.from_numpy(np.asarray(fit_mask_to_box(m, box, size_hw, mode=mode), np.float32))
        return (out,)
