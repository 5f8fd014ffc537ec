"""Many concurrent Score calls over one asyncio gRPC channel; the server batches them together.

    python examples/grpc_client_async.py [127.0.0.1:50051]
"""

import asyncio
import sys

import grpc

from rmserve.proto import reward_pb2 as pb
from rmserve.proto import reward_pb2_grpc as pb_grpc


async def main(target: str) -> None:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.RewardModelStub(channel)
        prompt = pb.Prompt(text="\n\nHuman: Can you help me write a poem?\n\nAssistant:")
        candidates = [" Of course! What should it be about?", " No.", " Poems are a waste of time.",
                      " Sure. Here is a short one about the sea: waves fold and unfold..."]
        replies = await asyncio.gather(*(
            stub.Score(pb.ScoreRequest(prompt=prompt, responses=[c]), timeout=10) for c in candidates))
        rewards = [reply.rewards[0] for reply in replies]
        best = max(range(len(candidates)), key=rewards.__getitem__)
        print("rewards:", [round(r, 4) for r in rewards])
        print("best-of-4:", candidates[best].strip())


asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:50051"))
