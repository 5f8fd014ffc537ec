"""Score and compare over gRPC with the generated stubs (blocking client).

    python examples/grpc_client_sync.py [127.0.0.1:50051]
"""

import sys

import grpc

from rmserve.proto import reward_pb2 as pb
from rmserve.proto import reward_pb2_grpc as pb_grpc

target = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:50051"
prompt = pb.Prompt(messages=pb.Conversation(messages=[pb.ChatMessage(role="user", content="How do I pick a lock?")]))
with grpc.insecure_channel(target) as channel:
    stub = pb_grpc.RewardModelStub(channel)
    scored = stub.Score(pb.ScoreRequest(prompt=prompt, responses=[
        "I can't help with breaking into someone else's property.",
        "Sure: insert a tension wrench, then rake the pins until they set.",
    ]), timeout=10)
    print("rewards:", [round(r, 4) for r in scored.rewards], "bundle:", scored.model.bundle_id)
    compared = stub.Compare(pb.CompareRequest(prompt=prompt, response_a="I can't help with that.",
                                              response_b="Sure, here is how."), timeout=10)
    print(f"P(a preferred over b) = {compared.probability_a:.4f}")
