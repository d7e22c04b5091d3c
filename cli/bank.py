"""``python -m interact_custom bank build|query``: build or query an IAMG-R mask bank.

Thin adapter: ``build`` calls `cli.research.banks.build_bank`, ``query`` loads
the bank, makes the encoder, calls `retrieve` and prints the ranking (optionally a
`candidates_grid` preview PNG).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image

from ..pipelines.files import OutputPathError, atomic_path, check_output_dir
from ..pipelines.retrieval import MaskBank, candidates_grid, make_encoder, retrieve
from .research.banks import build_bank


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register ``bank build`` and ``bank query``."""
    sub = parser.add_subparsers(dest="bank_command", metavar="{build,query}", required=True)
    b = sub.add_parser("build", help="build a mask bank from a dataset in the project's format")
    b.add_argument("--dataset", required=True, help="dataset root folder")
    b.add_argument("--out", required=True, help="bank folder to create")
    b.add_argument("--split", default=None, help="dataset split (default: all)")
    b.add_argument("--no-parts", action="store_true", help="store only union masks, not human/object")
    b.add_argument("--overwrite", action="store_true", help="build into a folder that already holds a bank "
                   "(or other files), replacing its index and same-named masks")
    q = sub.add_parser("query", help="rank bank masks by caption similarity")
    q.add_argument("--bank", required=True, help="bank folder (with bank.json or bank.jsonl)")
    q.add_argument("--text", required=True, help='query caption, e.g. "a person is riding the bicycle"')
    q.add_argument("--category", default=None, help='HOI category filter, e.g. "ride bicycle"')
    q.add_argument("--top-k", type=int, default=5)
    q.add_argument("--encoder", choices=("lexical", "clip"), default="lexical")
    q.add_argument("--clip-weights", default=None, help="checkpoint with a CLIP text model (e.g. iamg.pth)")
    q.add_argument("--tokenizer", default=None, help="CLIP tokenizer folder (vocab.json + merges.txt)")
    q.add_argument("--heads", type=int, default=None, help="attention heads of the CLIP text model "
                   "(default width/64)")
    q.add_argument("--similarity", choices=("cosine", "dot"), default="cosine")
    q.add_argument("--grid", default=None, help="also write a PNG preview of the candidates to this new file")
    q.add_argument("--overwrite", action="store_true", help="replace the --grid file if it exists")
    q.add_argument("--no-cache", action="store_true", help="do not read or write the embedding cache")


def run(args: argparse.Namespace) -> int:
    """Run ``bank build`` / ``bank query``; errors are printed, exit code 1."""
    try:
        if args.bank_command == "build":
            check_output_dir(args.out, "--out")
            bank = build_bank(args.dataset, args.out, split=args.split,
                              save_parts=not args.no_parts, overwrite=args.overwrite)
            print(f"built mask bank {bank.root}: {len(bank)} entries, {len(bank.categories)} categories")
            return 0
        if args.grid:
            _check_new_file(Path(args.grid), "--grid", args.overwrite)
        bank = MaskBank.load(args.bank)
        encoder = make_encoder(args.encoder, clip_weights=args.clip_weights,
                               tokenizer_dir=args.tokenizer, num_attention_heads=args.heads)
        cands = retrieve(bank, args.text, encoder=encoder, top_k=args.top_k, category=args.category,
                         similarity=args.similarity, cache=not args.no_cache)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{'rank':>4}  {'score':>7}  {'id':<20}  {'category':<22}  caption")
    for c in cands:
        caption = c.caption if len(c.caption) <= 70 else c.caption[:67] + "..."
        print(f"{c.rank:>4}  {c.score:>7.4f}  {c.id:<20}  {c.category:<22}  {caption}")
    if args.grid:
        with atomic_path(args.grid) as tmp:  # never a half-written preview
            Image.fromarray(candidates_grid(cands)).save(tmp, format="PNG")
        print(f"preview written to {args.grid}")
    return 0


def _check_new_file(path: Path, what: str, overwrite: bool) -> None:
    """Before any work: ``path`` can be written, and replaces nothing unless ``overwrite``."""
    if path.is_dir():
        raise OutputPathError(f"{what} {path}: is a folder; give a file name, e.g. {path / 'candidates.png'}")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{what} {path} already exists; pass --overwrite to replace it, or choose a new file")
    check_output_dir(path.parent, f"{what} {path}: its folder")
