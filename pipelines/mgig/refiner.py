"""★ Scene-aware decoding (ours, not in the official MGIG): a small pixel-space network
after the VAE decoder that sees the hint the image was generated from.

Why: MGIG regenerates the whole square crop through the VAE, and a small VAE's round trip
alone already changes the scene around the figure (blurred texture, shifted colours) and
loses thin objects. The hint holds the scene outside the target box exactly, and the
layout channel says where the figure goes, so a decoder that reads it can give those
pixels back instead of re-inventing them — the idea of an asymmetric (conditional)
decoder for inpainting latents. The latent space is untouched: the diffusion model needs
no retraining, and a file without a refiner decodes as before.

`SceneRefiner` takes
- the decoded crop (``[B, 3, S, S]``, ≈[-1, 1]);
- the hint at the same size (``[B, 4, S, S]``: collage RGB in [-1, 1], layout channel);
- where the hint shows the scene itself (``scene``, ``[B, 1, S, S]``: `inputs.MGIGHint.scene`,
  1 outside the target box; without it the box, whose collage is mostly black, is
  ambiguous with a dark scene);
- the references' colours (`reference_colours`: ``[B, 6]``, the mean RGB of the human and
  of the object reference, broadcast over the image; zeros when unknown), which let it pull
  a figure whose colours the latent lost (thin objects vanish in a small f8 latent) back
  towards its identity;
and returns the decoded crop plus a learnt correction. A two-level convolutional U-Net
(full and half resolution, ``width`` / ``2·width`` channels); its output convolution
starts at zero, so a freshly added refiner is the identity and training starts from the
plain decoder.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .inputs import HINT_CHANNELS

IMAGE_CHANNELS, SCENE_CHANNELS, COLOUR_CHANNELS = 3, 1, 6
IN_CHANNELS = IMAGE_CHANNELS + HINT_CHANNELS + SCENE_CHANNELS + COLOUR_CHANNELS
DEFAULT_WIDTH = 16


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.SiLU(), nn.Conv2d(cout, cout, 3, padding=1), nn.SiLU())


class SceneRefiner(nn.Module):
    """Decoded crop + hint → refined crop (see the module docstring)."""

    def __init__(self, width: int = DEFAULT_WIDTH):
        super().__init__()
        if int(width) < 1:
            raise ValueError(f"refiner width must be a positive integer, got {width!r}")
        w = int(width)
        self.width = w
        self.encode = _block(IN_CHANNELS, w)
        self.down = nn.Conv2d(w, 2 * w, 3, stride=2, padding=1)
        self.middle = _block(2 * w, 2 * w)
        self.decode = _block(3 * w, w)
        self.out = nn.Conv2d(w, IMAGE_CHANNELS, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def config(self) -> dict:
        return {"width": self.width}

    def forward(self, decoded: torch.Tensor, hint: torch.Tensor, colours: torch.Tensor | None = None,
                scene: torch.Tensor | None = None) -> torch.Tensor:
        if decoded.shape[-2:] != hint.shape[-2:] or hint.shape[1] != HINT_CHANNELS:
            raise ValueError(f"refiner: decoded {tuple(decoded.shape)} and hint {tuple(hint.shape)} must be "
                             f"[B, 3, S, S] and [B, {HINT_CHANNELS}, S, S] of the same size")
        n, (h, w) = decoded.shape[0], decoded.shape[-2:]
        if colours is None:
            colours = decoded.new_zeros(n, COLOUR_CHANNELS)
        if colours.shape[-1] != COLOUR_CHANNELS:
            raise ValueError(f"refiner: colours must be [B, {COLOUR_CHANNELS}] (`reference_colours`), "
                             f"got {tuple(colours.shape)}")
        planes = colours.to(decoded).reshape(-1, COLOUR_CHANNELS, 1, 1).expand(n, -1, h, w)
        if scene is None:
            scene = decoded.new_zeros(n, SCENE_CHANNELS, h, w)
        if scene.shape[-2:] != (h, w) or scene.shape[1] != SCENE_CHANNELS:
            raise ValueError(f"refiner: scene must be [B, 1, {h}, {w}], got {tuple(scene.shape)}")
        skip = self.encode(torch.cat([decoded, hint.to(decoded.dtype), scene.to(decoded).expand(n, -1, -1, -1),
                                      planes], 1))
        low = self.middle(F.silu(self.down(skip)))
        up = F.interpolate(low, size=skip.shape[-2:], mode="nearest")
        return decoded + self.out(self.decode(torch.cat([skip, up], 1)))


def reference_colours(canvas: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``[B, 6]``: the mean RGB (in [-1, 1]) of the reference canvas's masked pixels in its
    top half (the human: `inputs.reference_canvas` puts it top-left) and bottom half (the
    object, bottom-right); a horizontal flip keeps them apart. ``canvas`` ``[B, 3, H, W]``
    in [0, 1], ``mask`` ``[B, 1, H, W]`` (> 0.5 = reference pixel). A half without pixels
    gives zeros."""
    if canvas.ndim != 4 or canvas.shape[1] != 3 or mask.shape[-2:] != canvas.shape[-2:]:
        raise ValueError(f"reference_colours: canvas [B, 3, H, W] and mask [B, 1, H, W], got "
                         f"{tuple(canvas.shape)} and {tuple(mask.shape)}")
    half = canvas.shape[-2] // 2
    x, m = canvas.float() * 2 - 1, (mask.float() > 0.5).float()
    out = []
    for rows in (slice(0, half), slice(half, None)):
        weight = m[..., rows, :]
        total = weight.sum((1, 2, 3))
        mean = (x[..., rows, :] * weight).sum((2, 3)) / total.clamp(min=1).unsqueeze(1)
        out.append(mean * (total > 0).float().unsqueeze(1))
    return torch.cat(out, 1)


def detect_refiner_config(refiner_sd: dict) -> dict | None:
    """The refiner's config from its tensors (``refiner.*`` prefix stripped); None when
    there are none."""
    if not refiner_sd:
        return None
    weight = refiner_sd.get("encode.0.weight")
    if weight is None or weight.ndim != 4 or weight.shape[1] != IN_CHANNELS:
        raise ValueError("refiner tensors present but 'refiner.encode.0.weight' is missing or not "
                         f"[width, {IN_CHANNELS}, 3, 3]")
    return {"width": int(weight.shape[0])}
