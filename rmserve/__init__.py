"""rmserve: train, export and serve reward models for RLHF.

One namespace, mapped from the repository's folders by pyproject.toml:

- `rmserve.client`   (service/client/)  the light client library that RLHF jobs import: HTTP and gRPC,
                                         retries, deadlines, splitting. Imports nothing from the server.
- `rmserve.service`  (service/)         the server: `core` (bundle, inputs, engine, batcher, scoring),
                                         `transports` (HTTP with its OpenRLHF adapter, gRPC) and `process`
                                         (shared state, reload, runtime). Never imports torch.
- `rmserve.training` (training/)        offline: data, losses, training loop, evaluation, ONNX export.
- `rmserve.proto`    (proto/)           the gRPC contract and its generated stubs.
- `rmserve.group_stats`                 GRPO group arithmetic, shared by the client and the server.
- `rmserve.cli`                         the `rmserve` command, the one module above service and training.

The base install is the client; the `serve` and `train` extras add the server and training.
"""

__version__ = "0.1.0"
