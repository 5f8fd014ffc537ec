"""The naive peer: how many RLHF repositories serve a reward model today.

A minimal FastAPI app that scores each request on its own with torch eager, inside the async handler,
with no cross-request batching (the pattern of OpenRLHF's serve_rm.py). Same checkpoint and the same
input formatting as rmserve, so only the serving strategy differs.

    RM_CHECKPOINT=artifacts/default-checkpoint python -m uvicorn bench.naive_server:app --port 8100
"""

from __future__ import annotations

import os

import torch
from fastapi import FastAPI
from pydantic import BaseModel

from rmserve.training.model import load_checkpoint

model, encoder, _ = load_checkpoint(os.environ.get("RM_CHECKPOINT", "artifacts/default-checkpoint"))
app = FastAPI()


class ScoreRequest(BaseModel):
    prompt: str
    response: str | None = None
    responses: list[str] | None = None


@app.post("/score")
async def score(body: ScoreRequest) -> dict:
    responses = body.responses if body.responses is not None else [body.response or ""]
    batch = encoder.pad(encoder.encode([(body.prompt, r) for r in responses]))
    with torch.no_grad():
        rewards = model(torch.from_numpy(batch.input_ids), torch.from_numpy(batch.attention_mask))
    return {"rewards": rewards.tolist()}


@app.get("/readyz")
async def ready() -> dict:
    return {"ready": True}
