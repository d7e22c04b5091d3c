"""Shared fixtures. Test vectors are found via $INTERACT_CUSTOM_TESTVECTORS or the
`shared/testvectors` folder beside the checkout; tests that need them skip visibly
when neither exists."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

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
    from interact_custom.weights_manager.vectors import VectorFolder

    d = find_vectors_dir()
    if d is None:
        pytest.skip("test vectors not found: set INTERACT_CUSTOM_TESTVECTORS to a folder with manifest.json")
    return VectorFolder(d)
