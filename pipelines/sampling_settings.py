"""Sampling settings per stage: the official ones and the ones measured for our models.

One source of truth for the nodes' `auto` choice, the demo, synthbench and the shipped
workflows. Which applies to a loaded model is read off the model itself
(`settings_for`): an ε-prediction model (the released `iamg.pth` / `mgig.ckpt`, and
anything trained the official way) samples with the official settings; a ★ v-prediction
model (what this package's `train` makes, the embedded defaults among them) with the
recommended ones, measured on the held-out synthetic split (README, "The embedded
default"): ancestral Euler, 20 steps, MGIG guidance 3. With the deterministic samplers
those small models leave doubled, smeared figures and fragmented masks.
"""
from __future__ import annotations

from dataclasses import dataclass

AUTO = "auto"  # the nodes' choice (sampler), or 0 for steps / guidance


@dataclass(frozen=True)
class SamplingSettings:
    sampler: str
    steps: int
    guidance: float

    def describe(self) -> str:
        return f"{self.sampler}, {self.steps} steps, guidance {self.guidance:g}"


OFFICIAL = {
    "iamg": SamplingSettings("plms", 50, 5.0),  # the official demo (guidance is a no-op for the released model)
    "mgig": SamplingSettings("ddim", 50, 5.0),  # AnyDoor's inference
}
RECOMMENDED = {
    "iamg": SamplingSettings("euler_a", 20, 5.0),
    "mgig": SamplingSettings("euler_a", 20, 3.0),
}


def settings_for(kind: str, model) -> tuple[SamplingSettings, str]:
    """(settings, why) for a loaded IAMG / MGIG model: see the module docstring."""
    if kind not in OFFICIAL:
        raise ValueError(f"kind must be 'iamg' or 'mgig', got {kind!r}")
    prediction = getattr(model, "prediction_type", None) or getattr(getattr(model, "config", None),
                                                                     "prediction_type", "epsilon")
    if prediction == "v_prediction":
        return RECOMMENDED[kind], "recommended for this model (v-prediction, trained by this package)"
    return OFFICIAL[kind], "official settings (ε-prediction model, as the released checkpoints)"


def resolve(kind: str, model, sampler: str, steps: int, guidance: float) -> tuple[SamplingSettings, str | None]:
    """The settings a node runs with: each of ``sampler`` (AUTO), ``steps`` (0) and
    ``guidance`` (0) left on auto is taken from `settings_for`; the others are kept.
    Returns the settings and, when anything was automatic, a line for the log."""
    stored, why = settings_for(kind, model)
    auto = [name for name, is_auto in (("sampler", sampler == AUTO), ("steps", not steps), ("guidance", not guidance))
            if is_auto]
    chosen = SamplingSettings(stored.sampler if sampler == AUTO else sampler, int(steps) or stored.steps,
                              float(guidance) or stored.guidance)
    if not auto:
        return chosen, None
    return chosen, f"{kind.upper()} sampling: {chosen.describe()} ({', '.join(auto)} auto: {why})"
