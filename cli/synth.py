"""``python -m interact_custom synth``: generate a synthetic CHOI dataset, or the demo inputs.

Thin adapter over `cli.research.data.synth`: ``--out DIR`` calls `generate` (progress on
stderr), ``--examples DIR`` calls `write_examples`.
"""
from __future__ import annotations

import argparse
import sys

from . import number_in, output_folder, whole_number
from ..pipelines.files import OutputPathError, check_output_dir
from .research.data.synth import EXAMPLE_FILES, EXAMPLES_SEED, generate, write_examples


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``python -m interact_custom synth``."""
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--out", type=output_folder, help="folder to write the dataset into (must be empty)")
    mode.add_argument("--examples", type=output_folder, metavar="DIR",
                      help="instead of a dataset, write the demo inputs (human.png, object.png, ...) to DIR")
    parser.add_argument("--count", type=whole_number(1), default=1000, help="number of samples (default 1000)")
    parser.add_argument("--seed", type=int, default=None,
                        help=f"random seed; same seed, same data (default 0; {EXAMPLES_SEED} with --examples)")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels (default 256)")
    parser.add_argument("--val-fraction", type=number_in(0, 1, below=True), default=0.1,
                        help="share of identity pairs put in the 'val' split (default 0.1)")
    parser.add_argument("--overwrite", action="store_true", help="allow writing into a non-empty folder")


def run(args: argparse.Namespace) -> int:
    """Entry point of ``python -m interact_custom synth``."""
    if args.examples is not None:
        try:
            check_output_dir(args.examples, "--examples")
            seed = EXAMPLES_SEED if args.seed is None else args.seed
            meta = write_examples(args.examples, seed=seed, overwrite=args.overwrite)
        except (FileExistsError, OutputPathError) as exc:
            print(f"synth: {exc}", file=sys.stderr)
            return 2
        print(f"wrote {', '.join(EXAMPLE_FILES)} to {args.examples} ({meta['caption']!r}, box {meta['box']})")
        return 0
    if args.size < 48:
        print(f"synth: --size must be at least 48 px (thin parts vanish below), got {args.size}", file=sys.stderr)
        return 2

    tty = sys.stderr.isatty()

    def progress(i: int, n: int) -> None:
        # One rewritten line on a terminal; every 10 % on its own line in a log file.
        if tty and (i == n or i % max(1, n // 100) == 0):
            print(f"\rsynth: {i}/{n} samples", end="\n" if i == n else "", file=sys.stderr, flush=True)
        elif not tty and (i == n or i % max(1, n // 10) == 0):
            print(f"synth: {i}/{n} samples", file=sys.stderr, flush=True)

    try:
        check_output_dir(args.out, "--out")
        splits = generate(args.out, args.count, 0 if args.seed is None else args.seed, args.size, args.val_fraction,
                          overwrite=args.overwrite, progress=progress)
    except (FileExistsError, NotADirectoryError, ValueError) as exc:
        print(f"synth: {exc}", file=sys.stderr)
        return 2
    summary = ", ".join(f"{n} {s}" for s, n in sorted(splits.items()))
    print(f"wrote {sum(splits.values())} samples ({summary}) to {args.out}")
    return 0
