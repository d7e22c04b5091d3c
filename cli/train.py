"""`python -m interact_custom train`: train the VAE, IAMG or MGIG (`cli.research.training`).

    python -m interact_custom train {vae,iamg,mgig} --config FILE [--set KEY=VALUE ...] [--resume]
    accelerate launch -m interact_custom train mgig --config FILE      # several GPUs / machines
    torchrun --nproc_per_node 2 -m interact_custom train iamg --config FILE   # CPU processes (gloo)
    python -m interact_custom train masks --iamg FILE --data DIR --out DIR   # MGIG stage-2 input
    python -m interact_custom train --list-keys                              # every config key

The training core is `cli.research.training` (`train`, `build_model` re-exported here).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..pipelines import samplers
from ..pipelines.files import WeightsError, check_output_dir, check_weights_file
from ..pipelines.sampling_settings import settings_for
from ..weights_manager.native_iamg import load_iamg
from . import check_device, missing_dirs, output_folder, remove_empty, whole_number
from .research.data.dataset import DatasetError
from .research.training import data as train_data
from .research.training import loop, models
from .research.training.config import MODEL_KINDS, ConfigError, describe_keys, load_config
from .research.training.runs import CHECKPOINTS


# The training core, as the tests and scripts call it.
train = loop.train
build_model = models.build_model
load_vae_file = models.load_vae_file


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", nargs="?", choices=[*MODEL_KINDS, "masks"],
                        help="what to train; 'masks' writes IAMG masks for MGIG stage 2")
    parser.add_argument("--config", help="JSON config file (examples in cli/research/training/configs/; keys: --list-keys)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config key (value parsed as JSON, else a string); repeatable")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in output_dir from its latest checkpoint (start fresh if none)")
    parser.add_argument("--list-keys", action="store_true", help="print every config key, its default and meaning")
    parser.add_argument("--overwrite", action="store_true",
                        help="vae/iamg/mgig: train into an output_dir that holds files other than a run (its "
                             "config.json is replaced, log.jsonl appended to); masks: regenerate masks that exist")
    masks = parser.add_argument_group("masks (MGIG stage 2 input)")
    masks.add_argument("--iamg", help="IAMG weights (official iamg.pth or ours)")
    masks.add_argument("--data", help="CHOI dataset folder")
    masks.add_argument("--out", type=output_folder, help="folder for <sample id>.png masks")
    masks.add_argument("--split", default="train", help="dataset split (default train)")
    own = "default: the model's own (sampling_settings.settings_for)"
    masks.add_argument("--steps", type=int, default=None, help=f"sampler steps ({own})")
    masks.add_argument("--sampler", default=None, choices=samplers.SAMPLER_NAMES, help=f"sampler ({own})")
    masks.add_argument("--guidance", type=float, default=None, help=f"classifier-free guidance ({own})")
    masks.add_argument("--seed", type=int, default=0, help="sample i uses seed + i")
    masks.add_argument("--limit", type=whole_number(1), default=None, help="only the first N samples")
    masks.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    masks.add_argument("--tokenizer-dir", default=None, help="prompt tokenizer folder (CLIP-vocabulary IAMG)")


def _run_masks(args) -> int:
    missing = [f"--{n}" for n in ("iamg", "data", "out") if not getattr(args, n)]
    if missing:
        print(f"interact-custom train masks: missing {', '.join(missing)}", file=sys.stderr)
        return 2
    args.device = check_device(args.device)  # fail before loading or sampling anything
    check_weights_file(args.iamg, "--iamg")
    check_output_dir(args.out, "--out")
    model = load_iamg(args.iamg, device=args.device, tokenizer_dir=args.tokenizer_dir)
    settings = settings_for("iamg", model, sampler=args.sampler, steps=args.steps, guidance=args.guidance)

    def report(i, n):
        print(f"\rmask {i}/{n}", end="", file=sys.stderr, flush=True)

    written = train_data.write_generated_masks(model, args.data, args.out, split=args.split, settings=settings,
                                               seed=args.seed, overwrite=args.overwrite, limit=args.limit,
                                               progress=report)
    print(f"\nwrote {written} masks to {args.out}", file=sys.stderr)
    return 0


def run(args: argparse.Namespace) -> int:
    if args.list_keys:
        print(describe_keys())
        return 0
    if args.model is None:
        print("interact-custom train: name what to train: vae, iamg, mgig or masks", file=sys.stderr)
        return 2
    if args.model == "masks":
        return _run_masks(args)
    created: list[Path] = []
    try:
        cfg = load_config(args.config, args.overrides, model=args.model)
        if cfg.output_dir:
            check_output_dir(cfg.output_dir, "output_dir")  # before building the model
            created = missing_dirs(cfg.output_dir)
        result = train(cfg, resume=args.resume, overwrite=args.overwrite)
    except (ConfigError, WeightsError, DatasetError, FileNotFoundError) as e:
        print(f"interact-custom train: {e}", file=sys.stderr)
        remove_empty(created)
        return 2
    except BaseException:
        remove_empty(created)  # a failed run leaves no empty run folder behind
        raise
    where = result.final if result.final is not None else f"{result.output_dir / CHECKPOINTS} (stopped early)"
    if result.main_process:
        print(f"step {result.step}/{cfg.steps}, {result.seconds_per_step:.3f} s/step; weights: {where}", file=sys.stderr)
    return 0
