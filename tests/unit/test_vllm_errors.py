"""vLLM's routes answer every failure in vLLM's error shape, a bug behind them too (a 500 that is vLLM's
error object, counted as internal, logged with the reference it carries). The real app and scorer on a tiny
bundle, in process."""

import asyncio

import httpx
import pytest

from tests.app_in_process import app_client


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
