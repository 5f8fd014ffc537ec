"""One client flooding the queue cannot starve another: a flooder keeping four 256-row requests in flight
(what used to fill the whole default queue and send everyone else 429s) and a polite client sending one
request every half second. At least 99 % of the polite client's requests succeed, and its p99 latency stays
within 3x its p99 on an idle server.

Keeping a latency ratio honest on a small shared machine:
- the yardstick is measured in this test, on this server, in blocks that alternate with the flooded ones
  (idle, flood, idle, flood, ...), so a neighbour's load falls on both alike;
- the engine is the bottleneck (the slow test bundle: every batch costs the same whatever its rows), as on
  a real model; the flooder runs in a process of its own, so that its client work does not take the
  polite client's interpreter, and honours Retry-After like the rmserve client does (a client that retries
  429s in a tight loop is load of another kind);
- each condition gets 90 samples; the bound, 3x, is loose against the expected ratio (a flooded request
  waits for at most the batch running when it arrives, about 1.5x), and the test fails outright when the
  polite client is refused (the failure without the per-client share) or queued behind the flooder's rows
  (about 4x without the batch turns)."""

from __future__ import annotations

import multiprocessing
import time

import httpx
import numpy as np
import pytest

from tests.integration.server import running_server
from tests.integration.slow_bundle import make_slow_bundle
from tests.waiting import wait_until

ROUNDS, BLOCK, INTERVAL = 3, 30, 0.5  # 90 polite requests per condition, 2 per second
FLOOD_ROWS, FLOOD_WORKERS = 64, 16
POLITE_ROWS = 16  # one batch: rows of one length


def flood(url: str, running, stopped, counts) -> None:
    """FLOOD_WORKERS closed-loop senders of FLOOD_ROWS-row requests (in a process of its own)."""
    import threading

    body = {"prompt": "how are you doing today my friend",
            "responses": ["one two three four five six seven eight nine ten"] * FLOOD_ROWS}

    def worker() -> None:
        with httpx.Client(timeout=120, headers={"authorization": "Bearer flooder"}) as client:
            while not stopped.is_set():
                if not running.is_set():
                    running.wait(0.05)
                    continue
                status = client.post(url + "/score", json=body).status_code
                with counts.get_lock():
                    counts[0 if status == 200 else 1 if status == 429 else 2] += 1
                if status == 429:
                    stopped.wait(1.0)  # Retry-After

    threads = [threading.Thread(target=worker) for _ in range(FLOOD_WORKERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def queue_depth(server) -> float:
    for line in httpx.get(server.url + "/metrics", timeout=30).text.splitlines():
        if line.startswith("rmserve_queue_depth "):
            return float(line.split()[1])
    raise AssertionError("rmserve_queue_depth is not exported")


@pytest.mark.holds_engine
def test_a_flooding_client_does_not_starve_a_polite_one(tmp_path):
    bundle = make_slow_bundle(tmp_path / "bundle", products=40)
    context = multiprocessing.get_context("spawn")
    running, stopped, counts = context.Event(), context.Event(), context.Array("i", 3)
    with running_server(bundle, api_keys="flooder,polite") as server:
        flooder = context.Process(target=flood, args=(server.url, running, stopped, counts), daemon=True)
        flooder.start()
        latencies: dict[str, list[float]] = {"idle": [], "flood": []}
        refused = {"idle": 0, "flood": 0}
        try:
            with httpx.Client(timeout=120, headers={"authorization": "Bearer polite"}) as polite:
                body = {"prompt": "hello there", "responses": ["i am fine thanks"] * POLITE_ROWS}
                assert polite.post(server.url + "/score", json=body).status_code == 200  # warm
                for _ in range(ROUNDS):
                    for phase in ("idle", "flood"):
                        if phase == "flood":
                            running.set()
                            wait_until(lambda: queue_depth(server) >= FLOOD_ROWS, "the flooder to fill its share")
                        else:
                            running.clear()
                            wait_until(lambda: queue_depth(server) == 0, "the flood to drain", timeout=300)
                        next_at = time.monotonic()
                        for _ in range(BLOCK):
                            next_at += INTERVAL
                            began = time.perf_counter()
                            answer = polite.post(server.url + "/score", json=body)
                            if answer.status_code == 200:
                                latencies[phase].append(time.perf_counter() - began)
                            else:
                                refused[phase] += 1
                            time.sleep(max(0.0, next_at - time.monotonic()))  # pacing at 2 req/s, not synchronization
        finally:
            stopped.set()
            running.set()
            flooder.join(120)
    ok, throttled, other = counts[:]
    assert throttled > 0 and ok > 0 and other == 0, (ok, throttled, other)  # it flooded, and its share held it
    sent = ROUNDS * BLOCK
    assert refused["idle"] == 0 and refused["flood"] <= 0.01 * sent, refused
    idle, flooded = (np.percentile(np.array(latencies[p]) * 1000, 99) for p in ("idle", "flood"))
    assert flooded <= 3 * idle, f"polite p99 {flooded:.0f} ms under flood, {idle:.0f} ms idle"
