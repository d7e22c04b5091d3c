"""Models, preprocessing, samplers, training and evaluation. No ComfyUI imports here."""
from .torchaudio_guard import hide_broken_torchaudio

# Before anything imports transformers' model classes (see the module's docstring).
hide_broken_torchaudio()
