"""vLLM's routes answer every failure in vLLM's error shape, a bug behind them too (a 500 that is vLLM's
error object, counted as internal, logged with the reference it carries), and count and time a request
whose client left. The real app and scorer on a tiny bundle, in process."""

import asyncio
import json
import re

import httpx
import pytest

from tests.app_in_process import app_client, app_in_process


@pytest.mark.parametrize("path", ["/classify", "/pooling"])
def test_an_unexpected_failure_of_a_vllm_route_is_a_500_in_vllms_shape(tiny_bundle, monkeypatch, path, caplog):
    """A bug behind vLLM's routes is answered as vLLM answers one (its error object, code 500), counted as
    internal, and logged with the reference the answer carries."""
    from rmserve.service.core.scoring import Scorer

    async def broken(self, *args, **kwargs):
        raise RuntimeError("a bug")

    async def post() -> tuple[httpx.Response, str]:
        async with app_client(tiny_bundle) as client:
            monkeypatch.setattr(Scorer, "score", broken)
            answer = await client.post(path, json={"input": "\n\nHuman: the cat\n\nAssistant: sat"})
            monkeypatch.undo()
            return answer, (await client.get("/metrics")).text

    answer, metrics = asyncio.run(post())
    assert answer.status_code == 500, answer.text
    error = answer.json()["error"]
    assert error["type"] == "InternalServerError" and error["code"] == 500, error
    assert f'rmserve_requests_total{{endpoint="{path}",outcome="internal",protocol="http"}} 1.0' in metrics
    assert "a bug" in caplog.text and error["message"].split("reference ")[1].rstrip(")") in caplog.text


def test_a_departed_client_of_a_vllm_route_is_counted_and_timed(tiny_bundle, monkeypatch):
    from prometheus_client import generate_latest

    from rmserve.service.core.scoring import Scorer

    async def main() -> str:
        scoring = asyncio.Event()

        async def held(self, *args, **kwargs):
            scoring.set()
            await asyncio.Event().wait()  # until the departed client's request is cancelled

        body = json.dumps({"input": "\n\nHuman: the cat\n\nAssistant: sat"}).encode()
        arriving = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive() -> dict:
            if arriving:
                return arriving.pop(0)
            await scoring.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            pass

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                 "scheme": "http", "path": "/classify", "raw_path": b"/classify", "query_string": b"",
                 "root_path": "", "client": ("127.0.0.1", 40000), "server": ("127.0.0.1", 8000),
                 "headers": [(b"host", b"rmserve"), (b"content-type", b"application/json"),
                             (b"content-length", str(len(body)).encode())]}
        async with app_in_process(tiny_bundle) as (state, app):
            monkeypatch.setattr(Scorer, "score", held)
            await asyncio.wait_for(app(scope, receive, send), 30)
            return generate_latest(state.metrics.registry).decode()

    metrics = asyncio.run(main())
    counted = re.search(r'^rmserve_requests_total\{endpoint="/classify",outcome="client_gone",protocol="http"\} (\S+)$',
                        metrics, re.M)
    timed = re.search(r'^rmserve_request_duration_seconds_count\{endpoint="/classify",protocol="http"\} (\S+)$',
                      metrics, re.M)
    assert counted and float(counted.group(1)) == 1, metrics
    assert timed and float(timed.group(1)) == 1
