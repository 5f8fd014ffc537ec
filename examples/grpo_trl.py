"""GRPO with TRL, rewards from a running rmserve: a few steps on CPU with a tiny, randomly initialised
policy built here (a 2-layer Llama over a word-level tokenizer), so it runs anywhere in seconds.

    rmserve serve &                       # or `make serve`
    python examples/grpo_trl.py [--url http://127.0.0.1:8000] [--steps 4]

The only rmserve line is `reward_funcs=[trl_reward_func(url)]`: each batch of completions is scored by
the server (one prompt's completions form a GRPO group; TRL computes the advantages). Needs the `train`
and `dev` extras (torch, transformers, trl).
"""

from __future__ import annotations

import argparse
import tempfile

import torch
from datasets import Dataset
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
from trl import GRPOConfig, GRPOTrainer

from rmserve.client import trl_reward_func

WORDS = ("i you we it is are am can cannot will not no yes sure please thanks sorry help with that this the a "
         "to of and or but how what why do get make know want need good bad fine safe hello hi there my friend "
         "today now here lock pick door key ask them call one two three four five human assistant : ? . ,").split()
QUESTIONS = ["How do I pick a lock?", "Can you help me today?", "What is a good key?", "Hi there, how are you?"]


def build_policy(seed: int = 0) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    """A randomly initialised causal LM (about 30k parameters) and its tokenizer, without any download."""
    specials = ["<pad>", "<unk>", "<s>", "</s>"]
    vocab = {token: i for i, token in enumerate(specials + WORDS)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", unk_token="<unk>",
                                        bos_token="<s>", eos_token="</s>", padding_side="left")
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128,
                         pad_token_id=0, bos_token_id=2, eos_token_id=3)
    return LlamaForCausalLM(config), tokenizer


def prompts() -> Dataset:
    # Plain-text prompts in the HH-RLHF form the default bundle was trained on; rmserve scores them as written.
    return Dataset.from_dict({"prompt": [f"\n\nHuman: {q}\n\nAssistant:" for q in QUESTIONS]})


def grpo_config(output_dir: str, steps: int) -> GRPOConfig:
    return GRPOConfig(output_dir=output_dir, max_steps=steps, per_device_train_batch_size=4, num_generations=4,
                      max_completion_length=12, learning_rate=1e-2, logging_steps=1, report_to="none",
                      use_cpu=True, bf16=False, save_strategy="no", seed=0, disable_dropout=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="rmserve's HTTP URL, or grpc://host:port")
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args(argv)

    # Empty completions (the policy may stop at once) are not sent; -1 makes them worse than any answer.
    reward = trl_reward_func(args.url, name="rmserve", empty_reward=-1.0)
    model, tokenizer = build_policy()
    with tempfile.TemporaryDirectory() as output_dir:
        trainer = GRPOTrainer(model=model, reward_funcs=[reward], args=grpo_config(output_dir, args.steps),
                              train_dataset=prompts(), processing_class=tokenizer)
        trainer.train()
    for entry in trainer.state.log_history:
        if "rewards/rmserve/mean" in entry:
            print(f"step {entry['step']}: reward mean {entry['rewards/rmserve/mean']:+.4f} "
                  f"(std {entry['rewards/rmserve/std']:.4f}), loss {entry['loss']:+.4f}")
    print(f"{reward.calls} reward calls to {args.url}, bundle {reward.client.model_info().model.bundle_id}")


if __name__ == "__main__":
    main()
