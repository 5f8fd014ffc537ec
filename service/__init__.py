"""rmserve's online half: bundle loading, input formatting, the scoring core, the ONNX Runtime engine
and the HTTP transport. Never imports torch or transformers."""

__version__ = "0.1.0"
