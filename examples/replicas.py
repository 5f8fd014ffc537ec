"""Two replicas, one client: how calls spread over them, and what SIGTERM to one of them costs.

Starts two `rmserve serve` processes of a bundle on 127.0.0.1, sends 200 calls through one HTTP client and
200 through one gRPC client (each given both addresses), counts each replica's calls from its own
`rmserve_requests_total`, then keeps four threads calling while one replica is sent SIGTERM, and counts the
calls answered, lost, and answered after a retry on the other replica.

    python examples/replicas.py [--bundle artifacts/default-bundle] [--http-ports 18432 18433]
                                [--grpc-ports 18442 18443]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time

import httpx

from rmserve.client import GrpcRewardClient, RewardClient

PROMPT = [{"role": "user", "content": "How do I make a cup of tea?"}]
RESPONSE = ["Boil water and steep the bag for three minutes."]


def served(port: int, endpoint: str, protocol: str) -> float:
    line = f'rmserve_requests_total{{endpoint="{endpoint}",outcome="ok",protocol="{protocol}"}}'
    text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    return next((float(x.split()[-1]) for x in text.splitlines() if x.startswith(line)), 0.0)


def start(bundle: str, port: int, grpc_port: int) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-m", "rmserve", "serve", "--bundle", bundle, "--port", str(port),
                                "--grpc-port", str(grpc_port), "--log-level", "warning"])
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the replica on :{port} did not start")
        time.sleep(0.2)  # polling interval while the replica loads its bundle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", default="artifacts/default-bundle")
    parser.add_argument("--http-ports", type=int, nargs=2, default=[18432, 18433])
    parser.add_argument("--grpc-ports", type=int, nargs=2, default=[18442, 18443])
    args = parser.parse_args()
    (p1, p2), (g1, g2) = args.http_ports, args.grpc_ports
    replicas = [start(args.bundle, p1, g1), start(args.bundle, p2, g2)]
    try:
        with RewardClient(f"http://127.0.0.1:{p1},http://127.0.0.1:{p2}") as client:
            for _ in range(200):
                client.score(PROMPT, RESPONSE)
        print("HTTP calls per replica:", served(p1, "/score", "http"), served(p2, "/score", "http"))
        with GrpcRewardClient([f"127.0.0.1:{g1}", f"127.0.0.1:{g2}"]) as client:
            for _ in range(200):
                client.score(PROMPT, RESPONSE)
        print("gRPC calls per replica:", served(p1, "Score", "grpc"), served(p2, "Score", "grpc"))

        answered: list[int] = []  # requests each call took (1: no retry)
        lost: list[Exception] = []
        stop = threading.Event()

        def caller() -> None:
            with RewardClient([f"http://127.0.0.1:{p1}", f"http://127.0.0.1:{p2}"]) as client:
                while not stop.is_set():
                    try:
                        answered.append(client.score(PROMPT, RESPONSE).requests)
                    except Exception as e:  # a lost call: what this example counts
                        lost.append(e)

        threads = [threading.Thread(target=caller) for _ in range(4)]
        for thread in threads:
            thread.start()
        while len(answered) < 100:
            time.sleep(0.01)  # polling interval until 100 calls were answered
        replicas[0].send_signal(signal.SIGTERM)
        print(f"SIGTERM sent to the replica on :{p1} after {len(answered)} calls")
        replicas[0].wait(120)
        gone_at = len(answered)
        print(f"the replica on :{p1} has exited after {gone_at} calls")
        while len(answered) < gone_at + 100:
            time.sleep(0.01)  # polling interval until 100 more calls were answered by the other replica
        stop.set()
        for thread in threads:
            thread.join()
        print(f"calls answered: {len(answered)}, lost: {len(lost)}, "
              f"answered after a retry on the other replica: {sum(r > 1 for r in answered)}")
    finally:
        for replica in replicas:
            if replica.poll() is None:
                replica.send_signal(signal.SIGTERM)
                replica.wait(60)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
