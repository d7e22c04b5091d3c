"""Where the package's shipped data lives (one place, so nothing else hard-codes it), and
the user cache folder (`cache_dir`) for what the package computes and keeps — never
written inside the package, which may be installed read-only."""
import os
from pathlib import Path

PIPELINES_DIR = Path(__file__).resolve().parent
ASSETS_DIR = PIPELINES_DIR / "assets"
EXAMPLES_DIR = ASSETS_DIR / "examples"          # demo / workflow example inputs
BANK_DIR = ASSETS_DIR / "bank"                  # example IAMG-R mask bank
WORDS_TOKENIZER_FILE = ASSETS_DIR / "iamg_words_tokenizer.json"  # small IAMG presets' tokenizer

CACHE_ENV = "INTERACT_CUSTOM_CACHE"


def cache_dir() -> Path:
    """The user cache folder (e.g. IAMG-R bank embeddings): ``$INTERACT_CUSTOM_CACHE`` if
    set, else ``$XDG_CACHE_HOME/interact_custom``, else ``~/.cache/interact_custom``.
    Not created here; whatever writes into it creates it."""
    own = os.environ.get(CACHE_ENV)
    if own:
        return Path(os.path.expanduser(own))
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg and os.path.isabs(xdg):  # the XDG spec: a relative value is ignored
        return Path(xdg) / "interact_custom"
    return Path(os.path.expanduser("~")) / ".cache" / "interact_custom"
