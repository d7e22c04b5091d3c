"""`python -m interact_custom convert SRC DST [--dtype fp16]`: an official checkpoint (or
one of ours) → our single-file safetensors format.

The model kind (MGIG or IAMG) and its architecture are detected from the file; after
writing, the output's tensor names and shapes are checked against the model so a
partial file is never reported as success. An existing DST is never overwritten unless ``--overwrite`` is given.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from ..pipelines.files import DTYPES, WeightsError, check_output_dir, read_weights, safetensors_shapes


def detect_kind(path: str | Path, obj=None, metadata=None) -> str:
    """'mgig' or 'iamg', from our metadata or from the official key layout (of ``obj`` /
    ``metadata`` when the file was read already)."""
    if obj is None:
        obj, metadata = read_weights(path)
    if (metadata or {}).get("model") in ("mgig", "iamg"):
        return metadata["model"]
    if {"model", "autoencoder"} <= set(obj):
        return "iamg"
    sd = obj.get("state_dict", obj)
    if any(str(k).startswith(("control_model.", "controlnet.")) for k in sd):
        return "mgig"
    if any(str(k).startswith(("unet.", "vae.")) for k in sd):
        return "iamg"
    raise WeightsError(f"{Path(path).name}: neither an MGIG (AnyDoor ControlLDM) nor an IAMG checkpoint")


def convert(src: str | Path, dst: str | Path, *, dtype: str = "fp16", overwrite: bool = False,
            kind: str | None = None) -> Path:
    """Convert ``src`` to our format at ``dst``; returns the written path. ``src`` is read
    once (a multi-GB file is not read twice, and a file replaced meanwhile cannot mix)."""
    dst = Path(dst)
    if dst.suffix != ".safetensors":
        raise WeightsError(f"output must end in .safetensors, got {dst.name}")
    if dst.exists() and not overwrite:
        raise FileExistsError(f"{dst} already exists; refusing to overwrite it (pass --overwrite)")
    check_output_dir(dst.parent, "output folder")  # before reading a multi-GB source
    name = Path(src).name
    obj, metadata = read_weights(src)
    kind = kind or detect_kind(src, obj, metadata)
    if kind == "mgig":
        from ..weights_manager.native_mgig import load_mgig, save_mgig
        from ..weights_manager.official_mgig import state_dict_of

        model = load_mgig(state_dict_of(obj, name), metadata=metadata, what=name)
        del obj
        out = save_mgig(model, dst, dtype=dtype, overwrite=overwrite, source=name)
        expected = model.state_dict()
    elif kind == "iamg":
        from ..weights_manager.native_iamg import load_iamg, native_state_dict, save_iamg

        model = load_iamg(obj, metadata=metadata, what=name)
        del obj
        out = save_iamg(model, dst, dtype=dtype, overwrite=overwrite, source=name)
        expected = native_state_dict(model)
    else:
        raise WeightsError(f"unknown model kind {kind!r}; expected mgig or iamg")
    _check_written(out, expected)
    return out


def _check_written(path: Path, state_dict) -> None:
    expected = {k: tuple(v.shape) for k, v in state_dict.items()}
    written = safetensors_shapes(path)
    if written != expected:
        diff = sorted(set(written) ^ set(expected)) or [k for k in expected if written.get(k) != expected[k]]
        raise WeightsError(f"{path}: written tensors do not match the model (e.g. {', '.join(diff[:5])})")


def add_arguments(parser):
    parser.add_argument("src", help="official mgig.ckpt / iamg.pth (or a file of ours)")
    parser.add_argument("dst", help="output .safetensors file (must not exist unless --overwrite)")
    parser.add_argument("--dtype", choices=list(DTYPES), default="fp16", help="stored precision (default fp16)")
    parser.add_argument("--kind", choices=["mgig", "iamg"], default=None, help="model kind (default: detect)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")


def run(args) -> int:
    t0 = time.perf_counter()
    try:
        out = convert(args.src, args.dst, dtype=args.dtype, overwrite=args.overwrite, kind=args.kind)
    except (WeightsError, FileExistsError, FileNotFoundError, ValueError) as e:
        print(f"convert: {e}", file=sys.stderr)
        return 1
    size = out.stat().st_size / 2**20
    print(f"wrote {out} ({size:.1f} MiB, {args.dtype}) in {time.perf_counter() - t0:.1f} s")
    return 0
