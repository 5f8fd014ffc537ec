"""The TRL adapter inside a real `trl.GRPOTrainer` (tiny random policy, a few CPU steps) against a real
rmserve server: conversational prompts and completions reach the server as chat messages, the rewards
TRL logs are the server's, and examples/grpo_trl.py runs."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from rmserve.client import RewardClient, TrlRewardFunction
from tests.conftest import WORDS, make_tiny_bundle
from tests.integration.server import running_server

trl = pytest.importorskip("trl")
torch = pytest.importorskip("torch")
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    bundle = make_tiny_bundle(tmp_path_factory.mktemp("trl") / "bundle")
    with running_server(bundle) as running:
        yield running


def example_module():
    spec = importlib.util.spec_from_file_location("grpo_trl_example", ROOT / "examples" / "grpo_trl.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Recording(TrlRewardFunction):
    """The adapter, remembering what TRL gave it and what it answered."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen = []

    def __call__(self, prompts, completions, **kwargs):
        rewards = super().__call__(prompts, completions, **kwargs)
        self.seen.append((prompts, completions, rewards))
        return rewards


def chat_policy():
    """A randomly initialised 2-layer Llama over the tiny bundle's words, with a chat template."""
    from datasets import Dataset
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["<pad>", "<unk>", "<s>", "</s>", *WORDS, ":", "?", ".", ","])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", unk_token="<unk>", bos_token="<s>",
                                        eos_token="</s>", padding_side="left")
    tokenizer.chat_template = ("{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} {% endfor %}"
                               "{% if add_generation_prompt %}assistant :{% endif %}")
    torch.manual_seed(1)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                                         max_position_embeddings=128, pad_token_id=0, bos_token_id=2, eos_token_id=3))
    questions = ["how are you today ?", "can you help me pick a lock ?"]
    data = Dataset.from_dict({"prompt": [[{"role": "user", "content": q}] for q in questions]})
    return model, tokenizer, data


def test_grpo_trainer_calls_the_adapter_with_conversational_inputs(server, tmp_path):
    model, tokenizer, data = chat_policy()
    reward = Recording(server.url, name="rmserve_tiny", values="normalized", empty_reward=-5.0)
    args = trl.GRPOConfig(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4, num_generations=4,
                          max_completion_length=8, learning_rate=1e-2, logging_steps=1, report_to="none", use_cpu=True,
                          bf16=False, save_strategy="no", seed=0)
    trainer = trl.GRPOTrainer(model=model, reward_funcs=[reward], args=args, train_dataset=data,
                              processing_class=tokenizer)
    trainer.train()

    assert len(reward.seen) == 2  # one call per step, each with the step's 4 completions
    logged = [e["rewards/rmserve_tiny/mean"] for e in trainer.state.log_history if "rewards/rmserve_tiny/mean" in e]
    assert len(logged) == 2
    scored = 0
    with RewardClient(server.url) as client:
        for (prompts, completions, rewards), mean in zip(reward.seen, logged):
            assert len(prompts) == len(completions) == len(rewards) == 4
            assert all(isinstance(p, list) and p[0]["role"] == "user" for p in prompts)  # conversational
            assert all(isinstance(c, list) and c[0]["role"] == "assistant" for c in completions)
            assert mean == pytest.approx(float(np.mean(rewards)), abs=1e-5)
            for prompt, completion, value in zip(prompts, completions, rewards):
                text = completion[0]["content"]
                if not text.strip():
                    assert value == -5.0
                    continue
                expected = client.score(prompt, [text], values="normalized").values[0]
                assert value == pytest.approx(expected, abs=1e-6)
                scored += 1
    assert scored > 0


def test_the_grpo_example_runs(server, capsys):
    example_module().main(["--url", server.url, "--steps", "2"])
    out = capsys.readouterr().out
    assert "step 1: reward mean" in out and "step 2: reward mean" in out
    assert f"2 reward calls to {server.url}, bundle tiny" in out
