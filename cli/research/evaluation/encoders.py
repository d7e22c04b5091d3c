"""The image encoders of the CLIP- and DINO-Scores, around already-built models.

`CLIPImageEncoder` wraps a transformers ``CLIPVisionModelWithProjection`` with OpenAI
CLIP's preprocessing; `DINOEncoder` a transformers ``Dinov2Model`` with the official
position-embedding interpolation and ImageNet normalisation. Neither reads a file:
building one from a local folder or weight file (official DINOv2 naming included) is
`cli.research.evaluation.eval_models` (`load_clip_encoder` / `load_dino_encoder`).
`clip_score` / `dino_scores` are the two metrics computed with them.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image

from ....pipelines.imgproc import IMAGENET_MEAN, IMAGENET_STD
from .metrics import on_white, resize_image

DINO_SIZE = 224                 # the official eval_dino.py resizes masked images to 224²
# OpenAI CLIP preprocessing statistics (clip.load's Normalize; transformers' OPENAI_CLIP_MEAN).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class CLIPImageEncoder:
    """CLIP image embeddings (transformers ``CLIPVisionModelWithProjection``) with OpenAI
    CLIP's preprocessing: bicubic resize of the short side to the model's image size
    (PIL, like torchvision's ``Resize`` on PIL images), centre crop, normalise."""

    def __init__(self, model, *, mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD,
                 device="cpu", source: str = ""):
        import torch
        self.device = torch.device(device)
        self.model = model.to(self.device, torch.float32).eval()
        self.image_size = int(model.config.image_size)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self.source = source

    def preprocess(self, image: np.ndarray):
        """uint8 RGB H×W×3 -> normalised float tensor 3×S×S (S = the model's image size)."""
        import torch
        s = self.image_size
        h, w = image.shape[:2]
        # torchvision Resize(int): the short side becomes s, the long side int(s * long / short).
        nh, nw = (s, int(s * w / h)) if h <= w else (int(s * h / w), s)
        resized = np.asarray(Image.fromarray(image).resize((nw, nh), Image.BICUBIC))
        top, left = int(round((nh - s) / 2.0)), int(round((nw - s) / 2.0))
        crop = resized[top:top + s, left:left + s]
        x = torch.from_numpy(np.array(crop)).permute(2, 0, 1).float() / 255.0
        return (x - self.mean) / self.std

    def features(self, images: Sequence[np.ndarray]):
        """Unit-length image embeddings [N, projection_dim] (float32, CPU)."""
        import torch
        batch = torch.stack([self.preprocess(im) for im in images]).to(self.device)
        with torch.inference_mode():
            emb = self.model(pixel_values=batch).image_embeds.float()
        return torch.nn.functional.normalize(emb, dim=-1).cpu()


class DINOEncoder:
    """DINOv2 CLS features (transformers ``Dinov2Model``): ImageNet normalisation, the
    official DINOv2 position-embedding interpolation (``pipelines.mgig``), CLS token after
    the final LayerNorm."""

    def __init__(self, model, device="cpu", source: str = ""):
        """`model`: a transformers ``Dinov2Model``; its embeddings module is replaced (in
        place) by one with the official interpolation, same weights."""
        import torch

        from ....pipelines.mgig import official_embeddings_class

        # Swap in the official interpolation (bicubic with a +0.1 scale factor): the
        # official evaluation runs the original DINOv2 code at 224² (37² grid -> 16²).
        embeddings = official_embeddings_class()(model.config)
        embeddings.load_state_dict(model.embeddings.state_dict())
        model.embeddings = embeddings
        self.device = torch.device(device)
        self.model = model.to(self.device, torch.float32).eval()
        self.mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(1, 3, 1, 1)
        self.source = source

    def features(self, images: Sequence[np.ndarray]):
        """Unit-length CLS features [N, hidden] of uint8 RGB images, each resized to 224²."""
        import torch
        arr = np.stack([resize_image(im, (DINO_SIZE, DINO_SIZE)) for im in images])
        x = torch.from_numpy(arr).permute(0, 3, 1, 2).float().div(255.0)
        x = ((x - self.mean) / self.std).to(self.device)
        with torch.inference_mode():
            cls_token = self.model(pixel_values=x).pooler_output.float()
        return torch.nn.functional.normalize(cls_token, dim=-1).cpu()


def clip_score(encoder: CLIPImageEncoder, generated: np.ndarray, target: np.ndarray) -> float:
    """Cosine of the CLIP image embeddings of two uint8 RGB images."""
    f = encoder.features([generated, target])
    return float((f[0] * f[1]).sum())


def dino_scores(encoder: DINOEncoder, generated: np.ndarray, target: np.ndarray,
                human_mask: np.ndarray, object_mask: np.ndarray) -> dict[str, float]:
    """DINO-Score human / object / pair: cosine of the CLS features of both images masked
    on white by the ground-truth masks. `generated` must already be the target's size."""
    if generated.shape != target.shape:
        raise ValueError(f"dino_scores: generated {generated.shape} and target {target.shape} differ in size")
    masks = {"dino_human": human_mask, "dino_object": object_mask,
             "dino_pair": np.logical_or(human_mask, object_mask)}
    images = [on_white(im, m) for m in masks.values() for im in (generated, target)]
    f = encoder.features(images)
    return {name: float((f[2 * i] * f[2 * i + 1]).sum()) for i, name in enumerate(masks)}
