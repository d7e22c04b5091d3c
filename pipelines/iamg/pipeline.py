"""IAMG generation: the sampling loop and `generate_mask`, the user-facing function
(background + box + prompt → `MaskResult`); `generate_masks` runs it for a batch of
backgrounds (IAMG Generate Mask)."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from .. import imgproc, memory, samplers
from ..geometry import check_xywh
from ..sampling_settings import OFFICIAL, SamplingSettings, settings_for
from .inputs import (CONTEXT_MODES, DEFAULT_THRESHOLD, DESPECKLE_FRACTION, condition_image, context_box,
                     crop_square_padding, soft_mask_from_decoded)
from .model import IAMGModel

log = logging.getLogger("interact_custom")

# Official sampling settings (test_demo.py: PLMS, 50 steps, guidance 5 with an empty
# prompt as the unconditional input — an exact no-op for the released network): what
# `sample_mask_latent` takes unless told, and what `generate_mask` gives an ε model
# (`sampling_settings.settings_for`, one source with the recommended ones).
DEFAULT_SAMPLER = OFFICIAL["iamg"].sampler
DEFAULT_STEPS = OFFICIAL["iamg"].steps
DEFAULT_GUIDANCE = OFFICIAL["iamg"].guidance


def sample_mask_latent(model: IAMGModel, cond_latent: torch.Tensor, *, steps: int = DEFAULT_STEPS,
                       sampler: str = DEFAULT_SAMPLER, seed: int = 0, x_T: torch.Tensor | None = None,
                       context: torch.Tensor | None = None, uncond_context: torch.Tensor | None = None,
                       guidance: float = DEFAULT_GUIDANCE,
                       callback: samplers.Callback | None = None,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """Sample a mask latent given the condition latent (official: PLMS, 50 steps).

    Classifier-free guidance applies to the text only. For the released network (no
    cross-attention) it is an exact no-op, so no unconditional pass runs: 51 UNet calls
    instead of 102, identical result. For the ★ variant pass ``context`` and
    ``uncond_context`` (CLIP of the prompt and of ""); cond and uncond then run as one
    batch of 2B. ``generator`` feeds the stochastic diffusers samplers (e.g. euler_a).
    """
    if x_T is None:
        x_T = samplers.initial_noise(tuple(cond_latent.shape), seed, device=cond_latent.device,
                                     dtype=cond_latent.dtype)
    uncond = None
    if model.uses_text:
        if context is None:
            raise ValueError("the text-conditioned IAMG needs `context` (encoded prompt)")
        if uncond_context is not None and guidance != 1.0:
            uncond = {"cond_latent": cond_latent, "context": uncond_context}
    cond = {"cond_latent": cond_latent, "context": context if model.uses_text else None}
    eps_fn = samplers.guided_eps(model.predict_eps, cond, uncond, guidance)
    return samplers.sample(eps_fn, x_T, model.alphas_cumprod, steps, sampler, callback, generator)


# Mask canvas without a background (height, width).
DEFAULT_CANVAS_HW = (512, 512)


@dataclass
class MaskResult:
    """Output of `generate_mask` (CPU tensors).

    ``soft`` [B, H, W] float32 in [0, 1] and ``binary`` [B, H, W] float32 in {0, 1}
    (soft > threshold), at the background's (or canvas's) size with the square padding
    removed; ``square`` [B, S, S] the soft mask in the model's square image space (of the context crop, if any);
    ``latent`` [B, 4, h, w] the sampled mask latent; ``seeds`` the per-sample seeds;
    ``box`` the validated (x, y, w, h) or None; ``used_text``: whether the prompt
    conditioned the network (False for the released model, which ignores it).
    """

    soft: torch.Tensor
    binary: torch.Tensor
    square: torch.Tensor
    latent: torch.Tensor
    seeds: list[int]
    prompt: str
    box: tuple[int, int, int, int] | None
    used_text: bool
    # What the user should know about this result (e.g. a prompt the model cannot read).
    warnings: list[str] = field(default_factory=list)


def _canvas_size(size_hw) -> tuple[int, int]:
    return DEFAULT_CANVAS_HW if size_hw is None else imgproc.check_size(size_hw)


def generate_mask(model: IAMGModel, *, prompt: str = "", background: np.ndarray | None = None,
                  box: Sequence[float] | None = None, size_hw: Sequence[int] | None = None,
                  settings: SamplingSettings | None = None, seed: int = 0, batch: int = 1,
                  threshold: float = DEFAULT_THRESHOLD, clip_to_box: bool = True, context: str = "auto",
                  despeckle: float = DESPECKLE_FRACTION, callback: samplers.Callback | None = None,
                  **choices) -> MaskResult:
    """Generate interaction masks (human ∪ object silhouettes) with IAMG.

    - ``settings``: the sampler, steps and guidance (`sampling_settings.settings_for("iamg",
      model, ...)`); without them they are made here from ``choices`` (``sampler=``,
      ``steps=``, ``guidance=``), each not given being the model's: the official PLMS 50
      for ε models, the recommended ones for the v-prediction models this package trains.

    - ``context`` (★): "box" runs IAMG on a square crop around the box in which the box
      has the share the model was trained with (`inputs.context_box`), so a small box in a
      large photo gets a whole figure, and places the mask back; "full" conditions on the
      whole image (the official procedure); "auto" = "box" for the v-prediction models this
      package trains, "full" for ε models such as the released iamg.pth.
    - ``despeckle`` (★): drop islands of the binary mask smaller than this share of its
      largest part (0 keeps everything); the soft mask is zeroed there too.

    - ``clip_to_box``: zero the mask outside ``box`` (a trained model already puts the pair
      in the box; this guarantees it, so the pair never spills over the user's scene).

    - ``background``: optional HxWx3 uint8 RGB image; ``box`` (x, y, w, h) in its pixels
      is blanked out (where the interaction goes) to form the condition C_bg. Masks come
      back at the background's size.
    - Without a background, masks are ``size_hw`` (height, width) (default 512×512).
      A ``box`` then refers to that canvas, and the condition is a white canvas with the
      box blanked; with no box either it is the empty condition (`empty_condition`).
    - ``prompt`` conditions the ★ text variant, with classifier-free guidance
      ``guidance`` against the empty prompt "" (cond and uncond in one batch). The
      released network has no cross-attention: the prompt is not even encoded and no
      unconditional pass runs (an exact no-op in the official sampler).
    - ``batch`` masks use seeds ``seed, seed + 1, …`` (sample i equals a single run with
      seed + i). ``callback(i, total, x, pred_x0)`` after every step.
    """
    if settings is None:
        settings = settings_for("iamg", model, **choices)
    elif choices:
        raise TypeError(f"pass the settings or the choices ({', '.join(choices)}), not both")
    if not 0.0 <= float(despeckle) <= 1.0:
        raise ValueError(f"despeckle: expected a share in [0, 1], got {despeckle!r}")
    if context not in CONTEXT_MODES:
        raise ValueError(f"context: expected one of {', '.join(CONTEXT_MODES)}, got {context!r}")
    if int(batch) < 1 or int(batch) != batch:
        raise ValueError(f"batch: expected a positive integer, got {batch!r}")
    if not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(f"threshold: expected a value in [0, 1], got {threshold!r}")
    batch = int(batch)
    if background is not None:
        img = np.asarray(background)
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise ValueError(f"background: expected an HxWx3 uint8 RGB image, got {img.dtype} {img.shape}")
        height, width = img.shape[:2]
        if size_hw is not None and _canvas_size(size_hw) != (height, width):
            raise ValueError(f"size_hw {tuple(size_hw)} differs from the background's size {(height, width)}; "
                             "masks are made at the background's size (leave size_hw unset)")
        what = "background"
    else:
        img = None
        height, width = _canvas_size(size_hw)
        what = "mask canvas (size_hw)"
    box_px = check_xywh(box, height, width, what) if box is not None else None

    with torch.inference_mode():
        crop = None
        if img is None and box_px is None:
            cond = model.empty_condition(1)
        else:
            if img is None:  # a box alone: a plain white canvas (the padding colour) with the box blanked
                img = np.full((height, width, 3), 255, np.uint8)
            if box_px is not None and _crops_to_box(model, context):
                crop = context_box(box_px, height, width)
                if (crop.width, crop.height) != (width, height):
                    img, cond_box = img[crop.slices], box_px.relative_to(crop)
                else:
                    crop, cond_box = None, box_px
            else:
                crop, cond_box = None, box_px
            cond = model.encode_condition(condition_image(img, cond_box, model.image_size)).float()
        cond = cond.expand(batch, *cond.shape[1:])

        context = uncond = None
        warnings = []
        if model.uses_text:
            context = model.encode_prompts([prompt]).expand(batch, -1, -1)
            for warning in prompt_warnings(model, prompt):
                log.warning("IAMG: %s", warning)
                warnings.append(warning)
            if settings.guidance != 1.0:
                uncond = model.encode_prompts([""]).expand(batch, -1, -1)

        seeds = [int(seed) + i for i in range(batch)]
        x_T = torch.cat([samplers.initial_noise((1, *cond.shape[1:]), s, device=model.device) for s in seeds])
        generator = samplers.step_generator(seed)
        latent = sample_mask_latent(model, cond, steps=settings.steps, sampler=settings.sampler, x_T=x_T,
                                    context=context, uncond_context=uncond, guidance=settings.guidance,
                                    callback=callback, generator=generator)
        # The masks at the canvas size are made on the CPU, one item at a time: their size is the user's
        # (up to a photo's), the model's square is not.
        square = soft_mask_from_decoded(model.decode(latent).float().cpu())
        soft, binary = _canvas_masks(square, height, width, crop, box_px if clip_to_box else None, threshold,
                                     despeckle)
    return MaskResult(soft=soft, binary=binary, square=square,
                      latent=latent.float().cpu(), seeds=seeds, prompt=str(prompt),
                      box=None if box_px is None else box_px.xywh, warnings=warnings,
                      used_text=model.uses_text)


def _canvas_masks(square: torch.Tensor, height: int, width: int, crop, clip_box, threshold: float,
                  despeckle: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The soft and binary masks [B, height, width] (float32, CPU) of the model's soft
    squares [B, S, S]: each enlarged into its place (the ``crop`` it was generated for,
    else the whole canvas; `inputs.mask_from_decoded`), zeroed outside ``clip_box``,
    thresholded and despeckled in place, one item at a time."""
    soft = square.new_zeros((square.shape[0], height, width))
    binary = torch.zeros_like(soft)
    region = crop.slices if crop is not None else (slice(None), slice(None))
    size = (crop.height, crop.width) if crop is not None else (height, width)
    for i in range(square.shape[0]):
        item = soft[i]
        item[region] = crop_square_padding(square[i:i + 1], *size)[0]
        if clip_box is not None:
            inside = clip_box.clipped(height, width).slices
            kept_box = item[inside].clone()
            item.zero_()
            item[inside] = kept_box
        fg = item > threshold  # outside the box too: soft is 0 there and threshold >= 0
        if despeckle > 0:
            kept = torch.from_numpy(imgproc.drop_small_components(fg.numpy(), despeckle).astype(bool))
            fg &= kept
            item.masked_fill_(~kept, 0.0)
        binary[i] = fg
    return soft, binary


def _crops_to_box(model: IAMGModel, context: str) -> bool:
    if context == "auto":
        return model.prediction_type == "v_prediction"
    return context == "box"


def prompt_warnings(model: IAMGModel, prompt: str) -> list[str]:
    """What the model cannot read in the prompt (word-level tokenizers): one warning for
    each word outside the vocabulary (a typo, emoji, a rare word), which the model sees as
    an unknown token with no meaning, or one when no word at all is readable (the model
    then generates as if there were no prompt); and one for each word in the vocabulary
    that none of its training captions used (when `train` recorded them: the model has not
    learned it). Empty for a prompt it knows."""
    found = model.tokenizer.unknown_words(prompt) if model.tokenizer is not None else None
    if found is None:
        return []
    unknown, total = found
    if total and len(unknown) >= total:
        return [f"none of the words of the prompt {prompt!r} is in this model's vocabulary, so it generates as if "
                "there were no prompt; describe the interaction in English, e.g. 'a person is riding the bicycle'"]
    warnings = []
    for word in dict.fromkeys(unknown):
        close = model.tokenizer.closest_words(word)
        hint = f" (did you mean {' or '.join(repr(w) for w in close)}?)" if close else ""
        warnings.append(f"the word {word!r} of the prompt is not in this model's vocabulary{hint}: the model reads "
                        "it as an unknown word with no meaning, so the mask follows the rest of the prompt only; "
                        "use a word it knows")
    trained = model.tokenizer.trained_words
    for word in model.tokenizer.untrained_words(prompt):
        close = model.tokenizer.closest_words(word, among=trained)
        hint = f" (did you mean {' or '.join(repr(w) for w in close)}?)" if close else ""
        warnings.append(f"the word {word!r} of the prompt is in none of the captions this model was trained on"
                        f"{hint}: it has not learned what it means, so the mask may ignore it")
    return warnings


# ------------------------------------------------------- many backgrounds at a time

@dataclass
class BackgroundMasks:
    """What `generate_masks` made, ``batch`` masks per background in background order (CPU
    float32 [N, H, W]): ``binary`` and ``soft`` as `MaskResult`'s; ``warnings`` each once."""

    binary: torch.Tensor
    soft: torch.Tensor
    warnings: list[str]


def masks_memory(size_hw: tuple[int, int], items: int, backgrounds: int) -> int:
    """Bytes `generate_masks` and its caller's previews hold for ``items`` masks of
    ``size_hw`` (all backgrounds' batches together) beside ``backgrounds`` background
    images (0: none given): `memory.estimate`."""
    return memory.estimate("iamg_masks", *size_hw, items) + memory.estimate("image_input", *size_hw, backgrounds)


def generate_masks(model: IAMGModel, backgrounds: Sequence[np.ndarray | None], *, prompt: str,
                   size_hw: tuple[int, int], box: Sequence[float] | None, settings: SamplingSettings,
                   seed: int = 0, batch: int = 1, threshold: float = DEFAULT_THRESHOLD, clip_to_box: bool = True,
                   callback: samplers.Callback | None = None) -> BackgroundMasks:
    """`generate_mask` of each background (None: the ``size_hw`` canvas) with the same
    prompt, box, settings, seed and batch: what IAMG Generate Mask runs for a batch of
    backgrounds. ``callback(i, total, x, pred_x0)`` counts the steps of all backgrounds. The
    outputs are filled background by background: one set of full-size arrays is in work at
    a time (`masks_memory`)."""
    items = len(backgrounds) * batch
    binary, soft = torch.empty((items, *size_hw)), torch.empty((items, *size_hw))
    warnings: list[str] = []
    for k, background in enumerate(backgrounds):
        def step(i, total, x, x0, k=k):
            callback(k * total + i, len(backgrounds) * total, x, x0)

        result = generate_mask(model, prompt=prompt, background=background, box=box, size_hw=size_hw,
                               settings=settings, seed=seed, batch=batch, threshold=threshold,
                               clip_to_box=clip_to_box, callback=None if callback is None else step)
        first = k * batch
        binary[first:first + batch] = result.binary
        soft[first:first + batch] = result.soft
        warnings += [w for w in result.warnings if w not in warnings]
        del result
    return BackgroundMasks(binary=binary, soft=soft, warnings=warnings)
