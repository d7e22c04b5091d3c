"""The MGIG stage of CHOI as three readable steps (each one a ComfyUI node):

1. :func:`id_features` — the 224² reference canvas (human top-left, object bottom-right)
   and its DINOv2 identity context, plus the unconditional context (encoder on zeros).
2. :func:`inputs.detail_map` — the Sobel high-frequency map of that canvas.
3. :func:`generate` — build the hint around the interaction mask, sample with
   classifier-free guidance, decode, crop back into the background.

Images are uint8 HWC numpy arrays (float 0..1 accepted), masks HxW (bool / 0..1 / 0..255).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from .. import composite, samplers
from . import inputs as preprocess
from .model import MGIGModel, resize_hint, resize_square
from .refiner import reference_colours
from ..sampling_settings import OFFICIAL, RECOMMENDED

# Official and recommended sampling: one source, `sampling_settings` (which also says why).
DEFAULT_SAMPLER = OFFICIAL["mgig"].sampler
DEFAULT_STEPS = OFFICIAL["mgig"].steps
DEFAULT_GUIDANCE = OFFICIAL["mgig"].guidance
RECOMMENDED_SAMPLER = RECOMMENDED["mgig"].sampler
RECOMMENDED_STEPS = RECOMMENDED["mgig"].steps
RECOMMENDED_GUIDANCE = RECOMMENDED["mgig"].guidance


@dataclass
class IDFeatures:
    """What MGIG knows about *who* and *what*: context tokens for the conditional and
    unconditional passes (CPU float32, [1, tokens, context_dim]) and the canvas they came from.
    ``made_by`` names the MGIG whose ID encoder made them and ``encoder`` is that encoder's
    `encoder_signature`: only that model can sample with them (`check_features`)."""

    cond: torch.Tensor
    uncond: torch.Tensor
    canvas: preprocess.ReferenceCanvas
    made_by: str = ""
    encoder: tuple | None = None


# Values of the ID encoder's output projection compared by `check_features`, and how close
# they must be: the same weights loaded in another dtype (bf16: 8 mantissa bits) still match.
_SIGNATURE_VALUES = 64
_SIGNATURE_RTOL = 2e-2


def encoder_signature(model: MGIGModel) -> tuple:
    """What identifies the ID encoder that makes a model's identity tokens: the shape of its
    output projection and a spread sample of its weights (their values, as floats)."""
    weight = model.id_encoder.projector.weight.detach()
    flat = weight.reshape(-1)
    step = max(1, flat.numel() // _SIGNATURE_VALUES)
    return tuple(weight.shape), tuple(flat[::step][:_SIGNATURE_VALUES].float().cpu().tolist())


def check_features(model: MGIGModel, features: IDFeatures, model_name: str = "") -> None:
    """A `ValueError` naming both models when ``features`` were made by another MGIG's ID
    encoder than ``model``'s (tokens of another width cannot be used at all; tokens of other
    weights mean nothing to this model)."""
    if features.encoder is None:
        return
    (shape, values), (want_shape, want_values) = features.encoder, encoder_signature(model)
    if shape == want_shape:
        a, b = torch.tensor(values), torch.tensor(want_values)
        if torch.allclose(a, b, rtol=_SIGNATURE_RTOL, atol=_SIGNATURE_RTOL * float(b.abs().max())):
            return
    made_by = f"MGIG {features.made_by!r}" if features.made_by else "another MGIG"
    this = f"MGIG {model_name!r}" if model_name else "this MGIG"
    width = (f" (identity tokens {shape[0]} wide; {this} reads {want_shape[0]})" if shape[0] != want_shape[0]
             else " (an ID encoder with other weights)")
    raise ValueError(f"id_features were made by {made_by}, but the sampler uses {this}{width}: identity features "
                     "only work with the model that made them. Connect CHOI ID Features' mgig_model to the same "
                     "Load MGIG as the sampler")


@dataclass
class ChoiResult:
    """``images``: the background with the generation pasted in, one per batch item;
    ``crops``: the generated square crops (512², before pasting); ``pasted_mask``: the
    alpha the generation was pasted with (1 = generated pixel, 0 = the background kept,
    between = blended; `composite`); ``hint``: the MGIG hint that was used."""

    images: list[np.ndarray]
    crops: list[np.ndarray]
    pasted_mask: np.ndarray
    hint: preprocess.MGIGHint


def _device_dtype(model: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    p = next(model.parameters())
    return p.device, p.dtype


@torch.no_grad()
def id_features(model: MGIGModel, human_image, human_mask, object_image, object_mask, *,
                model_name: str = "") -> IDFeatures:
    """Reference canvas + DINOv2 identity context (DESIGN.md §3, "Reference (ID) input").
    ``model_name`` names the model in `check_features`' message."""
    canvas = preprocess.reference_canvas(human_image, human_mask, object_image, object_mask)
    device, dtype = _device_dtype(model)
    ref = torch.from_numpy(canvas.image).permute(2, 0, 1)[None].to(device=device, dtype=torch.float32) / 255.0
    cond = model.encode_id(ref.to(dtype)).float().cpu()
    uncond = model.uncond_context(1).float().cpu()
    return IDFeatures(cond=cond, uncond=uncond, canvas=canvas, made_by=model_name, encoder=encoder_signature(model))


def blank_background(mask_shape: tuple[int, int]) -> np.ndarray:
    """The canvas used when no background is given: white, the size of the mask."""
    return np.full((*mask_shape, 3), 255, dtype=np.uint8)


@torch.no_grad()
def generate(model: MGIGModel, features: IDFeatures, detail, interaction_mask, background=None, *,
             steps: int = DEFAULT_STEPS, sampler: str = DEFAULT_SAMPLER, guidance: float = DEFAULT_GUIDANCE,
             control_scale: float = 1.0, seed: int = 0, batch: int = 1,
             crop_ratio: float = preprocess.CROP_RATIO, box_ratio: float = preprocess.TARGET_BOX_RATIO,
             mask_channel: str = "mask", collage: str = preprocess.DEFAULT_COLLAGE,
             batched_guidance: bool = True, paste: str = composite.DEFAULT_PASTE,
             paste_grow: int = composite.PASTE_GROW, paste_feather: int = composite.PASTE_FEATHER,
             callback: Callable[[int, int, torch.Tensor, torch.Tensor], None] | None = None) -> ChoiResult:
    """Paint the identities into ``interaction_mask`` (background coordinates).

    mask_channel: "mask" feeds the interaction mask as the hint's 4th channel (what MGIG
      was trained on, and what makes the shape follow IAMG's mask); "box" feeds the box
      (the official inference path).
    collage: where the hint's detail map covers the scene (`inputs.build_hint`): "box"
      (official: the whole target box) or ★ "figure" (the grown mask only: the model sees
      the scene around the figure inside the box too, and a ★ refiner may copy it).
    paste: "mask" (default) pastes only the generated figure (the mask grown by
      ``paste_grow``, feathered over ``paste_feather``, both in the model's working pixels,
      `composite.paste_pixels`) and keeps the background elsewhere; "crop" replaces the
      whole crop, as the official code (`composite`).
    guidance: classifier-free guidance scale (official 5.0); the unconditional context is
      the encoder on an all-zero image. ``batched_guidance`` runs cond and uncond as one
      forward (same maths as the official two calls).
    seed: batch item i starts from noise drawn with the same generator in one [batch, …]
      tensor, so the same seed and batch always give the same images; the stochastic
      samplers (euler_a) draw their per-step noise from `samplers.step_generator` (seed).
    callback(i, total, x, pred_x0) after every step; raise from it to cancel.
    """
    samplers.check_settings(sampler, steps, guidance, control_scale)
    composite.check_paste(paste, paste_grow, paste_feather)
    check_features(model, features)
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    union = preprocess.as_mask(interaction_mask, "interaction_mask")
    if background is None:
        background = blank_background(union.shape)
    background = preprocess.as_image(background, "background")
    if background.shape[:2] != union.shape:
        raise ValueError(f"interaction_mask is {union.shape[1]}x{union.shape[0]} but the background is "
                         f"{background.shape[1]}x{background.shape[0]}; resize the mask to the background")
    hint = preprocess.build_hint(background, union, detail, box_ratio=box_ratio, crop_ratio=crop_ratio,
                                 mask_channel=mask_channel, collage=collage, colour=hint_colour(model, features))

    device, dtype = _device_dtype(model)
    hint_t = _model_hint(model, hint)
    size = int(model.config.image_size)
    latent_hw = (size // 8, size // 8)
    x_T = samplers.initial_noise((batch, model.latent_channels, *latent_hw), seed, device=device, dtype=dtype)
    cond = {"context": features.cond.to(device=device, dtype=dtype).expand(batch, -1, -1),
            "hint": hint_t.expand(batch, -1, -1, -1)}
    uncond = {"context": features.uncond.to(device=device, dtype=dtype).expand(batch, -1, -1),
              "hint": cond["hint"]}

    def model_fn(x, t, context, hint):
        return model.predict_eps(x, t, context, hint, control_scale=control_scale)

    eps_fn = samplers.guided_eps(model_fn, cond, uncond, guidance, batched=batched_guidance)
    z = samplers.sample(eps_fn, x_T, model.alphas_cumprod.to(device), steps, sampler=sampler,
                        callback=callback, generator=samplers.step_generator(seed))
    return _decode_and_paste(model, z, hint, hint_t, canvas_colours(features.canvas), union, background, paste,
                             paste_grow, paste_feather)


def hint_colour(model: MGIGModel, features: IDFeatures):
    """The ★ colour planes of the hint (`inputs.colour_collage` of the reference canvas the
    features came from) for a model with `MGIGConfig.colour_hint`, else None."""
    if not model.config.colour_hint:
        return None
    return preprocess.colour_collage(features.canvas.image, features.canvas.mask)


def canvas_colours(canvas: preprocess.ReferenceCanvas) -> torch.Tensor:
    """The references' mean colours a ★ refiner reads (`refiner.reference_colours`), [1, 6]."""
    image = torch.from_numpy(np.ascontiguousarray(canvas.image)).permute(2, 0, 1)[None].float() / 255.0
    mask = torch.from_numpy(np.ascontiguousarray(canvas.mask))[None, None].float() / 255.0
    return reference_colours(image, mask)


def _model_hint(model: MGIGModel, hint: preprocess.MGIGHint) -> torch.Tensor:
    # A model trained at a smaller size sees the hint at that size (as in training) and
    # its output is enlarged back to the official square before the crop-back.
    device, dtype = _device_dtype(model)
    hint_t = torch.from_numpy(hint.hint).permute(2, 0, 1)[None].to(device=device, dtype=dtype)
    return resize_hint(hint_t, int(model.config.image_size))


def _decode_and_paste(model: MGIGModel, z: torch.Tensor, hint: preprocess.MGIGHint, hint_t: torch.Tensor,
                      colours: torch.Tensor | None, union: np.ndarray, background: np.ndarray, paste: str,
                      paste_grow: int, paste_feather: int) -> ChoiResult:
    """Decode the latents (a ★ refiner reads the hint, its scene plane and the references'
    colours), enlarge to the official square and put each into the background: the whole
    crop (paste "crop") or the figure (`composite`)."""
    scene = None
    if model.refiner is not None:
        scene = resize_square(torch.from_numpy(hint.scene)[None, None], hint_t.shape[-1], "nearest")
    decoded = model.decode_latent(z, hint=hint_t, colours=colours, scene=scene).float().cpu()
    decoded = resize_square(decoded, hint.hint.shape[0], "bilinear").permute(0, 2, 3, 1).numpy()
    region = preprocess.pasted_box(hint.crop_box).mask(*background.shape[:2])
    if paste == "crop":
        alpha = region
    else:
        grow, feather = composite.paste_pixels(paste_grow, paste_feather, paste_scale(model, hint))
        alpha = composite.figure_alpha(union, region, grow=grow, feather=feather)
    images, crops = [], []
    for item in decoded:
        pred = preprocess.decoded_to_prediction(item)
        crops.append(np.clip(item * 127.5 + 127.5, 0, 255).astype(np.uint8))
        pasted = preprocess.crop_back(pred, background, hint.extra_sizes, hint.crop_box)
        images.append(pasted if paste == "crop" else composite.blend(pasted, background, alpha))
    return ChoiResult(images=images, crops=crops, pasted_mask=alpha, hint=hint)


def paste_scale(model: MGIGModel, hint: preprocess.MGIGHint) -> float:
    """How many background pixels one of the model's working pixels covers in the paste:
    the generated square is enlarged to the crop's side."""
    return hint.extra_sizes[2] / float(model.config.image_size)


def reconstruct(model: MGIGModel, target, interaction_mask, background, detail, *,
                canvas: preprocess.ReferenceCanvas | None = None,
                paste: str = composite.DEFAULT_PASTE, mask_channel: str = "mask",
                collage: str = preprocess.DEFAULT_COLLAGE, paste_grow: int = composite.PASTE_GROW,
                paste_feather: int = composite.PASTE_FEATHER) -> ChoiResult:
    """The latent's ceiling: what `generate` would give if sampling found the latent of the
    true ``target`` exactly. The target's crop (the one `generate` regenerates) is
    encoded (posterior mean) and decoded — through a ★ refiner with the hint built from
    ``background`` and ``detail`` and the colours of the reference ``canvas``, as
    `generate` would — then pasted back the same way.
    No diffusion: it measures what the VAE (and refiner) alone lose (`synthbench --ceiling`)."""
    composite.check_paste(paste, paste_grow, paste_feather)
    union = preprocess.as_mask(interaction_mask, "interaction_mask")
    background = preprocess.as_image(background, "background")
    target = preprocess.as_image(target, "target")
    if background.shape != target.shape or background.shape[:2] != union.shape:
        raise ValueError(f"target {target.shape}, background {background.shape} and interaction_mask "
                         f"{union.shape} must be the same size")
    hint = preprocess.build_hint(background, union, detail, mask_channel=mask_channel, collage=collage)
    crop = preprocess.build_hint(target, union, detail, mask_channel=mask_channel).target  # same geometry
    hint_t = _model_hint(model, hint)
    device, dtype = _device_dtype(model)
    size = int(model.config.image_size)
    crop_t = resize_square(torch.from_numpy(crop).permute(2, 0, 1)[None].to(device=device, dtype=dtype), size,
                           "area")
    with torch.no_grad():
        z = model.encode_latent(crop_t)
        colours = None if canvas is None else canvas_colours(canvas)
        return _decode_and_paste(model, z, hint, hint_t, colours, union, background, paste, paste_grow,
                                 paste_feather)
