"""The light client install: a fresh virtual environment with only `pip install rmserve` (the base install)
scores against a running server over HTTP and gRPC, without the server's or training's dependencies, and
installs no top-level `service` or `training` package.

The wheel is built from a copy of the package's folders (so a stale build/ directory cannot leak into it),
then installed into a new venv from the package index (httpx, grpcio, protobuf, numpy).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import tomllib

from tests.conftest import make_tiny_bundle
from tests.integration.server import ROOT, running_server

SERVER_ONLY = {"onnxruntime", "onnxruntime-gpu", "torch", "transformers", "fastapi", "uvicorn", "tokenizers",
               "prometheus-client", "pydantic-settings"}

CLIENT_SCRIPT = """
import json, sys
from rmserve.client import GrpcRewardClient, RewardClient

url, target = sys.argv[1], sys.argv[2]
with RewardClient(url) as http, GrpcRewardClient(target) as grpc_client:
    by_http = http.score("hello there", ["i am fine thanks", "no"])
    by_grpc = grpc_client.score("hello there", ["i am fine thanks", "no"])
print(json.dumps({"http": list(by_http.rewards), "grpc": list(by_grpc.rewards), "bundle": by_http.model.bundle_id}))
"""


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("client-install")
    source = root / "src"
    source.mkdir()
    folders = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"].values())
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for folder in {f.split("/")[0] for f in folders}:
        shutil.copytree(ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    wheels = root / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels),
                    str(source)], check=True, cwd=root)
    (wheel,) = wheels.glob("rmserve-*.whl")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                    str(wheel)], check=True, cwd=root, timeout=600)
    return venv


def run_in(venv: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    # From an empty directory, so that the repository's own folders are not on the path.
    return subprocess.run([str(venv / "bin" / "python"), *args], capture_output=True, text=True, check=check,
                          cwd=venv, env={"PATH": str(venv / "bin"), "HF_HUB_OFFLINE": "1"}, timeout=120)


def test_the_client_install_has_none_of_the_server_or_training_dependencies(client_venv):
    listed = json.loads(run_in(client_venv, "-m", "pip", "list", "--format", "json").stdout)
    names = {p["name"].lower().replace("_", "-") for p in listed}
    assert "rmserve" in names and {"httpx", "grpcio", "protobuf"} <= names
    assert not names & SERVER_ONLY, sorted(names & SERVER_ONLY)


def test_only_the_rmserve_namespace_is_installed(client_venv):
    for top_level in ("service", "training"):
        result = run_in(client_venv, "-c", f"import {top_level}", check=False)
        assert result.returncode != 0 and "No module named" in result.stderr, result
    run_in(client_venv, "-c", "import rmserve.client, rmserve.proto.reward_pb2, rmserve.group_stats")


def test_the_command_says_which_extra_a_subcommand_needs(client_venv):
    assert "serve" in run_in(client_venv, "-m", "rmserve", "--help").stdout
    result = run_in(client_venv, "-m", "rmserve", "serve", "--bundle", "/nonexistent", check=False)
    assert result.returncode == 2 and "pip install 'rmserve[serve]'" in result.stderr, result.stderr


def test_the_client_install_scores_over_http_and_grpc(client_venv, tmp_path):
    with running_server(make_tiny_bundle(tmp_path / "bundle")) as server:
        out = run_in(client_venv, "-c", CLIENT_SCRIPT, server.url, server.grpc_target)
        expected = httpx.post(server.url + "/score", json={"prompt": "hello there",
                                                            "responses": ["i am fine thanks", "no"]}).json()
    scored = json.loads(out.stdout)
    assert scored["bundle"] == "tiny"
    assert scored["http"] == pytest.approx(expected["rewards"], abs=1e-6)
    assert scored["grpc"] == pytest.approx(expected["rewards"], abs=1e-6)
