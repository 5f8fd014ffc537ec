"""rmserve's server (`rmserve.service`): loads a bundle and serves it over HTTP and gRPC. Never imports torch
or transformers. Three units; the core imports neither of the others, and only the command line imports
the runtime that wires them together:

- `core/`        the scoring core: the bundle, input formatting, the ONNX Runtime engine, the batcher,
                 scoring, limits, metrics and the one error enum. Knows nothing of HTTP or gRPC.
- `transports/`  thin adapters over the core: HTTP (with OpenRLHF's /get_reward and the admin endpoint)
                 and gRPC, each mapping core errors to its statuses by one table; the request schemas,
                 API keys and TLS they share.
- `process/`     the serving process: the state every transport shares (imported by the transports),
                 bundle reloads, and the runtime that runs both servers on one event loop.

`settings.py` is the one validated configuration, read by all three. The client library
(`rmserve.client`, in client/) is apart and imports nothing from here.
"""
