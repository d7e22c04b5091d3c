"""The runtime: models, their inputs, samplers, retrieval and the paste. No ComfyUI imports here,
and nothing from the research tooling (`cli/research/`)."""
from .torchaudio_guard import hide_broken_torchaudio

# Before anything imports transformers' model classes (see the module's docstring).
hide_broken_torchaudio()
