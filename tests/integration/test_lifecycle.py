"""Start-up and shutdown of the one process that serves HTTP and gRPC."""

import signal
import threading

import grpc
import httpx

from service.grpc_gen import reward_pb2 as pb
from service.grpc_gen import reward_pb2_grpc as pb_grpc
from tests.conftest import make_tiny_bundle
from tests.integration.server import running_server
from tests.integration.slow_bundle import make_slow_bundle


def test_sigterm_under_load_scores_every_admitted_request_and_exits_zero(tmp_path):
    """HTTP and gRPC clients keep sending until they are sent away; SIGTERM arrives while work is queued.
    A request counts as admitted unless it was refused (503 / UNAVAILABLE, or the port was closed): every
    admitted request must get its scores, and the process must exit 0."""
    bundle = make_slow_bundle(tmp_path / "bundle", products=40)  # each batch holds the engine a while
    with running_server(bundle) as server:
        body = {"prompt": "hello there", "responses": ["i am fine thanks", "no", "sure", "how are you"]}
        outcomes: list = []
        first_answer = threading.Event()

        def http_client() -> None:
            while True:
                try:
                    r = httpx.post(server.url + "/score", json=body, timeout=60)
                    outcome = r.status_code if r.status_code != 200 or len(r.json()["rewards"]) == 4 else "short"
                except httpx.ConnectError:
                    outcome = "refused"  # the listener had closed: never admitted
                except httpx.TransportError as e:
                    outcome = f"broken: {e!r}"  # admitted, then dropped: the failure this test looks for
                outcomes.append(outcome)
                first_answer.set()
                if outcome != 200:
                    return

        def grpc_client() -> None:
            request = pb.ScoreRequest(prompt=pb.Prompt(text=body["prompt"]), responses=body["responses"])
            with grpc.insecure_channel(server.grpc_target) as channel:
                stub = pb_grpc.RewardModelStub(channel)
                while True:
                    try:
                        outcome = 200 if len(stub.Score(request, timeout=60).rewards) == 4 else "short"
                    except grpc.RpcError as e:
                        outcome = 503 if e.code() == grpc.StatusCode.UNAVAILABLE else f"grpc {e.code()}"
                    outcomes.append(outcome)
                    if outcome != 200:
                        return

        clients = [threading.Thread(target=http_client) for _ in range(6)]
        clients += [threading.Thread(target=grpc_client) for _ in range(2)]
        for client in clients:
            client.start()
        assert first_answer.wait(60)
        server.process.send_signal(signal.SIGTERM)
        # Readiness turns false at once, while admitted work is still being finished.
        readiness = []
        while server.process.poll() is None and 503 not in readiness:
            try:
                readiness.append(httpx.get(server.url + "/readyz", timeout=5).status_code)
            except httpx.TransportError:
                readiness.append("closed")
        for client in clients:
            client.join(120)
        assert server.process.wait(timeout=60) == 0
    failures = [o for o in outcomes if o not in (200, 503, "refused")]
    assert not failures, failures
    assert outcomes.count(200) > 0 and outcomes.count(503) > 0, outcomes
    assert 503 in readiness, readiness


def test_a_bundle_that_fails_to_load_stops_the_process(tmp_path):
    import subprocess
    import sys

    bundle = make_tiny_bundle(tmp_path / "bundle")
    (bundle / "model.onnx").write_bytes(b"not a model")
    out = subprocess.run([sys.executable, "-m", "service.cli", "serve", "--bundle", str(bundle), "--port", "0",
                          "--grpc-port", "-1"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "bad hash" in out.stderr
