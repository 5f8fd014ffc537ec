"""CUDA and cuDNN from pip packages are loaded before a CUDA session, once, and only where such packages are
installed. (Whether the CUDA provider then loads is tests/integration/test_cuda.py's, on a GPU machine.)"""

from __future__ import annotations

import importlib.util
import logging

import pytest

from rmserve.service.core import engine


@pytest.fixture
def preload(monkeypatch):
    calls = []

    def fake_preload_dlls():
        calls.append(1)
        print("Failed to load libcudnn.so.9: not found")  # what onnxruntime prints for a library it lacks

    monkeypatch.setattr(engine.ort, "preload_dlls", fake_preload_dlls, raising=False)
    monkeypatch.setattr(engine, "_pip_cuda_loaded", False)
    return calls


def with_nvidia_packages(monkeypatch, present: bool) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: (real("json") if present else None) if name == "nvidia" else real(name, *a))


def test_pip_cuda_libraries_are_loaded_once_and_what_failed_is_logged(preload, monkeypatch, caplog, capsys):
    with_nvidia_packages(monkeypatch, present=True)
    with caplog.at_level(logging.INFO, logger="rmserve.engine"):
        engine.load_pip_cuda_libraries()
        engine.load_pip_cuda_libraries()
    assert preload == [1]
    assert "libcudnn.so.9" in caplog.text and capsys.readouterr().out == ""  # to the log, not the server's stdout


def test_nothing_is_loaded_without_nvidia_pip_packages(preload, monkeypatch):
    with_nvidia_packages(monkeypatch, present=False)
    engine.load_pip_cuda_libraries()
    assert preload == []


def test_a_cpu_engine_loads_no_cuda_library(preload, monkeypatch, tiny_bundle):
    with_nvidia_packages(monkeypatch, present=True)
    engine.OnnxRewardModel(str(tiny_bundle / "model.onnx"), device="cpu")
    assert preload == []


def test_an_engine_that_tries_cuda_loads_them_first(preload, monkeypatch, tiny_bundle):
    if engine.CUDA not in engine.ort.get_available_providers():
        pytest.skip("this onnxruntime has no CUDA provider")
    with_nvidia_packages(monkeypatch, present=True)
    monkeypatch.setattr(engine, "nvidia_device_present", lambda: True)
    engine.OnnxRewardModel(str(tiny_bundle / "model.onnx"), device="auto")  # without a GPU: the CPU, with a warning
    assert preload == [1]
