"""The loaders say so when a choice will silently be slow or not what was asked."""
from __future__ import annotations

import logging
from types import SimpleNamespace

import torch

from interact_custom.nodes import comfy_bridge, loaders
from interact_custom.weights_manager.loader import EMBEDDED


def test_fp16_on_the_cpu_is_warned(caplog):
    with caplog.at_level(logging.WARNING, logger="interact_custom"):
        _, device, dtype = loaders._resolve(EMBEDDED, "fp16", "cpu")
    assert device.type == "cpu" and dtype == torch.float16
    assert "fp16 on the CPU" in caplog.text and "slower" in caplog.text


def test_fp32_on_the_cpu_is_not_warned(caplog):
    with caplog.at_level(logging.WARNING, logger="interact_custom"):
        loaders._resolve(EMBEDDED, "fp32", "cpu")
    assert "fp16" not in caplog.text


def test_bf16_on_a_cpu_without_bf16_instructions_is_warned(monkeypatch, caplog):
    monkeypatch.setattr(comfy_bridge, "cpu_has_fast_bf16", lambda: False)
    with caplog.at_level(logging.WARNING, logger="interact_custom"):
        _, device, dtype = loaders._resolve(EMBEDDED, "bf16", "cpu")
    assert dtype == torch.bfloat16
    assert "bf16 on a CPU without AVX512-bf16 / AMX" in caplog.text and "slower than fp32" in caplog.text
    # auto never picks it there
    assert loaders._resolve(EMBEDDED, "auto", "cpu")[2] == torch.float32


def test_bf16_on_a_cpu_with_bf16_instructions_is_not_warned(monkeypatch, caplog):
    monkeypatch.setattr(comfy_bridge, "cpu_has_fast_bf16", lambda: True)
    with caplog.at_level(logging.WARNING, logger="interact_custom"):
        loaders._resolve(EMBEDDED, "bf16", "cpu")
    assert "bf16" not in caplog.text


def test_gpu_on_a_cpu_only_comfyui_is_warned(monkeypatch, caplog):
    monkeypatch.setattr(comfy_bridge, "IN_COMFYUI", True)
    monkeypatch.setattr(comfy_bridge, "_mm", SimpleNamespace(get_torch_device=lambda: torch.device("cpu")))
    with caplog.at_level(logging.WARNING, logger="interact_custom"):
        assert comfy_bridge.torch_device("gpu").type == "cpu"
    assert "device 'gpu' was requested" in caplog.text and "using the CPU" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="interact_custom"):
        comfy_bridge.torch_device("auto")
    assert "gpu" not in caplog.text  # auto on a CPU server is not a surprise


def test_training_mixed_precision_auto_is_bf16_only_where_it_is_native(monkeypatch):
    # The shipped default configs say "auto": bf16 on the AVX512-bf16 / AMX CPUs and bf16
    # GPUs they were trained on, fp32 where bf16 would be emulated (60-120x slower).
    import pytest

    from interact_custom.pipelines import hardware
    from interact_custom.cli.research.training import config as train_config

    monkeypatch.setattr(train_config, "fast_bf16", lambda device_type: device_type == "cuda")
    auto = train_config.TrainConfig(model="vae", mixed_precision="auto")
    assert train_config.resolved_mixed_precision(auto, "cpu") == "no"
    assert train_config.resolved_mixed_precision(auto, "cuda") == "bf16"
    fixed = train_config.TrainConfig(model="vae", mixed_precision="bf16")
    assert train_config.resolved_mixed_precision(fixed, "cpu") == "bf16"  # asked for: kept
    base = {"model": "vae", "preset": "mgig:tiny", "data_root": "d", "output_dir": "o"}
    train_config.make_config({**base, "mixed_precision": "auto"})
    with pytest.raises(train_config.ConfigError, match="frozen_dtype"):
        train_config.make_config({**base, "mixed_precision": "auto", "frozen_dtype": "bf16"})
    with pytest.raises(train_config.ConfigError, match="no | fp16 | bf16 | auto"):
        train_config.make_config({**base, "mixed_precision": "fast"})
    monkeypatch.setattr(hardware, "cpu_has_fast_bf16", lambda: False)
    assert not hardware.fast_bf16("cpu") and not hardware.fast_bf16("mps")
