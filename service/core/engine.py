"""The inference engine: one ONNX Runtime session over a bundle's model.onnx.

Owns provider choice (CUDA only when it really loads, else CPU, and says which one runs), session
options, and the golden-set check that proves the engine reproduces the scores recorded at export. A
process reward model's engine (`step_separator_id` given) reads the graph's per-position scores at each
row's step separators and returns them per row (service/core/step_scores.py).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import os
import threading
from typing import Any, Literal

import numpy as np
import onnxruntime as ort

from rmserve.service.core.bundle import GOLDEN_TOLERANCE, Bundle, BundleError
from rmserve.service.core.inputs import Batch, InputEncoder
from rmserve.service.core.step_scores import STEP_OUTPUT, read_step_scores

log = logging.getLogger("rmserve.engine")

Device = Literal["auto", "cuda", "cpu"]
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def _thread_ids() -> set[int]:
    try:
        return {int(t) for t in os.listdir("/proc/self/task")}
    except OSError:  # not Linux: no per-thread priorities to set
        return set()


def _renice(tid: int, nice: int) -> None:
    """Lower one thread's CPU priority, so that the event loop answers while inference computes."""
    try:
        os.setpriority(os.PRIO_PROCESS, tid, nice)
    except (OSError, AttributeError) as e:
        log.warning("could not lower the priority of thread %d: %s", tid, e)


def nvidia_device_present() -> bool:
    return os.path.exists("/dev/nvidiactl") or os.path.exists("/dev/nvidia0")


def load_pip_cuda_libraries() -> None:
    """Load CUDA and cuDNN from their pip packages (nvidia-cublas-cu13, nvidia-cudnn-cu13, ...: how torch and
    onnxruntime-gpu's `cuda` and `cudnn` extras install them) before a CUDA session is made. ONNX Runtime's CUDA
    provider looks for them on the system's library path only, so a virtual environment whose CUDA came from
    pip would otherwise fall back to the CPU. Once per process; nothing to do where no such package is
    installed (a CUDA image has them on the system path)."""
    global _pip_cuda_loaded
    if _pip_cuda_loaded or importlib.util.find_spec("nvidia") is None or not hasattr(ort, "preload_dlls"):
        return
    _pip_cuda_loaded = True
    said = io.StringIO()
    with contextlib.redirect_stdout(said):  # it prints each library it could not load
        ort.preload_dlls()
    for line in said.getvalue().splitlines():
        log.info("loading CUDA libraries from pip packages: %s", line)


_pip_cuda_loaded = False


def _session_options(intra_op_threads: int) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # 0 lets ONNX Runtime use every core; a positive value leaves cores for the event loop.
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3  # errors only: a failed CUDA load is reported by us, once
    # Idle ONNX Runtime workers spin by default, taking the CPU that the event loop and the tokenizer
    # need between batches; in a server they must sleep.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


class OnnxRewardModel:
    """Runs padded batches through the bundle's ONNX model and returns one float32 reward per row, or, for a
    process reward model (`step_separator_id`), per row the float32 array of its step scores (an object array)."""

    def __init__(self, model_path: str | bytes, device: Device = "auto", intra_op_threads: int = 0, nice: int = 0,
                 external_data: dict[str, Any] | None = None, step_separator_id: int | None = None):
        """`model_path`: model.onnx's path, or its bytes (as a bundle verified them: `Bundle.pinned`), with
        `external_data` then mapping each external-data location to the buffer ONNX Runtime copies it from."""
        wanted = [CUDA, CPU] if device in ("auto", "cuda") else [CPU]
        if device == "auto" and not nvidia_device_present():
            wanted = [CPU]  # trying CUDA without a GPU only fills the log with loader errors
            log.info("no NVIDIA device found; using the CPU provider")
        available = ort.get_available_providers()
        providers = [p for p in wanted if p in available]
        if device == "cuda" and CUDA not in providers:
            raise RuntimeError(f"device=cuda but this onnxruntime offers only {available}")
        if CUDA in providers:
            load_pip_cuda_libraries()
        threads_before = _thread_ids()
        options = _session_options(intra_op_threads)
        if external_data:
            names = list(external_data)
            buffers = [external_data[name] for name in names]
            options.add_external_initializers_from_files_in_memory(names, buffers, [len(b) for b in buffers])
        self.session = ort.InferenceSession(model_path, sess_options=options, providers=providers)
        self.nice = nice
        self._reniced = threading.local()
        if nice:
            # ONNX Runtime's own worker threads were created with the session: lower them too.
            for tid in _thread_ids() - threads_before:
                _renice(tid, nice)
        self.provider = self.session.get_providers()[0]
        if device == "cuda" and self.provider != CUDA:
            raise RuntimeError("device=cuda but the CUDA provider failed to load (see onnxruntime's error above)")
        if CUDA in providers and self.provider != CUDA:
            log.warning("CUDA provider did not load (no usable GPU or CUDA libraries); running on CPU")
        log.info("onnxruntime %s session on %s", ort.__version__, self.provider)
        names = {i.name for i in self.session.get_inputs()}
        if names != {"input_ids", "attention_mask"}:
            raise BundleError(f"model.onnx takes inputs {sorted(names)}, expected input_ids and attention_mask")
        self.step_separator_id = step_separator_id
        self.output = "reward" if step_separator_id is None else STEP_OUTPUT
        outputs = [o.name for o in self.session.get_outputs()]
        if self.output not in outputs:
            kind = "an outcome" if step_separator_id is None else "a process"
            raise BundleError(f"model.onnx has outputs {outputs}; {kind} reward model's graph returns {self.output!r}")

    @classmethod
    def for_bundle(cls, bundle: Bundle, device: Device = "auto", intra_op_threads: int = 0,
                   nice: int = 0) -> OnnxRewardModel:
        """The engine of `bundle`, reading step scores when it is a process reward model; from the bytes that
        were verified when the bundle was loaded with `pin_model`."""
        pinned = bundle.pinned
        model, external = (pinned.onnx, pinned.external) if pinned is not None else (str(bundle.model_path), None)
        return cls(model, device, intra_op_threads, nice, external_data=external,
                   step_separator_id=bundle.manifest.input.step_separator_id)

    @property
    def scores_steps(self) -> bool:
        return self.step_separator_id is not None

    def __call__(self, batch: Batch) -> np.ndarray:
        if self.nice and not getattr(self._reniced, "done", False):
            _renice(threading.get_native_id(), self.nice)  # the calling (inference) thread
            self._reniced.done = True
        (rewards,) = self.session.run(
            [self.output], {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
        )
        if self.step_separator_id is not None:
            return read_step_scores(batch.input_ids, batch.attention_mask, np.asarray(rewards), self.step_separator_id)
        rewards = np.asarray(rewards, dtype=np.float32).reshape(-1)
        assert rewards.shape[0] == batch.input_ids.shape[0], (
            f"batch size mismatch: {batch.input_ids.shape[0]} rows in, {rewards.shape[0]} rewards out"
        )
        return rewards


def check_golden(bundle: Bundle, model: OnnxRewardModel, encoder: InputEncoder) -> float:
    """Score the bundle's golden set; raise BundleError when a score differs from the recorded one."""
    golden = bundle.manifest.golden
    if not golden:
        return 0.0
    rows = bundle.golden_rows()
    # One row at a time, so the check does not depend on how rows are batched together.
    outputs = [model(encoder.pad(encoder.encode([row]))) for row in rows]
    if model.scores_steps:  # every step score of every row, against the recorded ones
        scores = np.concatenate([out[0] for out in outputs]).astype(np.float64)
        expected = np.array([s for g in golden for s in (g.step_scores or [])], dtype=np.float64)
        if scores.shape != expected.shape:
            raise BundleError(f"golden-set parity failed: the engine reads {scores.size} step scores, the manifest "
                              f"records {expected.size}; the tokenizer or the step separator does not match")
    else:
        scores = np.concatenate(outputs)
        expected = np.array([g.score for g in golden], dtype=np.float64)
    worst = float(np.max(np.abs(scores - expected)))
    if not np.all(np.isfinite(scores)) or worst > GOLDEN_TOLERANCE:
        raise BundleError(
            f"golden-set parity failed: engine scores differ from the recorded ones by up to {worst:.2e} "
            f"(tolerance {GOLDEN_TOLERANCE:g}); tokenizer or model does not match the manifest"
        )
    return worst
