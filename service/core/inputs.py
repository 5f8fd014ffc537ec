"""Input formatting: how a prompt and a response become the token rows a reward model reads.

This module is the single implementation of rendering, tokenization, truncation and padding. Training
imports it to build its batches and the service imports it to build its batches; every parameter it
uses is an `InputSpec`, which the bundle manifest carries, so the two halves cannot drift apart.

Rendering: a prompt is plain text or a list of chat messages; messages are rendered with the spec's
role prefixes and followed by `response_prefix` (the HH-RLHF convention: "\\n\\nHuman: ..." turns and a
trailing "\\n\\nAssistant:"). Prompt and response are tokenized separately, then joined either by the
tokenizer's own pair template (`join="pair"`, e.g. `[CLS] prompt [SEP] response [SEP]` for BERT-style
encoders) or as one sequence (`join="concat"`, for decoders that score the last token). A spec with an
`eos_id` ends every row with that token, after any template tokens, so a decoder reads its score at the
same token whatever the response; truncation keeps room for it.

Truncation keeps what the score depends on: the end of the response. When prompt + response exceed
`max_length`, the prompt is cut from the left first; the response is cut (also from the left) only when
it alone does not fit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer
from tokenizers import Encoding, Tokenizer


class ChatMessage(BaseModel):
    """One turn of a conversation prompt."""

    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "user", "assistant"] = Field(description="Who speaks this turn.")
    content: str = Field(description="The text of the turn.")


Prompt = str | Sequence[ChatMessage]


class InputSpec(BaseModel):
    """Everything needed to turn (prompt, response) into token ids; stored in the bundle manifest."""

    model_config = ConfigDict(extra="forbid")
    max_length: int = Field(256, ge=8, description="Tokens per row, special tokens included.")
    join: Literal["pair", "concat"] = Field(
        "pair", description="pair: the tokenizer's pair template; concat: prompt tokens then response tokens."
    )
    role_prefixes: dict[str, str] = Field(
        default_factory=lambda: {"system": "", "user": "\n\nHuman: ", "assistant": "\n\nAssistant: "},
        description="Text put before each chat message's content, by role.",
    )
    response_prefix: str = Field(
        "\n\nAssistant:", description="Text appended to a rendered chat prompt, introducing the response."
    )
    truncation: Literal["prompt_left_then_response_left"] = Field(
        "prompt_left_then_response_left",
        description="Cut the prompt from the left first; cut the response from the left only if it alone is too long.",
    )
    padding_side: Literal["right", "left"] = "right"
    pad_id: int = Field(0, ge=0, description="Token id used to pad rows of a batch.")
    eos_id: int | None = Field(
        None, ge=0, description="Token id appended to every row, after the response and any template tokens "
        "(decoders: the token the score is read at). None: nothing appended.",
    )

    @model_serializer(mode="wrap")
    def _omit_unset_eos(self, handler: SerializerFunctionWrapHandler) -> dict:
        # Specs without eos_id (every encoder bundle) serialize exactly as before the field existed.
        data = handler(self)
        if data.get("eos_id", 0) is None:
            del data["eos_id"]
        return data


def render_prompt(prompt: Prompt, spec: InputSpec) -> str:
    """Prompt text as the model sees it: plain text unchanged, chat messages through the role prefixes."""
    if isinstance(prompt, str):
        return prompt
    parts = []
    for message in prompt:
        if isinstance(message, dict):
            message = ChatMessage.model_validate(message)
        parts.append(spec.role_prefixes.get(message.role, "") + message.content)
    return "".join(parts) + spec.response_prefix


@dataclass(frozen=True)
class EncodedInput:
    """Token ids of one (prompt, response) row, before padding, and what truncation removed."""

    ids: list[int]
    prompt_tokens_cut: int
    response_tokens_cut: int

    @property
    def truncated(self) -> bool:
        return self.prompt_tokens_cut > 0 or self.response_tokens_cut > 0


@dataclass(frozen=True)
class Batch:
    """Padded rows ready for the model: int64 arrays of shape [rows, longest row]."""

    input_ids: np.ndarray
    attention_mask: np.ndarray

    @property
    def padding_ratio(self) -> float:
        return float(1.0 - self.attention_mask.mean()) if self.attention_mask.size else 0.0


def special_template(tokenizer: Tokenizer, pair: bool) -> tuple[list[int], list[int], list[int]] | None:
    """The special tokens the tokenizer's post-processor puts before, between (pair) and after the
    sequences, when they are the same whatever the text (BERT's [CLS] a [SEP] b [SEP], RoBERTa's,
    templates, none); None when they are not, or when the post-processor changes the text's own ids."""
    found = set()
    for first, second in (("a", "b c"), ("hello world", "x")):
        a, b = tokenizer.encode_batch([first, second], add_special_tokens=False)
        if pair:
            joined = tokenizer.post_process(a, b, add_special_tokens=True)
        else:
            joined = tokenizer.post_process(Encoding.merge([a, b], growing_offsets=True), None, add_special_tokens=True)
        ids = joined.ids
        content = [i for i, special in enumerate(joined.special_tokens_mask) if not special]
        if [ids[i] for i in content] != a.ids + b.ids or content != list(range(content[0], content[0] + len(a))) + \
                list(range(content[len(a)], content[len(a)] + len(b))):
            return None
        end_a, start_b = content[len(a) - 1] + 1, content[len(a)]
        found.add((tuple(ids[: content[0]]), tuple(ids[end_a:start_b]), tuple(ids[content[-1] + 1 :])))
    if len(found) != 1:
        return None
    before, between, after = found.pop()
    return list(before), list(between), list(after)


class InputEncoder:
    """Renders, tokenizes, truncates and pads (prompt, response) rows for one tokenizer and spec."""

    def __init__(self, tokenizer: Tokenizer, spec: InputSpec):
        self.tokenizer = tokenizer
        self.spec = spec
        # Truncation and padding are ours; a tokenizer.json may carry its own settings.
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        is_pair = spec.join == "pair"
        self.special_tokens = tokenizer.num_special_tokens_to_add(is_pair=is_pair)
        self.budget = spec.max_length - self.special_tokens - (spec.eos_id is not None)
        if self.budget < 2:
            raise ValueError(f"max_length {spec.max_length} leaves no room beside {self.special_tokens} special tokens")
        self._template = special_template(tokenizer, is_pair)

    @classmethod
    def from_file(cls, tokenizer_path: str, spec: InputSpec) -> InputEncoder:
        return cls(Tokenizer.from_file(str(tokenizer_path)), spec)

    def encode(self, rows: Sequence[tuple[Prompt, str]]) -> list[EncodedInput]:
        """Token ids for each (prompt, response); uses the fast tokenizer's batch call."""
        if not rows:
            return []
        prompts = [render_prompt(prompt, self.spec) for prompt, _ in rows]
        responses = [response for _, response in rows]
        if self._template is None:  # a post-processor whose special tokens depend on the text
            encodings = self.tokenizer.encode_batch(prompts + responses, add_special_tokens=False)
            n = len(rows)
            return [self._join(encodings[i], encodings[n + i]) for i in range(n)]
        # Each distinct prompt is tokenized once per call, however many responses share it.
        distinct = list(dict.fromkeys(prompts))
        encodings = self.tokenizer.encode_batch(distinct + responses, add_special_tokens=False)
        prompt_ids = {text: encodings[i].ids for i, text in enumerate(distinct)}
        n = len(distinct)
        return [self._splice(prompt_ids[p], encodings[n + i].ids) for i, p in enumerate(prompts)]

    def _splice(self, prompt: list[int], response: list[int]) -> EncodedInput:
        """`_join` on token ids: the same truncation, and the special tokens the post-processor adds, found
        once (`_template`). Slicing ids costs microseconds, where truncating a long prompt's Encoding
        keeps every cut piece in `overflowing`, carried by each copy and post_process (a 100,000-character
        prompt cost ~30 ms per row)."""
        assert self._template is not None
        response_cut = max(0, len(response) - self.budget)
        if response_cut:
            response = response[response_cut:]
        prompt_cut = max(0, len(prompt) - (self.budget - len(response)))
        if prompt_cut:
            prompt = prompt[prompt_cut:]
        before, between, after = self._template
        ids = [*before, *prompt, *between, *response, *after]
        if self.spec.eos_id is not None:
            ids.append(self.spec.eos_id)
        return EncodedInput(ids=ids, prompt_tokens_cut=prompt_cut, response_tokens_cut=response_cut)

    def _join(self, prompt: Encoding, response: Encoding) -> EncodedInput:
        response_cut = max(0, len(response) - self.budget)
        if response_cut:
            response.truncate(self.budget, direction="left")
        prompt_room = self.budget - len(response)
        prompt_cut = max(0, len(prompt) - prompt_room)
        if prompt_cut:
            if prompt_room == 0:
                prompt = Encoding.merge([])
            else:
                prompt.truncate(prompt_room, direction="left")
        if self.spec.join == "pair":
            joined = self.tokenizer.post_process(prompt, response, add_special_tokens=True)
        else:
            merged = Encoding.merge([prompt, response], growing_offsets=True)
            joined = self.tokenizer.post_process(merged, None, add_special_tokens=True)
        ids = joined.ids if self.spec.eos_id is None else [*joined.ids, self.spec.eos_id]
        assert len(ids) <= self.spec.max_length, f"row of {len(ids)} tokens exceeds max_length {self.spec.max_length}"
        return EncodedInput(ids=ids, prompt_tokens_cut=prompt_cut, response_tokens_cut=response_cut)

    def pad(self, rows: Sequence[EncodedInput | Sequence[int]]) -> Batch:
        """Pad rows to the longest one, on the spec's side, with the spec's pad id."""
        id_rows = [row.ids if isinstance(row, EncodedInput) else list(row) for row in rows]
        width = max((len(r) for r in id_rows), default=0)
        input_ids = np.full((len(id_rows), width), self.spec.pad_id, dtype=np.int64)
        attention_mask = np.zeros((len(id_rows), width), dtype=np.int64)
        for i, ids in enumerate(id_rows):
            if self.spec.padding_side == "right":
                input_ids[i, : len(ids)] = ids
                attention_mask[i, : len(ids)] = 1
            else:
                input_ids[i, width - len(ids) :] = ids
                attention_mask[i, width - len(ids) :] = 1
        return Batch(input_ids=input_ids, attention_mask=attention_mask)

    def encode_and_pad(self, rows: Sequence[tuple[Prompt, str]]) -> tuple[Batch, list[EncodedInput]]:
        encoded = self.encode(rows)
        return self.pad(encoded), encoded
