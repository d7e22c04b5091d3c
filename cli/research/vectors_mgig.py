"""Checker for the ``mgig`` part of a test-vector folder (`verify`, tests/test_mgig.py).

Loads the folder's official-format ``mgig`` checkpoint with our loader and recomputes
every reference array: the ID encoder (normalisation, position-embedding resize, tokens,
context), the ControlNet residuals and ε predictions, the official DDIM run one step at a
time (stored per-step inputs, our ε and our DDIM update), decoding, and the final image
through our preprocessing and crop-back. Sizes, timesteps, guidance, step count and the
pinned random choices are read from the folder.
"""
from __future__ import annotations

import re
from typing import Iterator

import numpy as np
import torch

from ...pipelines.mgig import inputs as pp
from ...pipelines import composite, samplers
from ...pipelines.mgig import CONTROLNET_MEMORY_FORMAT, MGIGModel
from .vectors import Result, VectorFolder, compare, used_as_input
from .vectors_preproc import prepare_mgig_inputs

PART = "mgig"


def _notes(folder: VectorFolder) -> dict:
    return folder.part(PART).get("notes", {})


def _unet_params(folder: VectorFolder) -> dict:
    config = folder.part(PART).get("config", {}).get("model", {}).get("params", {})
    return config.get("unet_config", {}).get("params", {})


def load_model(folder: VectorFolder) -> MGIGModel:
    """The folder's MGIG checkpoint through our official loader (fp32, CPU). Head widths,
    which weights do not determine, come from the manifest config when it states them."""
    from ...weights_manager.native_mgig import load_mgig

    head_dim = _unet_params(folder).get("num_head_channels")
    dino = ((folder.reduced_configs or {}).get("mgig_overrides") or {}).get("dino", {})
    return load_mgig(folder.checkpoint(PART),
                     unet_head_dim=head_dim if head_dim and head_dim > 0 else None,
                     dino_num_heads=dino.get("num_heads"))


def _guidance(folder: VectorFolder) -> float:
    return float(_notes(folder).get("ddim_sample_kwargs", {}).get("unconditional_guidance_scale", 5.0))


def _pipeline_settings(folder: VectorFolder) -> dict:
    """Target-box / crop ratios and mask-channel mode of the end-to-end run, from the
    pinned random draws (official order: randint box ratio, randint crop ratio, uniform
    perturbation draw)."""
    pinned = _notes(folder).get("ddim_pinned_random_choices", [])
    randints = [p["returned"] for p in pinned if p.get("call") == "np.random.randint"]
    uniforms = [p["returned"] for p in pinned if p.get("call") == "np.random.uniform"]
    return {"box_ratio": randints[0] / 10 if randints else pp.TARGET_BOX_RATIO,
            "crop_ratio": randints[1] / 10 if len(randints) > 1 else pp.CROP_RATIO,
            # the official code perturbs the mask channel when the draw is < 0.7
            "perturbed": bool(uniforms and uniforms[0] < 0.7)}


def _hint(folder: VectorFolder) -> torch.Tensor:
    """The stored hint input (preproc ``pipe_hint``, HWC) as [1,4,H,W]."""
    hint = folder.arrays("preproc")["pipe_hint"]
    return torch.from_numpy(np.ascontiguousarray(hint)).permute(2, 0, 1)[None].float()


def check(folder: VectorFolder) -> Iterator[Result]:
    A = folder.arrays(PART)
    model = load_model(folder)
    with torch.no_grad():
        ctx, uctx = yield from check_id_encoder(folder, model)
        hint = _hint(folder)
        yield from check_single_forwards(folder, model, ctx, uctx, hint)
        yield from _check_ddim(folder, model, A, ctx, uctx, hint)
        decoded = model.decode_latent(_tensor(A, "ddim_final_latent"))
        yield compare("decoded", decoded, A["decoded"], note="decode of the reference ddim_final_latent")
        yield _check_gen_image(folder, A, decoded)


def _tensor(A, name: str) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(A[name]))


def check_id_encoder(folder: VectorFolder, model: MGIGModel):
    """dino_* and ctx_* arrays; returns (context, unconditional context) after yielding."""
    A = folder.arrays(PART)
    ref = _tensor(A, "in_ref")
    yield used_as_input("in_ref", "= preproc pipe_ref as [1,3,224,224]")
    encoder = model.id_encoder
    yield compare("dino_normalized_image", encoder.normalize(ref), A["dino_normalized_image"])
    size = ref.shape[-1]
    patches = (size // encoder.dinov2.config.patch_size) ** 2
    pos = encoder.dinov2.embeddings.interpolate_pos_encoding(
        torch.zeros(1, patches + 1, encoder.dinov2.config.hidden_size), size, size)
    yield compare("dino_pos_embed_224", pos, A["dino_pos_embed_224"])
    yield compare("dino_tokens", encoder.tokens(ref), A["dino_tokens"])
    ctx = model.encode_id(ref)
    yield compare("ctx_cond", ctx, A["ctx_cond"])
    yield compare("dino_tokens_uncond", encoder.tokens(torch.zeros_like(ref)), A["dino_tokens_uncond"])
    uctx = model.uncond_context(1)
    yield compare("ctx_uncond", uctx, A["ctx_uncond"])
    return ctx, uctx


def check_single_forwards(folder: VectorFolder, model: MGIGModel, ctx: torch.Tensor, uctx: torch.Tensor,
                          hint: torch.Tensor) -> Iterator[Result]:
    """in_x_t / in_timesteps, cn_hint_embedding, cn_t<k>_res<i>, eps_t<k>_{cond,uncond,nocontrol}."""
    A = folder.arrays(PART)
    x_t, timesteps = _tensor(A, "in_x_t"), _tensor(A, "in_timesteps")
    yield used_as_input("in_x_t")
    yield used_as_input("in_timesteps", f"t = {timesteps.tolist()}")
    embedding = model.controlnet.controlnet_cond_embedding(hint.clone(memory_format=CONTROLNET_MEMORY_FORMAT))
    yield compare("cn_hint_embedding", embedding, A["cn_hint_embedding"], note="hint = preproc pipe_hint")
    contexts = {"cond": ctx, "uncond": uctx, "nocontrol": ctx}
    residuals: dict[tuple[int, str], list[torch.Tensor]] = {}  # each ControlNet run once

    def control(k: int, kind: str) -> list[torch.Tensor]:
        if (k, kind) not in residuals:
            residuals[k, kind] = model.control_residuals(x_t, timesteps[k:k + 1], contexts[kind], hint)
        return residuals[k, kind]

    for name in folder.array_names(PART):
        m = re.fullmatch(r"cn_t(\d+)_res(\d+)", name)
        if m:
            k = int(m.group(1))
            yield compare(name, control(k, "cond")[int(m.group(2))], A[name], note=f"t={int(timesteps[k])}")
            continue
        m = re.fullmatch(r"eps_t(\d+)_(cond|uncond|nocontrol)", name)
        if m:
            k, kind = int(m.group(1)), m.group(2)
            eps = model.unet_output(x_t, timesteps[k:k + 1], contexts[kind],
                                 None if kind == "nocontrol" else control(k, kind))
            yield compare(name, eps, A[name], note=f"t={int(timesteps[k])}")


def _check_ddim(folder, model, A, ctx, uctx, hint) -> Iterator[Result]:
    T = lambda name: _tensor(A, name)  # noqa: E731
    guidance = _guidance(folder)
    yield used_as_input("ddim_x_T")
    steps = len(A["ddim_timesteps"])
    timesteps = samplers.ddim_timesteps(steps, len(model.alphas_cumprod))
    yield compare("ddim_timesteps", timesteps, A["ddim_timesteps"], note=f"{steps} steps")
    a_t, a_prev = samplers.ddim_alphas(model.alphas_cumprod, timesteps)
    yield compare("ddim_alphas", a_t, A["ddim_alphas"])
    yield compare("ddim_alphas_prev", a_prev.double(), A["ddim_alphas_prev"])
    yield compare("ddim_sigmas", np.zeros(steps), A["ddim_sigmas"], note="eta = 0")

    # One batched call (uncond, cond) per step, on the stored input of that step; the
    # next step's input is our DDIM update of it with our guided ε.
    order = list(reversed(range(steps)))
    x_chain = T("ddim_x_T")
    for k, index in enumerate(order):
        x_in = T("ddim_x_T") if k == 0 else T(f"ddim_step{k}_x_in")
        if k > 0:
            yield compare(f"ddim_step{k}_x_in", x_prev, A[f"ddim_step{k}_x_in"],
                          note="DDIM update of the stored previous-step input")
        t = torch.full((2,), int(timesteps[index]), dtype=torch.long)
        e_u, e_c = model.predict_eps(torch.cat([x_in, x_in]), t, torch.cat([uctx, ctx]), hint).chunk(2)
        yield compare(f"ddim_step{k}_eps_cond", e_c, A[f"ddim_step{k}_eps_cond"], note=f"t={int(t[0])}")
        yield compare(f"ddim_step{k}_eps_uncond", e_u, A[f"ddim_step{k}_eps_uncond"], note=f"t={int(t[0])}")
        x_prev, _ = samplers.ddim_step(x_in, e_u + guidance * (e_c - e_u), a_t[index], a_prev[index])
        # the same run end to end, from x_T, for the record
        e_u2, e_c2 = model.predict_eps(torch.cat([x_chain, x_chain]), t, torch.cat([uctx, ctx]), hint).chunk(2)
        x_chain, _ = samplers.ddim_step(x_chain, e_u2 + guidance * (e_c2 - e_u2), a_t[index], a_prev[index])
    ref = A["ddim_final_latent"]
    chain_rel = float(np.abs(x_chain.numpy() - ref).max() / np.abs(ref).max())
    yield compare("ddim_final_latent", x_prev, ref,
                  note=f"last step from its stored input; whole chain from x_T: rel {chain_rel:.1e}")


def _check_gen_image(folder: VectorFolder, A, decoded: torch.Tensor) -> Result:
    """Our preprocessing of the stored scene (for the crop box) + official post-processing
    of the decoded reference latent + our crop-back."""
    try:
        P = folder.arrays("preproc")
        human, human_mask = P["scene_human_image"], P["scene_human_image_mask"]
        hoi, object_mask = P["scene_hoi_image"], P["scene_object_mask"]
        union = np.maximum(P["scene_human_mask_gt"], object_mask)
    except (KeyError, OSError) as e:
        return Result("gen_image", "FAIL", note=f"scene inputs (preproc part) unavailable: {e}")
    settings = _pipeline_settings(folder)
    if settings["perturbed"]:
        return Result("gen_image", "FAIL", note="the official run perturbed the mask channel (random); "
                                                "not reproducible")
    inputs = prepare_mgig_inputs(human, human_mask, hoi, object_mask, hoi, union,
                                 box_ratio=settings["box_ratio"], crop_ratio=settings["crop_ratio"])
    pred = composite.decoded_to_prediction(decoded[0].permute(1, 2, 0).numpy())
    image = composite.crop_back(pred, hoi, inputs.extra_sizes, inputs.crop_box)
    # float -> uint8 truncates: a ~1e-6 difference in the decoded image can cross an integer
    return compare("gen_image", image, A["gen_image"], int_levels=1,
                   note=f"box x{settings['box_ratio']}, crop x{settings['crop_ratio']}")
