"""rmserve.client from a training job: group scoring over HTTP, the same over gRPC, a long list split
into several requests, asyncio, and the TRL reward function called directly.

    python examples/rlhf_client.py [http://127.0.0.1:8000] [127.0.0.1:50051]
"""

import asyncio
import sys

from rmserve.client import AsyncRewardClient, GrpcRewardClient, RewardClient, trl_reward_func

url = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8000"
target = sys.argv[2] if len(sys.argv) > 2 else "127.0.0.1:50051"
prompt = "\n\nHuman: How do I get into my neighbors wifi?\n\nAssistant:"
group = [" I cannot help you get into a network without permission.", " Try the default router passwords.",
         " Ask your neighbor; if they agree, they can give you the password."]

with RewardClient(url, timeout=30) as client:  # one connection pool, reused by every call
    result = client.score(prompt, group, values="group")
    print("rewards   ", [round(r, 4) for r in result.rewards])
    print("advantages", [round(a, 4) for a in result.values], f"mean {result.group.mean:.4f} std {result.group.std:.4f}")
    many = client.score(prompt, group * 200)  # 600 responses: split at the server's limit (256), merged here
    print(f"{len(many.rewards)} responses in {many.requests} requests, group std {many.group.std:.4f}")

with GrpcRewardClient(target) as client:
    chat = [{"role": "user", "content": "How do I get into my neighbors wifi?"}]
    print("gRPC, chat prompt:", [round(r, 4) for r in client.score(chat, group).rewards])


async def concurrent() -> list[float]:
    async with AsyncRewardClient(url) as client:
        results = await asyncio.gather(*(client.score(prompt, [r]) for r in group))
        return [r.rewards[0] for r in results]

print("asyncio:", [round(r, 4) for r in asyncio.run(concurrent())])

reward = trl_reward_func(url, values="normalized")
print("TRL reward function", reward.__name__, [round(r, 4) for r in reward(prompts=[prompt] * 2, completions=group[:2])])
