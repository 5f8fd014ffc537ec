"""The gRPC transport (grpc.aio): the RewardModel servicer, health and reflection (app.py), and the
checks made before a servicer sees a call (guard.py)."""
