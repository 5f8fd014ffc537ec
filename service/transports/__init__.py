"""The transports: thin adapters over the scoring core, HTTP (http/) and gRPC (grpc/). Each maps the core's
error kinds to its own statuses by one table. What they share: the request and response schemas (both
validate requests with the same pydantic models), API keys (auth.py) and TLS (tls.py)."""
