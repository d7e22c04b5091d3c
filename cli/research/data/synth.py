"""Procedural synthetic CHOI data: seeded, reproducible, numpy + PIL only.

The paper's dataset (§4) pairs a target interaction image with reference images of the
*same* human and object in *different* poses, so a model can separate identity from
interaction pose. This module makes such data without any download:

* **Humans** are articulated figures (pelvis, torso, head, two arms, two legs; a pose is
  a set of joint angles, turned into limbs by forward kinematics, or by two-link inverse
  kinematics where a hand or foot must reach the object). A human's *identity* is its
  appearance: skin tone, hair, shirt colour + pattern (plain / stripes / dots / checks),
  sleeves, trousers or shorts, shoes, build and height.
* **Objects** of nine categories (`CATEGORIES`), each with its own colour/pattern identity
  and size.
* **Interactions** (nine verbs, `pipelines.vocabulary.INTERACTIONS`) each define the human
  pose and where the object sits relative to the body (in a hand, under the feet, under
  the pelvis, ...); `COMPATIBLE` says which objects take part in which.
* **Backgrounds**: outdoor (sky/ground gradients, sun, clouds, hills, trees, houses) or
  indoor (wall/floor, window, picture).

Each identity pair is rendered in `scenes_per_pair` scenes with different interactions
(or poses); a sample's target is one scene, its human reference the human alone in the
next scene, its object reference the object alone in the one after, so references always
show another pose / placement. Output is the `cli.research.data.dataset` format; captions read
"a person is kicking the ball"; each index line also carries ``description`` (with the
appearance: "a person in a red striped shirt ... the blue polka-dot ball") and ``synth``
(pair, scene numbers, joint angles). Scenes are drawn in resolution-free units, so one seed
gives the same data at any ``size``.

CLI (``cli/synth.py``): ``python -m interact_custom synth --out DIR --count N --seed S
[--size PX] [--val-fraction F] [--overwrite]`` and ``python -m interact_custom synth
--examples DIR`` (the demo inputs shipped in ``pipelines/assets/examples``, see
`write_examples`).
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
from PIL import Image, ImageDraw

from .dataset import ChoiWriter, save_png
from ....pipelines.files import write_text_atomic
from ....pipelines.geometry import mask_box
from ....pipelines.vocabulary import CAPTION_TEMPLATE, INTERACTIONS

# ----------------------------------------------------------------------------- vocabulary

# object category -> the interactions (`INTERACTIONS` verbs) it takes part in.
COMPATIBLE: dict[str, tuple[str, ...]] = {
    "ball": ("hold", "kick", "throw"),
    "bicycle": ("ride", "push"),
    "chair": ("sit_on", "carry", "push"),
    "umbrella": ("hold",),
    "box": ("carry", "sit_on", "push"),
    "skateboard": ("ride", "carry", "hold"),
    "bat": ("swing", "hold"),
    "racket": ("swing", "hold"),
    "kite": ("fly", "hold"),
}
CATEGORIES: tuple[str, ...] = tuple(COMPATIBLE)

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (200, 45, 45), "orange": (235, 130, 35), "yellow": (240, 205, 50),
    "green": (60, 160, 75), "teal": (30, 150, 150), "blue": (45, 95, 200),
    "navy": (30, 45, 100), "purple": (125, 65, 170), "pink": (235, 130, 170),
    "white": (240, 240, 235), "grey": (130, 130, 135), "black": (35, 35, 40),
    "brown": (120, 75, 40), "beige": (215, 195, 150),
}
SKIN_TONES = ((255, 219, 172), (241, 194, 125), (224, 172, 105), (198, 134, 66), (141, 85, 36), (92, 58, 35))
HAIR_COLOURS = {"black": (25, 20, 20), "brown": (90, 55, 30), "blond": (220, 185, 100),
                "red": (160, 60, 30), "grey": (170, 170, 170)}
PATTERNS = ("plain", "stripes", "dots", "checks")
_PATTERN_ADJ = {"plain": "", "stripes": "striped ", "dots": "polka-dot ", "checks": "checked "}

# Body proportions in units of the standing height (feet to head top ~= 1).
BODY = dict(thigh=0.245, shin=0.235, torso=0.29, neck=0.035, head_r=0.065, upper_arm=0.155,
            forearm=0.14, foot=0.055, foot_r=0.022, hand_r=0.026)
BALL_R = 0.065  # ball radius, body units (before the identity size)
MARGIN = 0.03  # free border around the pair, in image heights (keeps masks off the edge)
HUMAN, OBJECT = 1, 2  # label values of the rendered label map


# ----------------------------------------------------------------------------- identities


@dataclass(frozen=True)
class Look:
    """A coloured, patterned surface: base colour, pattern, pattern colour, period."""

    name: str
    rgb: tuple[int, int, int]
    pattern: str
    name2: str
    rgb2: tuple[int, int, int]
    period: float  # body units

    def shaded(self, k: float) -> "Look":
        return replace(self, rgb=_shade(self.rgb, k), rgb2=_shade(self.rgb2, k))

    def describe(self) -> str:
        return f"{self.name} {_PATTERN_ADJ[self.pattern]}"


@dataclass(frozen=True)
class HumanIdentity:
    """Everything that makes one synthetic person recognisable across poses."""

    skin: tuple[int, int, int]
    hair: str
    hair_style: str  # short | long | bald | cap
    cap: tuple[int, int, int]
    shirt: Look
    long_sleeves: bool
    trousers: str
    shorts: bool
    shoes: tuple[int, int, int]
    build: float
    height: float

    def describe(self) -> str:
        legs = "shorts" if self.shorts else "trousers"
        shirt = f"{self.shirt.describe()}shirt"
        article = "an" if shirt[0] in "aeiou" else "a"
        return f"a person in {article} {shirt} and {self.trousers} {legs}"


@dataclass(frozen=True)
class ObjectIdentity:
    """One synthetic object instance: category, main look, accent colour, size."""

    category: str
    look: Look
    accent: str
    size: float
    dims: tuple[float, float] = (0.0, 0.0)  # box width/height (body units)

    def describe(self) -> str:
        return f"the {self.look.describe()}{self.category}"


def _shade(rgb, k):
    return tuple(int(max(0, min(255, round(c * k)))) for c in rgb)


def _jitter(rng, rgb, amount=12):
    return tuple(int(v) for v in np.clip(np.asarray(rgb) + rng.integers(-amount, amount + 1, 3), 0, 255))


def _pick(rng, seq):
    seq = list(seq)
    return seq[int(rng.integers(len(seq)))]


def random_look(rng: np.random.Generator, period: tuple[float, float] = (0.03, 0.06),
                names: tuple[str, ...] | None = None) -> Look:
    """A random named colour with a random pattern in a contrasting second colour."""
    name = _pick(rng, names or COLOURS)
    name2 = _pick(rng, [n for n in COLOURS if n != name])
    return Look(name, _jitter(rng, COLOURS[name]), _pick(rng, PATTERNS), name2,
                _jitter(rng, COLOURS[name2]), float(rng.uniform(*period)))


def random_human(rng: np.random.Generator) -> HumanIdentity:
    """Sample a human identity (appearance only; pose comes from the interaction)."""
    hair = _pick(rng, HAIR_COLOURS)
    return HumanIdentity(
        skin=_jitter(rng, _pick(rng, SKIN_TONES), 8), hair=hair,
        hair_style=_pick(rng, ("short", "long", "bald", "cap")),
        cap=_jitter(rng, COLOURS[_pick(rng, COLOURS)]),
        shirt=random_look(rng, (0.03, 0.055)), long_sleeves=bool(rng.random() < 0.5),
        trousers=_pick(rng, ("blue", "navy", "black", "grey", "brown", "beige", "green")),
        shorts=bool(rng.random() < 0.25),
        shoes=_jitter(rng, COLOURS[_pick(rng, ("black", "white", "brown", "red", "blue"))]),
        build=float(rng.uniform(0.9, 1.15)), height=float(rng.uniform(0.93, 1.06)))


def random_object(rng: np.random.Generator, category: str) -> ObjectIdentity:
    """Sample an object identity of `category` (one of `CATEGORIES`)."""
    if category not in COMPATIBLE:
        raise ValueError(f"unknown object category {category!r}; expected one of {list(CATEGORIES)}")
    look = random_look(rng, (0.025, 0.05))
    accent = _pick(rng, [n for n in COLOURS if n != look.name])
    size = float(rng.uniform(0.8, 1.3) if category == "ball" else rng.uniform(0.9, 1.1))
    dims = (float(rng.uniform(0.22, 0.34)), float(rng.uniform(0.16, 0.25))) if category == "box" else (0.0, 0.0)
    return ObjectIdentity(category, look, accent, size, dims)


def caption(verb: str, category: str) -> str:
    """The interaction prompt, e.g. ``caption("sit_on", "chair")`` -> "a person is sitting on the chair"."""
    return CAPTION_TEMPLATE.format(phrase=INTERACTIONS[verb], object=category)


# ----------------------------------------------------------------------------- primitives


@dataclass
class Tex:
    """Texture placement for a `Look`: pattern anchored at `origin`, stripes across `axis`."""

    look: Look
    origin: np.ndarray
    axis: np.ndarray
    period: float


@dataclass
class Prim:
    """One drawn shape. kinds: circle (pts[0], size=r), capsule (pts[0:2], size=r),
    poly (pts), ring (pts[0], size=r, width), line (polyline pts, width)."""

    kind: str
    pts: np.ndarray
    paint: Any  # RGB tuple or Tex
    owner: int  # label written under the shape: HUMAN, OBJECT or 0
    group: str  # "human" | "object" | "background": what `render(parts=...)` selects
    z: float
    size: float = 0.0
    width: float = 0.0


def _xform(prims: list[Prim], A: np.ndarray, t: np.ndarray) -> list[Prim]:
    """Apply the similarity p -> A p + t (A = scale * rotation, maybe mirrored)."""
    s = math.sqrt(abs(np.linalg.det(A)))
    out = []
    for p in prims:
        paint = p.paint
        if isinstance(paint, Tex):
            ax = A @ paint.axis
            paint = Tex(paint.look, A @ paint.origin + t, ax / np.linalg.norm(ax), paint.period * s)
        out.append(replace(p, pts=p.pts @ A.T + t, paint=paint, size=p.size * s, width=p.width * s))
    return out


def _bbox(prims: list[Prim]) -> tuple[float, float, float, float]:
    lo, hi = np.full(2, np.inf), np.full(2, -np.inf)
    for p in prims:
        pad = p.size + p.width / 2 if p.kind in ("circle", "capsule", "ring", "line") else 0.0
        lo = np.minimum(lo, p.pts.min(0) - pad)
        hi = np.maximum(hi, p.pts.max(0) + pad)
    return float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1])


def _dir(a: float) -> np.ndarray:
    """Unit vector for angle `a` in degrees: 0 points down, 90 forward (+x), 180 up."""
    r = math.radians(a)
    return np.array([math.sin(r), math.cos(r)])


def _angle(v: np.ndarray) -> float:
    return math.degrees(math.atan2(v[0], v[1]))


def _rot(deg: float) -> np.ndarray:
    r = math.radians(deg)
    return np.array([[math.cos(r), -math.sin(r)], [math.sin(r), math.cos(r)]])


def _along(a: float) -> float:
    """Rotation (degrees, for `_rot`) that turns local +x into `_dir(a)`."""
    return 90.0 - a


def _P(*xy) -> np.ndarray:
    return np.asarray(xy, dtype=np.float64).reshape(-1, 2)


def _rect(x0, y0, x1, y1) -> np.ndarray:
    return _P(x0, y0, x1, y0, x1, y1, x0, y1)


# ----------------------------------------------------------------------------- human


@dataclass
class Pose:
    """Joint angles in degrees, facing +x. Angles use `_dir`: 0 = down, 90 = forward.
    Arms: (upper-arm angle, elbow flex added for the forearm); legs: (thigh angle, knee
    bend subtracted for the shin); torso: forward lean."""

    torso: float
    near_arm: tuple[float, float]
    far_arm: tuple[float, float]
    near_leg: tuple[float, float]
    far_leg: tuple[float, float]

    def as_dict(self) -> dict[str, float]:
        return {"torso": round(self.torso, 2),
                **{f"{limb}_{i}": round(float(v), 2) for limb in ("near_arm", "far_arm", "near_leg", "far_leg")
                   for i, v in enumerate(getattr(self, limb))}}


def _lengths(h: HumanIdentity) -> dict[str, float]:
    return {k: v * h.height for k, v in BODY.items()}


def _fk(pose: Pose, L: dict[str, float]) -> dict[str, Any]:
    """Forward kinematics: joint positions (pelvis at the origin, y down)."""
    up = _dir(180.0 - pose.torso)
    J: dict[str, Any] = {"pelvis": np.zeros(2), "up": up, "fwd": np.array([-up[1], up[0]])}
    J["neck"] = up * L["torso"]
    J["shoulder"] = up * (L["torso"] - 0.025)
    J["head"] = J["neck"] + up * (L["neck"] + L["head_r"])
    for side in ("near", "far"):
        sa, ea = getattr(pose, f"{side}_arm")
        J[f"{side}_elbow"] = J["shoulder"] + _dir(sa) * L["upper_arm"]
        J[f"{side}_hand"] = J[f"{side}_elbow"] + _dir(sa + ea) * L["forearm"]
        J[f"{side}_forearm"] = sa + ea
        ha, ka = getattr(pose, f"{side}_leg")
        J[f"{side}_knee"] = _dir(ha) * L["thigh"]
        J[f"{side}_ankle"] = J[f"{side}_knee"] + _dir(ha - ka) * L["shin"]
        J[f"{side}_toe"] = J[f"{side}_ankle"] + _dir(ha - ka + 90.0) * L["foot"]
    J["ground"] = max(J["near_ankle"][1], J["far_ankle"][1]) + L["foot_r"]
    return J


def _ik(S: np.ndarray, T: np.ndarray, l1: float, l2: float, bend: int) -> tuple[float, float]:
    """Two-link inverse kinematics: (first-segment angle, relative second angle) so the
    chain from S ends at T (or as close as the lengths allow). bend=+1 bends like a knee
    (forward), -1 like an elbow."""
    D = T - S
    d = float(np.linalg.norm(D))
    if d < 1e-9:
        D, d = np.array([0.0, 1.0]), 1e-9
    d = min(max(d, abs(l1 - l2) + 1e-6), l1 + l2 - 1e-6)
    alpha = math.degrees(math.acos(max(-1.0, min(1.0, (l1 * l1 + d * d - l2 * l2) / (2 * l1 * d)))))
    beta = math.degrees(math.acos(max(-1.0, min(1.0, (l1 * l1 + l2 * l2 - d * d) / (2 * l1 * l2)))))
    return _angle(D) + bend * alpha, -bend * (180.0 - beta)


def _reach_arm(pose: Pose, L, side: str, target: np.ndarray) -> Pose:
    J = _fk(pose, L)
    a1, a2 = _ik(J["shoulder"], target, L["upper_arm"], L["forearm"], -1)
    return replace(pose, **{f"{side}_arm": (a1, a2)})


def _reach_leg(pose: Pose, L, side: str, target: np.ndarray) -> Pose:
    a1, a2 = _ik(np.zeros(2), target, L["thigh"], L["shin"], +1)
    return replace(pose, **{f"{side}_leg": (a1, -a2)})


def _human_prims(h: HumanIdentity, J: dict[str, Any], L: dict[str, float]) -> list[Prim]:
    b, up, fwd = h.build, J["up"], J["fwd"]
    trousers = COLOURS[h.trousers]
    prims: list[Prim] = []

    def add(kind, pts, paint, z, size=0.0, width=0.0):
        prims.append(Prim(kind, _P(*np.ravel(pts)), paint, HUMAN, "human", z, size, width))

    def shirt(k):
        return Tex(h.shirt.shaded(k), J["neck"], up, h.shirt.period)

    # Far limbs are darker and behind the torso, near limbs in front: a side view.
    for side, k, z in (("far", 0.8, -1.0), ("near", 1.0, 1.0)):
        hip, knee, ankle, toe = J["pelvis"], J[f"{side}_knee"], J[f"{side}_ankle"], J[f"{side}_toe"]
        add("capsule", [hip, knee], _shade(trousers, k), z - 0.1, 0.043 * b)
        add("capsule", [knee, ankle], _shade(h.skin if h.shorts else trousers, k), z - 0.09, 0.036 * b)
        add("capsule", [ankle, toe], _shade(h.shoes, k), z - 0.08, L["foot_r"])
        sh, el, ha = J["shoulder"], J[f"{side}_elbow"], J[f"{side}_hand"]
        add("capsule", [sh, el], shirt(k), z, 0.031 * b)
        add("capsule", [el, ha], shirt(k) if h.long_sleeves else _shade(h.skin, k), z + 0.01, 0.026 * b)
        add("circle", [ha], _shade(h.skin, k), z + 0.02, L["hand_r"])
    add("capsule", [up * 0.03, J["neck"] - up * 0.02], shirt(1.0), 0.0, 0.066 * b)
    add("capsule", [np.zeros(2), up * 0.035], trousers, 0.01, 0.058 * b)
    add("capsule", [J["neck"], J["neck"] + up * 0.04], h.skin, -0.01, 0.024)
    hc, r = J["head"], L["head_r"]
    hair = HAIR_COLOURS[h.hair]
    if h.hair_style == "long":
        add("capsule", [hc - fwd * 0.03, hc - fwd * 0.045 - up * 0.1], hair, 0.05, 0.042)
    if h.hair_style in ("short", "long"):
        add("circle", [hc + up * 0.012 - fwd * 0.006], hair, 0.1, r * 1.05)
        add("circle", [hc - up * 0.01 + fwd * 0.01], h.skin, 0.11, r * 0.92)
    else:
        add("circle", [hc], h.skin, 0.1, r)
    if h.hair_style == "cap":
        dome = [hc + r * 1.04 * (math.cos(t) * fwd + math.sin(t) * up) for t in np.linspace(0, math.pi, 13)]
        add("poly", dome, h.cap, 0.115)
        add("capsule", [hc + up * 0.012, hc + up * 0.012 + fwd * (r + 0.035)], _shade(h.cap, 0.85), 0.116, 0.01)
    add("circle", [hc + fwd * 0.036 + up * 0.005], (30, 25, 25), 0.12, 0.008)
    return prims


# ----------------------------------------------------------------------------- objects


def _object_prims(o: ObjectIdentity) -> list[Prim]:
    """The object in its own frame (body units before `o.size`); see `_OBJECT_FRAMES`."""
    main = Tex(o.look, np.zeros(2), np.array([1.0, 0.0]), o.look.period)
    acc = COLOURS[o.accent]
    dark = (45, 45, 50)
    P: list[Prim] = []

    def add(kind, pts, paint, dz=0.0, size=0.0, width=0.0, owner=OBJECT):
        P.append(Prim(kind, _P(*np.ravel(pts)), paint, owner, "object", dz, size, width))

    c = o.category
    if c == "ball":
        add("circle", [0, 0], main, 0, BALL_R)
    elif c == "box":
        w, h = o.dims
        add("poly", _rect(-w / 2, -h / 2, w / 2, h / 2), main)
        add("poly", _rect(-w / 2, -0.015, w / 2, 0.015), acc, 0.001)  # packing tape
    elif c == "chair":  # origin: seat top centre; backrest at -x
        add("capsule", [[-0.115, 0.03], [-0.115, 0.23]], acc, -0.002, 0.012)
        add("capsule", [[0.115, 0.03], [0.115, 0.23]], acc, -0.002, 0.012)
        add("capsule", [[-0.118, 0.0], [-0.118, -0.3]], acc, -0.001, 0.013)
        add("poly", _rect(-0.135, -0.3, -0.095, -0.12), main, 0.0)
        add("poly", _rect(-0.13, 0.0, 0.13, 0.035), main, 0.001)
    elif c == "umbrella":  # origin: grip; shaft along +x, canopy at the far end
        add("capsule", [[-0.035, 0.0], [0.0, 0.0]], acc, 0.0, 0.014)
        add("capsule", [[0.0, 0.0], [0.46, 0.0]], dark, 0.0, 0.008)
        dome = [(0.43 + 0.17 * math.cos(t), 0.3 * math.sin(t)) for t in np.linspace(-math.pi / 2, math.pi / 2, 19)]
        canopy = Tex(o.look, np.array([0.43, 0.0]), np.array([0.0, 1.0]), o.look.period * 1.6)
        add("poly", dome, canopy, 0.001)
        add("capsule", [[0.59, 0.0], [0.63, 0.0]], dark, 0.002, 0.007)
    elif c == "skateboard":  # origin: deck top centre; deck along x
        for x in (-0.12, 0.12):
            add("poly", _rect(x - 0.02, 0.022, x + 0.02, 0.034), (160, 160, 165), 0.0)
            add("circle", [x, 0.045], acc, 0.001, 0.017)
        add("capsule", [[-0.17, 0.012], [0.17, 0.012]], main, 0.002, 0.013)
    elif c == "bat":  # origin: knob end; barrel along +x
        add("poly", [(0.0, -0.011), (0.14, -0.012), (0.40, -0.026), (0.40, 0.026), (0.14, 0.012), (0.0, 0.011)], main)
        add("circle", [0.40, 0.0], main, 0.0, 0.026)
        add("capsule", [[0.0, 0.0], [0.12, 0.0]], acc, 0.001, 0.013)
        add("circle", [0.0, 0.0], acc, 0.002, 0.018)
    elif c == "racket":  # origin: grip end; head along +x
        frame = Tex(o.look, np.array([0.3, 0.0]), np.array([1.0, 0.0]), o.look.period * 0.6)
        add("capsule", [[0.0, 0.0], [0.15, 0.0]], acc, 0.0, 0.014)
        add("line", [[0.14, 0.0], [0.205, -0.045]], frame, 0.0, width=0.016)
        add("line", [[0.14, 0.0], [0.205, 0.045]], frame, 0.0, width=0.016)
        for x in np.linspace(0.215, 0.385, 6):
            half = 0.085 * math.sqrt(max(0.0, 1 - ((x - 0.3) / 0.11) ** 2))
            add("line", [[x, -half], [x, half]], (235, 235, 225), 0.001, width=0.004)
        for y in np.linspace(-0.065, 0.065, 6):
            half = 0.11 * math.sqrt(max(0.0, 1 - (y / 0.085) ** 2))
            add("line", [[0.3 - half, y], [0.3 + half, y]], (235, 235, 225), 0.001, width=0.004)
        ring = [(0.3 + 0.11 * math.cos(t), 0.085 * math.sin(t)) for t in np.linspace(0, 2 * math.pi, 33)]
        add("line", ring, frame, 0.002, width=0.018)
    elif c == "kite":  # origin: kite centre; nose at -y
        add("poly", [(0.0, -0.17), (0.12, -0.04), (0.0, 0.19), (-0.12, -0.04)], main)
        add("line", [[0.0, -0.17], [0.0, 0.19]], dark, 0.001, width=0.008)
        add("line", [[-0.12, -0.04], [0.12, -0.04]], dark, 0.001, width=0.008)
        tail = [(0.035 * math.sin(i * 1.3), 0.19 + 0.045 * i) for i in range(7)]
        add("line", tail, acc, 0.0, width=0.007)
        for x, y in tail[1::2]:
            bow = [(x - 0.025, y - 0.012), (x + 0.025, y + 0.012), (x + 0.025, y - 0.012), (x - 0.025, y + 0.012)]
            add("poly", bow, acc, 0.001)
    elif c == "bicycle":  # origin: saddle top; front wheel at +x, wheels touch y = 0.52
        tyre, frame = (40, 40, 45), main
        rear, front, bb = np.array([-0.28, 0.36]), np.array([0.30, 0.36]), np.array([0.02, 0.36])
        for hub in (rear, front):
            add("ring", [hub], tyre, 0.0, 0.145, 0.03)
            add("ring", [hub], acc, 0.001, 0.125, 0.008)
            for t in np.linspace(0, math.pi, 4, endpoint=False):
                d = 0.125 * np.array([math.cos(t), math.sin(t)])
                add("line", [hub - d, hub + d], (190, 190, 195), 0.0005, width=0.004)
            add("circle", [hub], (150, 150, 155), 0.002, 0.014)
        seat, head_top, head_bot = np.array([-0.03, 0.04]), np.array([0.24, 0.06]), np.array([0.27, 0.15])
        for a, bnd in ((bb, seat), (seat, [-0.02, 0.09]), ([-0.02, 0.09], head_top), (head_top, head_bot),
                       (head_bot, front), (head_bot, bb), (bb, rear), (seat + [0, 0.03], rear)):
            add("line", [a, bnd], frame, 0.003, width=0.022)
        add("line", [head_top, [0.22, -0.06], [0.28, -0.07]], dark, 0.004, width=0.016)
        add("capsule", [[-0.07, 0.0], [0.04, 0.0]], acc, 0.005, 0.016)
        add("circle", [bb], dark, 0.006, 0.022)
    return P


# Named points of each object frame that interactions attach to (body units, before size).
_OBJECT_FRAMES = {
    "bicycle": {"handlebar": (0.27, -0.07), "bb": (0.02, 0.36), "ground": (0.0, 0.52)},
    "chair": {"backrest_top": (-0.118, -0.29), "ground": (0.0, 0.24)},
}


def _place(o: ObjectIdentity, anchor: np.ndarray, rot: float, z: float) -> list[Prim]:
    prims = _xform(_object_prims(o), o.size * _rot(rot), np.asarray(anchor, float))
    for p in prims:
        p.z += z
    return prims


def _frame_point(o: ObjectIdentity, name: str, anchor, rot: float = 0.0) -> np.ndarray:
    return np.asarray(anchor, float) + o.size * (_rot(rot) @ np.asarray(_OBJECT_FRAMES[o.category][name]))


# ----------------------------------------------------------------------------- interactions

# Each builder returns (pose, object prims, extra prims) in the body frame (pelvis at 0,
# facing +x). Ranges are in degrees; every scene draws fresh values, so the same pair in
# the same interaction still changes pose.


def _U(rng, a, b):
    return float(rng.uniform(a, b))


def _stand(rng) -> dict[str, tuple[float, float]]:
    return {"near_leg": (_U(rng, -6, 12), _U(rng, 0, 12)), "far_leg": (_U(rng, -12, 6), _U(rng, 0, 12))}


def _stride(rng, back="near") -> dict[str, tuple[float, float]]:
    front = "far" if back == "near" else "near"
    return {f"{back}_leg": (_U(rng, -30, -10), _U(rng, 0, 18)), f"{front}_leg": (_U(rng, 8, 28), _U(rng, 5, 28))}


def _hold(rng, h, o, L):
    pose = Pose(_U(rng, -4, 6), (0, 0), (_U(rng, -15, 10), _U(rng, 5, 25)), **_stand(rng))
    c = o.category
    if c == "umbrella":
        pose = replace(pose, near_arm=(_U(rng, 25, 55), _U(rng, 80, 115)))
        J = _fk(pose, L)
        return pose, _place(o, J["near_hand"], _along(_U(rng, 165, 195)), 0.95), []
    if c in ("bat", "racket"):
        pose = replace(pose, near_arm=(_U(rng, 5, 35), _U(rng, 10, 60)))
        J = _fk(pose, L)
        a = _U(rng, 15, 55) if rng.random() < 0.5 else _U(rng, 110, 160)
        return pose, _place(o, J["near_hand"] - _dir(a) * 0.03, _along(a), 0.95), []
    if c == "skateboard":
        pose = replace(pose, near_arm=(_U(rng, -5, 15), _U(rng, 0, 20)))
        J = _fk(pose, L)
        return pose, _place(o, J["near_hand"] + np.array([0.03, -0.1]), 90 + _U(rng, -12, 12), 0.95), []
    pose = replace(pose, near_arm=(_U(rng, 15, 45), _U(rng, 40, 80)))
    J = _fk(pose, L)
    if c == "kite":
        return pose, _place(o, J["near_hand"] + np.array([0.04, -0.15]) * o.size, _U(rng, -20, 20), 0.95), []
    r = BALL_R * o.size  # ball: resting on the palm
    return pose, _place(o, J["near_hand"] + _dir(J["near_forearm"]) * r * 0.4 + np.array([0, -r * 0.8]), 0, 0.95), []


def _kick(rng, h, o, L):
    pose = Pose(_U(rng, -12, 0), (_U(rng, -50, -20), _U(rng, 10, 35)), (_U(rng, 30, 70), _U(rng, 10, 40)),
                near_leg=(_U(rng, 45, 80), _U(rng, 0, 25)), far_leg=(_U(rng, -18, -6), _U(rng, 0, 12)))
    J = _fk(pose, L)
    r = BALL_R * o.size
    centre = J["near_toe"] + np.array([r + 0.012 + _U(rng, 0, 0.08), -r * 0.4])
    return pose, _place(o, centre, _U(rng, 0, 360), 1.5), []


def _carry(rng, h, o, L):
    pose = Pose(_U(rng, -8, 4), (0, 0), (0, 0), **_stride(rng, back="far"))
    J = _fk(pose, L)
    sh, c = J["shoulder"], o.category
    if c == "box":
        w, hh = (d * o.size for d in o.dims)
        centre = np.array([sh[0] + 0.03 + w / 2, sh[1] + _U(rng, 0.1, 0.18)])
        near_t = centre + np.array([w * 0.2, hh * 0.05])
        far_t = centre + np.array([w * 0.42, -hh * 0.1])
        objs = _place(o, centre, _U(rng, -5, 5), 0.5)
    elif c == "chair":
        seat = np.array([sh[0] + _U(rng, 0.17, 0.23), sh[1] + _U(rng, 0.12, 0.2)])
        rot = _U(rng, -15, 15)
        near_t, far_t = seat + _rot(rot) @ np.array([-0.08, 0.02]), seat + _rot(rot) @ np.array([0.1, 0.02])
        objs = _place(o, seat, rot, 0.5)
    else:  # skateboard under the arm
        deck = np.array([J["pelvis"][0] + 0.03, J["pelvis"][1] - _U(rng, 0.02, 0.08)])
        rot = _U(rng, -20, 10)
        near_t = far_t = deck + _rot(rot) @ np.array([0.06, 0.0])
        objs = _place(o, deck, rot, 0.95)
    pose = _reach_arm(pose, L, "near", near_t)
    pose = _reach_arm(pose, L, "far", far_t)
    return pose, objs, []


def _ride(rng, h, o, L):
    if o.category == "bicycle":
        pose = Pose(_U(rng, 18, 35), (0, 0), (0, 0), (0, 0), (0, 0))
        saddle = np.array([_U(rng, -0.03, 0.01), 0.045])
        bar = _frame_point(o, "handlebar", saddle)
        pose = _reach_arm(pose, L, "near", bar + np.array([0.0, 0.005]))
        pose = _reach_arm(pose, L, "far", bar + np.array([-0.025, 0.0]))
        theta = _U(rng, 0, 2 * math.pi)
        crank = 0.075 * o.size * np.array([math.cos(theta), math.sin(theta)])
        bb = _frame_point(o, "bb", saddle)
        pose = _reach_leg(pose, L, "near", bb + crank - np.array([0, L["foot_r"]]))
        pose = _reach_leg(pose, L, "far", bb - crank - np.array([0, L["foot_r"]]))
        objs = _place(o, saddle, 0, -0.5)
        dark = (45, 45, 50)
        for s, zz in ((crank, -0.45), (-crank, -0.55)):
            objs.append(Prim("line", _P(bb, bb + s), dark, OBJECT, "object", zz, width=0.012 * o.size))
        return pose, objs, []
    pose = Pose(_U(rng, -5, 10), (_U(rng, 30, 80), _U(rng, 0, 30)), (_U(rng, -70, -30), _U(rng, 0, 30)),
                near_leg=(_U(rng, 8, 22), _U(rng, 5, 25)), far_leg=(_U(rng, -22, -8), _U(rng, 5, 25)))
    J = _fk(pose, L)
    deck = np.array([(J["near_ankle"][0] + J["far_ankle"][0]) / 2 + 0.02, J["ground"] + 0.002])
    return pose, _place(o, deck, _U(rng, -4, 4), -0.5), []


def _sit_on(rng, h, o, L):
    ha, ka = _U(rng, 78, 98), _U(rng, 75, 100)
    pose = Pose(_U(rng, -10, 6), (_U(rng, 5, 40), _U(rng, 20, 70)), (_U(rng, 5, 40), _U(rng, 20, 70)),
                near_leg=(ha, ka), far_leg=(ha + _U(rng, -6, 6), ka + _U(rng, -8, 8)))
    if o.category == "chair":
        return pose, _place(o, np.array([_U(rng, 0.03, 0.07), 0.048]), 0, -0.5), []
    hh = o.dims[1] * o.size
    return pose, _place(o, np.array([_U(rng, 0.0, 0.05), 0.048 + hh / 2]), 0, -0.5), []


def _throw(rng, h, o, L):
    pose = Pose(_U(rng, -8, 10), (_U(rng, 140, 175), _U(rng, -40, 5)), (_U(rng, 40, 80), _U(rng, 0, 30)),
                **_stride(rng, back="near"))
    J = _fk(pose, L)
    r = BALL_R * o.size
    centre = J["near_hand"] + _dir(J["near_forearm"]) * (L["hand_r"] + r + _U(rng, 0.0, 0.15))
    return pose, _place(o, centre, _U(rng, 0, 360), 1.5), []


def _push(rng, h, o, L):
    pose = Pose(_U(rng, 18, 35), (0, 0), (0, 0), **_stride(rng, back="near"))
    J = _fk(pose, L)
    ground, sh, c = J["ground"], J["shoulder"], o.category
    if c == "box":
        w, hh = (d * o.size for d in o.dims)
        x0 = sh[0] + _U(rng, 0.15, 0.22)
        objs = _place(o, np.array([x0 + w / 2, ground - hh / 2]), 0, 0.5)
        near_t = np.array([x0 + 0.005, ground - hh * _U(rng, 0.55, 0.85)])
        far_t = near_t + np.array([0.0, -0.03])
    elif c == "chair":
        back_x = sh[0] + _U(rng, 0.16, 0.24)
        seat = np.array([back_x + 0.118 * o.size, ground - 0.24 * o.size])
        objs = _place(o, seat, 0, 0.5)
        near_t = _frame_point(o, "backrest_top", seat)
        far_t = near_t + np.array([0.01, 0.02])
    else:  # bicycle, walked alongside
        saddle = np.array([_U(rng, 0.02, 0.12), ground - 0.52 * o.size])
        objs = _place(o, saddle, 0, -0.5)
        near_t = _frame_point(o, "handlebar", saddle) + np.array([0.0, 0.005])
        far_t = saddle + np.array([0.0, -0.01])
    pose = _reach_arm(pose, L, "near", near_t)
    pose = _reach_arm(pose, L, "far", far_t)
    return pose, objs, []


def _swing(rng, h, o, L):
    pose = Pose(_U(rng, -5, 15), (0, 0), (_U(rng, 20, 60), _U(rng, 20, 50)),
                near_leg=(_U(rng, 10, 25), _U(rng, 5, 20)), far_leg=(_U(rng, -25, -10), _U(rng, 5, 20)))
    J = _fk(pose, L)
    grip = J["shoulder"] + _dir(_U(rng, 60, 120)) * _U(rng, 0.17, 0.25)
    a = _U(rng, 40, 150) if rng.random() < 0.7 else _U(rng, 190, 230)
    pose = _reach_arm(pose, L, "near", grip)
    if o.category == "bat":  # two hands on the handle
        pose = _reach_arm(pose, L, "far", grip - _dir(a) * 0.045)
    return pose, _place(o, grip - _dir(a) * 0.03, _along(a), 0.95), []


def _fly(rng, h, o, L):
    pose = Pose(_U(rng, -10, 0), (_U(rng, 110, 150), _U(rng, -20, 10)), (_U(rng, -10, 20), _U(rng, 5, 30)),
                **_stand(rng))
    J = _fk(pose, L)
    hand = J["near_hand"]
    centre = hand + np.array([_U(rng, 0.3, 0.55), -_U(rng, 0.3, 0.5)])
    rot = _U(rng, -25, 25)
    objs = _place(o, centre, rot, 0.95)
    tail_top = centre + o.size * (_rot(rot) @ np.array([0.0, 0.19]))
    mid = (hand + tail_top) / 2 + np.array([0.0, 0.03])
    # The line is drawn but unlabelled: segmentation masks of real kites leave it out too.
    string = Prim("line", _P(hand, mid, tail_top), (60, 60, 60), 0, "object", -3.0, width=0.004)
    return pose, objs, [string]


_BUILDERS: dict[str, Callable] = {
    "hold": _hold, "kick": _kick, "carry": _carry, "ride": _ride, "sit_on": _sit_on,
    "throw": _throw, "push": _push, "swing": _swing, "fly": _fly,
}


# ----------------------------------------------------------------------------- backgrounds


@dataclass
class Background:
    """Procedural backdrop: two vertical gradients split at `horizon` plus shapes."""

    top: tuple
    horizon_sky: tuple
    horizon_ground: tuple
    bottom: tuple
    horizon: float  # in image heights
    prims: list[Prim] = field(default_factory=list)


def random_background(rng: np.random.Generator, aspect: float = 1.0) -> Background:
    """An outdoor (70 %) or indoor scene, in units of the image height."""
    P: list[Prim] = []

    def add(kind, pts, rgb, size=0.0, width=0.0):
        P.append(Prim(kind, _P(*np.ravel(pts)), _jitter(rng, rgb, 10), 0, "background", 0.0, size, width))

    if rng.random() < 0.7:
        sky = _pick(rng, [((95, 150, 225), (185, 215, 245)), ((140, 175, 230), (230, 235, 245)),
                          ((90, 90, 160), (245, 175, 120)), ((160, 175, 190), (215, 220, 225))])
        ground = _pick(rng, [((110, 165, 80), (70, 125, 55)), ((215, 195, 145), (190, 165, 115)),
                             ((140, 140, 140), (105, 105, 110)), ((235, 240, 245), (205, 215, 225))])
        hz = _U(rng, 0.45, 0.68)
        bg = Background(sky[0], sky[1], ground[0], ground[1], hz)
        if rng.random() < 0.5:
            add("circle", [_U(rng, 0.1, aspect - 0.1), _U(rng, 0.08, hz * 0.5)], (250, 225, 120), _U(rng, 0.04, 0.08))
        for _ in range(int(rng.integers(0, 4))):
            cx, cy, s = _U(rng, 0, aspect), _U(rng, 0.05, hz * 0.6), _U(rng, 0.03, 0.06)
            for dx, dy, k in ((-1.2, 0.2, 0.8), (0, 0, 1.0), (1.2, 0.25, 0.75)):
                add("circle", [cx + dx * s, cy + dy * s], (245, 245, 250), s * k)
        for _ in range(int(rng.integers(0, 3))):
            # A hill is the part of a big disc that rises above the horizon.
            r, cx = _U(rng, 0.15, 0.4), _U(rng, 0, aspect)
            cy = hz + r * _U(rng, 0.45, 0.8)
            arc = [(cx + r * math.cos(t), min(hz, cy - r * math.sin(t))) for t in np.linspace(0, math.pi, 25)]
            add("poly", arc, _shade(ground[0], 0.88))
        for _ in range(int(rng.integers(0, 3))):
            x, s = _U(rng, 0, aspect), _U(rng, 0.6, 1.2)
            base = hz + _U(rng, 0.0, 0.04)
            add("poly", _rect(x - 0.012 * s, base - 0.12 * s, x + 0.012 * s, base), (100, 70, 40))
            add("circle", [x, base - 0.16 * s], (50, 120, 60), 0.06 * s)
        if rng.random() < 0.35:
            x, w, hh = _U(rng, 0, aspect - 0.2), _U(rng, 0.12, 0.2), _U(rng, 0.08, 0.14)
            base = hz + 0.01
            wall = COLOURS[_pick(rng, ("white", "beige", "yellow", "pink"))]
            add("poly", _rect(x, base - hh, x + w, base), wall)
            roof = [(x - 0.01, base - hh), (x + w / 2, base - hh - 0.06), (x + w + 0.01, base - hh)]
            add("poly", roof, (150, 60, 50))
            add("poly", _rect(x + w * 0.3, base - hh * 0.7, x + w * 0.5, base - hh * 0.4), (120, 170, 210))
    else:
        wall = _pick(rng, [(225, 215, 190), (190, 210, 225), (200, 220, 195), (210, 205, 210)])
        floor = _pick(rng, [((160, 115, 75), (125, 85, 50)), ((150, 150, 155), (115, 115, 120)),
                            ((190, 160, 120), (160, 130, 95))])
        hz = _U(rng, 0.55, 0.72)
        bg = Background(_shade(wall, 1.05), _shade(wall, 0.92), floor[0], floor[1], hz)
        add("poly", _rect(0, hz - 0.02, aspect, hz), (235, 235, 230))
        if rng.random() < 0.7:
            x, w, y = _U(rng, 0.05, aspect - 0.35), _U(rng, 0.18, 0.3), _U(rng, 0.08, 0.15)
            hh = min(_U(rng, 0.2, 0.3), hz - y - 0.06)
            add("poly", _rect(x - 0.01, y - 0.01, x + w + 0.01, y + hh + 0.01), (245, 245, 245))
            add("poly", _rect(x, y, x + w, y + hh), (150, 195, 235))
            add("line", [[x + w / 2, y], [x + w / 2, y + hh]], (245, 245, 245), width=0.008)
        if rng.random() < 0.6:
            x, y = _U(rng, 0.05, aspect - 0.2), _U(rng, 0.08, max(0.1, hz - 0.3))
            add("poly", _rect(x, y, x + 0.14, y + 0.1), (90, 60, 35))
            add("poly", _rect(x + 0.012, y + 0.012, x + 0.128, y + 0.088), COLOURS[_pick(rng, COLOURS)])
    bg.prims = P
    return bg


def _render_background(bg: Background, width: int, height: int) -> np.ndarray:
    t = (np.arange(height) + 0.5) / height
    sky = np.clip(t / max(bg.horizon, 1e-6), 0, 1)[:, None]
    gnd = np.clip((t - bg.horizon) / max(1 - bg.horizon, 1e-6), 0, 1)[:, None]
    col = np.where((t < bg.horizon)[:, None],
                   (1 - sky) * np.array(bg.top) + sky * np.array(bg.horizon_sky),
                   (1 - gnd) * np.array(bg.horizon_ground) + gnd * np.array(bg.bottom))
    img = np.repeat(np.round(col).astype(np.uint8)[:, None, :], width, axis=1)
    canvas = Image.fromarray(img, "RGB")
    _draw(canvas, None, bg.prims, height)
    return np.asarray(canvas).copy()


# ----------------------------------------------------------------------------- rendering


def _texture(tex: Tex, x0: int, y0: int, x1: int, y1: int, scale: float) -> np.ndarray:
    look = tex.look
    ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float32) + 0.5
    period = max(2.0, tex.period * scale)
    ox, oy = tex.origin * scale
    ax, ay = tex.axis
    dx, dy = xs - ox, ys - oy
    u = (dx * ax + dy * ay) / period  # along the axis: stripes run across it
    v = (-dx * ay + dy * ax) / period
    if look.pattern == "stripes":
        sel = np.floor(u) % 2 == 1
    elif look.pattern == "checks":
        sel = (np.floor(u) + np.floor(v)) % 2 == 1
    elif look.pattern == "dots":
        fu, fv = u - np.floor(u) - 0.5, v - np.floor(v) - 0.5
        sel = fu * fu + fv * fv < 0.3 ** 2
    else:
        sel = np.zeros(u.shape, bool)
    return np.where(sel[..., None], np.array(look.rgb2, np.uint8), np.array(look.rgb, np.uint8)).astype(np.uint8)


def _draw_shape(d: ImageDraw.ImageDraw, p: Prim, fill, scale: float) -> None:
    pts = [tuple(q) for q in (p.pts * scale).tolist()]
    r = p.size * scale
    if p.kind == "circle":
        (x, y), = pts
        d.ellipse([x - r, y - r, x + r, y + r], fill=fill)
    elif p.kind == "capsule":
        d.line(pts, fill=fill, width=max(1, round(2 * r)))
        for x, y in pts:
            d.ellipse([x - r, y - r, x + r, y + r], fill=fill)
    elif p.kind == "poly":
        d.polygon(pts, fill=fill)
    elif p.kind == "ring":
        (x, y), = pts
        w = p.width * scale
        d.ellipse([x - r - w / 2, y - r - w / 2, x + r + w / 2, y + r + w / 2], outline=fill, width=max(1, round(w)))
    elif p.kind == "line":
        d.line(pts, fill=fill, width=max(1, round(p.width * scale)), joint="curve")
    else:
        raise ValueError(f"unknown primitive kind {p.kind!r}")


def _draw(canvas: Image.Image, labels: Image.Image | None, prims: list[Prim], scale: float) -> None:
    """Paint `prims` in z order onto an RGB canvas and (if given) the label map."""
    draw = ImageDraw.Draw(canvas)
    ldraw = ImageDraw.Draw(labels) if labels is not None else None
    for p in sorted(prims, key=lambda q: q.z):
        if isinstance(p.paint, Tex):
            stencil = Image.new("L", canvas.size, 0)
            _draw_shape(ImageDraw.Draw(stencil), p, 255, scale)
            box = stencil.getbbox()
            if box is None:
                continue
            tile = Image.fromarray(_texture(p.paint, *box, scale), "RGB")
            crop = stencil.crop(box)
            canvas.paste(tile, box[:2], crop)
            if labels is not None:
                labels.paste(p.owner, box, crop)
        else:
            _draw_shape(draw, p, tuple(p.paint), scale)
            if ldraw is not None:
                _draw_shape(ldraw, p, p.owner, scale)


@dataclass
class Scene:
    """One human-object interaction laid out in image-height units (x in [0, aspect])."""

    human: HumanIdentity
    obj: ObjectIdentity
    verb: str
    pose: Pose
    facing: int
    aspect: float
    prims: list[Prim]
    background: Background
    object_box: tuple[float, float, float, float]  # object bbox (x0, y0, x1, y1), image heights

    def size(self, height: int) -> tuple[int, int]:
        """(width, height) in pixels for a render `height` pixels tall."""
        return max(1, round(self.aspect * height)), height


def make_scene(rng: np.random.Generator, human: HumanIdentity, obj: ObjectIdentity, verb: str,
               aspect: float = 1.0, height_range: tuple[float, float] = (0.5, 0.85),
               background: Background | None = None) -> Scene:
    """Pose `human` doing `verb` with `obj`, mirror it at random, and place the pair in a
    random backdrop; `height_range` is the pair's share of the image height."""
    if verb not in COMPATIBLE.get(obj.category, ()):
        raise ValueError(f"interaction {verb!r} is not defined for a {obj.category}; "
                         f"expected one of {COMPATIBLE.get(obj.category)}")
    L = _lengths(human)
    pose, obj_prims, extra = _BUILDERS[verb](rng, human, obj, L)
    body = _human_prims(human, _fk(pose, L), L) + obj_prims + extra
    facing = 1 if rng.random() < 0.5 else -1
    body = _xform(body, np.diag([float(facing), 1.0]), np.zeros(2))
    x0, y0, x1, y1 = _bbox(body)
    bw, bh = x1 - x0, y1 - y0
    scale = min(_U(rng, *height_range) / bh, (aspect - 2 * MARGIN) / bw, (1 - 2 * MARGIN) / bh)
    left = _U(rng, MARGIN, aspect - MARGIN - bw * scale)
    lo, hi = max(MARGIN + bh * scale, min(0.78, 1 - MARGIN)), 1 - MARGIN
    bottom = _U(rng, min(lo, hi), hi)
    t = np.array([left - x0 * scale, bottom - y1 * scale])
    prims = _xform(body, scale * np.eye(2), t)
    obj_box = tuple(round(v, 4) for v in _bbox([p for p in prims if p.group == "object"]))
    bg = background if background is not None else random_background(rng, aspect)
    return Scene(human, obj, verb, pose, facing, aspect, prims, bg, obj_box)


def render(scene: Scene, height: int, parts: tuple[str, ...] = ("human", "object"),
           background: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Render `scene` `height` px tall: (RGB uint8 H×W×3, labels uint8 H×W with 0 = background,
    `HUMAN`, `OBJECT`). `parts` picks which of the pair is drawn; `background` reuses an
    already rendered backdrop."""
    w, h = scene.size(height)
    base = _render_background(scene.background, w, h) if background is None else background
    canvas = Image.fromarray(base, "RGB")
    labels = Image.new("L", (w, h), 0)
    _draw(canvas, labels, [p for p in scene.prims if p.group in parts], h)
    return np.asarray(canvas).copy(), np.asarray(labels).copy()


# ----------------------------------------------------------------------------- samples


def _crop_ref(image: np.ndarray, mask: np.ndarray, margin: float = 0.06) -> tuple[np.ndarray, np.ndarray]:
    """Crop a reference to its mask box plus a margin (a fraction of the image height)."""
    m = max(1, round(margin * mask.shape[0]))
    crop = mask_box(mask, "synth: a rendered mask").grown(m).clipped(*mask.shape[:2])
    return image[crop.slices].copy(), mask[crop.slices].copy()


@dataclass
class _Rendered:
    scene: Scene
    background: np.ndarray
    target: np.ndarray
    labels: np.ndarray


def _pair_scenes(seed: int, pair: int, category: str, n: int, aspect: float = 1.0) -> list[Scene]:
    rng = np.random.default_rng([seed, pair])
    human, obj = random_human(rng), random_object(rng, category)
    verbs = COMPATIBLE[category]
    first = int(rng.integers(len(verbs)))
    return [make_scene(rng, human, obj, verbs[(first + k) % len(verbs)], aspect) for k in range(n)]


def iter_samples(count: int, seed: int, size: int = 256, val_fraction: float = 0.1,
                 scenes_per_pair: int = 4) -> Iterator[dict[str, Any]]:
    """Iterate over `count` samples as keyword dicts for `ChoiWriter.add` (plus ``sample_id``).

    Pair ``p`` uses ``numpy.random.default_rng([seed, p])`` and the category
    ``permutation(CATEGORIES)[p % len(CATEGORIES)]`` of ``default_rng(seed)``, so a sample does not
    depend on `count` (a shorter run is a prefix of a longer one, split aside). The last
    ``round(pairs * val_fraction)`` pairs (at least one if val_fraction > 0 and there are
    two or more pairs) are the "val" split: validation identities are unseen in training.
    """
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    if scenes_per_pair < 3:
        raise ValueError("scenes_per_pair must be >= 3 (target, human reference and object "
                         f"reference come from three different scenes), got {scenes_per_pair}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if size < 16:
        raise ValueError(f"size must be at least 16 px, got {size}")
    # Checked eagerly (this is not a generator function), so bad arguments fail before
    # `generate` creates anything on disk.
    return _iter_samples(count, seed, size, val_fraction, scenes_per_pair)


def _iter_samples(count: int, seed: int, size: int, val_fraction: float, S: int) -> Iterator[dict[str, Any]]:
    n_pairs = -(-count // S)
    n_val = round(n_pairs * val_fraction)
    if val_fraction > 0 and n_pairs >= 2:
        n_val = max(1, n_val)
    n_val = min(n_val, n_pairs - 1) if n_pairs > 1 else 0
    order = [str(c) for c in np.random.default_rng(seed).permutation(list(CATEGORIES))]
    done = 0
    for p in range(n_pairs):
        scenes = _pair_scenes(seed, p, order[p % len(order)], S)
        rendered: list[_Rendered] = []
        for sc in scenes:
            bg = _render_background(sc.background, *sc.size(size))
            target, labels = render(sc, size, background=bg)
            rendered.append(_Rendered(sc, bg, target, labels))
        split = "val" if p >= n_pairs - n_val else "train"
        for k in range(min(S, count - done)):
            tgt, href, oref = rendered[k], rendered[(k + 1) % S], rendered[(k + 2) % S]
            h_img, h_lab = render(href.scene, size, parts=("human",), background=href.background)
            o_img, o_lab = render(oref.scene, size, parts=("object",), background=oref.background)
            human_ref, human_ref_mask = _crop_ref(h_img, h_lab == HUMAN)
            object_ref, object_ref_mask = _crop_ref(o_img, o_lab == OBJECT)
            sc = tgt.scene
            human_mask, object_mask = tgt.labels == HUMAN, tgt.labels == OBJECT
            yield dict(
                sample_id=f"{p * S + k:06d}", split=split,
                caption=caption(sc.verb, sc.obj.category), verb=sc.verb, object_category=sc.obj.category,
                target=tgt.target, human_mask=human_mask, object_mask=object_mask,
                human_ref=human_ref, human_ref_mask=human_ref_mask,
                object_ref=object_ref, object_ref_mask=object_ref_mask,
                background=tgt.background, box=list(mask_box(human_mask | object_mask, "synth: a rendered mask").xywh),
                extra={
                    "description": f"{sc.human.describe()} is {INTERACTIONS[sc.verb]} {sc.obj.describe()}",
                    "synth": {"seed": seed, "pair": p, "scene": k,
                              "human_ref_scene": (k + 1) % S, "object_ref_scene": (k + 2) % S,
                              "human_ref_verb": href.scene.verb, "object_ref_verb": oref.scene.verb,
                              "facing": sc.facing, "pose": sc.pose.as_dict(),
                              "human_ref_pose": href.scene.pose.as_dict(),
                              "object_box": list(sc.object_box),
                              "object_ref_box": list(oref.scene.object_box)},
                })
            done += 1


def generate(out: str | os.PathLike, count: int, seed: int, size: int = 256, val_fraction: float = 0.1,
             overwrite: bool = False, progress: Callable[[int, int], None] | None = None) -> dict[str, int]:
    """Write a synthetic CHOI dataset (`cli.research.data.dataset` format) to `out`.

    Refuses a non-empty folder unless ``overwrite=True`` (which replaces the index and the
    files of the generated ids, leaving other files alone). Returns samples per split.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} is not empty; choose an empty folder or pass --overwrite")
    splits: dict[str, int] = {}
    samples = iter_samples(count, seed, size, val_fraction)
    with ChoiWriter(out, overwrite=overwrite) as writer:
        for i, sample in enumerate(samples, start=1):
            writer.add(sample.pop("sample_id"), **sample)
            splits[sample["split"]] = splits.get(sample["split"], 0) + 1
            if progress is not None:
                progress(i, count)
    return splits


# ----------------------------------------------------------------------------- examples

EXAMPLE_FILES = ("human.png", "object.png", "background.png", "interaction_mask.png", "example.json")
EXAMPLES_SEED = 3  # the seed of the shipped pipelines/assets/examples (picked for a colourful pair)


def write_examples(out: str | os.PathLike, seed: int = EXAMPLES_SEED, overwrite: bool = False) -> dict[str, Any]:
    """Write the demo inputs (``pipelines/assets/examples``): ``human.png`` / ``object.png`` (RGBA,
    alpha = mask, white where transparent), ``background.png`` (RGB 384×256),
    ``interaction_mask.png`` (L 0/255, background size: the pair's union mask inside the
    box) and ``example.json`` (caption, verb, object, box [x, y, w, h] in background
    pixels). The references show the pair in other poses than the mask. Returns the JSON.
    """
    out = Path(out)
    paths = {name: out / name for name in EXAMPLE_FILES}
    if not overwrite:
        taken = [str(p) for p in paths.values() if p.exists()]
        if taken:
            raise FileExistsError(f"{', '.join(taken)} already exist; pass overwrite=True to replace them")
    rng = np.random.default_rng([seed, 9_000_001])
    human, obj = random_human(rng), random_object(rng, "bicycle")
    bg_height = 256
    # "push": of the bicycle's verbs the one the shipped IAMG draws well (the per-verb
    # table of docs/TRAINING.md).
    target = make_scene(rng, human, obj, "push", aspect=1.5, height_range=(0.55, 0.75))
    pose_scene = make_scene(rng, human, obj, "ride", aspect=1.0)
    obj_scene = make_scene(rng, human, obj, "ride", aspect=1.0)

    background = _render_background(target.background, *target.size(bg_height))
    _, labels = render(target, bg_height, background=background)
    union = labels > 0
    box = list(mask_box(union, "synth: a rendered mask").xywh)

    def cutout(scene: Scene, part: str, label: int) -> Image.Image:
        img, lab = render(scene, 384, parts=(part,), background=np.full((384, 384, 3), 255, np.uint8))
        img, mask = _crop_ref(img, lab == label, margin=0.03)
        rgba = np.dstack([np.where(mask[..., None], img, 255), mask.astype(np.uint8) * 255])
        return Image.fromarray(rgba.astype(np.uint8), "RGBA")

    meta = {"caption": caption(target.verb, obj.category), "verb": target.verb, "object": obj.category,
            "box": box, "background_size": [background.shape[1], background.shape[0]],
            "description": f"{human.describe()} is {INTERACTIONS[target.verb]} {obj.describe()}",
            "generated_by": f"interact_custom.cli.research.data.synth.write_examples(seed={seed})"}
    save_png(paths["human.png"], cutout(pose_scene, "human", HUMAN), overwrite)
    save_png(paths["object.png"], cutout(obj_scene, "object", OBJECT), overwrite)
    save_png(paths["background.png"], Image.fromarray(background, "RGB"), overwrite)
    save_png(paths["interaction_mask.png"], Image.fromarray(union.astype(np.uint8) * 255, "L"), overwrite)
    write_text_atomic(paths["example.json"], json.dumps(meta, indent=2) + "\n")
    return meta
