"""A process reward model trained with torch (`rmserve train --task prm` on a tiny BERT), exported and served
by a real server: the step_rewards that /score and gRPC Score answer for a mixed-length batch equal the
sigmoid of the torch model's scores at the separators of the same padded batch within 1e-4, and the
aggregate is taken over those step rewards."""

from __future__ import annotations

import grpc
import httpx
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from rmserve.proto import reward_pb2 as pb  # noqa: E402
from rmserve.proto import reward_pb2_grpc as pb_grpc  # noqa: E402
from rmserve.service.core.inputs import join_steps  # noqa: E402
from rmserve.service.core.step_scores import activate, read_step_scores  # noqa: E402
from rmserve.training.step_model import load_step_checkpoint  # noqa: E402
from tests.integration.server import running_server  # noqa: E402
from tests.prm_bundles import SEPARATOR, train_tiny_prm  # noqa: E402

PROMPT = "hello there 3"
CHAINS = [["one two"], ["three four", "no five six seven", "eight nine", "ten"], ["ten", "one two three"],
          ["five six seven", "eight nine", "no ten"]]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    _, checkpoint, bundle = train_tiny_prm(tmp_path_factory.mktemp("trained-prm"), epochs=2)
    return checkpoint, bundle


def torch_step_rewards(checkpoint, chains):
    """Sigmoid of the torch model's scores at the separators, the chains padded into one batch."""
    model, encoder, _ = load_step_checkpoint(checkpoint)
    batch = encoder.pad(encoder.encode([(PROMPT, join_steps(c, SEPARATOR)) for c in chains]))
    assert batch.attention_mask.min() == 0  # the batch is really padded
    with torch.no_grad():
        scores = model(torch.from_numpy(batch.input_ids), torch.from_numpy(batch.attention_mask)).numpy()
    return [activate(row) for row in read_step_scores(batch.input_ids, batch.attention_mask, scores, encoder.step_id)]


def test_served_step_rewards_equal_the_trained_models(trained):
    checkpoint, bundle = trained
    expected = torch_step_rewards(checkpoint, CHAINS)
    assert max(float(np.ptp(r)) for r in expected if len(r) > 1) > 1e-3  # steps are told apart, not all one value
    with running_server(bundle) as server:
        answer = httpx.post(server.url + "/score", json={"prompt": PROMPT, "response_steps": CHAINS,
                                                         "aggregate": "mean"}).json()
        with grpc.insecure_channel(server.grpc_target) as channel:
            reply = pb_grpc.RewardModelStub(channel).Score(pb.ScoreRequest(
                prompt=pb.Prompt(text=PROMPT), response_steps=[pb.Steps(steps=c) for c in CHAINS]))
    assert answer["steps_cut"] == [0] * len(CHAINS)
    for served, over_grpc, want in zip(answer["step_rewards"], reply.step_rewards, expected):
        np.testing.assert_allclose(served, want, rtol=0, atol=1e-4)
        np.testing.assert_allclose(list(over_grpc.rewards), want, rtol=0, atol=1e-4)
    np.testing.assert_allclose(answer["rewards"], [np.mean(r) for r in answer["step_rewards"]], rtol=1e-12)
    assert reply.aggregate == "min"  # the bundle's default when the request names none
    np.testing.assert_allclose(list(reply.rewards), [np.min(r) for r in expected], rtol=0, atol=1e-4)
