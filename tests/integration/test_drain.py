"""SIGTERM under closed-loop keep-alive load resets nothing: every request that reaches the server gets 200
or 503, and once the server has drained the port refuses new connections; no request ever ends in a
connection reset or a connection closed without an answer. Five runs, HTTP and gRPC clients together.

Each client sends its next request as soon as it has an answer, on its kept-alive connection (HTTP) or
channel (gRPC), and goes on after a 503 (a client that honours Retry-After sends it later, which is no
harder), stopping only when the port refuses it. SIGTERM arrives while the engine holds a batch and every
client has a request in it, so answers arrive during the drain and their clients send again at once, the
moment a server that closes idle keep-alive connections at the end of its drain would reset."""

from __future__ import annotations

import signal
import threading

import grpc
import httpx
import pytest

from rmserve.proto import reward_pb2 as pb
from rmserve.proto import reward_pb2_grpc as pb_grpc
from tests.integration.engine_gate import EngineGate
from tests.integration.server import running_server
from tests.integration.slow_bundle import make_slow_bundle
from tests.integration.test_lifecycle import in_flight
from tests.waiting import wait_until

HTTP_CLIENTS, GRPC_CLIENTS = 10, 2
BODY = {"prompt": "hello there", "responses": ["i am fine thanks", "no", "sure", "how are you"]}


class Outcomes:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen: list = []

    def add(self, outcome) -> None:
        with self.lock:
            self.seen.append(outcome)

    def failures(self) -> list:
        return [o for o in self.seen if o not in (200, 503, "refused")]


def http_client(url: str, outcomes: Outcomes) -> None:
    with httpx.Client(timeout=60) as client:  # one pool: a kept-alive connection, reused while it lasts
        while True:
            try:
                r = client.post(url + "/score", json=BODY)
                outcome = r.status_code if r.status_code != 200 or len(r.json()["rewards"]) == 4 else "short"
            except httpx.ConnectError:
                outcome = "refused"  # the port is closed: the server has drained
            except httpx.TransportError as e:  # a reset, or a connection closed without an answer
                outcome = f"http {e!r}"
            outcomes.add(outcome)
            if outcome not in (200, 503):
                return


def grpc_client(target: str, outcomes: Outcomes) -> None:
    request = pb.ScoreRequest(prompt=pb.Prompt(text=BODY["prompt"]), responses=BODY["responses"])
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.RewardModelStub(channel)
        while True:
            try:
                outcome = 200 if len(stub.Score(request, timeout=60).rewards) == 4 else "short"
            except grpc.RpcError as e:
                details = e.details() or ""
                if e.code() == grpc.StatusCode.UNAVAILABLE and "shutting down" in details:
                    outcome = 503
                elif e.code() == grpc.StatusCode.UNAVAILABLE and ("Connection refused" in details
                                                                   or "failed to connect" in details):
                    outcome = "refused"
                else:
                    outcome = f"grpc {e.code()}: {details}"
            outcomes.add(outcome)
            if outcome not in (200, 503):
                return


@pytest.mark.holds_engine
@pytest.mark.parametrize("run", range(5))
def test_sigterm_under_closed_loop_keep_alive_load_resets_nothing(tmp_path, run):
    bundle = make_slow_bundle(tmp_path / "bundle", products=40)
    gate = EngineGate()
    with running_server(bundle, gate=gate) as server:
        outcomes = Outcomes()
        gate.hold()
        clients = [threading.Thread(target=http_client, args=(server.url, outcomes)) for _ in range(HTTP_CLIENTS)]
        clients += [threading.Thread(target=grpc_client, args=(server.grpc_target, outcomes))
                    for _ in range(GRPC_CLIENTS)]
        for client in clients:
            client.start()
        gate.wait_held()
        wait_until(lambda: in_flight(server, "http") == HTTP_CLIENTS and in_flight(server, "grpc") == GRPC_CLIENTS,
                   "every client to have a request admitted")
        server.process.send_signal(signal.SIGTERM)
        wait_until(lambda: httpx.get(server.url + "/readyz", timeout=5).status_code == 503, "readiness to turn off")
        gate.release()
        for client in clients:
            client.join(120)
        assert not any(client.is_alive() for client in clients), "a client never got an answer"
        assert server.process.wait(timeout=60) == 0
    assert not outcomes.failures(), outcomes.failures()
    assert outcomes.seen.count(200) >= HTTP_CLIENTS + GRPC_CLIENTS  # those admitted when SIGTERM came, at least
    assert outcomes.seen.count(503) >= 1 and outcomes.seen.count("refused") == HTTP_CLIENTS + GRPC_CLIENTS
