"""Several replicas behind one client (service/client/endpoints.py), on two real servers on 127.0.0.1: one
client's calls reach both within 10 %, over HTTP (the client's own rotation) and gRPC (round_robin); and
stopping one of them with SIGTERM in the middle of a run loses no call: the client moves to the other
replica when the stopping one answers 503 / UNAVAILABLE, closes a connection or refuses one; and a chunk
refused with 429 by a full replica goes to the free one at once, not back to the full one."""

from __future__ import annotations

import asyncio
import signal
import threading

import httpx
import pytest

from rmserve.client import (
    AsyncGrpcRewardClient,
    AsyncRewardClient,
    GrpcRewardClient,
    RetryPolicy,
    RewardClient,
)
from tests.conftest import make_tiny_bundle
from tests.integration.engine_gate import EngineGate
from tests.integration.server import running_server
from tests.waiting import wait_until

PROMPT = "\n\nHuman: how are you today?\n\nAssistant:"
RESPONSES = [" i am fine", " no"]
ENDPOINT = {"http": "/score", "grpc": "Score"}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_tiny_bundle(tmp_path_factory.mktemp("replicas") / "bundle")


@pytest.fixture(scope="module")
def pair(bundle):
    with running_server(bundle) as first, running_server(bundle) as second:
        yield first, second


def served(server, protocol: str) -> float:
    """Calls this replica answered with scores, from its own metrics."""
    line = f'rmserve_requests_total{{endpoint="{ENDPOINT[protocol]}",outcome="ok",protocol="{protocol}"}}'
    text = httpx.get(server.url + "/metrics", timeout=10).text
    return sum(float(row.split()[-1]) for row in text.splitlines() if row.startswith(line))


def make_client(kind: str, servers):
    if kind == "grpc":
        return GrpcRewardClient([s.grpc_target for s in servers], max_responses_per_request=8)
    return RewardClient([s.url for s in servers], max_responses_per_request=8)


@pytest.mark.parametrize("kind", ["http", "http-async", "grpc"])
def test_one_clients_calls_reach_both_replicas_evenly(pair, kind):
    protocol = "grpc" if kind == "grpc" else "http"
    calls = 200
    if kind == "http-async":
        async def run() -> None:
            async with AsyncRewardClient([s.url for s in pair], max_responses_per_request=8) as client:
                await asyncio.gather(*(client.score(PROMPT, RESPONSES) for _ in range(calls)))

        before = [served(s, protocol) for s in pair]
        asyncio.run(run())
    else:
        with make_client(kind, pair) as client:
            # gRPC connects to each address in the background: start counting once both have answered.
            wait_until(lambda: client.score(PROMPT, RESPONSES) and all(served(s, protocol) for s in pair),
                       "both replicas to answer a call")
            before = [served(s, protocol) for s in pair]
            for _ in range(calls):
                client.score(PROMPT, RESPONSES)
    counts = [served(s, protocol) - b for s, b in zip(pair, before)]
    assert sum(counts) == calls
    assert abs(counts[0] - counts[1]) <= 0.1 * calls, counts


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_stopping_a_replica_mid_run_loses_no_call(bundle, protocol):
    with running_server(bundle) as stopping, running_server(bundle) as staying:
        expected = RewardClient(staying.url).score(PROMPT, RESPONSES).rewards
        results: list = []
        errors: list[BaseException] = []
        done = threading.Event()

        def caller() -> None:
            with make_client(protocol, [stopping, staying]) as client:
                for _ in range(3000):  # bounded; ends well before when the test says so
                    if done.is_set():
                        return
                    try:
                        results.append(client.score(PROMPT, RESPONSES, timeout=60).rewards)
                    except Exception as e:  # noqa: BLE001 - a lost call is what this test looks for
                        errors.append(e)

        threads = [threading.Thread(target=caller) for _ in range(4)]
        for thread in threads:
            thread.start()
        wait_until(lambda: served(stopping, protocol) >= 20 and served(staying, protocol) >= 20,
                   "both replicas to serve calls")
        stopping.process.send_signal(signal.SIGTERM)
        assert stopping.process.wait(timeout=60) == 0
        after_stop = served(staying, protocol)
        wait_until(lambda: served(staying, protocol) >= after_stop + 40 or errors,
                   "calls to go on, on the remaining replica")
        done.set()
        for thread in threads:
            thread.join(60)
    assert errors == [], [(type(e).__name__, e.status, e.message) for e in errors[:3]]
    assert len(results) >= 80
    assert all(r == pytest.approx(expected, abs=1e-5) for r in results), sorted({tuple(r) for r in results})


def refused(server, protocol: str) -> float:
    text = httpx.get(server.url + "/metrics", timeout=10).text
    line = f'rmserve_requests_total{{endpoint="{ENDPOINT[protocol]}",outcome="overloaded",protocol="{protocol}"}}'
    return sum(float(row.split()[-1]) for row in text.splitlines() if row.startswith(line))


@pytest.mark.holds_engine
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_chunk_refused_by_a_full_replica_goes_to_the_free_one_at_once(bundle, pair, protocol):
    """The full replica holds one row in its engine and one queued (max_queue_rows=1), so it answers
    429 / RESOURCE_EXHAUSTED; an asyncio call of two chunks sends one to each replica together, and the
    refused chunk's failover must go to the free replica (the other chunk moved the client's turn back onto
    the full one; gRPC's round_robin over one channel could not be told which replica refused)."""
    gate = EngineGate()
    free = pair[0]
    with running_server(bundle, gate=gate, max_queue_rows=1) as full:
        gate.hold()
        busy = [threading.Thread(target=httpx.post, args=(full.url + "/score",),
                                 kwargs={"json": {"prompt": "a", "response": w}, "timeout": 120}) for w in ("b", "c")]
        busy[0].start()
        assert gate.wait_held() == 1
        busy[1].start()
        wait_until(lambda: "rmserve_queue_depth 1.0" in httpx.get(full.url + "/metrics").text, "a row to be queued")
        waits: list[float] = []
        policy = RetryPolicy(on_retry=lambda attempt, delay, error: waits.append(delay))
        refused_before = refused(full, protocol)
        options = {"max_responses_per_request": 1, "max_concurrent_chunks": 2, "retry": policy}

        async def call():
            async with (AsyncRewardClient([full.url, free.url], **options) if protocol == "http" else
                        AsyncGrpcRewardClient([full.grpc_target, free.grpc_target], **options)) as client:
                return await client.score(PROMPT, RESPONSES)

        try:
            result = asyncio.run(call())
            refusals = refused(full, protocol) - refused_before
        finally:
            gate.release()
            for thread in busy:
                thread.join(60)
    assert refusals == 1  # the full replica was sent one chunk, once
    assert waits == [], waits  # no backoff: the free replica took the refused chunk at once
    assert result.requests == 3 and len(result.rewards) == 2
    expected = RewardClient(free.url).score(PROMPT, RESPONSES).rewards
    assert result.rewards == pytest.approx(expected, abs=1e-5)
