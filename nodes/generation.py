"""The MGIG stage: CHOI ID Features (DINOv2), CHOI Detail Map (Sobel), CHOI Mask-Guided Sampler."""
from __future__ import annotations

import numpy as np

from . import comfy_bridge as bridge
from . import tensors
from .common import Node, batch_input, check_box, outputs, seed_input, shown
from .sampling import resolve_sampling, sampling_inputs
from ..pipelines import memory
from ..pipelines.composite import PASTE_FEATHER, PASTE_GROW, PASTE_MODES
from ..pipelines.mgig import pipeline as choi
from ..pipelines.mgig.inputs import COLLAGES, confine_to_box, detail_map
from ..pipelines.sampling_settings import MGIGSettings


def _references(image, mask, name: str, warnings: list[str]) -> tuple[list, list]:
    images = tensors.image_batch(image, f"{name}_image")
    masks = tensors.mask_batch(mask, f"{name}_mask", size_hw=images[0].shape[:2], binary=True)
    for i, m in enumerate(masks):
        label = f"{name}_mask" + (f" (batch item {i + 1})" if len(masks) > 1 else "")
        if (warning := tensors.inverted_mask_warning(label, m)) is not None:
            bridge.warn(warning)
            warnings.append(warning)
    return tensors.pair_batches(f"{name}_image", images, f"{name}_mask", masks)


class CHOIIDFeatures(Node):
    DESCRIPTION = ("Identity features for MGIG: the person and the object are cut out by their masks, laid out on "
                   "one 224x224 reference canvas (person top-left, object bottom-right) and encoded by DINOv2.")
    RETURN_TYPES, RETURN_NAMES, OUTPUT_TOOLTIPS = outputs(
        ("CHOI_ID", "id_features", "Identity tokens (conditional and unconditional) for the Mask-Guided Sampler."),
        ("IMAGE", "reference_canvas", "The 224x224 canvas the encoder saw — check both cut-outs look right."),
        ("MASK", "canvas_mask", "Foreground of the canvas (input of CHOI Detail Map)."))
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
        return shown((features, canvases, masks), warnings)


class CHOIDetailMap(Node):
    DESCRIPTION = ("The Sobel high-frequency detail map of the reference canvas (colour weighted by edge "
                   "strength) that MGIG pastes into the target box. You may edit or replace it.")
    RETURN_TYPES, RETURN_NAMES, OUTPUT_TOOLTIPS = outputs(
        ("IMAGE", "detail_map", "Detail map, same size as the canvas."))
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
        count, height, width = tensors.image_size(reference_canvas, "reference_canvas")
        memory.check_fits(sum(memory.estimate(kind, height, width, count)
                              for kind in ("image_input", "mask_input", "detail_map")),
                          f"CHOI Detail Map: {count} canvas(es) of {width}x{height}",
                          "use the 224x224 canvas of CHOI ID Features (or a smaller image)")
        images = tensors.image_batch(reference_canvas, "reference_canvas")
        masks = tensors.mask_batch(canvas_mask, "canvas_mask", size_hw=images[0].shape[:2])
        images, masks = tensors.pair_batches("reference_canvas", images, "canvas_mask", masks)
        return (tensors.to_image([detail_map(i, m, thresh=threshold) for i, m in zip(images, masks)]),)


class CHOIMaskGuidedSampler(Node):
    DESCRIPTION = ("MGIG: paints the person and object into the interaction mask (inside the box of the "
                   "background, or on a white canvas), then pastes the result back.")
    RETURN_TYPES, RETURN_NAMES, OUTPUT_TOOLTIPS = outputs(
        ("IMAGE", "image", "The background with the generated pair pasted in."),
        ("IMAGE", "generated_crop", "The generated square crop (512x512) before pasting."),
        ("MASK", "alpha", "The alpha the generation was pasted with (1 = generated, 0 = your background kept, "
                          "between = blended): the feathered figure for paste = mask, the crop for paste = crop."))
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
                "control_strength": ("FLOAT", {"default": MGIGSettings.control_scale, "min": 0.0, "max": 2.0,
                                               "step": 0.05,
                                               "tooltip": "Scale of the ControlNet residuals (official 1.0)."}),
                "seed": seed_input("Same seed, same images."),
                "batch_size": batch_input("Images per identity pair (and per background, for a batch of "
                                          "backgrounds)."),
                "mask_channel": (["mask", "box"], {"default": MGIGSettings.mask_channel, "tooltip": (
                    "What MGIG's 4th hint channel holds: the interaction mask (shape follows the mask) or its box "
                    "(official inference; shape left to the model).")}),
                "crop_ratio": ("FLOAT", {"default": MGIGSettings.crop_ratio, "min": 1.0, "max": 3.0, "step": 0.05,
                                         "tooltip": "Context around the pair: crop = target box x this "
                                                    "(official draws 1.3..2.9 at random; 1.3 = tightest)."}),
                "paste": (list(PASTE_MODES), {"default": MGIGSettings.paste, "tooltip": (
                    "How the generation goes back into the background. mask = only the generated figure (the "
                    f"interaction mask grown by {PASTE_GROW} and feathered over {PASTE_FEATHER} of the model's "
                    "pixels, so more background pixels on a large photo); the rest of your scene stays exactly as "
                    "it was. crop = the whole square crop is replaced (official).")}),
                "collage": (list(COLLAGES), {"default": MGIGSettings.collage, "tooltip": (
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
        features = list(id_features)
        if not features:
            raise ValueError("id_features is empty (0 identity pairs); connect CHOI ID Features")
        bg_count, *bg_size = tensors.image_size(background, "background") if background is not None else (1, None)
        size_hw = tuple(bg_size) if background is not None else None
        masks = tensors.mask_batch(interaction_mask, "interaction_mask", size_hw=size_hw, binary=True)
        size_hw = masks[0].shape
        if box is not None:
            box_px = check_box(box, size_hw)
            masks = [confine_to_box(m, box_px) for m in masks]
        details = tensors.image_batch(detail_map, "detail_map")
        features, details = tensors.pair_batches("id_features", features, "detail_map", details)
        pairs, masks = tensors.pair_batches("id_features", list(zip(features, details)), "interaction_mask", masks)
        # A batch of backgrounds: each gets its own generation (index lists: converted after the memory check).
        matched, which_bg = tensors.pair_batches("id_features / interaction_mask", list(zip(pairs, masks)),
                                                 "background", list(range(bg_count)))
        items = len(matched) * batch_size
        what = (f"Mask-Guided Sampler: {items} image(s) of {size_hw[1]}x{size_hw[0]} ({len(matched)} x batch_size "
                f"{batch_size})")
        advice = ("lower batch_size, use fewer identity pairs / masks / backgrounds, or a smaller background "
                  "(e.g. Upscale Image By < 1)")
        memory.check_fits(choi.images_memory(size_hw, items, bg_count if background is not None else 0), what, advice)
        backgrounds = tensors.image_batch(background, "background") if background is not None else [None]
        jobs = [choi.ChoiJob(feat, detail, mask, backgrounds[b])
                for ((feat, detail), mask), b in zip(matched, which_bg)]

        with memory.explained_out_of_memory(what, advice), mgig_model as model:
            settings = resolve_sampling("mgig", model, sampler, steps, guidance, control_scale=control_strength,
                                        mask_channel=mask_channel, crop_ratio=crop_ratio, paste=paste, collage=collage)
            progress = bridge.Progress(settings.steps * len(jobs))
            out = choi.generate_all(model, jobs, settings=settings, seed=seed, batch=batch_size,
                                    model_name=mgig_model.source,
                                    callback=lambda i, total, x, x0: progress.update(i + 1, tensors.latent_preview(x0)))
        return (out.images, out.crops, out.alphas)
