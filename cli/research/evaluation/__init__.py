"""Evaluation and benchmarks, on models and data already loaded (no weight files here).

- `metrics`: the pure measures (mask IoU / spatial KL / verb shapes, colour distances,
  changed pixels, CIELAB);
- `encoders`: the CLIP image / DINOv2 encoders of the CLIP- and DINO-Scores, around built
  models (reading them from files: `cli.research.evaluation.eval_models`);
- `evaluate`: `evaluate()` over a CHOI dataset and its JSON / markdown report;
- `synthbench`: the synthetic benchmark end to end on loaded IAMG / MGIG models;
- `benchmark` / `benchmark_report`: speed, memory and FLOPs of the official procedure vs
  ours, and its tables.

The commands (`evaluate`, `synthbench`, `benchmark`) are in `cli/`.
"""
