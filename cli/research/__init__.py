"""Research tooling: datasets, training, evaluation, benchmarks, test vectors, official-format export.

Used by the commands in `cli/`; the runtime (`nodes/`, `weights_manager/`, `pipelines/`) never imports it.
"""
