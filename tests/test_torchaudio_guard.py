"""A torchaudio built for another torch (common in ComfyUI set-ups) must not break the model
classes: transformers imports torchaudio whenever it is installed. Subprocesses, with a fake
broken torchaudio first on sys.path (the real-server tests run beside a real broken one)."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

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


def test_without_the_guard_the_fake_torchaudio_breaks_transformers(tmp_path):
    # The control: proves the fake reproduces the user's failure.
    result = _run(tmp_path, BUILD_DINOV2)
    assert result.returncode != 0 and "_torchaudio.so" in result.stderr


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
