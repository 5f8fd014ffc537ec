"""Static checks of the Dockerfile (no Docker engine here): what it copies exists, it installs the
serving dependencies only, runs as a non-root user and has a health check."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def instructions(name):
    return [line.split(None, 1)[1] for line in DOCKERFILE.splitlines() if line.startswith(name + " ")]


def test_runtime_base_matches_onnxruntime_gpu_requirements():
    import onnxruntime

    base = re.search(r"ARG RUNTIME_BASE=(\S+)", DOCKERFILE).group(1)
    assert base.startswith("nvidia/cuda:13.") and "cudnn" in base  # ORT-GPU 1.31 wants CUDA 13.x + cuDNN 9.x
    assert onnxruntime.__version__.startswith("1.31")


def test_copied_sources_exist():
    for args in instructions("COPY"):
        if args.startswith("--from") or "${BUNDLE" in args:
            continue
        for source in args.split()[:-1]:
            if not source.startswith("--"):
                assert (ROOT / source).exists(), source


def test_serving_install_only_non_root_with_healthcheck():
    assert "torch" not in DOCKERFILE.replace("no torch", "")
    assert "[train" not in DOCKERFILE
    users = instructions("USER")
    assert users and users[-1] not in ("root", "0")
    assert instructions("HEALTHCHECK") and "/healthz" in DOCKERFILE
    assert instructions("ENTRYPOINT") == ['["rmserve", "serve"]']
