"""Where the package's shipped data lives (one place, so nothing else hard-codes it)."""
from pathlib import Path

PIPELINES_DIR = Path(__file__).resolve().parent
ASSETS_DIR = PIPELINES_DIR / "assets"
EXAMPLES_DIR = ASSETS_DIR / "examples"          # demo / workflow example inputs
BANK_DIR = ASSETS_DIR / "bank"                  # example IAMG-R mask bank
WORDS_TOKENIZER_FILE = ASSETS_DIR / "iamg_words_tokenizer.json"  # small IAMG presets' tokenizer
TRAIN_CONFIGS_DIR = PIPELINES_DIR / "training" / "configs"
# Trained embedded defaults (`<kind>_default.safetensors`), when shipped.
DEFAULT_WEIGHTS_DIR = PIPELINES_DIR.parent / "weights_manager" / "default_weights"
