"""A gate that the real server's engine waits on, so that tests can hold work behind a busy engine.

Tests of deadlines, departed clients, queue slots and draining need "a batch is in the engine and other
work is queued behind it". Guessing that state from how long a batch takes breaks on a faster or slower
machine, so the tests create it: the engine holds every batch while the gate is closed, tells the test
the moment a batch is held, and runs it when the test opens the gate.

Only the test harness can turn the gate on. `running_server(..., gate=EngineGate(...))` starts the real
serving process through this module (`python -m tests.integration.engine_gate SOCKET serve ...`), which
wraps the ONNX Runtime model's call and then runs the real `rmserve serve`: real uvicorn, grpc.aio,
batcher and ONNX Runtime. Nothing under service/ knows of it, so no production configuration can reach
it (tests/integration/test_engine_gate.py checks both).

The gate can also make the engine fail once (`fail_next`): the next batch raises the kind of error ONNX
Runtime raises, for tests of what clients are told when inference fails.

The gate can hold only the engines loaded so far (`hold(loaded_only=True)`): a bundle loaded later (a
reload) runs freely, for tests of work held on a bundle that is being replaced.

The test and the server process talk over a Unix socket (multiprocessing.connection): the test sends
"hold", "hold-loaded", "release" or "fail" and gets "ok" once it took effect; the server sends ("held", rows) for each batch it
holds.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
from collections import deque
from multiprocessing.connection import Client, Connection, Listener
from pathlib import Path

AUTHKEY = b"rmserve-engine-gate"
# What fail_next makes the engine raise: ONNX Runtime's style, with internals a client must never see.
ENGINE_FAILURE = "[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Non-zero status code running node /opt/models/secret"


class EngineGate:
    """The test's end: hold and release the server's engine, and wait until a batch is held."""

    def __init__(self):
        # Its own short directory: a Unix socket's path must stay under about 100 bytes.
        self.address = str(Path(tempfile.mkdtemp(prefix="rmgate-")) / "gate.sock")
        self._conn: Connection | None = None
        self._held: deque[int] = deque()

    def connect(self) -> None:
        """Called by running_server once the server is ready (its harness listens from the start)."""
        self._conn = Client(self.address, family="AF_UNIX", authkey=AUTHKEY)

    def _command(self, command: str) -> None:
        assert self._conn is not None, "the gate's server has not started"
        self._conn.send(command)
        while True:
            message = self._receive(30.0, f"the server to acknowledge {command!r}")
            if message == "ok":
                return
            self._held.append(message[1])

    def _receive(self, timeout: float, what: str):
        assert self._conn is not None
        if not self._conn.poll(timeout):
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        return self._conn.recv()

    def hold(self, loaded_only: bool = False) -> None:
        """From now on every batch waits in the engine until `release`; with `loaded_only`, only batches of
        the engines that have run one already (every engine runs its warm-up when it loads)."""
        self._command("hold-loaded" if loaded_only else "hold")

    def release(self) -> None:
        """Held batches run, and later ones pass freely."""
        if self._conn is not None:
            self._command("release")

    def fail_next(self) -> None:
        """The next batch the engine runs raises ENGINE_FAILURE instead of scoring."""
        self._command("fail")

    def wait_held(self, timeout: float = 60.0) -> int:
        """Wait until the engine holds a batch (one not reported before); returns its rows."""
        if not self._held:
            message = self._receive(timeout, "the engine to hold a batch")
            self._held.append(message[1])
        return self._held.popleft()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class _ServerGate:
    """The server's end: wraps the engine's call; a listener thread takes the test's commands."""

    def __init__(self, address: str):
        self._open = threading.Event()
        self._open.set()
        self._fail = threading.Event()
        self._engines: set[int] = set()  # engines that have run a batch
        self._only: frozenset[int] | None = None  # hold only these engines' batches (None: every one)
        self._send_lock = threading.Lock()
        self._conn: Connection | None = None
        self._listener = Listener(address, family="AF_UNIX", authkey=AUTHKEY)
        threading.Thread(target=self._serve, name="engine-gate", daemon=True).start()

    def _serve(self) -> None:
        self._conn = self._listener.accept()
        while True:
            try:
                command = self._conn.recv()
            except (EOFError, OSError):  # the test is done with the gate: never hold again
                self._open.set()
                return
            if command in ("hold", "hold-loaded"):
                self._only = frozenset(self._engines) if command == "hold-loaded" else None
                self._open.clear()
            elif command == "release":
                self._open.set()
            elif command == "fail":
                self._fail.set()
            self._send("ok")

    def _send(self, message) -> None:
        with self._send_lock:
            assert self._conn is not None
            self._conn.send(message)

    def wrap(self, call):
        def gated(engine, batch):
            self._engines.add(id(engine))
            if not self._open.is_set() and (self._only is None or id(engine) in self._only):
                self._send(("held", int(batch.input_ids.shape[0])))
                self._open.wait()
            if self._fail.is_set():
                self._fail.clear()
                raise RuntimeError(ENGINE_FAILURE)
            return call(engine, batch)

        return gated


def main(argv: list[str]) -> int:
    address, rest = argv[0], argv[1:]
    from rmserve.cli import main as rmserve
    from rmserve.service.core import engine

    gate = _ServerGate(address)
    engine.OnnxRewardModel.__call__ = gate.wrap(engine.OnnxRewardModel.__call__)
    return rmserve(rest)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main(sys.argv[1:]))
