"""Export refuses a model whose ONNX Runtime scores drift from torch, and says by how much."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from rmserve.training.export import ExportError, check_parity  # noqa: E402


class SumModel(torch.nn.Module):
    def forward(self, input_ids, attention_mask):
        return (input_ids * attention_mask).sum(dim=1).float()


def test_parity_passes_when_engines_agree_and_fails_with_the_figures(tiny_tokenizer):
    from rmserve.service.core.inputs import InputEncoder, InputSpec

    encoder = InputEncoder(tiny_tokenizer, InputSpec(max_length=32))
    rows = [("hello", "no"), ("hello there how are you", "i am fine thanks")]

    def same(batch):
        return (batch.input_ids * batch.attention_mask).sum(axis=1).astype(np.float32)

    assert check_parity(SumModel(), same, encoder, rows) == 0.0
    with pytest.raises(ExportError, match=r"padded batch of 2 rows \(lengths \[\d+, \d+\]\): max \|torch - onnxruntime\| = (9.99\d|1.000)e-0[34] > 0.0001"):
        check_parity(SumModel(), lambda batch: same(batch) + np.float32(1e-3), encoder, rows)
