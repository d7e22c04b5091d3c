"""Sampling settings per stage: the official ones and the ones measured for our models.

One source of truth for the nodes' `auto` choice, the demo, synthbench and the shipped
workflows. Which applies to a loaded model is read off the model itself
(`settings_for`): an ε-prediction model (the released `iamg.pth` / `mgig.ckpt`, and
anything trained the official way) samples with the official settings; a ★ v-prediction
model (what this package's `train` makes, the embedded defaults among them) with the
recommended ones, measured on the held-out synthetic split (docs/TRAINING.md): ancestral
Euler, 20 steps, MGIG guidance 3. With the deterministic samplers those small models leave
doubled, smeared figures and fragmented masks (docs/METHOD.md §11.6).

What one run uses is one value, made once from the model and the caller's choices by
`settings_for` and checked as it is made: `SamplingSettings` for IAMG, `MGIGSettings` (the
sampling plus MGIG's hint and paste choices) for MGIG. The nodes (`resolve`: their `auto`
widgets), the commands and the pipelines take that value, so every default is decided here
(a command that departs from one says so where it does: synthbench's paste).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields

from . import composite, samplers
from .mgig.inputs import COLLAGES, CROP_RATIO, DEFAULT_COLLAGE, MASK_CHANNELS, TARGET_BOX_RATIO

AUTO = "auto"  # the nodes' choice (sampler), or 0 for steps / guidance


@dataclass(frozen=True)
class SamplingSettings:
    """Sampler, steps and classifier-free guidance: one row of `OFFICIAL` / `RECOMMENDED`,
    and what an IAMG run takes (`settings_for("iamg", ...)`). Checked when made
    (`samplers.check_settings`)."""

    sampler: str
    steps: int
    guidance: float

    def __post_init__(self):
        samplers.check_settings(self.sampler, self.steps, self.guidance)

    def describe(self) -> str:
        return f"{self.sampler}, {self.steps} steps, guidance {self.guidance:g}"


@dataclass(frozen=True)
class MGIGSettings:
    """What one MGIG generation runs with besides its inputs, seed and batch
    (`pipeline.generate` says what each does): the sampling, the ControlNet strength, the
    hint (``mask_channel``, ``collage``, ``crop_ratio``, ``box_ratio``: `inputs.build_hint`),
    how the result goes back into the scene (``paste``: `composite.paste`) and whether the
    guided passes run as one batch. Made by `settings_for("mgig", model, ...)`, checked
    when made: the pipeline takes it as it is."""

    sampler: str
    steps: int
    guidance: float
    control_scale: float = 1.0
    mask_channel: str = "mask"  # what MGIG was trained on; makes the shape follow the mask
    collage: str = DEFAULT_COLLAGE
    crop_ratio: float = CROP_RATIO
    box_ratio: float = TARGET_BOX_RATIO
    paste: str = composite.DEFAULT_PASTE
    batched_guidance: bool = True

    def __post_init__(self):
        samplers.check_settings(self.sampler, self.steps, self.guidance, self.control_scale)
        composite.check_paste(self.paste)
        for name, value, choices in (("mask_channel", self.mask_channel, MASK_CHANNELS),
                                     ("collage", self.collage, COLLAGES)):
            if value not in choices:
                raise samplers.SettingsError(f"{name}: expected one of {', '.join(choices)}, got {value!r}")
        for name, value in (("crop_ratio", self.crop_ratio), ("box_ratio", self.box_ratio)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or not value > 0:
                raise samplers.SettingsError(f"{name}: expected a positive finite number, got {value!r}")

    @property
    def sampling(self) -> SamplingSettings:
        return SamplingSettings(self.sampler, self.steps, self.guidance)

    def describe(self) -> str:
        return self.sampling.describe()


OFFICIAL = {
    "iamg": SamplingSettings("plms", 50, 5.0),  # the official demo (guidance is a no-op for the released model)
    "mgig": SamplingSettings("ddim", 50, 5.0),  # AnyDoor's inference
}
RECOMMENDED = {
    "iamg": SamplingSettings("euler_a", 20, 5.0),
    "mgig": SamplingSettings("euler_a", 20, 3.0),
}
_SETTINGS = {"iamg": SamplingSettings, "mgig": MGIGSettings}


def model_defaults(kind: str, model) -> tuple[SamplingSettings, str]:
    """(sampling, why) a loaded IAMG / MGIG model samples with unless told otherwise: see
    the module docstring."""
    if kind not in OFFICIAL:
        raise ValueError(f"kind must be 'iamg' or 'mgig', got {kind!r}")
    if model.prediction_type == "v_prediction":
        return RECOMMENDED[kind], "recommended for this model (v-prediction, trained by this package)"
    return OFFICIAL[kind], "official settings (ε-prediction model, as the released checkpoints)"


def settings_for(kind: str, model, **choices) -> SamplingSettings | MGIGSettings:
    """The settings of one ``kind`` run with ``model``, made and checked here: a
    `SamplingSettings` for "iamg", an `MGIGSettings` for "mgig". Each choice given (not
    None) is kept; sampler, steps and guidance not given are the model's
    (`model_defaults`), MGIG's other choices their `MGIGSettings` defaults. Raises
    `samplers.SettingsError` (a ValueError) naming a bad value, TypeError for a choice
    ``kind`` does not have."""
    defaults, _ = model_defaults(kind, model)
    cls = _SETTINGS[kind]
    given = {name: value for name, value in choices.items() if value is not None}
    unknown = sorted(set(given) - {f.name for f in fields(cls)})
    if unknown:
        raise TypeError(f"{kind} settings have no {', '.join(unknown)}")
    return cls(**{"sampler": defaults.sampler, "steps": defaults.steps, "guidance": defaults.guidance, **given})


def resolve(kind: str, model, sampler: str, steps: int, guidance: float,
            **choices) -> tuple[SamplingSettings | MGIGSettings, str | None]:
    """`settings_for` from a node's widgets: each of ``sampler`` (AUTO), ``steps`` (0) and
    ``guidance`` (0) left on auto is the model's; ``choices`` as `settings_for`. Returns
    the settings and, when anything was automatic, a line for the log."""
    auto = [name for name, is_auto in (("sampler", sampler == AUTO), ("steps", not steps), ("guidance", not guidance))
            if is_auto]
    chosen = settings_for(kind, model, sampler=None if sampler == AUTO else sampler, steps=int(steps) or None,
                          guidance=float(guidance) or None, **choices)
    if not auto:
        return chosen, None
    why = model_defaults(kind, model)[1]
    return chosen, f"{kind.upper()} sampling: {chosen.describe()} ({', '.join(auto)} auto: {why})"
