"""Start a real `rmserve serve` process on a free 127.0.0.1 port and wait until it is ready (optionally
behind a test gate on its engine: tests/integration/engine_gate.py)."""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.integration.engine_gate import EngineGate
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class RunningServer:
    url: str  # http://127.0.0.1:PORT (https:// with tls_cert_file; [::1] for an IPv6 host)
    grpc_target: str  # 127.0.0.1:PORT ([::1]:PORT for an IPv6 host)
    process: subprocess.Popen
    verify: Any = True  # for httpx: an SSLContext trusting the server's certificate under TLS


@contextlib.contextmanager
def running_server(bundle: Path, timeout: float = 60.0, gate: EngineGate | None = None, host: str = "127.0.0.1",
                   port: int | None = None, grpc_port: int | None = None, **settings: str) -> Iterator[RunningServer]:
    """`gate`: start the server through the test harness whose engine waits on that gate. `host`: the address
    it binds (it is reached on 127.0.0.1, or on [::1] when `host` is an IPv6 address). `port`, `grpc_port`:
    those of a server that stopped, to start it again where its clients know it (else free ones)."""
    port = port or free_port()
    grpc_port = grpc_port or free_port()
    env = {**os.environ, "RMSERVE_DEVICE": "cpu", "RMSERVE_GRPC_PORT": str(grpc_port)}
    env.update({f"RMSERVE_{k.upper()}": str(v) for k, v in settings.items()})
    log = open(Path(bundle).parent / f"server-{port}.log", "w+")
    entry = ["-m", "rmserve.cli"] if gate is None else ["-m", "tests.integration.engine_gate", gate.address]
    proc = subprocess.Popen(
        [sys.executable, *entry, "serve", "--bundle", str(bundle), "--host", host,
         "--port", str(port), "--log-level", "warning"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    tls = "tls_cert_file" in settings
    loopback = "[::1]" if ":" in host else "127.0.0.1"
    url = f"{'https' if tls else 'http'}://{loopback}:{port}"
    verify: Any = ssl.create_default_context(cafile=str(settings["tls_cert_file"])) if tls else True
    probe_headers = {}
    if settings.get("protect_health_and_metrics") and settings.get("api_keys"):
        probe_headers["authorization"] = "Bearer " + str(settings["api_keys"]).split(",")[0]

    def ready() -> bool:
        if proc.poll() is not None:
            log.seek(0)
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read()}")
        return httpx.get(url + "/readyz", timeout=1.0, verify=verify, headers=probe_headers).status_code == 200

    try:
        wait_until(ready, "the server to be ready", timeout, interval=0.05, ignore=(httpx.TransportError,))
        if gate is not None:
            gate.connect()
        yield RunningServer(url=url, grpc_target=f"{loopback}:{grpc_port}", process=proc, verify=verify)
    finally:
        if gate is not None:
            gate.close()  # the harness opens the gate when the test's end closes: no drain waits on it
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
