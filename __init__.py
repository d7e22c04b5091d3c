"""Interact-Custom for ComfyUI: customized human-object interaction image generation (CHOI).

ComfyUI imports this folder (under whatever name it has in custom_nodes/) and reads
NODE_CLASS_MAPPINGS. Installed with pip, the same code is the `interact_custom` package:
the model code in `pipelines/` and `weights_manager/` never imports ComfyUI.
"""
from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__version__ = "0.1.0"
__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
