"""ComfyUI node adapters (thin: declare inputs, call one pipelines/ function, return).

All nodes live under the "Interact-Custom" category. Own link types: IAMG_MODEL,
MGIG_MODEL, CHOI_BOX, CHOI_ID (never the core MODEL name).
"""
from . import comfy_bridge
from .generation import CHOIDetailMap, CHOIIDFeatures, CHOIMaskGuidedSampler
from .loaders import LoadIAMG, LoadMGIG
from .masks import CHOIBox, CHOIBoxFromMask, FitMaskToBox, IAMGGenerateMask, IAMGRRetrieveMask

comfy_bridge.register_model_folder()
comfy_bridge.register_bank_folder()
# The shipped workflows load these by name (inside ComfyUI only; never overwrites a file).
comfy_bridge.install_example_inputs()

_NODES = [
    ("InteractCustomLoadIAMG", LoadIAMG, "Load IAMG"),
    ("InteractCustomLoadMGIG", LoadMGIG, "Load MGIG"),
    ("InteractCustomBox", CHOIBox, "CHOI Box"),
    ("InteractCustomBoxFromMask", CHOIBoxFromMask, "CHOI Box From Mask"),
    ("InteractCustomIAMGGenerateMask", IAMGGenerateMask, "IAMG Generate Mask"),
    ("InteractCustomIAMGRRetrieveMask", IAMGRRetrieveMask, "IAMG-R Retrieve Mask"),
    ("InteractCustomFitMaskToBox", FitMaskToBox, "Fit Mask To Box"),
    ("InteractCustomIDFeatures", CHOIIDFeatures, "CHOI ID Features (DINOv2)"),
    ("InteractCustomDetailMap", CHOIDetailMap, "CHOI Detail Map (Sobel)"),
    ("InteractCustomMaskGuidedSampler", CHOIMaskGuidedSampler, "CHOI Mask-Guided Sampler"),
]
NODE_CLASS_MAPPINGS = {key: cls for key, cls, _ in _NODES}
NODE_DISPLAY_NAME_MAPPINGS = {key: name for key, _, name in _NODES}
