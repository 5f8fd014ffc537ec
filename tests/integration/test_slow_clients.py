"""Cheap attacks on the HTTP port, refused by a real server without reading what they send: slow and idle
connections closed within the configured timeouts (raw sockets), a cap on open connections, 401 from the
head before any of a large unauthenticated body is read, and a 413 that common clients (httpx sync and
async, aiohttp) can read on a kept-alive connection."""

from __future__ import annotations

import asyncio
import json
import socket
import time

import aiohttp
import httpx
import pytest

from tests.conftest import make_tiny_bundle
from tests.integration.server import running_server

KEY = "slow-key"
AUTH = {"authorization": f"Bearer {KEY}"}
LIMITS = {"header_timeout_seconds": 0.5, "body_timeout_seconds": 0.5, "keep_alive_timeout_seconds": 0.5,
          "max_request_bytes": 4 << 20, "api_keys": KEY}
# The most a test waits for the server to act; a timeout that never fires fails the test here, it does not
# measure how fast the machine is.
PATIENCE = 60
# What a client sees of a 0.5 s timeout can be a little less than 0.5 s: uvloop's timers have millisecond
# resolution, and the server's clock starts when it accepts the connection or reads the head, which can come
# before the client starts its own clock (after its send returns).
TIMED_OUT = 0.45


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    bundle = make_tiny_bundle(tmp_path_factory.mktemp("slow") / "bundle")
    with running_server(bundle, **LIMITS) as running:
        yield running


def connect(server) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", int(server.url.rsplit(":", 1)[1])), timeout=PATIENCE)
    return sock


def read_until_closed(sock: socket.socket) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and how long that took."""
    began, data = time.monotonic(), b""
    while chunk := sock.recv(65536):
        data += chunk
    return data, time.monotonic() - began


def read_answer(sock: socket.socket) -> bytes:
    """One whole answer (head and Content-Length bytes of body), leaving the connection open."""
    data = b""
    while b"\r\n\r\n" not in data or len(data.partition(b"\r\n\r\n")[2]) < int(
            [line for line in data.partition(b"\r\n\r\n")[0].split(b"\r\n") if line.lower().startswith(b"content-length:")][0]
            .split(b":")[1]):
        chunk = sock.recv(65536)
        assert chunk, f"the server closed the connection after {data!r}"
        data += chunk
    return data


def answer(data: bytes) -> tuple[int, dict]:
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def test_a_connection_that_sends_nothing_is_closed(server):
    with connect(server) as sock:
        data, waited = read_until_closed(sock)
    assert data == b"" and waited >= TIMED_OUT


def test_half_the_headers_get_408_and_the_connection_is_closed(server):
    with connect(server) as sock:
        sock.sendall(b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: app")
        data, waited = read_until_closed(sock)
    status, body = answer(data)
    assert status == 408 and waited >= TIMED_OUT
    assert body["error"]["kind"] == "timeout" and "header_timeout_seconds" in body["error"]["message"]


def test_half_a_declared_body_gets_408_and_the_connection_is_closed(server):
    body = json.dumps({"prompt": "hello there", "response": "i am fine thanks"}).encode()
    with connect(server) as sock:
        sock.sendall(b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nAuthorization: Bearer "
                     + KEY.encode() + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n"
                     + body[: len(body) // 2])
        data, waited = read_until_closed(sock)
    status, error = answer(data)
    assert status == 408 and waited >= TIMED_OUT
    assert "body_timeout_seconds" in error["error"]["message"]
    metrics = httpx.get(server.url + "/metrics").text
    assert 'outcome="internal"' not in metrics


def test_an_idle_keep_alive_connection_is_closed(server):
    body = json.dumps({"prompt": "hello there", "response": "i am fine thanks"}).encode()
    with connect(server) as sock:
        sock.sendall(b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nAuthorization: Bearer "
                     + KEY.encode() + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        data, _ = read_until_closed(sock)  # the answer, then the close once the connection idles
    assert data.startswith(b"HTTP/1.1 200")


def test_an_unauthenticated_large_body_is_401_before_any_of_it_is_read(server):
    """Only the head is sent, announcing 4 MiB: the server answers from the head alone."""
    with connect(server) as sock:
        sock.sendall(b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 4194304\r\n\r\n")
        data = read_answer(sock)
    status, body = answer(data)
    assert status == 401 and body["error"]["kind"] == "unauthenticated", data


@pytest.mark.parametrize("path", ["/score", "/get_reward", "/classify", "/admin/reload"])
def test_a_flood_of_unauthenticated_large_bodies_gets_401s_and_leaves_the_server_serving(server, path):
    body = b"[" + b",".join([b"{}"] * ((4 << 20) // 3 - 1)) + b"]"
    with httpx.Client(timeout=PATIENCE) as client:
        for _ in range(3):  # on one kept-alive connection: each refused body is read past and thrown away
            refused = client.post(server.url + path, content=body, headers={"content-type": "application/json"})
            assert refused.status_code == 401, refused.text
        ok = client.post(server.url + "/score", json={"prompt": "hello there", "response": "i am fine thanks"},
                         headers=AUTH)
        assert ok.status_code == 200


def too_large() -> bytes:
    return b'{"prompt": "hi", "response": "' + b"x" * (5 << 20) + b'"}'


def assert_413(status: int, body: dict) -> None:
    assert status == 413
    assert body["error"]["field"] == "body" and "max_request_bytes" in body["error"]["message"]


def test_413_is_readable_by_httpx_sync_on_a_kept_alive_connection(server):
    with httpx.Client(timeout=PATIENCE, headers=AUTH) as client:
        assert client.post(server.url + "/score", json={"prompt": "hi", "response": "ok"}).status_code == 200
        for _ in range(2):
            refused = client.post(server.url + "/score", content=too_large(), headers={"content-type": "application/json"})
            assert_413(refused.status_code, refused.json())
        assert client.post(server.url + "/score", json={"prompt": "hi", "response": "ok"}).status_code == 200


def test_413_is_readable_by_httpx_async_on_a_kept_alive_connection(server):
    async def main():
        async with httpx.AsyncClient(timeout=PATIENCE, headers=AUTH) as client:
            assert (await client.post(server.url + "/score", json={"prompt": "hi", "response": "ok"})).status_code == 200
            for _ in range(2):
                refused = await client.post(server.url + "/score", content=too_large(),
                                            headers={"content-type": "application/json"})
                assert_413(refused.status_code, refused.json())
            assert (await client.post(server.url + "/score", json={"prompt": "hi", "response": "ok"})).status_code == 200

    asyncio.run(main())


def test_413_is_readable_by_aiohttp_on_a_kept_alive_connection(server):
    async def main():
        timeout = aiohttp.ClientTimeout(total=PATIENCE)
        async with aiohttp.ClientSession(timeout=timeout, headers=AUTH) as session:
            async with session.post(server.url + "/score", json={"prompt": "hi", "response": "ok"}) as ok:
                assert ok.status == 200
            for _ in range(2):
                async with session.post(server.url + "/score", data=too_large(),
                                        headers={"content-type": "application/json"}) as refused:
                    assert_413(refused.status, await refused.json())
            async with session.post(server.url + "/score", json={"prompt": "hi", "response": "ok"}) as ok:
                assert ok.status == 200

    asyncio.run(main())


def test_a_chunked_body_past_the_limit_is_413_readable_by_httpx(server):
    def chunks():
        for _ in range(5):
            yield b" " * (1 << 20)

    with httpx.Client(timeout=PATIENCE, headers=AUTH) as client:
        refused = client.post(server.url + "/score", content=chunks(), headers={"content-type": "application/json"})
        assert refused.status_code == 413 and "more than 4194304 bytes arrived" in refused.json()["error"]["message"]
        assert client.post(server.url + "/score", json={"prompt": "hi", "response": "ok"}).status_code == 200


def test_connections_past_max_connections_get_429_and_are_closed(tmp_path):
    bundle = make_tiny_bundle(tmp_path / "bundle")
    with running_server(bundle, max_connections=3, header_timeout_seconds=60) as server:
        held = [connect(server) for _ in range(3)]  # open, silent: they count until their header timeout
        try:
            with connect(server) as extra:
                extra.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                data, _ = read_until_closed(extra)
            status, body = answer(data)
            assert status == 429 and "max_connections" in body["error"]["message"]
            assert b"connection: close" in data.lower()
        finally:
            for sock in held:
                sock.close()
        # Once they are gone there is room again (the server notices the closes on its own time).
        from tests.waiting import wait_until

        wait_until(lambda: httpx.get(server.url + "/healthz", timeout=PATIENCE).status_code == 200,
                   "a connection to be let in again")


def test_grpc_closes_silent_and_idle_connections(tmp_path):
    """gRPC: a connection that never sends its HTTP/2 preface is closed once header_timeout_seconds pass, and
    a channel with no calls for grpc_max_connection_idle_seconds is told to go (GOAWAY: it turns IDLE and
    reconnects for its next call)."""
    import grpc

    from rmserve.proto import reward_pb2 as pb
    from rmserve.proto import reward_pb2_grpc as pb_grpc
    from tests.waiting import wait_until

    bundle = make_tiny_bundle(tmp_path / "bundle")
    with running_server(bundle, header_timeout_seconds=0.5, grpc_max_connection_idle_seconds=0.5) as server:
        host, port = server.grpc_target.rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=PATIENCE) as sock:
            data, waited = read_until_closed(sock)
        frame_types, rest = [], data  # HTTP/2 frames: 3 bytes of length, 1 of type, 1 of flags, 4 of stream
        while len(rest) >= 9:
            frame_types.append(rest[3])
            rest = rest[9 + int.from_bytes(rest[:3], "big"):]
        assert waited >= TIMED_OUT and 0x07 in frame_types, (frame_types, data)  # 0x07: GOAWAY
        states: list = []
        with grpc.insecure_channel(server.grpc_target) as channel:
            channel.subscribe(states.append, try_to_connect=False)
            stub = pb_grpc.RewardModelStub(channel)
            request = pb.ScoreRequest(prompt=pb.Prompt(text="hello there"), responses=["i am fine thanks"])
            assert len(stub.Score(request, timeout=PATIENCE).rewards) == 1
            wait_until(lambda: grpc.ChannelConnectivity.READY in states
                       and states[-1] == grpc.ChannelConnectivity.IDLE, "the idle connection to be closed",
                       timeout=PATIENCE)
            assert len(stub.Score(request, timeout=PATIENCE).rewards) == 1  # a new connection serves
