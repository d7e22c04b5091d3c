"""The MGIG stage: CHOI ID Features (DINOv2), CHOI Detail Map (Sobel), CHOI Mask-Guided Sampler."""
from __future__ import annotations

import numpy as np
import torch

from . import comfy_bridge as bridge
from . import tensors
from .loaders import CATEGORY
from .masks import MAX_BATCH, check_box
from .sampling import resolve_sampling, sampling_inputs
from ..pipelines.composite import DEFAULT_PASTE, PASTE_FEATHER, PASTE_GROW, PASTE_MODES
from ..pipelines.mgig.inputs import COLLAGES, DEFAULT_COLLAGE


def _references(image, mask, name: str, warnings: list[str]) -> tuple[list, list]:
    images = tensors.image_batch(image, f"{name}_image")
    masks = tensors.mask_batch(mask, f"{name}_mask", size_hw=images[0].shape[:2], threshold=0.5)
    for i, m in enumerate(masks):
        label = f"{name}_mask" + (f" (batch item {i + 1})" if len(masks) > 1 else "")
        if (warning := tensors.inverted_mask_warning(label, m)) is not None:
            bridge.warn(warning)
            warnings.append(warning)
    return tensors.pair_batches(f"{name}_image", images, f"{name}_mask", masks)


class CHOIIDFeatures:
    DESCRIPTION = ("Identity features for MGIG: the person and the object are cut out by their masks, laid out on "
                   "one 224x224 reference canvas (person top-left, object bottom-right) and encoded by DINOv2.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("CHOI_ID", "IMAGE", "MASK")
    RETURN_NAMES = ("id_features", "reference_canvas", "canvas_mask")
    OUTPUT_TOOLTIPS = ("Identity tokens (conditional and unconditional) for the Mask-Guided Sampler.",
                       "The 224x224 canvas the encoder saw — check both cut-outs look right.",
                       "Foreground of the canvas (input of CHOI Detail Map).")
    FUNCTION = "extract"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "mgig_model": ("MGIG_MODEL", {"tooltip": "From Load MGIG."}),
            "human_image": ("IMAGE", {"tooltip": "Photo of the person (any pose)."}),
            "human_mask": ("MASK", {"tooltip": "The person's mask (1 = person). For a transparent cut-out loaded "
                                    "with Load Image, add InvertMask (its mask is 1 - alpha)."}),
            "object_image": ("IMAGE", {"tooltip": "Photo of the object."}),
            "object_mask": ("MASK", {"tooltip": "The object's mask (1 = object)."}),
        }}

    def extract(self, mgig_model, human_image, human_mask, object_image, object_mask):
        from ..pipelines import memory
        from ..pipelines.mgig import pipeline as choi

        need, sizes = 0, []
        for name, image in (("human", human_image), ("object", object_image)):
            count, height, width = tensors.image_size(image, f"{name}_image")
            sizes.append(f"{name}_image {width}x{height}" + (f" x {count}" if count > 1 else ""))
            need += sum(memory.estimate(kind, height, width, count)
                        for kind in ("image_input", "mask_input", "id_reference"))
        memory.check_fits(need, f"CHOI ID Features ({', '.join(sizes)})",
                          "use smaller photos (e.g. Upscale Image By < 1; the canvas is 224x224) or smaller batches")
        warnings: list[str] = []
        humans = list(zip(*_references(human_image, human_mask, "human", warnings)))
        objects = list(zip(*_references(object_image, object_mask, "object", warnings)))
        humans, objects = tensors.pair_batches("human", humans, "object", objects)
        features = []
        with mgig_model as model:
            for (h_img, h_mask), (o_img, o_mask) in zip(humans, objects):
                bridge.check_interrupt()
                features.append(choi.id_features(model, h_img, h_mask, o_img, o_mask, model_name=mgig_model.source))
        canvases = tensors.to_image([f.canvas.image for f in features])
        masks = tensors.to_mask([f.canvas.mask.astype(np.float32) / 255.0 for f in features])
        if warnings:  # also shown on the node (ComfyUI sends "ui" to the front end)
            return {"ui": {"text": warnings}, "result": (features, canvases, masks)}
        return (features, canvases, masks)


class CHOIDetailMap:
    DESCRIPTION = ("The Sobel high-frequency detail map of the reference canvas (colour weighted by edge "
                   "strength) that MGIG pastes into the target box. You may edit or replace it.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("detail_map",)
    OUTPUT_TOOLTIPS = ("Detail map, same size as the canvas.",)
    FUNCTION = "compute"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "reference_canvas": ("IMAGE", {"tooltip": "From CHOI ID Features."}),
            "canvas_mask": ("MASK", {"tooltip": "From CHOI ID Features."}),
            "threshold": ("INT", {"default": 50, "min": 0, "max": 255,
                                  "tooltip": "Edges weaker than this are dropped (official 50)."}),
        }}

    def compute(self, reference_canvas, canvas_mask, threshold):
        from ..pipelines import memory
        from ..pipelines.mgig.inputs import detail_map

        count, height, width = tensors.image_size(reference_canvas, "reference_canvas")
        memory.check_fits(sum(memory.estimate(kind, height, width, count)
                              for kind in ("image_input", "mask_input", "detail_map")),
                          f"CHOI Detail Map: {count} canvas(es) of {width}x{height}",
                          "use the 224x224 canvas of CHOI ID Features (or a smaller image)")
        images = tensors.image_batch(reference_canvas, "reference_canvas")
        masks = tensors.mask_batch(canvas_mask, "canvas_mask", size_hw=images[0].shape[:2])
        images, masks = tensors.pair_batches("reference_canvas", images, "canvas_mask", masks)
        return (tensors.to_image([detail_map(i, m, thresh=threshold) for i, m in zip(images, masks)]),)


class CHOIMaskGuidedSampler:
    DESCRIPTION = ("MGIG: paints the person and object into the interaction mask (inside the box of the "
                   "background, or on a white canvas), then pastes the result back.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE", "IMAGE", "MASK")
    RETURN_NAMES = ("image", "generated_crop", "alpha")
    OUTPUT_TOOLTIPS = ("The background with the generated pair pasted in.",
                       "The generated square crop (512x512) before pasting.",
                       "The alpha the generation was pasted with (1 = generated, 0 = your background kept, "
                       "between = blended): the feathered figure for paste = mask, the crop for paste = crop.")
    FUNCTION = "sample"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "mgig_model": ("MGIG_MODEL", {"tooltip": "From Load MGIG."}),
                "id_features": ("CHOI_ID", {"tooltip": "From CHOI ID Features."}),
                "detail_map": ("IMAGE", {"tooltip": "From CHOI Detail Map (or your edited version)."}),
                "interaction_mask": ("MASK", {"tooltip": "Human ∪ object silhouette in background pixels: from "
                                              "IAMG, IAMG-R + Fit Mask To Box, or painted by hand."}),
                **sampling_inputs("mgig"),
                "control_strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 2.0, "step": 0.05,
                                               "tooltip": "Scale of the ControlNet residuals (official 1.0)."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True,
                                 "tooltip": "Same seed, same images."}),
                "batch_size": ("INT", {"default": 1, "min": 1, "max": MAX_BATCH, "tooltip": "Images per identity "
                                       "pair (and per background, for a batch of backgrounds)."}),
                "mask_channel": (["mask", "box"], {"default": "mask", "tooltip": "What MGIG's 4th hint channel "
                                 "holds: the interaction mask (shape follows the mask) or its box (official "
                                 "inference; shape left to the model)."}),
                "crop_ratio": ("FLOAT", {"default": 1.3, "min": 1.0, "max": 3.0, "step": 0.05,
                                         "tooltip": "Context around the pair: crop = target box x this "
                                                    "(official draws 1.3..2.9 at random; 1.3 = tightest)."}),
                "paste": (list(PASTE_MODES), {"default": DEFAULT_PASTE, "tooltip": (
                    "How the generation goes back into the background. mask = only the generated figure (the "
                    f"interaction mask grown by {PASTE_GROW} and feathered over {PASTE_FEATHER} of the model's "
                    "pixels, so more background pixels on a large photo); the rest of your scene stays exactly as "
                    "it was. crop = the whole square crop is replaced (official).")}),
                "collage": (list(COLLAGES), {"default": DEFAULT_COLLAGE, "tooltip": (
                    "Where MGIG's hint covers your scene with the detail map. box = the whole target box "
                    "(official: the model repaints the scene around the figure inside the box). figure = only the "
                    "interaction mask and a small margin: the model sees (and gives back) the scene around the "
                    "figure inside the box too.")}),
            },
            "optional": {
                "background": ("IMAGE", {"tooltip": "Scene to generate into (white canvas when absent). A batch of "
                                         "backgrounds is generated into one by one (or paired with a batch of "
                                         "masks / identities of the same size)."}),
                "box": ("CHOI_BOX", {"tooltip": "Restrict the interaction mask to this box of the background."}),
            },
        }

    def sample(self, mgig_model, id_features, detail_map, interaction_mask, steps, sampler, guidance,
               control_strength, seed, batch_size, mask_channel, crop_ratio, paste, collage, background=None,
               box=None):
        from ..pipelines import memory
        from ..pipelines.mgig import pipeline as choi
        from ..pipelines.mgig.inputs import confine_to_box

        features = list(id_features)
        if not features:
            raise ValueError("id_features is empty (0 identity pairs); connect CHOI ID Features")
        bg_count, *bg_size = tensors.image_size(background, "background") if background is not None else (1, None)
        size_hw = tuple(bg_size) if background is not None else None
        masks = tensors.mask_batch(interaction_mask, "interaction_mask", size_hw=size_hw, threshold=0.5)
        size_hw = masks[0].shape
        if box is not None:
            box_px = check_box(box, size_hw)
            masks = [confine_to_box(m, box_px) for m in masks]
        details = tensors.image_batch(detail_map, "detail_map")
        features, details = tensors.pair_batches("id_features", features, "detail_map", details)
        pairs, masks = tensors.pair_batches("id_features", list(zip(features, details)), "interaction_mask", masks)
        # A batch of backgrounds: each gets its own generation (index lists: converted after the memory check).
        jobs, which_bg = tensors.pair_batches("id_features / interaction_mask", list(zip(pairs, masks)),
                                              "background", list(range(bg_count)))
        items = len(jobs) * batch_size
        what = (f"Mask-Guided Sampler: {items} image(s) of {size_hw[1]}x{size_hw[0]} ({len(jobs)} x batch_size "
                f"{batch_size})")
        advice = ("lower batch_size, use fewer identity pairs / masks / backgrounds, or a smaller background "
                  "(e.g. Upscale Image By < 1)")
        memory.check_fits(memory.estimate("mgig_images", *size_hw, items)
                          + memory.estimate("image_input", *size_hw, bg_count if background is not None else 0),
                          what, advice)
        backgrounds = tensors.image_batch(background, "background") if background is not None else [None]

        with memory.explained_out_of_memory(what, advice), mgig_model as model:
            for feat in {id(f): f for f, _ in pairs}.values():
                choi.check_features(model, feat, mgig_model.source)
            run = resolve_sampling("mgig", model, sampler, steps, guidance)
            steps, sampler, guidance = run.steps, run.sampler, run.guidance
            progress = bridge.Progress(steps * len(jobs))
            images = alphas = crops = None
            for k, (((feat, detail), mask), b) in enumerate(zip(jobs, which_bg)):
                def callback(i, total, x, x0, k=k):
                    progress.update(k * steps + i + 1, tensors.latent_preview(x0))

                result = choi.generate(model, feat, detail, mask, backgrounds[b], steps=steps, sampler=sampler,
                                       guidance=guidance, control_scale=control_strength, seed=seed,
                                       batch=batch_size, crop_ratio=crop_ratio, mask_channel=mask_channel,
                                       paste=paste, collage=collage, callback=callback)
                if images is None:  # outputs filled job by job (one job's full-size arrays in work at a time)
                    images = torch.empty((items, *result.images[0].shape))
                    crops = torch.empty((items, *result.crops[0].shape))
                    alphas = torch.empty((items, *result.pasted_mask.shape))
                first = k * batch_size
                for j, (image, crop) in enumerate(zip(result.images, result.crops)):
                    images[first + j] = torch.from_numpy(image)
                    crops[first + j] = torch.from_numpy(crop)
                alphas[first:first + batch_size] = torch.from_numpy(np.asarray(result.pasted_mask, np.float32))
                del result
        return (images.div_(255.0), crops.div_(255.0), alphas)
