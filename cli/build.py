"""``python -m interact_custom build {video,hoi}``: build a CHOI dataset from real data.

Thin adapter over `cli.research.data.builders` (which documents the folder layouts and the
pairing rules): resolves the ``--segmenter`` / ``--captioner`` / ``--inpainter`` /
``--pose-changer`` callables, reads the clip folders or the annotations file, calls
`build_video_dataset` / `build_hoi_dataset` and prints the report.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import number_in, output_folder, whole_number
from .research.data.builders import (DEFAULT_BOX_EXPAND, DEFAULT_MARGIN, DEFAULT_MAX_IOU, DEFAULT_MIN_AREA,
                                       DEFAULT_MIN_GAP, DEFAULT_PAIRS_PER_CLIP, BuildError, build_hoi_dataset,
                                       build_video_dataset, list_clip_folders, load_callable, prepare_out,
                                       read_clip_folder, read_hoi_annotations)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``python -m interact_custom build {video,hoi}``."""
    sub = parser.add_subparsers(dest="source", metavar="{video,hoi}", required=True)
    video = sub.add_parser("video", help="samples from frame pairs of video clips (paper §4.2)")
    video.add_argument("--clips", type=Path, required=True,
                       help="folder of clips: <clip_id>/frames/*.png, human_masks/, object_masks/, clip.json")
    video.add_argument("--min-gap", type=whole_number(1), default=DEFAULT_MIN_GAP,
                       help=f"minimum frame distance of target and reference (default {DEFAULT_MIN_GAP})")
    video.add_argument("--max-iou", type=number_in(0, 1), default=DEFAULT_MAX_IOU,
                       help=f"maximum human-mask IoU of target and reference (default {DEFAULT_MAX_IOU})")
    video.add_argument("--pairs-per-clip", type=whole_number(1), default=DEFAULT_PAIRS_PER_CLIP,
                       help=f"samples per clip at most (default {DEFAULT_PAIRS_PER_CLIP})")
    hoi = sub.add_parser("hoi", help="samples from HOI images with masks and person ids (paper §4.1)")
    hoi.add_argument("--annotations", type=Path, required=True, help="annotations.jsonl (one image per line)")
    hoi.add_argument("--pose-changer", metavar="MOD:FN", default=None,
                     help="pose_change(human_crop, mask) -> (image, mask) or None, for the human reference")
    for p in (video, hoi):
        p.add_argument("--out", type=output_folder, required=True, help="dataset folder to create (must be empty)")
        p.add_argument("--seed", type=int, default=0, help="random seed; same seed, same dataset (default 0)")
        p.add_argument("--min-area", type=number_in(0, 1, below=True), default=DEFAULT_MIN_AREA,
                       help=f"skip masks under this share of the image's pixels (default {DEFAULT_MIN_AREA})")
        p.add_argument("--margin", type=number_in(0), default=DEFAULT_MARGIN,
                       help=f"reference crop margin, share of the mask box's longer side (default {DEFAULT_MARGIN})")
        p.add_argument("--box-expand", type=number_in(1), default=DEFAULT_BOX_EXPAND,
                       help="scale of the union-mask box written as the sample's box (default 1)")
        p.add_argument("--segmenter", metavar="MOD:FN", default=None,
                       help="segment(image, prompt) -> mask for absent masks (prompt 'person' / the object)")
        p.add_argument("--captioner", metavar="MOD:FN", default=None,
                       help="caption(image, verb, object) -> str (default: 'a person is <verb>ing the <object>')")
        p.add_argument("--inpainter", metavar="MOD:FN", default=None,
                       help="inpaint(image, union_mask) -> RGB background (default: no background)")
        p.add_argument("--split-val", type=number_in(0, 1, below=True), default=0.0, metavar="FRACTION",
                       help="share of clips / identities put in the 'val' split (default 0)")
        p.add_argument("--overwrite", action="store_true", help="allow writing into a non-empty folder")


def run(args: argparse.Namespace) -> int:
    """Entry point of ``python -m interact_custom build``; errors are printed, exit code 2."""
    def progress(done: int, total: int, name: str, n: int) -> None:
        if total <= 50 or done == total or done % max(1, total // 20) == 0:
            print(f"build: {done}/{total} {name}: {n} sample{'s' * (n != 1)}", file=sys.stderr, flush=True)

    try:
        fns = {opt: load_callable(getattr(args, opt), "--" + opt.replace("_", "-"))
               for opt in ("segmenter", "captioner", "inpainter", "pose_changer")
               if getattr(args, opt, None)}
        common = dict(seed=args.seed, min_area=args.min_area, margin=args.margin, box_expand=args.box_expand,
                      segment=fns.get("segmenter"), captioner=fns.get("captioner"), inpaint=fns.get("inpainter"),
                      val_fraction=args.split_val, overwrite=args.overwrite, progress=progress)
        prepare_out(args.out, args.overwrite)  # fail before reading any input
        if args.source == "video":
            folders = list_clip_folders(args.clips)
            need = fns.get("segmenter") is None
            clips = [read_clip_folder(f, need_masks=need) for f in folders]
            print(f"build: {len(clips)} clips in {args.clips}", file=sys.stderr)
            report = build_video_dataset(clips, args.out, min_gap=args.min_gap, max_iou=args.max_iou,
                                         pairs_per_clip=args.pairs_per_clip, **common)
        else:
            items = read_hoi_annotations(args.annotations, need_masks=fns.get("segmenter") is None)
            print(f"build: {len(items)} images in {args.annotations}", file=sys.stderr)
            report = build_hoi_dataset(items, args.out, pose_change=fns.get("pose_changer"), **common)
    except (BuildError, ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, RuntimeError) as exc:
        print(f"build: {exc}", file=sys.stderr)
        return 2
    print(report.summary())
    return 0
