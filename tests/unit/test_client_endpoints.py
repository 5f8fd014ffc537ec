"""How a client spreads calls over replicas (service/client/endpoints.py, common.call_with_retries): the
addresses in turn, a failed one left out for a while, dns:/// names resolved and resolved again (with a
stand-in resolver: the integration test runs two real servers), gRPC targets for lists, and a retryable
failure sent again at once to the next replica before any backoff."""

from __future__ import annotations

import socket

import pytest

from rmserve.client import InvalidRequest, RetryPolicy, Unavailable, connect
from rmserve.client.common import Deadline, call_with_retries
from rmserve.client.endpoints import HttpEndpoints, grpc_targets, split_endpoints


def test_endpoints_come_as_a_list_or_with_commas():
    assert split_endpoints("http://a:1, http://b:2") == split_endpoints(["http://a:1", "http://b:2"]) == \
        ["http://a:1", "http://b:2"]
    with pytest.raises(ValueError, match="no endpoint"):
        split_endpoints(" , ")
    with pytest.raises(ValueError, match="expected http"):
        HttpEndpoints("a:1")


def test_addresses_are_taken_in_turn_and_a_failed_one_sits_out():
    endpoints = HttpEndpoints(["http://a:1/", "http://b:2", "http://c:3"], cooldown_seconds=3600)
    assert [endpoints.pick() for _ in range(6)] == ["http://a:1", "http://b:2", "http://c:3"] * 2
    endpoints.failed("http://b:2")
    assert {endpoints.pick() for _ in range(6)} == {"http://a:1", "http://c:3"}
    endpoints.failed("http://a:1")
    endpoints.failed("http://c:3")
    assert {endpoints.pick() for _ in range(6)} == {"http://a:1", "http://b:2", "http://c:3"}  # all out: all tried


def fake_resolver(monkeypatch, answers: dict):
    """getaddrinfo answering from `answers` (host -> addresses, or an OSError); counts its lookups."""
    lookups = []

    def getaddrinfo(host, port, *args, **kwargs):
        lookups.append(host)
        answer = answers[host]
        if isinstance(answer, OSError):
            raise answer
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in answer]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return lookups


def test_a_dns_name_spreads_over_its_addresses_and_is_resolved_again(monkeypatch):
    answers = {"rm-headless": ["10.0.0.2", "10.0.0.1"]}
    lookups = fake_resolver(monkeypatch, answers)
    endpoints = HttpEndpoints("dns:///rm-headless:8000", refresh_seconds=3600)
    assert len(endpoints) == 0  # resolved on first use
    assert {endpoints.pick() for _ in range(4)} == {"http://10.0.0.1:8000", "http://10.0.0.2:8000"}
    assert lookups == ["rm-headless"]
    answers["rm-headless"] = ["10.0.0.1", "10.0.0.3", "fd00::7"]  # scaled out
    endpoints.failed("http://10.0.0.2:8000")  # a failure looks the name up again
    assert {endpoints.pick() for _ in range(6)} == {"http://10.0.0.1:8000", "http://10.0.0.3:8000", "http://[fd00::7]:8000"}
    answers["rm-headless"] = socket.gaierror("temporary failure")
    endpoints.failed("http://10.0.0.3:8000")
    assert endpoints.pick()  # a failed lookup keeps the addresses known
    assert len(lookups) == 3


def test_a_name_with_no_address_is_unavailable(monkeypatch):
    fake_resolver(monkeypatch, {"gone": socket.gaierror("Name or service not known")})
    with pytest.raises(Unavailable, match="gone:8000 resolved to no address"):
        HttpEndpoints("dns:///gone:8000").pick()
    with pytest.raises(ValueError, match="host:port"):
        HttpEndpoints("dns:///no-port")


def test_grpc_targets_for_one_name_or_a_list():
    assert grpc_targets("dns:///rm-headless:50051") == ["dns:///rm-headless:50051"]
    assert grpc_targets("127.0.0.1:50051") == ["127.0.0.1:50051"]
    assert grpc_targets(["127.0.0.1:1", "rm-0:2"]) == ["127.0.0.1:1", "rm-0:2"]
    assert grpc_targets("[::1]:1,127.0.0.1:2") == ["[::1]:1", "127.0.0.1:2"]
    with pytest.raises(ValueError, match="host:port"):
        grpc_targets(["127.0.0.1:1", "rm-0"])


def test_connect_picks_the_protocol_for_lists_too():
    with connect(["grpc://127.0.0.1:1", "grpc://127.0.0.1:2"]) as client:
        assert client.target == "127.0.0.1:1,127.0.0.1:2" and len(client.replicas) == 2
    with connect("http://127.0.0.1:1,http://127.0.0.1:2") as client:
        assert client.url == "http://127.0.0.1:1,http://127.0.0.1:2" and len(client.endpoints) == 2
    with pytest.raises(ValueError, match="mixes"):
        connect(["grpc://127.0.0.1:1", "http://127.0.0.1:2"])


def flaky(*failures):
    """A send that raises `failures` in order, then answers; records each call."""
    calls = []

    def send(left):
        calls.append(left)
        if len(calls) <= len(failures):
            raise failures[len(calls) - 1]
        return "scores"

    return send, calls


def test_a_retryable_failure_goes_to_the_next_replica_at_once():
    waits = []
    policy = RetryPolicy(on_retry=lambda attempt, delay, error: waits.append(delay))
    send, calls = flaky(Unavailable("refused"))
    assert call_with_retries(send, policy, Deadline(None), replicas=2) == ("scores", 2)
    assert waits == []  # no backoff: another replica was there to try
    send, calls = flaky(Unavailable("refused"), Unavailable("503"), Unavailable("503"))
    assert call_with_retries(send, policy, Deadline(None), replicas=2) == ("scores", 4)
    assert len(waits) == 1  # both replicas failed once: one backoff, then the next round
    send, calls = flaky(Unavailable("refused"))
    assert call_with_retries(send, RetryPolicy(initial_backoff=0.0, on_retry=lambda *a: waits.append(a)),
                             Deadline(None)) == ("scores", 2)  # one replica: the usual backoff


def test_final_errors_and_no_retries_do_not_move_to_another_replica():
    send, calls = flaky(InvalidRequest("bad", field="responses.0"))
    with pytest.raises(InvalidRequest):
        call_with_retries(send, RetryPolicy(), Deadline(None), replicas=3)
    assert len(calls) == 1
    send, calls = flaky(Unavailable("refused"))
    with pytest.raises(Unavailable):
        call_with_retries(send, RetryPolicy(max_retries=0), Deadline(None), replicas=3)
    assert len(calls) == 1


def test_a_429_from_the_only_live_replica_waits_for_the_backoff_instead_of_a_failover():
    """Replica a sits out a refused connection; b answers 429: sending again at once would go to b again,
    ignoring its Retry-After. The call waits (the policy's delay, never under Retry-After) before it does."""
    from rmserve.client import Overloaded

    endpoints = HttpEndpoints(["http://a:1", "http://b:2"], cooldown_seconds=3600)
    endpoints.failed("http://a:1")
    events: list[str] = []

    def send(left):
        url = endpoints.pick()
        events.append(url)
        if len(events) == 1:
            raise Overloaded("queue full", status=429, retry_after=0.0)
        return "answer"

    policy = RetryPolicy(initial_backoff=0.0, max_backoff=0.0, jitter=0.0,
                         on_retry=lambda attempt, delay, error: events.append("waited"))
    assert call_with_retries(send, policy, Deadline(None), endpoints.live) == ("answer", 2)
    assert events == ["http://b:2", "waited", "http://b:2"]
    assert endpoints.live() == 1


class Clock:
    """A stand-in for time.monotonic that moves only when the test says so."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_a_replica_that_answered_429_is_busy_for_its_retry_after_and_a_failover_avoids_it():
    clock = Clock()
    endpoints = HttpEndpoints(["http://a:1", "http://b:2", "http://c:3"], clock=clock)
    endpoints.busy("http://a:1", retry_after=2.0)
    assert {endpoints.pick() for _ in range(6)} == {"http://b:2", "http://c:3"}
    assert endpoints.live() == 3  # busy is not out: with every replica busy, the call waits for its backoff
    clock.now += 2.0
    assert {endpoints.pick() for _ in range(6)} == {"http://a:1", "http://b:2", "http://c:3"}
    # One call's failovers go to replicas it has not tried, whatever other calls did to the turn meanwhile.
    tried: set[str] = set()
    seen = []
    for _ in range(3):
        seen.append(endpoints.pick(tried))
        endpoints.pick()  # another call's pick in between
    assert sorted(seen) == ["http://a:1", "http://b:2", "http://c:3"]
    assert endpoints.pick(tried) in seen and len(tried) == 1  # all tried: a new round starts


def test_a_busy_replica_is_tried_again_when_every_other_is_out_or_tried():
    clock = Clock()
    endpoints = HttpEndpoints(["http://a:1", "http://b:2"], clock=clock)
    endpoints.failed("http://b:2")
    endpoints.busy("http://a:1", retry_after=None)
    assert endpoints.pick({"http://a:1"}) == "http://a:1"  # b sits out: a, after the call's backoff
    clock.now += endpoints.cooldown_seconds
    assert endpoints.pick({"http://a:1"}) == "http://b:2"


def test_a_chunk_refused_with_429_fails_over_to_the_free_replica_not_back_to_the_refusing_one():
    """Two chunks of one asyncio call go out together, one to each replica; a answers its chunk 429. The
    other chunk moved the turn on meanwhile: the failover must still go to b, not back to a."""
    import asyncio
    import json

    import httpx

    from rmserve.client import AsyncRewardClient

    sent: list[tuple[str, str]] = []
    waits: list[float] = []
    model = {"bundle_id": "b", "model_sha256": "s", "normalization_version": "n", "calibration_temperature": 1.0}

    async def main():
        both_arrived = asyncio.Event()

        async def handler(request: httpx.Request) -> httpx.Response:
            sent.append((request.url.host, json.loads(request.content)["responses"][0]))
            if len(sent) == 2:
                both_arrived.set()
            await both_arrived.wait()  # both chunks are under way before either is answered
            if request.url.host == "a" and len(sent) <= 2:
                return httpx.Response(429, headers={"retry-after": "1"},
                                      json={"error": {"kind": "overloaded", "message": "queue full", "field": None}})
            return httpx.Response(200, json={"rewards": [0.5], "normalized_rewards": [0.0], "truncated": [False],
                                             "model": model})

        policy = RetryPolicy(on_retry=lambda attempt, delay, error: waits.append(delay))
        client = AsyncRewardClient(["http://a:1", "http://b:2"], max_responses_per_request=1,
                                   max_concurrent_chunks=2, retry=policy)
        client._http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
        try:
            return await client.score("p", ["r0", "r1"])
        finally:
            await client.close()

    result = asyncio.run(main())
    assert {host for host, _ in sent[:2]} == {"a", "b"}
    refused = next(row for host, row in sent[:2] if host == "a")
    assert sent[2] == ("b", refused), sent  # the refused chunk went to the free replica
    assert waits == [] and result.requests == 3


def test_a_grpc_call_refused_with_resource_exhausted_goes_to_a_replica_it_has_not_tried():
    """One channel per listed target: a's refusal (while another call moved the turn on) is sent to b, and
    a is avoided for its Retry-After; b's UNAVAILABLE leaves it out."""
    import grpc

    from rmserve.client import GrpcRewardClient
    from rmserve.proto import reward_pb2 as pb

    class Refusal(grpc.RpcError):
        def __init__(self, code, retry_after=None):
            self._code, self._retry_after = code, retry_after

        def code(self):
            return self._code

        def details(self):
            return "queue full"

        def trailing_metadata(self):
            return (("retry-after", self._retry_after),) if self._retry_after else ()

    sent: list[str] = []
    client = GrpcRewardClient("127.0.0.1:1,127.0.0.1:2", max_responses_per_request=8)

    class Stub:
        def __init__(self, target, refusals):
            self.target, self.refusals = target, list(refusals)

        def GetModelInfo(self, request, timeout=None, metadata=()):
            sent.append(self.target)
            if self.refusals:
                client.replicas.pick()  # another call's pick moves the turn on meanwhile
                raise self.refusals.pop(0)
            return pb.ModelInfo(provider=self.target, manifest_json="{}")

    a, b = "127.0.0.1:1", "127.0.0.1:2"
    client._stubs = {a: Stub(a, [Refusal(grpc.StatusCode.RESOURCE_EXHAUSTED, "30")]), b: Stub(b, [])}
    assert client.model_info().provider == b
    assert sent == [a, b]
    assert {client.replicas.pick() for _ in range(4)} == {b}  # a is busy for its Retry-After
    client._stubs[b].refusals = [Refusal(grpc.StatusCode.UNAVAILABLE)]
    sent.clear()
    assert client.model_info().provider == a
    assert sent == [b, a] and client.replicas.live() == 1
    client.close()
