"""The trainable process reward model: a Hugging Face token-classification model with one output per position.

`StepRewardModel.forward(input_ids, attention_mask)` returns one float32 score per position, [batch,
sequence]: exactly what a PRM bundle's model.onnx computes (its `token_scores` output); the score of a step
is the one at the separator that ends it (service/core/step_scores.py reads it there, training takes its
loss there). Encoders (BERT, MiniLM: `...ForTokenClassification`, a linear head on every position) and
decoders (Llama/Qwen/Mistral-style `...ForTokenClassification`, the `score` head on every position of the
causal backbone) both work; a decoder gets position ids counted from the attention mask, so that left
padding gives every row the scores it has alone.

The step separator is one token. When the tokenizer has no token for the separator text, it is added as a
special token (matched in raw text, never split or normalized) and the model's embedding grows by one row
(initialized by transformers from the other rows' mean and covariance); the tokenizer is saved with the
checkpoint and the bundle, and the input spec records the separator and its id.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from tokenizers import AddedToken, Tokenizer
from torch import nn

from rmserve.service.core.inputs import InputEncoder, InputSpec
from rmserve.training.model import (
    CHECKPOINT_META,
    HF_TOKENIZER_FILES,
    TOKENIZER_FILE,
    CheckpointMeta,
    decoder_parts,
    first_layers,
    input_spec_for,
)

PRM_KIND = "prm"
DEFAULT_SEPARATOR = "<step>"


class StepRewardModel(nn.Module):
    """forward(input_ids, attention_mask) -> score [batch, sequence], float32: what a PRM's model.onnx computes."""

    def __init__(self, hf_model: nn.Module):
        super().__init__()
        self.hf_model = hf_model

    @property
    def is_decoder(self) -> bool:
        return decoder_parts(self.hf_model) is not None

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        extra = {}
        if self.is_decoder:  # positions count real tokens only, so a left-padded row sees what it has alone
            extra["position_ids"] = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        logits = self.hf_model(input_ids=input_ids, attention_mask=attention_mask, **extra).logits
        return logits[..., 0].float()


def load_token_model(model_dir: str | Path, attention: str = "eager", causal: bool = False,
                     layers: int = 0) -> nn.Module:
    """A token-classification model with one output per position, in fp32 (see model.load_hf_model).
    `causal`: an encoder attends only to earlier positions (its config's is_decoder); `layers`: keep only
    the first N layers. Both are written into the model's config, so a saved checkpoint loads the same."""
    from transformers import AutoModelForTokenClassification
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the "newly initialized head" report is expected for a base model
    overrides: dict[str, Any] = first_layers(model_dir, layers)
    if causal:
        overrides["is_decoder"] = True
    return AutoModelForTokenClassification.from_pretrained(
        str(model_dir), num_labels=1, attn_implementation=attention, dtype=torch.float32, trust_remote_code=False,
        **overrides)


def add_separator(tokenizer: Tokenizer, hf_model: nn.Module, separator: str) -> int:
    """The separator's token id, adding it to the tokenizer (and a row to the model's embedding) when the
    tokenizer does not already read the text as one token."""
    if not separator or separator != separator.strip():
        raise ValueError(f"step separator {separator!r}: give a non-empty text without surrounding whitespace")
    tokenizer.no_padding()
    tokenizer.no_truncation()
    ids = tokenizer.encode(separator, add_special_tokens=False).ids
    if len(ids) != 1:
        tokenizer.add_special_tokens([AddedToken(separator, special=True, normalized=False)])
        ids = tokenizer.encode(separator, add_special_tokens=False).ids
    separator_id = ids[0]
    embeddings = hf_model.get_input_embeddings()
    if separator_id >= embeddings.num_embeddings:
        hf_model.resize_token_embeddings(separator_id + 1)
    return separator_id


def step_spec_for(hf_model: nn.Module, tokenizer: Tokenizer, max_length: int, separator: str,
                  separator_id: int, model_dir: str | Path | None = None) -> InputSpec:
    """The input spec of an outcome model on this base (model.input_spec_for), with the step separator."""
    spec = input_spec_for(hf_model, tokenizer, max_length, model_dir)
    spec = spec.model_copy(update={"step_separator": separator, "step_separator_id": separator_id})
    return InputSpec.model_validate(spec.model_dump())  # validated again, with the separator


def save_step_checkpoint(directory: Path, model: StepRewardModel, tokenizer: Tokenizer, base: Path,
                         meta: CheckpointMeta) -> None:
    """The model directory (weights, config, the tokenizer with its separator, the base model's other
    tokenizer files) and the rmserve metadata export reads."""
    directory.mkdir(parents=True, exist_ok=True)
    model.hf_model.save_pretrained(str(directory))
    tokenizer.save(str(directory / TOKENIZER_FILE))
    for name in HF_TOKENIZER_FILES:
        source = base / name
        if source.is_file():
            (directory / name).write_bytes(source.read_bytes())
    (directory / CHECKPOINT_META).write_text(json.dumps(meta.__dict__, indent=2) + "\n")


def checkpoint_kind(directory: str | Path) -> str:
    """'prm' for a process reward model checkpoint, 'reward' for an outcome one."""
    meta_path = Path(directory) / CHECKPOINT_META
    if not meta_path.is_file():
        raise FileNotFoundError(f"{directory} is not an rmserve checkpoint: {CHECKPOINT_META} is missing")
    data: dict[str, Any] = json.loads(meta_path.read_text())
    return str(data.get("training", {}).get("task", "reward"))


def load_step_checkpoint(directory: str | Path) -> tuple[StepRewardModel, InputEncoder, CheckpointMeta]:
    directory = Path(directory)
    meta = CheckpointMeta(**json.loads((directory / CHECKPOINT_META).read_text()))
    model = StepRewardModel(load_token_model(directory)).eval()
    encoder = InputEncoder(Tokenizer.from_file(str(directory / TOKENIZER_FILE)), meta.input_spec)
    return model, encoder, meta
