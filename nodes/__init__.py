"""ComfyUI node adapters (thin: declare inputs, call one pipelines/ function, return)."""
NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}
