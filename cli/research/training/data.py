"""Training data: torch Datasets over a CHOI dataset folder (`cli.research.data.dataset` format),
one per model that `cli.research.training` trains.

- `IAMGTrainData` — caption tokens, the condition image C_bg (the background with the
  union box blanked; with *background dropout* a white canvas with only the box blanked)
  and the target: the union mask drawn as an RGB image (`iamg.condition_image`,
  `iamg.target_image`). *Box dropout* (the empty condition, an all-zero latent) and text
  dropout happen in the loss (`losses.iamg_training_loss`), after VAE encoding.
- `MGIGTrainData` — the official MGIG training item (`hico_process_pairs`) built from the
  `mgig.inputs` building blocks with the official training-time randomness: the reference
  canvas flipped (p 0.5) and brightness/contrast-jittered (p 0.5) before the detail map
  is taken from it, the target box grown ×1.1, the crop ×1.3…2.9 (official
  ``randint(13, 30) / 10``), and the hint's 4th channel (the layout) the union mask
  with p 0.7 (``mask_channel_prob``) — perturbed (``perturb_prob``, official 1) —
  else the box; ★ with ``figure_collage_prob`` the detail map covers only that layout
  mask grown a little, the scene staying visible in the rest of the box (`build_hint`'s
  "figure" collage). ★ Paper additions: *background dropout* (the hint shows a white
  canvas around the detail map, as inference without a background does), *box dropout*
  (the layout channel is zeroed inside the crop: neither box nor mask is given), *ID
  dropout* (the reference becomes the all-zero image whose encoding is the unconditional
  context), and **stage 2**: the union mask is replaced by the IAMG-generated mask of
  the sample, read from a folder of precomputed masks (`write_generated_masks`), for
  the box, the crop and the layout channel alike — exactly what inference derives from
  a generated mask — while the ground-truth image stays the target.
- `VAETrainData` — images the VAE must reconstruct: random square crops of targets /
  backgrounds / references, and IAMG's mask and condition images.

Why the MGIG item is assembled here rather than through `vectors_preproc.prepare_mgig_inputs`:
the official augmentation acts *between* the reference canvas and the detail map, and the
perturbed mask must be drawn inside the crop box; the building blocks are the same.

Reproducibility: items are addressed by a global *position* in the (endless) stream of
training samples, not by dataset index. Position p is sample ``perm_e[p mod N]`` of epoch
``e = p // N`` (``perm_e`` seeded by (seed, e)) with its random choices drawn from
``RandomState([seed, p])``. A run resumed at step k therefore sees exactly the samples
and augmentations a straight run sees, whatever the number of data-loader workers.
`PositionSampler` hands each process its share of positions.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

from ....pipelines import iamg
from ....pipelines.geometry import Box
from ....pipelines.imgproc import pad_to_square
from ....pipelines.mgig import inputs as preprocess
from ....pipelines.readers import as_mask
from ....pipelines.sampling_settings import SamplingSettings
from .augment import perturb_mask
from ..data.dataset import ChoiDataset, ChoiSample, DatasetError, save_png
from ....pipelines.mgig import resize_hint, resize_square

WHITE = 255
# The official training-time draws of `hico_process_pairs` (ratios as randint(10·lo, 10·hi) / 10).
OFFICIAL_BOX_RATIO = (1.1, 1.2)     # always 1.1: randint(11, 12) / 10
OFFICIAL_CROP_RATIO = (1.3, 3.0)    # 1.3 … 2.9
OFFICIAL_MASK_CHANNEL_PROB = 0.7    # the union mask, else the box ...
OFFICIAL_PERTURB_PROB = 1.0         # ... and that mask is always perturbed
OFFICIAL_HFLIP_PROB = 0.5           # albumentations HorizontalFlip(p=0.5)
OFFICIAL_COLOR_PROB = 0.5           # albumentations RandomBrightnessContrast(p=0.5) ...
COLOR_LIMIT = 0.2                   # ... with its default ±0.2 brightness / contrast limits
VAE_SOURCES = ("target", "background", "reference", "mask", "condition")


# --------------------------------------------------------------------------------------
# Positions: deterministic sample order and randomness
# --------------------------------------------------------------------------------------

class PositionSampler(Sampler):
    """Endless global sample positions for one process: micro-batch m of process r holds
    positions ``(m·W + r)·B … (m·W + r)·B + B − 1`` (W processes, batch B), starting at
    micro-batch ``start``. With a `DataLoader` of ``batch_size=B`` every process gets its
    own disjoint batches, identical on resume."""

    def __init__(self, batch_size: int, *, num_processes: int = 1, process_index: int = 0, start: int = 0):
        self.batch_size, self.num_processes = int(batch_size), int(num_processes)
        self.process_index, self.start = int(process_index), int(start)

    def __iter__(self) -> Iterator[int]:
        m = self.start
        while True:
            first = (m * self.num_processes + self.process_index) * self.batch_size
            yield from range(first, first + self.batch_size)
            m += 1


class _PositionData(Dataset):
    """Base: a CHOI split addressed by position (module docstring)."""

    def __init__(self, root: str | os.PathLike, *, split: str | None = "train", seed: int = 0,
                 limit: int | None = None, shuffle: bool = True):
        self.choi = ChoiDataset(root, split=split)
        if limit is not None:
            self.choi.records = self.choi.records[:int(limit)]
        if len(self.choi) == 0:
            have = ", ".join(ChoiDataset(root).splits) or "none"
            raise DatasetError(f"CHOI dataset {root}: no samples in split {split!r} (splits present: {have})")
        self.seed, self.shuffle = int(seed), bool(shuffle)
        self._perm: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        # Positions are unbounded; this is the number of distinct samples (one epoch).
        return len(self.choi)

    def index_of(self, position: int) -> int:
        """The dataset index that global ``position`` reads."""
        epoch, k = divmod(int(position), len(self.choi))
        if not self.shuffle:
            return k
        if epoch not in self._perm:
            if len(self._perm) > 4:
                self._perm.clear()
            self._perm[epoch] = np.random.default_rng([self.seed, epoch]).permutation(len(self.choi))
        return int(self._perm[epoch][k])

    def rng(self, position: int) -> np.random.RandomState:
        # A legacy RandomState because `augment.perturb_mask` consumes one.
        return np.random.RandomState([self.seed & 0xFFFF_FFFF, int(position) & 0xFFFF_FFFF,
                                      int(position) >> 32])

    def __getitem__(self, position: int) -> dict:
        return self.item(self.index_of(position), self.rng(position))

    def item(self, index: int, rng: np.random.RandomState | None = None) -> dict:
        """Sample ``index`` as a training item; ``rng=None`` gives the deterministic,
        un-augmented, nothing-dropped item (validation)."""
        raise NotImplementedError


def _chw(image_u8: np.ndarray) -> torch.Tensor:
    """uint8 HxWx3 → float32 [3, H, W] in [-1, 1]."""
    return torch.from_numpy(image_u8.astype(np.float32) / np.float32(127.5) - np.float32(1.0)).permute(2, 0, 1)


def _draw(rng: np.random.RandomState | None, p: float) -> bool:
    return rng is not None and p > 0 and rng.rand() < p


def _union(sample: ChoiSample) -> np.ndarray:
    return as_mask(sample.interaction_mask, f"sample {sample.id}: interaction mask")


# --------------------------------------------------------------------------------------
# IAMG
# --------------------------------------------------------------------------------------

class IAMGTrainData(_PositionData):
    """IAMG items: ``condition`` [3,S,S] and ``target`` [3,S,S] in [-1, 1], ``caption``,
    and ``input_ids`` [77] when a ``tokenize`` function (prompts → ids) is given.

    The background is the sample's ``background`` (the scene without the pair), else its
    target image (what the official trainer uses; the box hides the pair). The box is
    `iamg.union_box` of the union mask, 1 px short as the released model was trained.
    ``background_dropout``: probability of a white canvas with only the box blanked.
    """

    def __init__(self, root, *, size: int = iamg.IMAGE_SIZE, background_dropout: float = 0.0,
                 tokenize: Callable[[Sequence[str]], torch.Tensor] | None = None, **kwargs):
        super().__init__(root, **kwargs)
        self.size, self.background_dropout, self.tokenize = int(size), float(background_dropout), tokenize

    def item(self, index: int, rng: np.random.RandomState | None = None) -> dict:
        sample = self.choi[index]
        union = _union(sample)
        box = iamg.union_box(union)
        background = sample.background if sample.background is not None else sample.target
        if _draw(rng, self.background_dropout):
            background = np.full_like(background, WHITE)
        out = {"condition": torch.from_numpy(iamg.condition_image(background, box, self.size)),
               "target": torch.from_numpy(iamg.target_image(union, self.size)),
               "caption": sample.caption}
        if self.tokenize is not None:
            out["input_ids"] = self.tokenize([sample.caption])[0]
        return out


# --------------------------------------------------------------------------------------
# MGIG
# --------------------------------------------------------------------------------------

def official_ratio(rng: np.random.RandomState, bounds: Sequence[float]) -> float:
    """The official ratio draw ``randint(10·lo, 10·hi) / 10`` (upper bound excluded)."""
    lo, hi = int(round(bounds[0] * 10)), int(round(bounds[1] * 10))
    return (rng.randint(lo, hi) if hi > lo else lo) / 10.0


def brightness_contrast(image: np.ndarray, rng: np.random.RandomState, limit: float = COLOR_LIMIT) -> np.ndarray:
    """albumentations' RandomBrightnessContrast (defaults): ``x·α + β·255`` with
    α = 1 + U(−limit, limit), β = U(−limit, limit), clipped to uint8."""
    alpha = 1.0 + rng.uniform(-limit, limit)
    beta = rng.uniform(-limit, limit) * 255.0
    return np.clip(image.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)


def read_generated_mask(folder: str | os.PathLike, sample_id: str, shape_hw: tuple[int, int]) -> np.ndarray | None:
    """The IAMG-generated mask ``<folder>/<sample_id>.png`` (read by `readers.as_mask`) at
    ``shape_hw`` (resized nearest if needed) as uint8 {0, 1}; None if it has no
    foreground. A missing file raises FileNotFoundError saying how to make it."""
    path = Path(folder) / f"{sample_id}.png"
    if not path.is_file():
        raise FileNotFoundError(f"stage 2: no generated mask for sample {sample_id!r}: {path} does not exist. "
                                "Make the folder with `python -m interact_custom train masks` "
                                "(see cli/train.py)")
    with Image.open(path) as im:
        im = im.convert("L")
        if im.size != (shape_hw[1], shape_hw[0]):
            im = im.resize((shape_hw[1], shape_hw[0]), Image.NEAREST)
        mask = as_mask(im, f"stage 2: generated mask {path}", allow_empty=True)
    return mask if mask.any() else None


class MGIGTrainData(_PositionData):
    """MGIG items: ``reference`` [3,224,224] in [0, 1] (the ID-encoder input), ``hint``
    [4,S,S] and ``target`` [3,S,S] in [-1, 1]; S = ``size`` (the official 512; smaller
    sizes downsample the official 512 arrays: RGB by area, the layout channel nearest).
    ``colour_hint``: ★ the hint gets the colour planes of the (jittered) reference canvas
    (`inputs.colour_collage`, the same canvas the detail map is taken from): [8,S,S].

    References: the sample's human reference and object reference (another pose /
    placement of the same identities). ``generated_masks``: stage-2 folder; a sample
    whose generated mask is empty falls back to its ground-truth mask.
    """

    def __init__(self, root, *, size: int = preprocess.HINT_SIZE, box_ratio=OFFICIAL_BOX_RATIO,
                 crop_ratio=OFFICIAL_CROP_RATIO, mask_channel_prob: float = OFFICIAL_MASK_CHANNEL_PROB,
                 perturb_prob: float = OFFICIAL_PERTURB_PROB, figure_collage_prob: float = 0.0,
                 hflip_prob: float = OFFICIAL_HFLIP_PROB, color_prob: float = OFFICIAL_COLOR_PROB,
                 background_dropout: float = 0.0, box_dropout: float = 0.0, id_dropout: float = 0.0,
                 generated_masks: str | os.PathLike | None = None, colour_hint: bool = False, **kwargs):
        super().__init__(root, **kwargs)
        self.size = int(size)
        self.colour_hint = bool(colour_hint)
        self.box_ratio, self.crop_ratio = tuple(box_ratio), tuple(crop_ratio)
        self.mask_channel_prob, self.perturb_prob = mask_channel_prob, perturb_prob
        self.figure_collage_prob = figure_collage_prob
        self.hflip_prob, self.color_prob = hflip_prob, color_prob
        self.background_dropout, self.box_dropout, self.id_dropout = background_dropout, box_dropout, id_dropout
        self.generated_masks = Path(generated_masks) if generated_masks else None
        if self.generated_masks is not None and not self.generated_masks.is_dir():
            raise FileNotFoundError(f"generated_masks: {self.generated_masks} is not a folder of IAMG masks")

    def union_mask(self, sample: ChoiSample) -> np.ndarray:
        """The layout mask the item is built around: the generated one in stage 2."""
        if self.generated_masks is not None:
            mask = read_generated_mask(self.generated_masks, sample.id, sample.target.shape[:2])
            if mask is not None:
                return mask
        return _union(sample)

    def item(self, index: int, rng: np.random.RandomState | None = None) -> dict:
        sample = self.choi[index]
        union = self.union_mask(sample)
        train = rng is not None
        canvas = preprocess.reference_canvas(sample.human_ref, sample.human_ref_mask, sample.object_ref,
                                             sample.object_ref_mask, hflip=_draw(rng, self.hflip_prob))
        reference = canvas.image
        if _draw(rng, self.color_prob):
            reference = brightness_contrast(reference, rng)
        detail = preprocess.detail_map(reference, canvas.mask)
        colour = preprocess.colour_collage(reference, canvas.mask) if self.colour_hint else None

        box_ratio = official_ratio(rng, self.box_ratio) if train else self.box_ratio[0]
        crop_ratio = official_ratio(rng, self.crop_ratio) if train else self.crop_ratio[0]
        background = sample.target
        hint_kwargs = {"box_ratio": box_ratio, "crop_ratio": crop_ratio, "mask_channel": "box", "colour": colour}
        if _draw(rng, self.mask_channel_prob):
            hint_kwargs["mask_channel"] = "mask"
            if _draw(rng, self.perturb_prob):
                # The official trainer perturbs the union mask cut to the crop box, so the
                # perturbation is drawn there (`hint_boxes`: the crop `build_hint` uses).
                _, crop_box = preprocess.hint_boxes(union, background.shape, box_ratio, crop_ratio)
                layout = np.zeros_like(union)
                layout[crop_box.slices] = perturb_mask(union[crop_box.slices], rng)
                hint_kwargs["mask"] = layout
        if _draw(rng, self.figure_collage_prob):  # drawn last: p = 0 leaves the official stream as it was
            hint_kwargs["collage"] = "figure"
        built = preprocess.build_hint(background, union, detail, **hint_kwargs)
        hint, scene = built.hint, built.scene
        if _draw(rng, self.background_dropout):
            blank = np.full_like(background, WHITE)
            hint = preprocess.build_hint(blank, union, detail, **hint_kwargs).hint
            scene = np.zeros_like(scene)  # the hint shows white, not the target's scene
        hint = torch.from_numpy(hint).permute(2, 0, 1).contiguous()
        if _draw(rng, self.box_dropout):
            hint[3] = torch.where(hint[3] < 0, hint[3], torch.zeros_like(hint[3]))  # keep the -1 padding
        if _draw(rng, self.id_dropout):
            reference = np.zeros_like(reference)  # encodes to the unconditional context
        target = torch.from_numpy(built.target).permute(2, 0, 1)
        return {
            "reference": torch.from_numpy(reference.astype(np.float32) / np.float32(255.0)).permute(2, 0, 1),
            "reference_mask": torch.from_numpy(canvas.mask.astype(np.float32) / np.float32(255.0))[None],
            "hint": resize_hint(hint, self.size),
            "scene": resize_square(torch.from_numpy(scene)[None], self.size, "nearest"),
            "target": resize_square(target, self.size, "area"),
            "figure": self.figure_in_crop(sample, built.crop_box),
        }

    def figure_in_crop(self, sample: ChoiSample, crop_box: Box) -> torch.Tensor:
        """[1,S,S] in 0..1: where the ground-truth human ∪ object lies in the target crop
        (cut, padded and resized as the target is). Stage 2 builds the crop around the
        generated mask, but the figure the loss should weight is the true one."""
        figure = _union(sample)[crop_box.slices].astype(np.float32)
        figure = torch.from_numpy(pad_to_square(figure, 0))[None]
        return resize_square(figure, self.size, "area")


# --------------------------------------------------------------------------------------
# VAE
# --------------------------------------------------------------------------------------

def _square_crop(image: np.ndarray, rng: np.random.RandomState | None, min_fraction: float = 0.5) -> np.ndarray:
    h, w = image.shape[:2]
    short = min(h, w)
    side = short if rng is None else max(1, int(round(short * rng.uniform(min_fraction, 1.0))))
    y = (h - side) // 2 if rng is None else rng.randint(0, h - side + 1)
    x = (w - side) // 2 if rng is None else rng.randint(0, w - side + 1)
    return image[y:y + side, x:x + side]


class VAETrainData(_PositionData):
    """VAE items: ``image`` [3,S,S] in [-1, 1], drawn from ``sources`` (uniformly):
    ``target`` / ``background``: a random square crop (½…1 of the short side) resized
    to S; ``reference``: a human or object reference padded square with white;
    ``mask`` / ``condition``: IAMG's target and condition images. Random horizontal flips.
    Validation items (no rng) take the first source and centre crops."""

    def __init__(self, root, *, size: int = 256, sources: Sequence[str] = ("target", "mask"), **kwargs):
        super().__init__(root, **kwargs)
        unknown = [s for s in sources if s not in VAE_SOURCES]
        if unknown or not sources:
            raise ValueError(f"vae_sources: unknown {unknown}; choose from {', '.join(VAE_SOURCES)}")
        self.size, self.sources = int(size), tuple(sources)

    def item(self, index: int, rng: np.random.RandomState | None = None) -> dict:
        sample = self.choi[index]
        source = self.sources[0] if rng is None else self.sources[rng.randint(len(self.sources))]
        if source in ("mask", "condition"):
            union = _union(sample)
            if source == "mask":
                image = torch.from_numpy(iamg.target_image(union, self.size))
            else:
                bg = sample.background if sample.background is not None else sample.target
                image = torch.from_numpy(iamg.condition_image(bg, iamg.union_box(union), self.size))
        else:
            if source == "reference":
                ref = sample.human_ref if rng is None or rng.rand() < 0.5 else sample.object_ref
                pixels = pad_to_square(ref, WHITE)
            else:
                pixels = sample.background if source == "background" and sample.background is not None \
                    else sample.target
                pixels = _square_crop(pixels, rng)
            pixels = np.asarray(Image.fromarray(np.ascontiguousarray(pixels)).resize((self.size, self.size),
                                                                                    Image.BICUBIC))
            image = _chw(pixels)
        if rng is not None and rng.rand() < 0.5:
            image = image.flip(-1)
        return {"image": image.contiguous()}


# --------------------------------------------------------------------------------------
# Stage 2: precomputed IAMG masks
# --------------------------------------------------------------------------------------

def write_generated_masks(model: "iamg.IAMGModel", root: str | os.PathLike, out_dir: str | os.PathLike, *,
                          split: str | None = "train", settings: SamplingSettings | None = None, seed: int = 0,
                          overwrite: bool = False, limit: int | None = None,
                          progress: Callable[[int, int], None] | None = None) -> int:
    """MGIG stage-2 input: one IAMG mask per sample, ``<out_dir>/<id>.png`` (L, 0/255,
    the target's size), generated from the sample's caption, background (else target)
    and union box, with ``settings`` (None: the model's, `sampling_settings.settings_for`)
    and seed ``seed + i`` for sample i. Existing files are kept unless ``overwrite`` (so an
    interrupted run continues). Returns the number written."""
    data = ChoiDataset(root, split=split)
    records = data.records[:limit] if limit is not None else data.records
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = 0
    for i in range(len(records)):
        sample_id = records[i]["id"]
        path = out / f"{sample_id}.png"
        if path.exists() and not overwrite:
            continue
        sample = data[i]
        union = _union(sample)
        y1, y2, x1, x2 = iamg.union_box(union).yyxx
        background = sample.background if sample.background is not None else sample.target
        result = iamg.generate_mask(model, prompt=sample.caption, background=background,
                                    box=(x1, y1, max(x2 - x1, 1), max(y2 - y1, 1)), settings=settings,
                                    seed=seed + i)
        mask = (result.binary[0].numpy() > 0.5).astype(np.uint8) * 255
        save_png(path, Image.fromarray(mask, "L"), overwrite=True)
        written += 1
        if progress is not None:
            progress(i + 1, len(records))
    return written
