"""Training: one entry point for the VAE, IAMG and MGIG, built on 🤗 Accelerate. The
command is ``python -m interact_custom train {vae,iamg,mgig,masks}`` (`cli/train.py`,
which also supplies the readers and writers of the weight-file formats).

Modules:

- `config` — `TrainConfig` (every key; ``train --list-keys``), loading and validation;
- `data` — the training datasets (deterministic positions) and stage-2 mask writing;
- `augment` — the official MGIG mask perturbation (`augment.perturb_mask`);
- `models` — building the model (preset, or init read through `weights_manager`), trainable
  parts, gradient checkpointing, latent calibration, the final file;
- `losses` — the objectives (`iamg_training_loss`, `VAELoss`, `IAMGLoss`, `MGIGLoss`);
- `ema` — the EMA of the trained weights;
- `runs` — the run folder, checkpoints and their files;
- `loop` — `train`: the steps, logging, checkpoints, validation images.

The same command runs on the CPU, one GPU, several GPUs (DDP) or several machines; mixed
precision (``fp16``/``bf16``), gradient checkpointing, gradient accumulation and an
optional EMA are config keys. A config is a JSON object of plain keys (`TrainConfig`,
examples in ``cli/research/training/configs/``); ``--set key=value`` overrides one (the value is parsed as JSON,
else taken as a string). Relative paths are relative to the working directory.

What trains (``trainable``, defaults in brackets; everything else is frozen):

- ``vae`` — an SD kl-f8 style `AutoencoderKL` [``vae``; or ``decoder``] from scratch
  (``preset`` "iamg:<preset>" / "mgig:<preset>" picks the architecture of that model's
  VAE) or from ``init``: reconstruction L1 (or MSE) + ``kl_weight``·KL, weighted as LDM's
  autoencoder loss without its perceptual/GAN terms. The small presets have no
  pretrained VAE: train one, then pass it to IAMG/MGIG as ``init_vae``.
- ``iamg`` — the official objective (ε-MSE, t uniform, `losses.iamg_training_loss`).
  *Official variant*: ``init`` = the released iamg.pth (or one of our files) [``unet``].
  ★ *Text variant*: ``text: true`` adds zero-initialised cross-attention to an init
  without it (`iamg.with_cross_attention`), or ``preset`` "small_text" / "tiny_text"
  from scratch [``unet`` + ``text_encoder``; ``unet_cross_attention`` trains only the
  new layers]. Background / box / text dropout (`data.IAMGTrainData`).
- ``mgig`` — what the official code trains: ControlNet + the UNet's decoder half + the
  ID projector, DINOv2 frozen [``controlnet``, ``unet_decoder``, ``projector``] when
  starting from ``init`` (mgig.ckpt or ours); from a ``preset`` everything trains,
  including the small ID encoder [``controlnet``, ``unet``, ``id_encoder``]. The official
  model predicts ε; ★ ``prediction_type: v_prediction`` trains v instead (saved with the
  weights; the samplers still receive ε, `samplers.eps_from_v`; IAMG likewise). ★ Stage 1 on
  ground-truth masks, stage 2 (``stage: 2``) on IAMG-generated masks
  (``generated_masks``, made by ``train masks``); background / box / ID dropout
  (`data.MGIGTrainData`). ★ ``figure_loss_weight`` counts the loss on the
  figure's latent pixels N times (`losses.figure_weighted_mse`): the identity is learnt there.

Output folder (``output_dir``)::

    config.json                     the resolved config of the run
    log.jsonl                       one JSON line per logged step (loss, lr, s/step) and validation
    samples/step_XXXXXX.png         validation images (IAMG: condition | truth | generated mask;
                                    MGIG: reference | hint | layout | generated | truth; VAE: in | out)
    checkpoints/step_XXXXXX/        Accelerate state (optimizer, RNG, grad scaler) + our files:
                                    trainable.safetensors (trained tensors only; the frozen ones come
                                    from the init/preset again), ema.safetensors, train_state.json
    checkpoints/latest              name of the newest complete checkpoint
    final.safetensors               our format (save_iamg / save_mgig; VAE: `vae.*` tensors);
                                    EMA weights when EMA is on (raw ones in final_noema.safetensors)

Checkpoints are written to ``checkpoints/.tmp_step_XXXXXX``, fsynced (files, then the
folder) and renamed when complete, then ``latest`` is replaced atomically (also fsynced),
so an interruption at any moment — a kill or a power cut — leaves the previous checkpoint
as the newest one. What interrupted writes leave behind (``.tmp_step_*`` folders,
``.<name>.<id>.tmp`` files of the run's own files) is removed on the next start or
resume; a torn last line of ``log.jsonl`` is dropped (a corrupt line elsewhere is an
error naming it). ``--resume`` continues from ``latest`` — or, when a file of it is
truncated or corrupt, from the newest whole checkpoint before it, saying so — with
identical state: every random choice of a step (data
order, augmentation, t, noise, dropout) is derived from (seed, step, process), so the
resumed run computes exactly what an uninterrupted run computes (given the same number
of processes). ``max_steps_per_run`` stops an
invocation early with a checkpoint (time-limited or pre-emptible machines).
"""

