"""One command-line surface for everything outside ComfyUI.

`python -m interact_custom <command> ...` (or the `interact-custom` console script).
Each command lives in its own module and is imported only when it runs, so
`--help` stays fast and one broken optional dependency cannot take down the rest.

Errors: `main` turns the package's own error types (`user_error`: the ValueError
subclasses the package defines, e.g. `pipelines.files.WeightsError`, and the OSErrors of
paths — not found, exists, permission denied, read-only file system, disk full) into one
line ``interact-custom <command>: <message>`` and exit code 2; any other exception is a
bug and keeps its traceback. A failed command leaves no empty output folder it created.
"""
from __future__ import annotations

import argparse
import errno
import importlib
import sys
from pathlib import Path

# name -> (module relative to this package, one-line help).
# Each module defines `add_arguments(parser)` and `run(args) -> int`.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": (".cli.demo", "run the CHOI pipeline on the shipped example inputs"),
    "verify": (".cli.verify", "check our loaders/models against a test-vector folder"),
    "convert": (".cli.convert", "convert an official checkpoint to our safetensors format"),
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


class UsageError(ValueError):
    """A command-line value that cannot work (e.g. ``--device cuda`` without CUDA)."""


_PACKAGE = __package__.rpartition(".")[0]  # "interact_custom"
# OSErrors that are about a path the user gave (or the machine's state), not a bug.
_PATH_ERRNOS = {errno.ENOENT, errno.EEXIST, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC,
                errno.EDQUOT, errno.ENOTDIR, errno.EISDIR, errno.ENOTEMPTY, errno.ENAMETOOLONG}
_PATH_ERRORS = (FileNotFoundError, FileExistsError, PermissionError, NotADirectoryError, IsADirectoryError)


def user_error(exc: BaseException) -> str | None:
    """The one-line message to show for ``exc`` when it is an input / environment problem
    the package reports on purpose; None for anything else (a bug: keep the traceback)."""
    if isinstance(exc, ValueError) and type(exc).__module__.partition(".")[0] == _PACKAGE:
        return str(exc)
    if isinstance(exc, _PATH_ERRORS) or isinstance(exc, OSError) and exc.errno in _PATH_ERRNOS:
        if exc.filename is None or exc.strerror is None:  # raised with a message of the package's own
            return str(exc)
        where = f"{exc.filename}" + (f" -> {exc.filename2}" if exc.filename2 else "")
        return f"{where}: {exc.strerror or exc}"
    return None


def check_device(device: str, option: str = "--device") -> str:
    """``device`` as a torch device string ('gpu' means 'cuda'); `UsageError` when it names
    no device this machine has (CUDA without a CUDA device), before any work is done."""
    import torch

    name = "cuda" if device == "gpu" else "cuda" + device[3:] if device.startswith("gpu:") else device
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError) as e:
        raise UsageError(f"{option} {device}: not a torch device (use cpu, cuda or cuda:N): {e}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"{option} {device}: no CUDA device is available; use {option} cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UsageError(f"{option} {device}: this machine has {torch.cuda.device_count()} CUDA device(s) "
                             f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    return name


def output_folder(text: str) -> Path:
    """argparse ``type`` of an output folder option: an empty path is refused (it would
    silently mean the current folder; ``.`` says so on purpose)."""
    if not str(text).strip():
        raise argparse.ArgumentTypeError("empty path; name the output folder (. for the current folder)")
    return Path(text)


def whole_number(low: int):
    """argparse ``type`` of a count option: a whole number >= ``low``, checked when the
    command line is read (before any work), the error naming the option."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {low}, got {value}")
        return value

    parse.__name__ = f"whole number >= {low}"
    return parse


def number_in(low: float, high: float = float("inf"), *, below: bool = False):
    """argparse ``type`` of a real-valued option: a finite number in [low, high] (``below``:
    [low, high)), checked when the command line is read, the error naming the option."""
    span = f"[{low:g}, {high:g}{')' if below else ']'}" if high != float("inf") else f">= {low:g}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number {span}, got {text!r}") from None
        if not (low <= value < high if below else low <= value <= high) or value != value or value == float("inf"):
            what = f"a number in {span}" if high != float("inf") else f"a finite number {span}"
            raise argparse.ArgumentTypeError(f"expected {what}, got {text}")
        return value

    parse.__name__ = f"number {span}"
    return parse


def missing_dirs(path) -> list[Path]:
    """``path`` and its ancestors that do not exist yet, deepest first (what creating
    ``path`` would create)."""
    if path is None:
        return []
    missing = []
    p = Path(path).absolute()
    while not p.exists() and p.parent != p:
        missing.append(p)
        p = p.parent
    return missing


def remove_empty(dirs: list[Path]) -> None:
    """Remove the folders of `missing_dirs` that a failed command created and left empty."""
    for d in dirs:  # deepest first: stop at the first that is not an empty folder
        try:
            d.rmdir()
        except OSError:
            break


def _output_paths(name: str, args) -> list:
    """The output folders a command may create, from its arguments."""
    paths = [getattr(args, a, None) for a in ("out", "examples")]
    if name == "convert" and getattr(args, "dst", None):
        paths.append(Path(args.dst).parent)
    return [p for p in paths if p]


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
    created = [missing_dirs(p) for p in _output_paths(name, args)]
    rc = 1
    try:
        rc = int(module.run(args) or 0)
    except Exception as exc:
        message = user_error(exc)
        if message is None:
            raise  # a bug: the traceback says where
        print(f"interact-custom {name}: {message}", file=sys.stderr)
        rc = 2
    finally:
        if rc != 0:
            for dirs in created:
                remove_empty(dirs)
    return rc
