"""`python -m interact_custom evaluate`: score generated CHOI images against a dataset.

``python -m interact_custom evaluate --dataset DATA --generated GEN --out REPORT
[--clip MODEL] [--dino MODEL] [--pred-masks DIR | --interaction-masks DIR]
[--synthetic | --no-synthetic] [--split S] [--limit N] [--device D] [--overwrite]``

Loads the CLIP / DINOv2 models (`cli.research.evaluation.eval_models`), runs
`cli.research.evaluation.evaluate.evaluate` and writes / prints its report; the inputs and
every metric are described in `cli.research.evaluation.evaluate`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import check_device, output_folder, whole_number
from .research.data.dataset import DatasetError
from .research.evaluation.evaluate import (GENERATED_SUFFIX, REPORT_JSON, REPORT_MD, EvaluationError, evaluate,
                                             markdown_report, write_report)
from ..pipelines.files import WeightsError
from .research.evaluation.eval_models import load_clip_encoder, load_dino_encoder


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``python -m interact_custom evaluate``."""
    parser.add_argument("--dataset", type=Path, required=True, help="CHOI dataset folder (ground truth)")
    parser.add_argument("--generated", type=Path, required=True,
                        help=f"folder of generated images named <sample id>{GENERATED_SUFFIX}")
    parser.add_argument("--out", type=output_folder, required=True, help=f"folder for {REPORT_JSON} and {REPORT_MD}")
    parser.add_argument("--split", default=None, help="evaluate only this split of the dataset (e.g. val)")
    parser.add_argument("--clip", type=Path, default=None,
                        help="local CLIP vision model (transformers folder or weight file); omit to skip CLIP-Score")
    parser.add_argument("--dino", type=Path, default=None,
                        help="local DINOv2 (transformers Dinov2Model folder or original-format weight file); "
                             "omit to skip DINO-Score")
    masks = parser.add_mutually_exclusive_group()
    masks.add_argument("--pred-masks", type=Path, default=None,
                       help="folder of masks predicted from the generated images (<id>.png)")
    masks.add_argument("--interaction-masks", type=Path, default=None,
                       help="folder of the interaction masks the images were generated from (<id>.png)")
    parser.add_argument("--synthetic", action=argparse.BooleanOptionalAction, default=None,
                        help="synthetic-benchmark measures (default: on for a dataset made by `synth`)")
    parser.add_argument("--limit", type=whole_number(1), default=None, help="evaluate at most this many samples")
    parser.add_argument("--device", default="cpu", help="torch device for the CLIP / DINOv2 models (default cpu)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing report")


def run(args: argparse.Namespace) -> int:
    """Entry point of ``python -m interact_custom evaluate``."""
    args.device = check_device(args.device)  # before loading the models
    out_paths = [args.out / REPORT_JSON, args.out / REPORT_MD]
    if not args.overwrite and any(p.exists() for p in out_paths):
        print(f"evaluate: {args.out} already holds a report; pass --overwrite to replace it", file=sys.stderr)
        return 2
    try:
        clip = None if args.clip is None else load_clip_encoder(args.clip, device=args.device)
        dino = None if args.dino is None else load_dino_encoder(args.dino, device=args.device)
        masks_dir = args.pred_masks if args.pred_masks is not None else args.interaction_masks
        source = "predicted" if args.pred_masks is not None else "interaction"

        def progress(i: int, n: int) -> None:
            if i == n or i % max(1, n // 10) == 0:
                print(f"evaluate: {i}/{n} samples", file=sys.stderr, flush=True)

        report = evaluate(args.dataset, args.generated, split=args.split, clip=clip, dino=dino,
                          masks_dir=masks_dir, mask_source=source, synthetic=args.synthetic,
                          limit=args.limit, progress=progress)
        json_path, md_path = write_report(report, args.out, overwrite=args.overwrite)
    except (FileNotFoundError, FileExistsError, EvaluationError, DatasetError, WeightsError) as exc:
        print(f"evaluate: {exc}", file=sys.stderr)
        return 2
    print(markdown_report(report), end="")
    print(f"wrote {json_path} and {md_path}")
    return 0
