"""Keep a broken torchaudio from breaking the model classes.

transformers imports torchaudio whenever it is *installed* (``audio_utils``, pulled in by
every ``modeling_*`` module through ``processing_utils``), and a torchaudio built for
another torch, which many ComfyUI set-ups carry (ComfyUI lists it; updating torch alone
leaves it behind), raises ``OSError: Could not load this library: .../_torchaudio.so`` on
import. That error would then come out of Load MGIG / Load IAMG although no model here
uses audio. So once, before any transformers model is built, torchaudio is tried; if it
cannot import it is marked absent (``sys.modules["torchaudio"] = None``, which makes
``importlib.util.find_spec`` return None and ``import torchaudio`` raise ImportError), so
transformers takes its no-torchaudio path. A working torchaudio is left alone.
"""
from __future__ import annotations

import importlib.util
import logging
import sys

log = logging.getLogger(__name__)

_checked = False
broken_reason: str | None = None  # why torchaudio was marked absent, for the log and tests


def hide_broken_torchaudio() -> str | None:
    """Mark an installed but unimportable torchaudio as absent (once per process).
    Returns the import error's text when it did, else None."""
    global _checked, broken_reason
    if _checked:
        return broken_reason
    _checked = True
    if sys.modules.get("torchaudio") is not None:
        return None  # imported already (and so importable)
    if "torchaudio" in sys.modules:
        return None  # already marked absent (by us or someone else)
    try:
        if importlib.util.find_spec("torchaudio") is None:
            return None
    except (ImportError, ValueError):
        return None
    try:
        import torchaudio  # noqa: F401
    except Exception as e:  # noqa: BLE001 - OSError from its C++ library, ImportError, RuntimeError...
        for name in [n for n in sys.modules if n == "torchaudio" or n.startswith("torchaudio.")]:
            del sys.modules[name]
        sys.modules["torchaudio"] = None
        # transformers caches its availability check; forget an answer given before now.
        import_utils = sys.modules.get("transformers.utils.import_utils")
        check = getattr(import_utils, "is_torchaudio_available", None)
        if hasattr(check, "cache_clear"):
            check.cache_clear()
        broken_reason = f"{type(e).__name__}: {e}".strip()
        log.warning("Interact-Custom: the installed torchaudio cannot be imported (%s); treating it as absent "
                    "(no node of this pack uses audio). Reinstall torchaudio to match your torch to silence this.",
                    broken_reason.splitlines()[0][:300])
    return broken_reason
