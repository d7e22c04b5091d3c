"""The MGIG stage of CHOI as three readable steps (each one a ComfyUI node):

1. :func:`id_features` — the 224² reference canvas (human top-left, object bottom-right)
   and its DINOv2 identity context, plus the unconditional context (encoder on zeros).
2. :func:`inputs.detail_map` — the Sobel high-frequency map of that canvas.
3. :func:`generate` — build the hint around the interaction mask, sample with
   classifier-free guidance, decode, paste back into the background (`composite.paste`),
   all as its `MGIGSettings` say; :func:`generate_all` runs it for the Mask-Guided
   Sampler's batches of identities, masks and backgrounds.

Images are uint8 HWC numpy arrays (float 0..1 accepted), masks HxW (bool / 0..1 / 0..255).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple, Sequence

import numpy as np
import torch

from .. import composite, memory, samplers
from ..readers import as_image, as_mask
from . import inputs as preprocess
from .model import MGIGModel, resize_hint, resize_square
from .refiner import reference_colours
from ..sampling_settings import OFFICIAL, RECOMMENDED, MGIGSettings, settings_for

# The official and recommended sampling (one source, `sampling_settings`, which also says
# which a model gets: `generate` without settings samples as `settings_for` decides).
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
    """Reference canvas + DINOv2 identity context (docs/METHOD.md §4.2).
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


def _settings(model: MGIGModel, settings: MGIGSettings | None, choices: dict) -> MGIGSettings:
    """``settings`` as given, else made from the model and ``choices`` (`settings_for`)."""
    if settings is None:
        return settings_for("mgig", model, **choices)
    if choices:
        raise TypeError(f"pass the settings or the choices ({', '.join(choices)}), not both")
    return settings


@torch.no_grad()
def generate(model: MGIGModel, features: IDFeatures, detail, interaction_mask, background=None, *,
             settings: MGIGSettings | None = None, seed: int = 0, batch: int = 1,
             callback: Callable[[int, int, torch.Tensor, torch.Tensor], None] | None = None,
             **choices) -> ChoiResult:
    """Paint the identities into ``interaction_mask`` (background coordinates).

    settings: an `MGIGSettings` (`sampling_settings.settings_for("mgig", model, ...)`);
      without one it is made here from ``choices`` (its fields: ``sampler=``, ``steps=``,
      ``paste=``, ...), sampler, steps and guidance not given being the model's. Its fields:
    - mask_channel: "mask" feeds the interaction mask as the hint's 4th channel (what MGIG
      was trained on, and what makes the shape follow IAMG's mask); "box" feeds the box
      (the official inference path).
    - collage: where the hint's detail map covers the scene (`inputs.build_hint`): "box"
      (official: the whole target box) or ★ "figure" (the grown mask only: the model sees
      the scene around the figure inside the box too, and a ★ refiner may copy it).
    - paste: "mask" pastes only the generated figure and keeps the background elsewhere;
      "crop" replaces the whole crop, as the official code (`composite.paste`).
    - guidance: classifier-free guidance scale; the unconditional context is the encoder on
      an all-zero image. ``batched_guidance`` runs cond and uncond as one forward (same
      maths as the official two calls). ``control_scale`` scales the ControlNet residuals.
    seed: batch item i starts from noise drawn with the same generator in one [batch, …]
      tensor, so the same seed and batch always give the same images; the stochastic
      samplers (euler_a) draw their per-step noise from `samplers.step_generator` (seed).
    callback(i, total, x, pred_x0) after every step; raise from it to cancel.
    """
    settings = _settings(model, settings, choices)
    check_features(model, features)
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    union = as_mask(interaction_mask, "interaction_mask")
    if background is None:
        background = blank_background(union.shape)
    background = as_image(background, "background")
    if background.shape[:2] != union.shape:
        raise ValueError(f"interaction_mask is {union.shape[1]}x{union.shape[0]} but the background is "
                         f"{background.shape[1]}x{background.shape[0]}; resize the mask to the background")
    hint = preprocess.build_hint(background, union, detail, box_ratio=settings.box_ratio,
                                 crop_ratio=settings.crop_ratio, mask_channel=settings.mask_channel,
                                 collage=settings.collage, colour=hint_colour(model, features))

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
        return model.predict_eps(x, t, context, hint, control_scale=settings.control_scale)

    eps_fn = samplers.guided_eps(model_fn, cond, uncond, settings.guidance, batched=settings.batched_guidance)
    z = samplers.sample(eps_fn, x_T, model.alphas_cumprod.to(device), settings.steps, sampler=settings.sampler,
                        callback=callback, generator=samplers.step_generator(seed))
    return _decode_and_paste(model, z, hint, hint_t, canvas_colours(features.canvas), union, background,
                             settings.paste)


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
                      colours: torch.Tensor | None, union: np.ndarray, background: np.ndarray,
                      paste: str) -> ChoiResult:
    """Decode the latents (a ★ refiner reads the hint, its scene plane and the references'
    colours), enlarge to the official square and put them into the background as ``paste``
    says (`composite.paste`)."""
    scene = None
    if model.refiner is not None:
        scene = resize_square(torch.from_numpy(hint.scene)[None, None], hint_t.shape[-1], "nearest")
    decoded = model.decode_latent(z, hint=hint_t, colours=colours, scene=scene).float().cpu()
    decoded = resize_square(decoded, hint.hint.shape[0], "bilinear").permute(0, 2, 3, 1).numpy()
    crops = [np.clip(item * 127.5 + 127.5, 0, 255).astype(np.uint8) for item in decoded]
    images, alpha = composite.paste(paste, [composite.decoded_to_prediction(item) for item in decoded], background,
                                    union, hint, paste_scale(model, hint))
    return ChoiResult(images=images, crops=crops, pasted_mask=alpha, hint=hint)


def paste_scale(model: MGIGModel, hint: preprocess.MGIGHint) -> float:
    """How many background pixels one of the model's working pixels covers in the paste:
    the generated square is enlarged to the crop's side."""
    return hint.extra_sizes[2] / float(model.config.image_size)


def reconstruct(model: MGIGModel, target, interaction_mask, background, detail, *,
                canvas: preprocess.ReferenceCanvas | None = None, settings: MGIGSettings | None = None,
                **choices) -> ChoiResult:
    """The latent's ceiling: what `generate` would give if sampling found the latent of the
    true ``target`` exactly. The target's crop (the one `generate` regenerates) is
    encoded (posterior mean) and decoded — through a ★ refiner with the hint built from
    ``background`` and ``detail`` and the colours of the reference ``canvas``, as
    `generate` would — then pasted back the same way. ``settings`` / ``choices`` as for
    `generate` (the hint and paste choices apply; nothing is sampled).
    No diffusion: it measures what the VAE (and refiner) alone lose (`synthbench --ceiling`)."""
    settings = _settings(model, settings, choices)
    union = as_mask(interaction_mask, "interaction_mask")
    background = as_image(background, "background")
    target = as_image(target, "target")
    if background.shape != target.shape or background.shape[:2] != union.shape:
        raise ValueError(f"target {target.shape}, background {background.shape} and interaction_mask "
                         f"{union.shape} must be the same size")
    geometry = {"mask_channel": settings.mask_channel, "box_ratio": settings.box_ratio,
                "crop_ratio": settings.crop_ratio}
    hint = preprocess.build_hint(background, union, detail, collage=settings.collage, **geometry)
    crop = preprocess.build_hint(target, union, detail, **geometry).target  # the same crop
    hint_t = _model_hint(model, hint)
    device, dtype = _device_dtype(model)
    size = int(model.config.image_size)
    crop_t = resize_square(torch.from_numpy(crop).permute(2, 0, 1)[None].to(device=device, dtype=dtype), size,
                           "area")
    with torch.no_grad():
        z = model.encode_latent(crop_t)
        colours = None if canvas is None else canvas_colours(canvas)
        return _decode_and_paste(model, z, hint, hint_t, colours, union, background, settings.paste)


# ------------------------------------------------------- many generations at a time

@dataclass
class ChoiImages:
    """What `generate_all` made, ``batch`` items per job in job order (CPU float32):
    ``images`` [N, H, W, 3] and ``crops`` [N, S, S, 3] in 0..1, ``alphas`` [N, H, W] (each
    as `ChoiResult`'s ``images``, ``crops`` and ``pasted_mask``)."""

    images: torch.Tensor
    crops: torch.Tensor
    alphas: torch.Tensor


class ChoiJob(NamedTuple):
    """The inputs of one `generate` call of `generate_all`."""

    features: IDFeatures
    detail: np.ndarray
    interaction_mask: np.ndarray
    background: np.ndarray | None


def images_memory(size_hw: tuple[int, int], items: int, backgrounds: int) -> int:
    """Bytes `generate_all` holds for ``items`` images of ``size_hw`` (all jobs' batches
    together) beside ``backgrounds`` background images (0: none given): `memory.estimate`."""
    return memory.estimate("mgig_images", *size_hw, items) + memory.estimate("image_input", *size_hw, backgrounds)


def generate_all(model: MGIGModel, jobs: Sequence[ChoiJob], *, settings: MGIGSettings, seed: int = 0, batch: int = 1,
                 model_name: str = "",
                 callback: Callable[[int, int, torch.Tensor, torch.Tensor], None] | None = None) -> ChoiImages:
    """`generate` of each job with the same settings, seed and batch (every job's mask and
    background of one size): what the Mask-Guided Sampler runs for its batches of identities,
    masks and backgrounds. The features are checked against the model first
    (`check_features`, its message naming ``model_name``). ``callback(i, total, x,
    pred_x0)`` counts the steps of all jobs. The outputs are filled job by job: one job's
    full-size arrays are in work at a time (`images_memory`)."""
    for features in {id(job.features): job.features for job in jobs}.values():
        check_features(model, features, model_name)
    items = len(jobs) * batch
    images = crops = alphas = None
    for k, (features, detail, mask, background) in enumerate(jobs):
        def step(i, total, x, x0, k=k):
            callback(k * total + i, len(jobs) * total, x, x0)

        result = generate(model, features, detail, mask, background, settings=settings, seed=seed, batch=batch,
                          callback=None if callback is None else step)
        if images is None:
            images = torch.empty((items, *result.images[0].shape))
            crops = torch.empty((items, *result.crops[0].shape))
            alphas = torch.empty((items, *result.pasted_mask.shape))
        first = k * batch
        for j, (image, crop) in enumerate(zip(result.images, result.crops)):
            images[first + j] = torch.from_numpy(image)
            crops[first + j] = torch.from_numpy(crop)
        alphas[first:first + batch] = torch.from_numpy(np.asarray(result.pasted_mask, np.float32))
        del result
    return ChoiImages(images=images.div_(255.0), crops=crops.div_(255.0), alphas=alphas)
