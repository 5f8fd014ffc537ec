"""rmserve's offline half: preference data, losses, the training loop, evaluation and ONNX export.

Imports torch and transformers; nothing in `service/` imports this package.
"""
