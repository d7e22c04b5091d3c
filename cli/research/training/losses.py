"""Training objectives: `iamg_training_loss` (the IAMG ε / v objective with condition and
text dropout) and one `nn.Module` per model kind (`LOSSES`: `VAELoss`, `IAMGLoss`,
`MGIGLoss`), so Accelerate/DDP wraps the whole step. A loss module is called with a batch
and the step's seed (`loop.step_seed`); every random draw of the step comes from it.
"""
from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ....pipelines import samplers
from ....pipelines.iamg import IAMGModel
from ....pipelines.mgig import MGIGModel
from ....pipelines.mgig.refiner import reference_colours
from ....pipelines.sampling_settings import RECOMMENDED
from .config import TrainConfig

# The guidance of the one-step predictions `MGIGLoss.predicted_latent` repairs: sampling's.
DECODE_GUIDANCE = RECOMMENDED["mgig"].guidance


# --------------------------------------------------------------------------------------
# ★ Training objective of the text variant
# --------------------------------------------------------------------------------------

def _draw(fn, generator: torch.Generator | None, device: torch.device, *args, **kwargs) -> torch.Tensor:
    # Random numbers come from the generator's device (CPU by default), then move, so one
    # seed gives the same batch whatever device trains.
    gen_device = generator.device if generator is not None else torch.device("cpu")
    return fn(*args, generator=generator, device=gen_device, **kwargs).to(device)


def iamg_training_loss(model: IAMGModel, batch: Mapping, *, cond_dropout: float = 0.1,
                       text_dropout: float = 0.1, generator: torch.Generator | None = None) -> torch.Tensor:
    """One ε-prediction loss of (the ★ text variant of) IAMG: MSE(ε_θ(x_t, t | c, text), ε)
    with t uniform in [0, T), the official objective, plus the paper's condition dropout.

    ``batch`` keys:
    - ``target_latent`` [B, 4, h, w], or ``target`` images [B, 3, S, S] in [-1, 1]
      (`target_image`), encoded with a posterior *sample* like the official trainer;
    - ``cond_latent`` or ``condition`` images (`condition_image`, encoded with the
      posterior mean as at inference); absent = every sample has the empty condition;
    - ``input_ids`` [B, 77] or ``prompts`` (list of str), for models with text.

    Each sample's condition is replaced by the empty (all-zero) condition with probability
    ``cond_dropout`` and its prompt by "" with probability ``text_dropout`` — what lets
    the model run without a background and enables classifier-free guidance. Gradients
    reach whatever parameters require them (the VAE encodes under no_grad).
    """
    device = model.device
    with torch.no_grad():
        if "target_latent" in batch:
            x0 = torch.as_tensor(batch["target_latent"]).to(device=device, dtype=torch.float32)
        elif "target" in batch:
            x0 = model.to_latent(model.posterior(batch["target"]).sample(generator)).float()
        else:
            raise ValueError("batch: needs 'target_latent' [B, 4, h, w] or 'target' images [B, 3, S, S]")
        n = x0.shape[0]
        if "cond_latent" in batch:
            cond = torch.as_tensor(batch["cond_latent"]).to(device=device, dtype=torch.float32)
        elif "condition" in batch:
            cond = model.encode_condition(batch["condition"]).float()
        else:
            cond = model.empty_condition(n)
        if cond.shape != x0.shape:
            raise ValueError(f"batch: condition latent {tuple(cond.shape)} does not match the target latent "
                             f"{tuple(x0.shape)}")

    t = _draw(torch.randint, generator, device, 0, len(model.alphas_cumprod), (n,))
    noise = _draw(torch.randn, generator, device, x0.shape)
    drop_cond = _draw(torch.rand, generator, device, (n,)) < cond_dropout
    cond = torch.where(drop_cond[:, None, None, None], torch.zeros_like(cond), cond)

    context = None
    if model.uses_text:
        if "input_ids" in batch:
            ids = torch.as_tensor(batch["input_ids"]).long()
        elif "prompts" in batch:
            ids = model.tokenize(list(batch["prompts"]))
        else:
            raise ValueError("batch: the text-conditioned IAMG needs 'input_ids' or 'prompts'")
        if ids.shape[0] != n:
            raise ValueError(f"batch: {ids.shape[0]} prompts for {n} targets")
        drop_text = _draw(torch.rand, generator, device, (n,)) < text_dropout
        ids = torch.where(drop_text[:, None].to(ids.device), model.tokenize([""]).to(ids.device), ids)
        context = model.encode_text(ids)

    a = model.alphas_cumprod.to(device)[t].view(n, 1, 1, 1)
    x_t = samplers.add_noise(x0, noise, a)
    output = model.unet_output(x_t, t, cond, context)
    return F.mse_loss(output.float(), samplers.training_target(model.prediction_type, x0, noise, a))


# --------------------------------------------------------------------------------------
# Loss modules of a training run
# --------------------------------------------------------------------------------------

def _sample_latent(vae, images: torch.Tensor, scale: float, generator: torch.Generator) -> torch.Tensor:
    # Posterior *sample*, like the official trainers' encode_first_stage.
    p = next(vae.parameters())
    posterior = vae.encode(images.to(p.device, p.dtype)).latent_dist
    return (posterior.sample(generator) * scale).float()


class IAMGLoss(nn.Module):
    """`iamg_training_loss` of a batch (box dropout = the empty condition)."""

    def __init__(self, model: IAMGModel, cfg: TrainConfig):
        super().__init__()
        self.model = model
        self.box_dropout, self.text_dropout = float(cfg.box_dropout), float(cfg.text_dropout)

    def forward(self, batch: dict, seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        inputs = {"target": batch["target"], "condition": batch["condition"]}
        if self.model.uses_text:
            inputs["input_ids"] = batch["input_ids"]
        return iamg_training_loss(self.model, inputs, cond_dropout=self.box_dropout,
                                  text_dropout=self.text_dropout, generator=g)


class MGIGLoss(nn.Module):
    """The official ControlLDM objective: MSE(ε̂(x_t, t | ID context, hint), ε), t uniform;
    for a ★ v_prediction model the target is v instead (`samplers.v_target`)."""

    def __init__(self, model: MGIGModel, cfg: TrainConfig | None = None):
        super().__init__()
        self.model = model
        self.figure_weight = 1.0 if cfg is None else float(cfg.figure_loss_weight)
        self.objective = "diffusion" if cfg is None else cfg.objective
        self.sampled_prob = 0.0 if cfg is None else float(cfg.decode_sampled_prob)

    def forward(self, batch: dict, seed: int) -> torch.Tensor:
        if self.objective == "decode":
            return self.decode_loss(batch, seed)
        m = self.model
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            x0 = _sample_latent(m.vae, batch["target"], m.latent_scale, g)
        n, device = x0.shape[0], x0.device
        t = torch.randint(0, len(m.alphas_cumprod), (n,), generator=g).to(device)
        noise = torch.randn(x0.shape, generator=g).to(device)
        a = m.alphas_cumprod.to(device)[t].view(n, 1, 1, 1)
        x_t = samplers.add_noise(x0, noise, a)
        context = m.encode_id(batch["reference"])
        # The ControlNet runs batched in the default memory layout: faster than the
        # per-sample channels-last path inference uses to reproduce the official outputs
        # (`mgig.CONTROLNET_MEMORY_FORMAT`); the two differ by float rounding only.
        hint = batch["hint"].to(x_t.dtype)
        down, mid = m.controlnet(x_t, t, encoder_hidden_states=context.to(x_t.dtype), controlnet_cond=hint,
                                 return_dict=False)
        output = m.unet_output(x_t, t, context, [*down, mid])
        target = samplers.training_target(m.config.prediction_type, x0, noise, a)
        if self.figure_weight == 1.0:
            return F.mse_loss(output.float(), target)
        return figure_weighted_mse(output.float(), target, batch["figure"], self.figure_weight)

    def decode_loss(self, batch: dict, seed: int) -> torch.Tensor:
        """★ ``objective: decode``: L1 between the target crop and what the decoding side
        (VAE decoder, then the refiner with the hint, its scene plane and the references'
        colours) makes of the target's latent — a posterior sample, so it also learns
        latents a little off the encoder's — or, with probability ``decode_sampled_prob``,
        of the model's own prediction of it (`predicted_latent`). The figure's pixels count
        ``figure_loss_weight`` times."""
        m = self.model
        g = torch.Generator().manual_seed(seed)
        target = batch["target"].float()
        with torch.no_grad():
            z = _sample_latent(m.vae, target, m.latent_scale, g)
            pick = torch.rand(z.shape[0], generator=g) < self.sampled_prob
            if pick.any():
                z = torch.where(pick.view(-1, 1, 1, 1).to(z.device), self.predicted_latent(z, batch, g), z)
        colours = reference_colours(batch["reference"], batch["reference_mask"])
        decoded = m.decode_latent(z, hint=batch["hint"], colours=colours, scene=batch["scene"]).float()
        return figure_weighted_error(decoded - target.to(decoded.device), batch["figure"], self.figure_weight, "l1")

    def predicted_latent(self, x0: torch.Tensor, batch: dict, g: torch.Generator) -> torch.Tensor:
        """The frozen diffusion model's one-step prediction x̂₀ of ``x0`` noised to a uniform
        random t, with classifier-free guidance `DECODE_GUIDANCE` as sampling uses: the
        blur, colour shifts and blotches of a sampled latent, the worse the larger t."""
        m = self.model
        n = x0.shape[0]
        t = torch.randint(0, len(m.alphas_cumprod), (n,), generator=g).to(x0.device)
        a = m.alphas_cumprod.to(x0.device)[t].view(n, 1, 1, 1)
        x_t = samplers.add_noise(x0, torch.randn(x0.shape, generator=g).to(x0.device), a)
        hint = batch["hint"].to(x_t.dtype)
        cond = {"context": m.encode_id(batch["reference"]).to(x_t.dtype), "hint": hint}
        uncond = {"context": m.uncond_context(n).to(x_t.dtype), "hint": hint}
        eps = samplers.guided_eps(lambda x, tt, context, hint: m.predict_eps(x, tt, context, hint), cond, uncond,
                                  DECODE_GUIDANCE)(x_t, t)
        return (x_t - (1 - a).sqrt() * eps) / a.sqrt()


def figure_weighted_error(diff: torch.Tensor, figure: torch.Tensor, weight: float, kind: str = "mse") -> torch.Tensor:
    """Mean squared (``kind`` "mse") or absolute ("l1") error of ``diff`` [B,C,H,W] with
    the pixels covered by ``figure`` ([B,1,S,S] in 0..1, area-pooled to H×W) counted
    ``weight`` times, normalised by the total weight."""
    cover = F.adaptive_avg_pool2d(figure.to(diff.device, diff.dtype), diff.shape[-2:])
    w = 1.0 + (weight - 1.0) * cover
    err = diff.pow(2) if kind == "mse" else diff.abs()
    return (w * err).sum() / (w.sum() * diff.shape[1])


def figure_weighted_mse(output: torch.Tensor, target: torch.Tensor, figure: torch.Tensor,
                        weight: float) -> torch.Tensor:
    """★ MSE with the latent pixels covered by the figure (``figure`` [B,1,S,S] in 0..1,
    area-pooled to the latent grid) counted ``weight`` times, normalised by the total
    weight so the loss stays an average squared error. Around the figure the scene is
    either copied from the hint or inside the box and unknowable; the identity (colours,
    patterns) is only learnt from the figure's few pixels."""
    return figure_weighted_error(output - target, figure, weight, "mse")


class VAELoss(nn.Module):
    """Reconstruction (L1 or MSE, per pixel) + kl_weight · KL / pixels: LDM's autoencoder
    loss without the perceptual and adversarial terms."""

    def __init__(self, model: nn.Module, cfg: TrainConfig):
        super().__init__()
        self.model = model
        self.kind, self.kl_weight = cfg.vae_loss, float(cfg.kl_weight)

    def forward(self, batch: dict, seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        x = batch["image"].to(next(self.model.parameters()).dtype)
        posterior = self.model.encode(x).latent_dist
        rec = self.model.decode(posterior.sample(g)).sample
        diff = rec.float() - x.float()
        rec_loss = diff.abs().mean() if self.kind == "l1" else diff.pow(2).mean()
        kl = posterior.kl().float().mean() / x[0].numel()
        return rec_loss + self.kl_weight * kl


LOSSES = {"vae": VAELoss, "iamg": IAMGLoss, "mgig": MGIGLoss}
