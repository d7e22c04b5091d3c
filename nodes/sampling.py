"""The sampling widgets shared by IAMG Generate Mask and the Mask-Guided Sampler, and their
`auto` resolution (the settings themselves: `pipelines.sampling_settings`)."""
from __future__ import annotations

import logging

from ..pipelines.samplers import MAX_SCHEDULER_STEPS, MAX_STEPS, SAMPLER_NAMES
from ..pipelines.sampling_settings import AUTO, OFFICIAL, RECOMMENDED, resolve

log = logging.getLogger("interact_custom")

_WHAT = {"iamg": "text", "mgig": "identity"}


def sampling_inputs(kind: str) -> dict:
    """steps / sampler / guidance input specs (in this order: saved workflows rely on it)."""
    off, rec = OFFICIAL[kind], RECOMMENDED[kind]
    auto_says = (f"auto = the loaded model's own settings: official ({off.describe()}) for ε-prediction models "
                 f"such as the official checkpoint, recommended ({rec.describe()}) for the v-prediction models this "
                 "package trains, the embedded default among them. The log says what was used.")
    top = max(MAX_STEPS.values())
    return {
        "steps": ("INT", {"default": 0, "min": 0, "max": top, "tooltip": (
            f"Sampling steps; 0 = auto ({off.steps} official, {rec.steps} for the embedded default). At most "
            f"{top} for ddim/plms and {MAX_SCHEDULER_STEPS} for the other samplers.")}),
        "sampler": ([AUTO, *SAMPLER_NAMES], {"default": AUTO, "tooltip": (
            f"{auto_says} ddim/plms are the official samplers; dpmpp_2m/unipc reach similar quality in far "
            "fewer steps with the official checkpoints; euler_a suits the small embedded models (the deterministic "
            "samplers leave them doubled, smeared shapes).")}),
        "guidance": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 30.0, "step": 0.1, "tooltip": (
            f"Classifier-free guidance on the {_WHAT[kind]}; 0 = auto ({off.guidance:g} official, "
            f"{rec.guidance:g} for the embedded default)."
            + (" No effect, and no extra cost, for models that ignore text." if kind == "iamg" else ""))}),
    }


def resolve_sampling(kind: str, model, sampler: str, steps: int, guidance: float, **choices):
    """The run's settings (`sampling_settings.resolve`: the widgets left on auto filled in
    from the model, ``choices`` kept), logged when any was auto."""
    settings, line = resolve(kind, model, sampler, steps, guidance, **choices)
    if line:
        log.info("Interact-Custom %s", line)  # ComfyUI's console shows INFO by default
    return settings
