"""Shared fixtures. Test vectors are found via $INTERACT_CUSTOM_TESTVECTORS or the
`shared/testvectors` folder beside the checkout; tests that need them skip visibly
when neither exists (and fail under CI, like the real-server tests: comfy_harness.unavailable)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from comfy_harness import unavailable  # noqa: E402  (tests/ is not a package)

REPO = Path(__file__).resolve().parents[1]


def find_vectors_dir() -> Path | None:
    env = os.environ.get("INTERACT_CUSTOM_TESTVECTORS")
    candidates = [Path(env)] if env else []
    candidates.append(REPO.parent / "shared" / "testvectors")
    for c in candidates:
        if (c / "manifest.json").is_file():
            return c
    return None


@pytest.fixture(scope="session")
def vectors():
    from interact_custom.cli.research.vectors import VectorFolder

    d = find_vectors_dir()
    if d is None:
        unavailable("test vectors not found: set INTERACT_CUSTOM_TESTVECTORS to a folder with manifest.json")
    return VectorFolder(d)


@pytest.fixture(scope="module")
def training_cpu():
    """Denormals flushed as `loop.train` does on the CPU (the tests' own forward passes are
    otherwise slowed ~10x by denormal activations), and one thread: tiny models gain
    nothing from two, and on a shared machine the threads wait on each other (measured
    4x slower under load)."""
    import torch

    from interact_custom.pipelines import samplers

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with samplers.flush_denormals(True):
            yield
    finally:
        torch.set_num_threads(threads)


def pytest_collection_modifyitems(config, items):
    """The real-ComfyUI suites (server, browser) start ComfyUI and a browser: they count as
    slow, so ``-m "not slow"`` is the fast loop (README, Testing)."""
    for item in items:
        if item.get_closest_marker("server") or item.get_closest_marker("browser"):
            item.add_marker(pytest.mark.slow)
