"""Tiny randomly initialised decoder reward models (Llama, Qwen2) saved as model directories, for tests.

Each has a word-level tokenizer with no pad token and no pair template, and a config without
pad_token_id, as real decoder checkpoints come: rmserve must choose the pad id itself (EOS here), so the
pad id equals EOS, which ends every row.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import WORDS

ARCHITECTURES = ("llama", "qwen2")
BOS, EOS = "<s>", "</s>"


def build_decoder_tokenizer(architecture: str):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    vocab = {"<unk>": 0, BOS: 1, EOS: 2}
    for word in WORDS + [":", "?", ".", ",", "'", "!"]:
        vocab.setdefault(word, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if architecture == "llama":  # Llama tokenizers put BOS first; Qwen2's add nothing
        tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", special_tokens=[(BOS, 1)])
    tok.add_special_tokens([BOS, EOS])
    return tok


def make_tiny_decoder(directory: Path, architecture: str, seed: int = 0) -> Path:
    """A tiny `...ForSequenceClassification` decoder with its tokenizer.json, saved to `directory`."""
    import torch
    import transformers

    tokenizer = build_decoder_tokenizer(architecture)
    common = dict(vocab_size=tokenizer.get_vocab_size() + 3, hidden_size=32, intermediate_size=64,
                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                  num_labels=1, eos_token_id=2)
    if architecture == "llama":
        config = transformers.LlamaConfig(bos_token_id=1, **common)
        model_class = transformers.LlamaForSequenceClassification
    elif architecture == "qwen2":
        config = transformers.Qwen2Config(**common)
        model_class = transformers.Qwen2ForSequenceClassification
    else:
        raise ValueError(f"unknown architecture {architecture!r}")
    assert config.pad_token_id is None
    torch.manual_seed(seed)
    model = model_class(config)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(directory))
    tokenizer.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 128, "eos_token": EOS}))
    return directory


def write_pairs(path: Path, n: int = 12) -> Path:
    """A trivially learnable set: a long helpful answer beats a one-word refusal."""
    rows = [{"prompt": f"hello there , how are you {WORDS[i % 5]} ?",
             "chosen": "sure , i am fine thanks . how are you doing today my friend ?", "rejected": "no ."}
            for i in range(n)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


# (prompt, response) rows of very different lengths, so a batch of them is mostly padding for some rows.
MIXED_ROWS = [
    ("hi", "no"),
    ("hello there how are you doing today my friend ? " * 3, "i am fine thanks , one two three four five six seven"),
    ([{"role": "user", "content": "can you help with a lock ?"}], "sure"),
    ("one", "two three four five six seven eight nine ten " * 2),
    ("how are you", "fine"),
]
