"""The test gate on the engine (engine_gate.py): it holds batches in a server started by the test harness,
and nothing in a production configuration can reach it."""

from __future__ import annotations

import ast
import concurrent.futures as cf
import os
from pathlib import Path

import httpx
import pytest

from tests.conftest import make_tiny_bundle
from tests.integration.engine_gate import EngineGate
from tests.integration.server import ROOT, running_server


@pytest.mark.holds_engine
def test_the_gate_holds_a_batch_until_the_test_releases_it(tmp_path):
    gate = EngineGate()
    with running_server(make_tiny_bundle(tmp_path / "bundle"), gate=gate, max_padding_ratio=1.0) as server:
        gate.hold()
        with cf.ThreadPoolExecutor(1) as pool:
            answer = pool.submit(httpx.post, server.url + "/score",
                                 json={"prompt": "hello there", "responses": ["i am fine", "no"]}, timeout=60)
            try:
                assert gate.wait_held() == 2
                assert not answer.done(), "answered while its batch was held"
            finally:
                gate.release()
            assert answer.result().status_code == 200
        # Released: later batches pass without being held.
        assert httpx.post(server.url + "/score", json={"prompt": "a", "response": "b"}, timeout=60).status_code == 200


def test_no_production_module_can_reach_the_gate():
    for package in ("service", "training"):
        for path in (ROOT / package).rglob("*.py"):
            tree = ast.parse(path.read_text())
            for node in ast.walk(tree):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                assert not any(n == "tests" or n.startswith("tests.") for n in names), f"{path} imports tests"
            assert "engine_gate" not in path.read_text(), f"{path} mentions the test gate"


def test_a_production_server_has_no_gate_whatever_its_environment(tmp_path, monkeypatch):
    gate = EngineGate()
    # Settings a user might guess; the real entry point reads none of them.
    for name in ("RMSERVE_ENGINE_GATE", "RMSERVE_TEST_ENGINE_GATE", "RMSERVE_GATE"):
        monkeypatch.setenv(name, gate.address)
    with running_server(make_tiny_bundle(tmp_path / "bundle")) as server:
        with pytest.raises((FileNotFoundError, ConnectionRefusedError)):
            gate.connect()  # nobody listens for the gate's commands
        assert httpx.post(server.url + "/score", json={"prompt": "a", "response": "b"}, timeout=60).status_code == 200
    assert not os.path.exists(gate.address)
    assert "gate" not in (Path(ROOT) / "service" / "settings.py").read_text().lower()
