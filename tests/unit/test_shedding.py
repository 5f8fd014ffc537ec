"""When the queue is full, the HTTP layer answers 429 before the body is read or parsed."""

import asyncio
import json
from types import SimpleNamespace

from rmserve.service.core.batcher import BatchObserver
from rmserve.service.core.metrics import Metrics
from rmserve.service.transports.auth import ApiKeys
from rmserve.service.transports.http.app import ScoringFront


def call(middleware, path, headers=()):
    sent = []

    async def receive():
        raise AssertionError("the body must not be read")

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "path": path, "method": "POST", "headers": list(headers)}
    asyncio.run(middleware(scope, receive, send))
    return sent


def make(full: bool, keys=()):
    reached = []

    async def app(scope, receive, send):
        reached.append(scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    batcher = SimpleNamespace(is_full=lambda: full, observer=BatchObserver())
    state = SimpleNamespace(metrics=Metrics(), scorer=SimpleNamespace(batcher=batcher), api_keys=ApiKeys(list(keys)))
    return ScoringFront(app, state, front_routes={}), reached, state


def test_full_queue_is_refused_before_the_body_is_read():
    middleware, reached, state = make(full=True)
    sent = call(middleware, "/score")
    assert not reached
    assert sent[0]["status"] == 429 and (b"retry-after", b"1") in sent[0]["headers"]
    assert json.loads(sent[1]["body"])["error"]["kind"] == "overloaded"
    assert state.metrics.requests.labels("/score", "http", "overloaded")._value.get() == 1


def test_room_in_the_queue_passes_through_with_a_timing_header():
    middleware, reached, _ = make(full=False)
    sent = call(middleware, "/compare")
    assert reached == ["/compare"] and sent[0]["status"] == 200
    assert any(name == b"x-total-time-ms" for name, _ in sent[0]["headers"])


def test_unauthenticated_requests_are_left_to_the_route_for_a_401():
    middleware, reached, _ = make(full=True, keys=["secret"])
    call(middleware, "/score")
    assert reached == ["/score"]
    middleware, reached, _ = make(full=True, keys=["secret"])
    sent = call(middleware, "/score", headers=[(b"authorization", b"Bearer secret")])
    assert not reached and sent[0]["status"] == 429
