"""Models, preprocessing, samplers, training and evaluation. No ComfyUI imports here."""
