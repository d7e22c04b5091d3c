"""`python -m interact_custom synthbench`: the synthetic CHOI benchmark end to end.

    python -m interact_custom synthbench --out DIR [--data DIR | --count 64 --seed 1000]
        [--iamg FILE] [--mgig FILE] [--mask iamg|truth] [--refs own|swapped] [--steps 20] [--sampler euler_a]
        [--guidance 3] [--iamg-steps 20] [--iamg-sampler euler_a] [--dtype fp32|bf16] [--paste crop|mask]
        [--ceiling] [--overwrite]

Loads IAMG and MGIG (`weights_manager.loader`: the embedded defaults unless a file is
given) and runs `cli.research.evaluation.synthbench` (what it does and writes: see there);
prints the report, the settings and one line of headline numbers.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import output_folder, whole_number
from ..pipelines import samplers
from .research.evaluation import synthbench
from .research.evaluation.evaluate import markdown_report
from .research.evaluation.synthbench import DEFAULT_COUNT, DEFAULT_SEED, DTYPES, REFS, SCORING_PASTE
from ..pipelines.composite import PASTE_MODES
from ..pipelines.mgig.inputs import COLLAGES, DEFAULT_COLLAGE
from ..pipelines.sampling_settings import OFFICIAL, RECOMMENDED, settings_for
from ..weights_manager.loader import EMBEDDED, load_iamg_model, load_mgig_model


def _default(kind: str, field: str) -> str:
    """How --help states a sampling default: the model's (`sampling_settings.settings_for`)."""
    return (f"default: the model's, {getattr(OFFICIAL[kind], field)} for ε models such as the official checkpoint, "
            f"{getattr(RECOMMENDED[kind], field)} for the v-models this package trains")


def run_benchmark(out: str | Path, *, data: str | Path | None = None, count: int = DEFAULT_COUNT,
                  seed: int = DEFAULT_SEED, size: int = 256, iamg_source: str | None = None,
                  mgig_source: str | None = None, mask: str = "iamg", refs: str = "own",
                  steps: int | None = None, sampler: str | None = None,
                  iamg_steps: int | None = None, iamg_sampler: str | None = None,
                  guidance: float | None = None, iamg_guidance: float | None = None,
                  batched_guidance: bool = True, dtype: str = "fp32", limit: int | None = None,
                  paste: str = SCORING_PASTE, collage: str = DEFAULT_COLLAGE, ceiling: bool = False,
                  overwrite: bool = False, log=print) -> dict:
    """Load the models (``iamg_source`` / ``mgig_source``: a file, None = the embedded
    default; IAMG only for ``mask="iamg"``) in ``dtype`` and make each stage's settings
    from its model and the choices given (`settings_for`: a sampling choice left None is
    the model's), so that bad settings stop the run before anything is written; then
    `synthbench.prepare` and `synthbench.generate_and_score`; returns its report."""
    synthbench.check_options(out, mask=mask, refs=refs, dtype=dtype, ceiling=ceiling, overwrite=overwrite)
    torch_dtype = DTYPES[dtype]
    mgig = load_mgig_model(mgig_source or EMBEDDED, dtype=torch_dtype)
    model_iamg = load_iamg_model(iamg_source or EMBEDDED, dtype=torch_dtype) if mask == "iamg" else None
    settings = settings_for("mgig", mgig, sampler=sampler, steps=steps, guidance=guidance,
                            batched_guidance=batched_guidance, paste=paste, collage=collage)
    iamg_settings = None if model_iamg is None else settings_for("iamg", model_iamg, sampler=iamg_sampler,
                                                                 steps=iamg_steps, guidance=iamg_guidance)
    dataset = synthbench.prepare(out, data=data, count=count, seed=seed, size=size, mask=mask, refs=refs,
                                 dtype=dtype, ceiling=ceiling, overwrite=overwrite, log=log)
    return synthbench.generate_and_score(
        out, dataset, mgig, model_iamg, refs=refs, settings=settings, iamg_settings=iamg_settings, limit=limit,
        mgig_source=str(mgig_source or EMBEDDED), iamg_source=None if mask != "iamg" else str(iamg_source or EMBEDDED),
        dtype=dtype, ceiling=ceiling, log=log)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, type=output_folder, help="output folder (data/, masks/, generated/, report/, samples.png)")
    parser.add_argument("--data", default=None, help="a CHOI dataset to use instead of synthesising one")
    parser.add_argument("--count", type=whole_number(1), default=DEFAULT_COUNT, help=f"samples to synthesise (default {DEFAULT_COUNT})")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED,
                        help=f"synthesis seed (default {DEFAULT_SEED}; the shipped default trained on seed 1)")
    parser.add_argument("--size", type=whole_number(48), default=256, help="synthesised image size (default 256)")
    parser.add_argument("--iamg", default=None, help="IAMG weights (default: embedded)")
    parser.add_argument("--mgig", default=None, help="MGIG weights (default: embedded)")
    parser.add_argument("--mask", choices=["iamg", "truth"], default="iamg",
                        help="interaction masks from IAMG (default) or the ground truth (scores MGIG alone)")
    parser.add_argument("--refs", choices=list(REFS), default="own",
                        help="the sample's own references (default) or another pair's (identity control)")
    parser.add_argument("--steps", type=int, default=None, help=f"MGIG sampling steps ({_default('mgig', 'steps')})")
    parser.add_argument("--sampler", default=None, choices=samplers.SAMPLER_NAMES,
                        help=f"MGIG sampler ({_default('mgig', 'sampler')})")
    parser.add_argument("--guidance", type=float, default=None,
                        help=f"MGIG CFG scale ({_default('mgig', 'guidance')})")
    parser.add_argument("--separate-guidance", action="store_true",
                        help="cond and uncond as two forwards (the official procedure)")
    parser.add_argument("--iamg-steps", type=int, default=None,
                        help=f"IAMG sampling steps ({_default('iamg', 'steps')})")
    parser.add_argument("--iamg-sampler", default=None, choices=samplers.SAMPLER_NAMES,
                        help=f"IAMG sampler ({_default('iamg', 'sampler')})")
    parser.add_argument("--iamg-guidance", type=float, default=None,
                        help=f"IAMG CFG scale ({_default('iamg', 'guidance')})")
    parser.add_argument("--dtype", choices=list(DTYPES), default="fp32", help="model dtype (default fp32)")
    parser.add_argument("--limit", type=whole_number(1), default=None, help="use only the first N samples")
    parser.add_argument("--paste", choices=list(PASTE_MODES), default=SCORING_PASTE,
                        help=f"crop-back (default {SCORING_PASTE}: the official one, so the changes columns measure "
                             "the model; mask: the product default that keeps the scene outside the figure)")
    parser.add_argument("--collage", choices=list(COLLAGES), default=DEFAULT_COLLAGE,
                        help="where MGIG's hint covers the scene with the detail map: the whole target box "
                             "(default, official) or ★ the grown interaction mask only")
    parser.add_argument("--ceiling", action="store_true",
                        help="with --mask truth: no sampling; decode each true target's own latent (what the VAE "
                             "and a refiner alone lose: the best any MGIG on this latent can score)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing report")


def run(args: argparse.Namespace) -> int:
    try:  # both stages' settings are made (and checked) before anything is written
        report = run_benchmark(args.out, data=args.data, count=args.count, seed=args.seed, size=args.size,
                               iamg_source=args.iamg, mgig_source=args.mgig, mask=args.mask, refs=args.refs,
                               steps=args.steps,
                               sampler=args.sampler, iamg_steps=args.iamg_steps, iamg_sampler=args.iamg_sampler,
                               guidance=args.guidance, iamg_guidance=args.iamg_guidance,
                               batched_guidance=not args.separate_guidance, dtype=args.dtype, limit=args.limit,
                               paste=args.paste, collage=args.collage, ceiling=args.ceiling, overwrite=args.overwrite)
    except (FileExistsError, FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"synthbench: {e}", file=sys.stderr)
        return 2
    print(markdown_report(report))
    print(json.dumps({k: v for k, v in report["synthbench"].items() if k != "iamg_empty_ids"}))
    print(synthbench.summary_line(report))
    return 0
