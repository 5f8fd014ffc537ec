"""Loading a bundle runs one batch of the costliest shape the batcher can form, before any traffic."""

import pytest

from rmserve.service.core.engine import OnnxRewardModel
from rmserve.service.core.metrics import Metrics
from rmserve.service.core.scoring import Scorer
from rmserve.service.settings import Settings


@pytest.mark.parametrize("tokens, rows, expected", [(4096, 32, (32, 24)), (100, 32, (4, 24)), (10, 32, (1, 10))])
def test_load_runs_the_largest_batch_shape(tiny_bundle, monkeypatch, tokens, rows, expected):
    shapes = []
    original = OnnxRewardModel.__call__

    def recording(self, batch):
        shapes.append(batch.input_ids.shape)
        return original(self, batch)

    monkeypatch.setattr(OnnxRewardModel, "__call__", recording)
    settings = Settings(bundle=tiny_bundle, device="cpu", max_batch_tokens=tokens, max_batch_size=rows)
    scorer = Scorer.load(settings, Metrics())  # the tiny bundle's max_length is 24
    scorer.close()
    assert expected in shapes
    assert max(r * n for r, n in shapes) == expected[0] * expected[1]
