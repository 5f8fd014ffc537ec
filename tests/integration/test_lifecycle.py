"""Start-up and shutdown of the one process that serves HTTP and gRPC."""

import concurrent.futures as cf
import signal
import time

import httpx

from tests.conftest import make_tiny_bundle
from tests.integration.server import running_server


def test_sigterm_finishes_admitted_work_and_exits_zero(tmp_path):
    bundle = make_tiny_bundle(tmp_path / "bundle")
    with running_server(bundle) as server:
        body = {"prompt": "hello there", "responses": ["i am fine thanks"] * 8}

        def call(_):
            try:
                return httpx.post(server.url + "/score", json=body, timeout=30).status_code
            except httpx.TransportError:
                return "refused"  # the listener had closed: never admitted

        with cf.ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(call, i) for i in range(200)]
            # Signal once work is surely flowing (a fixed sleep raced the clients on a loaded machine).
            cf.wait(futures, timeout=60, return_when=cf.FIRST_COMPLETED)
            time.sleep(0.05)
            server.process.send_signal(signal.SIGTERM)
            outcomes = [f.result() for f in futures]
        assert server.process.wait(timeout=30) == 0
    assert set(outcomes) <= {200, 503, "refused"}, set(outcomes)
    assert outcomes.count(200) > 0


def test_a_bundle_that_fails_to_load_stops_the_process(tmp_path):
    import subprocess
    import sys

    bundle = make_tiny_bundle(tmp_path / "bundle")
    (bundle / "model.onnx").write_bytes(b"not a model")
    out = subprocess.run([sys.executable, "-m", "service.cli", "serve", "--bundle", str(bundle), "--port", "0",
                          "--grpc-port", "-1"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "bad hash" in out.stderr
