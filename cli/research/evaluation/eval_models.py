"""The CLIP / DINOv2 models of `evaluate`, from local files (nothing is downloaded).

`load_clip_encoder` / `load_dino_encoder` read a transformers folder or one weight file
and return the `cli.research.evaluation.encoders` wrapper around the built model. A single
DINOv2 file is in the original naming (``dinov2_vitg14_pretrain.pth``, what the official
evaluation loads, or an MGIG/AnyDoor checkpoint's ``cond_stage_model.model.*``),
converted with `official_mgig.dinov2_official_to_hf`; a CLIP vision file is in
transformers naming, its architecture read from the tensor shapes.
"""
from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any, Iterable, Mapping

from .encoders import CLIP_MEAN, CLIP_STD, CLIPImageEncoder, DINOEncoder
from .evaluate import EvaluationError
from ....pipelines.files import load_strict, read_weights
from ....weights_manager.official_mgig import dinov2_official_to_hf


def _require_path(path: str | os.PathLike, what: str, option: str) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"{what} model {p} does not exist ({option} takes a local transformers "
                                "model folder or a weight file; nothing is downloaded)")
    return p


def _count_layers(keys: Iterable[str], pattern: str) -> int:
    found = [int(m.group(1)) for k in keys if (m := re.match(pattern, k))]
    return 1 + max(found) if found else 0


def load_clip_encoder(path: str | os.PathLike, device="cpu") -> CLIPImageEncoder:
    """A `CLIPImageEncoder` from a local folder (``config.json`` + weights; mean/std from its
    ``preprocessor_config.json`` when present) or one weight file in transformers
    naming (``vision_model.*`` + ``visual_projection.weight``, e.g. a ComfyUI
    clip_vision file); for a file the architecture is read from the tensor shapes
    (64-wide heads; activation quick_gelu as OpenAI CLIP, gelu for the OpenCLIP
    ViT-H/-bigG widths 1280/1664)."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    p = _require_path(path, "CLIP", "--clip")
    mean, std = CLIP_MEAN, CLIP_STD
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise FileNotFoundError(f"CLIP model folder {p} has no config.json (expected a transformers "
                                    "CLIPVisionModelWithProjection / CLIPModel folder)")
        pre = p / "preprocessor_config.json"
        if pre.is_file():
            cfg = json.loads(pre.read_text(encoding="utf-8"))
            mean, std = tuple(cfg.get("image_mean", mean)), tuple(cfg.get("image_std", std))
        try:
            model = CLIPVisionModelWithProjection.from_pretrained(str(p), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise EvaluationError(f"cannot load a CLIPVisionModelWithProjection from {p}: {exc}") from exc
        return CLIPImageEncoder(model, mean=mean, std=std, device=device, source=str(p))

    sd, _ = read_weights(p)
    vision = {k[k.index("vision_model."):]: v for k, v in sd.items() if "vision_model." in k}
    proj = next((v for k, v in sd.items() if k.endswith("visual_projection.weight")), None)
    if not vision or proj is None:
        raise EvaluationError(f"{p}: expected CLIP vision tensors in transformers naming ('vision_model.*' "
                              "and 'visual_projection.weight'); for other formats pass a transformers folder")
    hidden, _, patch, _ = vision["vision_model.embeddings.patch_embedding.weight"].shape
    positions = vision["vision_model.embeddings.position_embedding.weight"].shape[0] - 1
    config = CLIPVisionConfig(
        hidden_size=hidden, patch_size=patch, image_size=math.isqrt(positions) * patch,
        intermediate_size=vision["vision_model.encoder.layers.0.mlp.fc1.weight"].shape[0],
        num_hidden_layers=_count_layers(vision, r"vision_model\.encoder\.layers\.(\d+)\."),
        num_attention_heads=max(1, hidden // 64), projection_dim=proj.shape[0],
        hidden_act="gelu" if hidden in (1280, 1664) else "quick_gelu")
    model = CLIPVisionModelWithProjection(config)
    load_strict(model, {**{k: v for k, v in vision.items() if not k.endswith("position_ids")},
                        "visual_projection.weight": proj}, f"CLIP vision weights {p}")
    return CLIPImageEncoder(model, device=device, source=str(p))


def _dinov2_config_from_original(sd: Mapping[str, Any], where: str):
    from transformers import Dinov2Config

    from ....pipelines.mgig import dinov2_kwargs

    if any(k.startswith("register_tokens") for k in sd):
        raise EvaluationError(f"{where}: DINOv2 with register tokens is not supported; use a plain DINOv2")
    hidden = sd["cls_token"].shape[-1]
    patch = sd["patch_embed.proj.weight"].shape[-1]
    grid = math.isqrt(sd["pos_embed"].shape[1] - 1)
    swiglu = "blocks.0.mlp.w12.weight" in sd
    if swiglu:
        # transformers derives the SwiGLU width from mlp_ratio like DINOv2's SwiGLUFFNFused.
        width = sd["blocks.0.mlp.w12.weight"].shape[0] // 2
        ratios = [r for r in range(1, 9) if (int(hidden * r * 2 / 3) + 7) // 8 * 8 == width]
        if not ratios:
            raise EvaluationError(f"{where}: DINOv2 SwiGLU width {width} matches no mlp_ratio for width {hidden}")
        mlp_ratio = 4 if 4 in ratios else ratios[0]
    else:
        width = sd["blocks.0.mlp.fc1.weight"].shape[0]
        if width % hidden:
            raise EvaluationError(f"{where}: DINOv2 MLP width {width} is not a multiple of the width {hidden}")
        mlp_ratio = width // hidden
    kwargs = dinov2_kwargs(hidden_size=hidden, depth=_count_layers(sd, r"blocks\.(?:\d+\.)?(\d+)\."),
                           patch_size=patch, image_size=grid * patch, mlp_ratio=mlp_ratio)
    kwargs["use_swiglu_ffn"] = swiglu
    return Dinov2Config(**kwargs)


def load_dino_encoder(path: str | os.PathLike, device="cpu") -> DINOEncoder:
    """A `DINOEncoder` from a local transformers ``Dinov2Model`` folder, or one weight file in the
    original DINOv2 naming (``cls_token``, ``blocks.N.*``, optionally under a prefix
    such as an MGIG checkpoint's ``cond_stage_model.model.``)."""
    from transformers import Dinov2Model

    p = _require_path(path, "DINOv2", "--dino")
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise FileNotFoundError(f"DINOv2 model folder {p} has no config.json (expected a transformers "
                                    "Dinov2Model folder)")
        try:
            model = Dinov2Model.from_pretrained(str(p), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise EvaluationError(f"cannot load a Dinov2Model from {p}: {exc}") from exc
        return DINOEncoder(model, device=device, source=str(p))

    obj, _ = read_weights(p)
    if isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    cls_keys = [k for k in obj if k == "cls_token" or k.endswith(".cls_token")]
    if len(cls_keys) != 1 or cls_keys[0].endswith("embeddings.cls_token"):
        raise EvaluationError(f"{p}: expected one DINOv2 in the original naming ('cls_token', 'blocks.N.*'); "
                              "for a transformers-format model pass its folder")
    prefix = cls_keys[0][:-len("cls_token")]
    sd = {k[len(prefix):]: v for k, v in obj.items() if k.startswith(prefix)}
    config = _dinov2_config_from_original(sd, str(p))
    hf, left = dinov2_official_to_hf(sd)
    for key in left:  # plain-MLP blocks (ViT-S/B/L): same names in transformers
        m = re.match(r"blocks\.(?:\d+\.)?(\d+)\.mlp\.(fc[12])\.(weight|bias)$", key)
        if m is None:
            raise EvaluationError(f"{p}: unexpected DINOv2 tensor {prefix}{key}")
        hf[f"encoder.layer.{m.group(1)}.mlp.{m.group(2)}.{m.group(3)}"] = sd[key]
    model = Dinov2Model(config)
    hf.setdefault("embeddings.mask_token", model.embeddings.mask_token.detach().clone())  # unused here
    load_strict(model, hf, f"DINOv2 weights {p}")
    return DINOEncoder(model, device=device, source=str(p))
