"""The scoring core: where requests become rewards, whatever the transport.

bundle (the contract with training), inputs (rendering, tokenization, truncation, padding), engine (the
ONNX Runtime session), batcher (the shared queue and inference thread), scoring (`Scorer`: validate,
tokenize, submit, normalize), groups (what an answer reports), limits (text limits, deadlines), metrics
(Prometheus) and errors (`ScoringError` and its kinds). Knows nothing of HTTP or gRPC.
"""
