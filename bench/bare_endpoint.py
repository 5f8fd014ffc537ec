"""The bare endpoints that bench/overhead.py measures rmserve's serving layer against: the least a Python
server can do per request with the same tokenizer, and no batcher and no engine. Any layer that calls a
real engine must add to this floor.

HTTP: one FastAPI route under uvicorn (on uvloop, uvicorn's choice when it is installed), one worker: a
pydantic body {prompt, response | responses}, the tokenizer's `encode_batch_fast` over (prompt, response)
pairs with truncation at the bundle's max_length (the same ids as `encode_batch`, without the character
offsets nobody reads here: about 20 % less CPU), and {rewards: [tokens * 1e-3, ...]}. The route is a plain
`def` (FastAPI runs it in its thread pool) or, with BARE_ASYNC=1, an `async def` that tokenizes on the
event loop; bench/overhead.py uses whichever is faster.

gRPC: a grpc.aio servicer of the same RewardModel.Score contract doing the same tokenization in the
handler, with BARE_ASYNC=0 in a thread instead; on uvloop when it is installed (grpc.aio spends less CPU
per call on it: docs/performance-notes.md), with BARE_LOOP=asyncio on asyncio's own loop.

    BARE_BUNDLE=/tmp/null-bundle python -m uvicorn bench.bare_endpoint:app --port 8100
    BARE_BUNDLE=/tmp/null-bundle python bench/bare_endpoint.py --grpc-port 50100
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

from fastapi import FastAPI
from pydantic import BaseModel
from tokenizers import Tokenizer

_BUNDLE = Path(os.environ.get("BARE_BUNDLE", "artifacts/default-bundle"))
_ASYNC = os.environ.get("BARE_ASYNC", "0") == "1"
MAX_LENGTH = json.loads((_BUNDLE / "bundle.json").read_text())["input"]["max_length"]
tokenizer = Tokenizer.from_file(str(_BUNDLE / "tokenizer.json"))
tokenizer.no_padding()
tokenizer.enable_truncation(MAX_LENGTH)


def rewards(prompt: str, responses: list[str]) -> list[float]:
    return [len(e.ids) * 1e-3 for e in tokenizer.encode_batch_fast([(prompt, r) for r in responses])]


class ScoreRequest(BaseModel):
    prompt: str
    response: str | None = None
    responses: list[str] | None = None

    def texts(self) -> list[str]:
        return self.responses if self.responses is not None else [self.response or ""]


app = FastAPI()

if _ASYNC:
    @app.post("/score")
    async def score(body: ScoreRequest) -> dict:
        return {"rewards": rewards(body.prompt, body.texts())}
else:
    @app.post("/score")
    def score(body: ScoreRequest) -> dict:  # type: ignore[misc]
        return {"rewards": rewards(body.prompt, body.texts())}


@app.get("/readyz")
async def ready() -> dict:
    return {"ready": True}


async def serve_grpc(port: int) -> None:
    import grpc

    from rmserve.proto import reward_pb2, reward_pb2_grpc

    class BareServicer(reward_pb2_grpc.RewardModelServicer):
        async def Score(self, request, context):  # noqa: N802 - gRPC method names
            prompt = request.prompt.text
            if _ASYNC:
                values = rewards(prompt, list(request.responses))
            else:
                values = await asyncio.to_thread(rewards, prompt, list(request.responses))
            return reward_pb2.ScoreResponse(rewards=values)

    server = grpc.aio.server()
    reward_pb2_grpc.add_RewardModelServicer_to_server(BareServicer(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


if __name__ == "__main__":
    port = int(sys.argv[sys.argv.index("--grpc-port") + 1])
    if os.environ.get("BARE_LOOP", "uvloop") == "uvloop":
        import uvloop

        uvloop.run(serve_grpc(port))
    else:
        asyncio.run(serve_grpc(port))
