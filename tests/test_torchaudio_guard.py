"""A torchaudio built for another torch (common in ComfyUI set-ups) must not break the model
classes: transformers up to 5.24 imports torchaudio whenever it is installed (5.25 made that
import lazy, but the pack supports transformers>=4.40). Subprocesses, with a fake broken
torchaudio first on sys.path (the real-server tests run beside a real broken one)."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

BUILD_DINOV2 = textwrap.dedent("""
    from transformers import Dinov2Config, Dinov2Model
    m = Dinov2Model(Dinov2Config(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
                                 image_size=28, patch_size=14))
    print("built", sum(p.numel() for p in m.parameters()) > 0)
""")


def _run(tmp_path: Path, code: str) -> subprocess.CompletedProcess:
    fake = tmp_path / "site" / "torchaudio"
    fake.mkdir(parents=True, exist_ok=True)
    (fake / "__init__.py").write_text(
        'raise OSError("Could not load this library: .../torchaudio/lib/_torchaudio.so")\n')
    prelude = f"import sys; sys.path.insert(0, {str(tmp_path / 'site')!r})\n"
    return subprocess.run([sys.executable, "-c", prelude + code], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)


TRANSFORMERS_VIEW = textwrap.dedent("""
    from transformers.utils import import_utils
    print("available", import_utils.is_torchaudio_available())
    try:
        import torchaudio
        print("imported")
    except ImportError as e:
        print("ImportError", e)
""")


def test_without_the_guard_transformers_counts_on_the_broken_torchaudio(tmp_path):
    # The control: the fake is the user's broken library (its import raises the OSError
    # that eager transformers versions let through), and transformers believes it is usable.
    # Whether a given transformers version then imports it at model build time is its own
    # business; the guard's job is to make that belief false.
    result = _run(tmp_path, TRANSFORMERS_VIEW)
    assert "available True" in result.stdout, result.stdout + result.stderr[-2000:]
    assert result.returncode != 0 and "OSError" in result.stderr and "_torchaudio.so" in result.stderr


@pytest.mark.slow
def test_the_guard_tells_transformers_torchaudio_is_absent(tmp_path):
    code = ("from interact_custom.pipelines import torchaudio_guard as g\n"
            "g.hide_broken_torchaudio()\n" + TRANSFORMERS_VIEW)
    result = _run(tmp_path, code)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "available False" in result.stdout and "ImportError" in result.stdout


@pytest.mark.slow
def test_the_model_classes_build_beside_a_broken_torchaudio(tmp_path):
    code = ("import interact_custom.pipelines as p\n"
            "from interact_custom.pipelines import torchaudio_guard as g\n"
            "print('reason', g.broken_reason)\n"
            "from interact_custom.pipelines.mgig import MGIGModel, mgig_config\n"
            "MGIGModel(mgig_config('tiny'))\n"
            "print('mgig ok')\n" + BUILD_DINOV2)
    result = _run(tmp_path, code)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "reason OSError: Could not load this library" in result.stdout
    assert "mgig ok" in result.stdout and "built True" in result.stdout
    assert "treating it as absent" in result.stderr  # the log says what happened
