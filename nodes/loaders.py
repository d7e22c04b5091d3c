"""Load IAMG / Load MGIG."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from . import comfy_bridge as bridge
from .common import Node, outputs
from ..weights_manager.loader import EMBEDDED, load_iamg_model, load_mgig_model

DTYPE_CHOICES = ["auto", "fp32", "bf16", "fp16"]
DEVICE_CHOICES = ["auto", "cpu", "gpu"]
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class LoadedModel:
    """What flows along an IAMG_MODEL / MGIG_MODEL link: the module under ComfyUI's memory
    manager plus where it came from."""

    kind: str
    managed: bridge.ManagedModel
    source: str
    dtype: torch.dtype

    def __enter__(self):
        return self.managed.load()

    def __exit__(self, *exc):
        self.managed.release()


def model_choices() -> list[str]:
    return [EMBEDDED] + bridge.list_model_files()


def _resolve(model_name: str, dtype: str, device: str):
    load_device = bridge.torch_device(device)
    torch_dtype = bridge.auto_dtype(load_device) if dtype == "auto" else _DTYPES[dtype]
    if torch_dtype == torch.float16 and load_device.type == "cpu":
        bridge.warn("dtype fp16 on the CPU: CPUs have no fast fp16 maths, so sampling runs many times slower "
                    "than fp32 (docs/BENCHMARKS.md); choose auto (bf16 or fp32) unless you need fp16")
    if torch_dtype == torch.bfloat16 and load_device.type == "cpu" and not bridge.cpu_has_fast_bf16():
        bridge.warn("dtype bf16 on a CPU without AVX512-bf16 / AMX: bf16 is emulated there and runs many times "
                    "slower than fp32 (docs/BENCHMARKS.md); choose auto (fp32 on this CPU)")
    path = model_name if model_name == EMBEDDED else bridge.model_file_path(model_name)
    return path, load_device, torch_dtype


def _inputs(kind: str) -> dict:
    return {"required": {
        "model_name": (model_choices(), {
            "tooltip": f"{kind} weights: the embedded default, or a file in models/interact_custom/ (official "
                       "checkpoints and our .safetensors alike; the architecture is detected from the file)."}),
        "dtype": (DTYPE_CHOICES, {"default": "auto", "tooltip": (
            "Compute precision. auto = bf16 where the device runs it fast (recent GPUs, CPUs with AMX/AVX512-bf16), "
            "else fp16 on GPU, else fp32. fp16 on a CPU, and bf16 on a CPU without those, are many times slower than "
            "fp32 (warned in the log).")}),
        "device": (DEVICE_CHOICES, {"default": "auto", "tooltip": (
            "auto = ComfyUI's device; cpu forces the CPU; gpu = ComfyUI's GPU (on a CPU-only ComfyUI this runs on "
            "the CPU, with a warning in the log).")}),
        "keep_model_loaded": ("BOOLEAN", {"default": True, "tooltip": "Keep the weights on the device between "
                                          "runs (faster); off = offload after each use to free memory."}),
    }}


class _ModelLoader(Node):
    """Shared by Load MGIG / Load IAMG: resolve the file, load on the CPU in the chosen
    dtype, hand the module to ComfyUI's memory manager."""

    FUNCTION = "load"
    KIND = ""

    @classmethod
    def INPUT_TYPES(cls):
        return _inputs(cls.KIND.upper())

    @staticmethod
    def _load_module(path, dtype):
        raise NotImplementedError

    def load(self, model_name, dtype, device, keep_model_loaded):
        path, load_device, torch_dtype = _resolve(model_name, dtype, device)
        module = self._load_module(path, torch_dtype)
        managed = bridge.ManagedModel(module, load_device, keep_model_loaded,
                                      label=f"{self.KIND.upper()}[{model_name}]")
        return (LoadedModel(self.KIND, managed, model_name, torch_dtype),)


class LoadMGIG(_ModelLoader):
    DESCRIPTION = ("Loads MGIG, the mask-guided image generator (AnyDoor-style ControlNet + DINOv2 identity "
                   "encoder). Accepts the official mgig.ckpt or our converted .safetensors.")
    RETURN_TYPES, RETURN_NAMES, OUTPUT_TOOLTIPS = outputs(
        ("MGIG_MODEL", "mgig_model", "The MGIG model, for CHOI ID Features and the Mask-Guided Sampler."))
    KIND = "mgig"

    @staticmethod
    def _load_module(path, dtype):
        return load_mgig_model(path, device="cpu", dtype=dtype)


class LoadIAMG(_ModelLoader):
    DESCRIPTION = ("Loads IAMG, the interaction-aware mask generator. Accepts the official iamg.pth (which "
                   "ignores the text prompt) or our .safetensors (the text-conditioned variant).")
    RETURN_TYPES, RETURN_NAMES, OUTPUT_TOOLTIPS = outputs(
        ("IAMG_MODEL", "iamg_model", "The IAMG model, for IAMG Generate Mask."))
    KIND = "iamg"

    @staticmethod
    def _load_module(path, dtype):
        return load_iamg_model(path, device="cpu", dtype=dtype, clip_fallback_dir=bridge.clip_tokenizer_dir())
