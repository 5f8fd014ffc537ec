"""rmserve.client.http against real servers on 127.0.0.1 (tiny bundle): the four clients give the same typed
answers as the raw API; long lists are split at the server's max_responses_per_request and merged with
group statistics over the whole list; 429 / RESOURCE_EXHAUSTED are retried, honoring Retry-After;
deadlines end calls; validation errors name the field and are not retried; a server restarted at the same
address with a smaller limit is reached again and the limit read again."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import numpy as np
import pytest

from rmserve.client import (
    NO_RETRIES,
    AsyncGrpcRewardClient,
    AsyncRewardClient,
    DeadlineExceeded,
    GrpcRewardClient,
    InvalidRequest,
    Overloaded,
    RetryPolicy,
    RewardClient,
    RmserveError,
    Unavailable,
    connect,
)
from rmserve.group_stats import GROUP_EPS
from tests.conftest import make_tiny_bundle
from tests.integration.server import free_port, running_server
from tests.waiting import wait_until

PROMPT = "\n\nHuman: how are you today?\n\nAssistant:"
RESPONSES = [f" {w} i am fine" for w in "one two three four five six seven eight nine ten".split()]
CHAT = [{"role": "user", "content": "how are you?"}]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_tiny_bundle(tmp_path_factory.mktemp("client") / "bundle")


@pytest.fixture(scope="module")
def server(bundle):
    with running_server(bundle, max_responses_per_request=4) as running:
        yield running


@pytest.fixture(scope="module")
def reference(server):
    """Each response scored alone through the raw HTTP API."""
    return [httpx.post(server.url + "/score", json={"prompt": PROMPT, "response": r}).json()["rewards"][0]
            for r in RESPONSES]


def check_split_group(result, reference):
    np.testing.assert_allclose(result.rewards, reference, atol=1e-6, rtol=0)
    r = np.asarray(result.rewards, dtype=np.float64)
    assert result.group.mean == r.mean() and result.group.std == r.std() and result.group.eps == GROUP_EPS
    np.testing.assert_array_equal(result.values, (r - r.mean()) / (r.std() + GROUP_EPS))
    np.testing.assert_array_equal(result.group.advantages, result.values)
    assert result.requests == 3  # 10 responses, at most 4 per request


@pytest.mark.parametrize("make", [lambda s: RewardClient(s.url), lambda s: GrpcRewardClient(s.grpc_target),
                                  lambda s: connect(f"grpc://{s.grpc_target}")], ids=["http", "grpc", "connect"])
def test_sync_clients_split_long_lists_and_merge_group_statistics(server, reference, make):
    with make(server) as client:
        result = client.score(PROMPT, RESPONSES, values="group")
        assert client.max_responses_per_request == 4  # learned from the server
        check_split_group(result, reference)
        items = client.score_items([(PROMPT, r) for r in RESPONSES[:6]], values="normalized")
        assert items.group is None and items.requests == 2
        np.testing.assert_allclose(items.values, (np.asarray(reference[:6]) - 0.5) / 2.0, atol=1e-6, rtol=0)
        short = client.score(CHAT, RESPONSES[:2])
        chat = httpx.post(server.url + "/score", json={"prompt": CHAT, "responses": RESPONSES[:2]}).json()
        assert short.rewards == chat["rewards"] and short.values == chat["rewards"] and short.requests == 1
        assert short.group.std == chat["group"]["std"] and short.model.bundle_id == "tiny"
        compared = client.compare(PROMPT, RESPONSES[0], RESPONSES[1])
        assert compared.reward_a == pytest.approx(reference[0], abs=1e-6)
        assert compared.probability_a == pytest.approx(1 / (1 + np.exp(reference[1] - reference[0])), abs=1e-6)
        info = client.model_info()
        assert info.model.bundle_id == "tiny" and info.provider == "CPUExecutionProvider"


@pytest.mark.parametrize("make", [lambda s: AsyncRewardClient(s.url), lambda s: AsyncGrpcRewardClient(s.grpc_target)],
                         ids=["http", "grpc"])
def test_async_clients_split_long_lists_and_merge_group_statistics(server, reference, make):
    async def run():
        async with make(server) as client:
            result, items = await asyncio.gather(client.score(PROMPT, RESPONSES, values="group"),
                                                 client.score_items([(PROMPT, r) for r in RESPONSES]))
            check_split_group(result, reference)
            np.testing.assert_allclose(items.values, reference, atol=1e-6, rtol=0)
            return (await client.compare(PROMPT, RESPONSES[0], RESPONSES[1])).reward_b

    assert asyncio.run(run()) == pytest.approx(reference[1], abs=1e-6)


def test_http_client_reuses_one_connection(server):
    with RewardClient(server.url) as client:
        for _ in range(5):
            client.score(PROMPT, RESPONSES[:2])
        assert len(client._http._transport._pool.connections) == 1


@pytest.mark.parametrize("make", [lambda s, r: RewardClient(s.url, retry=r), lambda s, r: GrpcRewardClient(s.grpc_target, retry=r)],
                         ids=["http", "grpc"])
def test_invalid_requests_name_the_field_and_are_not_retried(server, make):
    retries = []
    with make(server, RetryPolicy(on_retry=lambda *a: retries.append(a))) as client:
        with pytest.raises(InvalidRequest) as refused:
            client.score(PROMPT, ["fine", "   "])
        assert refused.value.field == "responses.1" and "empty" in refused.value.message
        with pytest.raises(InvalidRequest) as refused:
            client.score_items([(PROMPT, "fine")], values="group")
        assert refused.value.field == "values"
    assert retries == []


@pytest.fixture(scope="module")
def slow_server(bundle):
    """A queue of one row, held 1.5 s by the batch wait: a second concurrent request is refused with
    429 / RESOURCE_EXHAUSTED, and any call is slower than a short deadline."""
    with running_server(bundle, max_queue_rows=1, max_wait_ms=1500) as running:
        yield running


def run_together(calls):
    """Start `calls` at once on threads; their results or exceptions, in order."""
    outcomes = [None] * len(calls)

    def run(i):
        try:
            outcomes[i] = calls[i]()
        except Exception as e:  # noqa: BLE001 - the test inspects it
            outcomes[i] = e

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return outcomes


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_overloaded_answers_are_retried_until_served(slow_server, protocol):
    retries = []
    policy = RetryPolicy(on_retry=lambda attempt, delay, error: retries.append((delay, error)))
    make = (lambda: RewardClient(slow_server.url, retry=policy)) if protocol == "http" else \
        (lambda: GrpcRewardClient(slow_server.grpc_target, retry=policy))
    with make() as first, make() as second:
        results = run_together([lambda: first.score(PROMPT, RESPONSES[:1]), lambda: second.score(PROMPT, RESPONSES[1:2])])
    assert all(not isinstance(r, Exception) for r in results), results
    assert sum(r.requests for r in results) >= 3  # two calls, and at least one refused once then retried
    assert retries and all(isinstance(error, Overloaded) for _, error in retries)
    if protocol == "http":  # the server's Retry-After (1 s) is honored
        assert {error.status for _, error in retries} == {429}
        assert all(delay >= 1.0 for delay, _ in retries)
    else:
        assert {error.status for _, error in retries} == {"RESOURCE_EXHAUSTED"}


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_without_retries_the_refusal_reaches_the_caller(slow_server, protocol):
    make = (lambda: RewardClient(slow_server.url, retry=NO_RETRIES)) if protocol == "http" else \
        (lambda: GrpcRewardClient(slow_server.grpc_target, retry=NO_RETRIES))
    with make() as first, make() as second:
        # The server may still hold a row of an earlier test: retry the pair until the queue was free for one.
        for _ in range(5):
            results = run_together([lambda: first.score(PROMPT, RESPONSES[:1]), lambda: second.score(PROMPT, RESPONSES[1:2])])
            if any(not isinstance(r, Exception) for r in results):
                break
    assert sorted(type(r).__name__ for r in results) == ["Overloaded", "ScoreResult"], results


@pytest.mark.parametrize("protocol", ["http", "grpc", "http-async", "grpc-async"])
def test_a_call_ends_at_its_deadline(slow_server, protocol):
    # Every row waits 1.5 s for its batch to fill; a 0.4 s deadline ends the call first. The same call with
    # time to spare then succeeds (and leaves the one-row queue empty for the next test).
    if protocol.endswith("async"):
        async def calls():
            make = AsyncRewardClient(slow_server.url) if protocol == "http-async" else \
                AsyncGrpcRewardClient(slow_server.grpc_target)
            async with make as client:
                client.max_responses_per_request = 4  # no model-info request inside the deadline
                with pytest.raises(DeadlineExceeded):
                    await client.score(PROMPT, RESPONSES[:1], timeout=0.4)
                return await client.score(PROMPT, RESPONSES[:1], timeout=30)

        assert asyncio.run(calls()).rewards
        return
    make = RewardClient(slow_server.url) if protocol == "http" else GrpcRewardClient(slow_server.grpc_target)
    with make as client:
        client.max_responses_per_request = 4
        with pytest.raises(DeadlineExceeded):
            client.score(PROMPT, RESPONSES[:1], timeout=0.4)
        assert client.score(PROMPT, RESPONSES[:1], timeout=30).rewards


def test_the_client_example_runs(server):
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, str(root / "examples" / "rlhf_client.py"), server.url, server.grpc_target],
                         cwd=root, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[2].startswith("600 responses in 150 requests")  # the server takes 4 per request
    assert lines[0].split(maxsplit=1)[1] == lines[3].split(":", 1)[1].strip() == lines[4].split(":", 1)[1].strip()
    assert lines[5].startswith("TRL reward function rmserve [")


def test_a_split_call_answers_as_the_whole_call_where_the_server_combines_verifiers(bundle, tmp_path):
    """With verifiers configured the server's values and group statistics combine their results with the
    model's rewards: a call split into chunks must return what the call sent whole returns. And a gRPC
    message over the server's size limit is refused once, not retried as an overloaded server."""
    import json

    config = tmp_path / "verifiers.json"
    config.write_text(json.dumps({"mode": "weighted_sum", "model_weight": 1.0,
                                  "verifiers": [{"type": "regex", "name": "fine", "pattern": "four|five"}]}))
    retries: list[int] = []
    policy = RetryPolicy(initial_backoff=0.01, max_backoff=0.02, on_retry=lambda n, delay, error: retries.append(n))
    with running_server(bundle, verifiers_config=str(config), max_request_bytes="2048") as server:
        for make in (lambda **k: RewardClient(server.url, **k), lambda **k: GrpcRewardClient(server.grpc_target, **k)):
            for values in ("raw", "normalized", "group"):
                whole = make(max_responses_per_request=16).score(PROMPT, RESPONSES, values=values)
                split = make(max_responses_per_request=3).score(PROMPT, RESPONSES, values=values)
                assert split.requests == 4 and whole.verified and split.verified
                assert split.values == pytest.approx(whole.values, abs=1e-12), values
                assert split.group.mean == pytest.approx(whole.group.mean, abs=1e-12), values
        with pytest.raises(RmserveError) as refused:
            GrpcRewardClient(server.grpc_target, retry=policy).score(PROMPT, ["x" * 4000])
    assert refused.value.status == "RESOURCE_EXHAUSTED" and not isinstance(refused.value, Overloaded)
    assert retries == []


def test_a_server_restarted_with_a_smaller_limit_is_reached_again_and_its_limit_read_again(bundle, reference):
    """Both clients learned max_responses_per_request 8 from the server; it is redeployed at the same
    address with 4. Their connection (pool, channel) reaches the new process, and a call split for 8 is
    refused, the limit read again and the call split again (once), instead of failing on every call."""
    ports = {"port": free_port(), "grpc_port": free_port()}
    with running_server(bundle, max_responses_per_request=8, **ports) as old:
        clients = [RewardClient(old.url), GrpcRewardClient(old.grpc_target)]
        for client in clients:
            assert client.score(PROMPT, RESPONSES).requests == 2 and client.max_responses_per_request == 8
    try:
        with running_server(bundle, max_responses_per_request=4, **ports):
            for client in clients:
                wait_until(lambda c=client: c.model_info(timeout=10), "the client to reach the restarted server",
                           ignore=(Unavailable, DeadlineExceeded))
                check_split_group(client.score(PROMPT, RESPONSES, values="group"), reference)
                assert client.max_responses_per_request == 4
                assert client.score(PROMPT, RESPONSES).requests == 3  # the new limit is kept
    finally:
        for client in clients:
            client.close()
