"""One command-line surface for everything outside ComfyUI.

`python -m interact_custom <command> ...` (or the `interact-custom` console script).
Each command lives in its own module and is imported only when it runs, so
`--help` stays fast and one broken optional dependency cannot take down the rest.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module relative to this package, one-line help).
# Each module defines `add_arguments(parser)` and `run(args) -> int`.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": (".cli.demo", "run the CHOI pipeline on the shipped example inputs"),
    "verify": (".weights_manager.verify", "check our loaders/models against a test-vector folder"),
    "convert": (".weights_manager.convert", "convert an official checkpoint to our safetensors format"),
    "synth": (".cli.synth", "generate a synthetic CHOI dataset"),
    "build": (".cli.build", "build a CHOI dataset from video clips or HOI images with masks"),
    "bank": (".cli.bank", "build or query an IAMG-R mask bank"),
    "evaluate": (".cli.evaluate", "CLIP / DINO / mask metrics over generated images"),
    "train": (".cli.train", "train vae / iamg / mgig (Accelerate)"),
    "benchmark": (".cli.benchmark", "speed / memory / FLOPs, official procedure vs ours"),
    "synthbench": (".cli.synthbench", "generate a held-out synthetic split end to end and score it"),
}


def _load(name: str):
    module_name, _ = COMMANDS[name]
    return importlib.import_module(module_name, package=__package__.rpartition(".")[0])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="interact-custom",
        description="Interact-Custom (CHOI): customized human-object interaction image generation.",
    )
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        parser = build_parser()
        if argv and argv[0] not in ("-h", "--help"):
            parser.print_usage(sys.stderr)
            print(f"interact-custom: unknown command {argv[0]!r}; choose from {', '.join(COMMANDS)}",
                  file=sys.stderr)
            return 2
        parser.print_help()
        return 0
    name, rest = argv[0], argv[1:]
    module = _load(name)
    parser = argparse.ArgumentParser(prog=f"interact-custom {name}", description=COMMANDS[name][1])
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    return int(module.run(args) or 0)
