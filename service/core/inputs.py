"""Input formatting: how a prompt and a response become the token rows a reward model reads.

This module is the single implementation of rendering, tokenization, truncation and padding. Training
imports it to build its batches and the service imports it to build its batches; every parameter it
uses is an `InputSpec`, which the bundle manifest carries, so the two halves cannot drift apart.

Rendering, two ways:
- A spec with a `chat_template` (service/core/chat_template.py) renders the conversation with the model's
  own Jinja template: the prompt's messages (a plain-text prompt is one user message) followed by the
  response as the final assistant turn. The rendering is tokenized as transformers' `apply_chat_template`
  tokenizes it (template tokens only, unless the template's `add_special_tokens` says otherwise; never a
  second BOS), and the score is read at its last token, whatever the template ends with: nothing is
  appended.
- Without a template, messages are rendered with the spec's role prefixes and followed by
  `response_prefix` (the HH-RLHF convention: "\\n\\nHuman: ..." turns and a trailing "\\n\\nAssistant:").
  Prompt and response are tokenized separately, then joined either by the tokenizer's own pair template
  (`join="pair"`, e.g. `[CLS] prompt [SEP] response [SEP]` for BERT-style encoders) or as one sequence
  (`join="concat"`, for decoders that score the last token); or tokenized as one text, prompt text then
  response text (`join="text"`, a decoder imported without a chat template: its response's first word is
  tokenized as it follows the prompt, which a SentencePiece tokenizer tokenizes differently from the same
  word at the start of a text), and split where the response's characters begin. A spec with an `eos_id`
  ends every row with that token, after any template tokens, so a decoder reads its score at the same
  token whatever the response; truncation keeps room for it.

Already formatted text: a row whose prompt is `PREFORMATTED` carries, as its response, a whole formatted
conversation (what vLLM's /classify and /pooling receive as `input`). It is tokenized as is, with the
bundle's special-token rules (a template spec's `add_special_tokens`; otherwise the tokenizer's
single-sequence template and `eos_id`), truncated from the left like a prompt (a leading BOS is kept), and
never rendered again.

Truncation keeps what the score depends on: the end of the response. When prompt + response exceed
`max_length`, prompt tokens are cut from the left first (with a template: after rendering, keeping a
leading BOS); the response is cut (also from the left) only when it alone does not fit.

Steps (process reward models): a spec with a `step_separator` scores a response at every step's end. A
response given as steps is the steps joined, each followed by the separator (`join_steps`); a response
given whole is split on the separator (`split_steps`; a trailing separator is optional). The separator is
one token of the tokenizer (`step_separator_id`, added to it by training when needed), found in the row by
its id. Truncation is the same, so it keeps the last steps: `steps_cut` counts the separators (the steps'
scores) that were cut away with the start of the response. No prompt may contain the separator.

A request's shared prompt is rendered and tokenized once per `encode` call, however many responses share
it (except with `join="text"`, where every row is tokenized whole: exact, only slower). With a template, each row's full rendering must start with the prompt's rendering (with
`add_generation_prompt`); the row's tokens are then the prompt's tokens up to its last special token
(a boundary no pre-tokenizer or normalizer works across) followed by the tokens of the rest of the
row's text from that special token on. A row whose rendering does not extend the prompt's, or whose
prompt rendering has no special token (Mistral v0.1's [INST] is plain text), is tokenized whole: exact,
only slower. Either way the ids are those of the whole rendering (tests/unit/test_template_parity.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    model_serializer,
    model_validator,
)
from tokenizers import Tokenizer

from rmserve.service.core.chat_template import ChatTemplate, TemplateError
from rmserve.service.core.template_rows import TemplateRows, prompt_key, starting_before


class ChatMessage(BaseModel):
    """One turn of a conversation prompt."""

    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "user", "assistant"] = Field(description="Who speaks this turn.")
    content: str = Field(description="The text of the turn.")


Prompt = str | Sequence[ChatMessage]


class Preformatted(str):
    """The type of `PREFORMATTED`: an empty string (so limits and schemas treat it as an empty prompt)
    that marks its row's response as a whole conversation, already formatted."""

    __slots__ = ()


PREFORMATTED = Preformatted()


class RowError(ValueError):
    """A row that cannot be formatted (its conversation was refused by the chat template); `row` is its index."""

    def __init__(self, message: str, row: int):
        super().__init__(message)
        self.row = row


class InputSpec(BaseModel):
    """Everything needed to turn (prompt, response) into token ids; stored in the bundle manifest."""

    model_config = ConfigDict(extra="forbid")
    max_length: int = Field(256, ge=8, description="Tokens per row, special tokens included.")
    join: Literal["pair", "concat", "text"] = Field(
        "pair", description="pair: the tokenizer's pair template; concat: prompt tokens then response tokens; "
        "text: the tokens of prompt text + response text, tokenized as one.",
    )
    role_prefixes: dict[str, str] = Field(
        default_factory=lambda: {"system": "", "user": "\n\nHuman: ", "assistant": "\n\nAssistant: "},
        description="Text put before each chat message's content, by role (without a chat template).",
    )
    response_prefix: str = Field(
        "\n\nAssistant:", description="Text appended to a rendered chat prompt, introducing the response "
        "(without a chat template).",
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
    chat_template: ChatTemplate | None = Field(
        None, description="The model's own chat template; when set, it renders every conversation.",
    )
    step_separator: str | None = Field(
        None, min_length=1, description="Process reward models: the text that ends every step of a response, "
        "one token of the tokenizer (step_separator_id), where each step is scored. None: one score per row.",
    )
    step_separator_id: int | None = Field(None, ge=0, description="The token id of step_separator.")

    @model_validator(mode="after")
    def _template_rows_are_one_sequence(self) -> InputSpec:
        if self.chat_template is not None and (self.join != "concat" or self.eos_id is not None):
            raise ValueError("a chat template writes the whole row: it needs join 'concat' and no eos_id")
        if (self.step_separator is None) != (self.step_separator_id is None):
            raise ValueError("step_separator and step_separator_id go together: set both or neither")
        return self

    @model_serializer(mode="wrap")
    def _omit_unset(self, handler: SerializerFunctionWrapHandler) -> dict:
        # Specs without these fields (every bundle written before they existed) serialize exactly as before.
        data = handler(self)
        for name in ("eos_id", "chat_template", "step_separator", "step_separator_id"):
            if data.get(name, 0) is None:
                del data[name]
        return data


def render_prompt(prompt: Prompt, spec: InputSpec) -> str:
    """Prompt text without a chat template: plain text unchanged, chat messages through the role prefixes."""
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
    steps_cut: int = 0  # step separators cut away with the start of the response (a step spec only)

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


@dataclass(frozen=True)
class Frame:
    """The special tokens a tokenizer's post-processor puts around one sequence (head, tail) or two
    (head, middle, tail); found once by probing, so a row is joined by list operations."""

    head: list[int]
    middle: list[int]
    tail: list[int]

    @property
    def size(self) -> int:
        return len(self.head) + len(self.middle) + len(self.tail)


def probe_frame(tokenizer: Tokenizer, pair: bool) -> Frame:
    texts = ["a", "hello", "0", "x", "."] + [tokenizer.decode([i]) for i in range(min(50, tokenizer.get_vocab_size()))]
    encodings = (tokenizer.encode(t, add_special_tokens=False) for t in texts if t)
    probe = next((e for e in encodings if e.ids and not any(e.special_tokens_mask)), None)
    if probe is None:
        raise ValueError("cannot find out the tokenizer's special tokens: no probe text gives a plain token")
    out = tokenizer.post_process(probe, probe if pair else None, add_special_tokens=True)
    ids, n = out.ids, len(probe.ids)
    # The mask, not sequence_ids: tokenizers leaves the first sequence unmarked in some pair templates.
    content = [i for i, special in enumerate(out.special_tokens_mask) if not special]
    first, second = content[:n], content[n:]
    expected = [probe.ids, probe.ids] if pair else [probe.ids]
    parts = [part for part in (first, second) if part]
    if [[ids[i] for i in part] for part in parts] != expected or any(
            part != list(range(part[0], part[-1] + 1)) for part in parts):
        raise ValueError("the tokenizer's post-processor changes the sequence itself; rmserve cannot frame it")
    if not pair:
        return Frame(head=ids[: first[0]], middle=[], tail=ids[first[-1] + 1 :])
    return Frame(head=ids[: first[0]], middle=ids[first[-1] + 1 : second[0]], tail=ids[second[-1] + 1 :])


class StepError(ValueError):
    """A response's steps that cannot be joined or split: `step` is the index of the bad one."""

    def __init__(self, message: str, step: int):
        super().__init__(message)
        self.step = step


def join_steps(steps: Sequence[str], separator: str) -> str:
    """A response given as steps, as the text the model reads: every step followed by the separator."""
    for i, step in enumerate(steps):
        if not step.strip():
            raise StepError("step is empty or whitespace only", i)
        if separator in step:
            raise StepError(f"step contains the step separator {separator!r}", i)
    if not steps:
        raise StepError("no steps", 0)
    return "".join(step + separator for step in steps)


def split_steps(response: str, separator: str) -> list[str]:
    """A whole response as its steps: split on the separator, a trailing one optional (a response without
    any is one step); whitespace after a trailing separator (the newline a policy's output often ends with)
    is not a step."""
    pieces = response.split(separator)
    if len(pieces) > 1 and not pieces[-1].strip():
        pieces.pop()
    for i, piece in enumerate(pieces):
        if not piece.strip():
            raise StepError("step is empty or whitespace only", i)
    return pieces


def cut_left(prompt: list[int], response: list[int], budget: int) -> tuple[list[int], list[int], int, int]:
    """Fit prompt + response into `budget` tokens: the prompt loses its start first, the response only when
    it alone is too long. Returns (prompt, response, prompt tokens cut, response tokens cut)."""
    response_cut = max(0, len(response) - budget)
    if response_cut:
        response = response[response_cut:]
    room = budget - len(response)
    prompt_cut = max(0, len(prompt) - room)
    if prompt_cut:
        prompt = prompt[prompt_cut:]
    return prompt, response, prompt_cut, response_cut


class InputEncoder:
    """Renders, tokenizes, truncates and pads (prompt, response) rows for one tokenizer and spec."""

    def __init__(self, tokenizer: Tokenizer, spec: InputSpec):
        self.tokenizer = tokenizer
        self.spec = spec
        # Truncation and padding are ours; a tokenizer.json may carry its own settings.
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        self.single = probe_frame(tokenizer, pair=False)
        self.frame = probe_frame(tokenizer, pair=True) if spec.join == "pair" else self.single
        self.eos = [] if spec.eos_id is None else [spec.eos_id]
        self.template = TemplateRows(tokenizer, spec.chat_template) if spec.chat_template else None
        framed = self.single.size if self.template is None or spec.chat_template.add_special_tokens else 0
        self.special_tokens = self.frame.size if self.template is None else framed
        self.budget = spec.max_length - self.special_tokens - len(self.eos)
        if self.budget < 2:
            raise ValueError(f"max_length {spec.max_length} leaves no room beside {self.special_tokens} special tokens")
        self.step_id = spec.step_separator_id
        if spec.step_separator is not None:
            found = tokenizer.encode(spec.step_separator, add_special_tokens=False).ids
            if found != [spec.step_separator_id]:
                raise ValueError(f"step separator {spec.step_separator!r} is tokens {found} in this tokenizer, "
                                 f"not the one token {spec.step_separator_id}")

    @classmethod
    def from_file(cls, tokenizer_path: str, spec: InputSpec) -> InputEncoder:
        return cls(Tokenizer.from_file(str(tokenizer_path)), spec)

    def encode(self, rows: Sequence[tuple[Prompt, str]]) -> list[EncodedInput]:
        """Token ids for each (prompt, response): each distinct prompt is rendered and tokenized once, the
        rest with the fast tokenizer's batch call. A conversation the chat template refuses raises RowError."""
        out: list[EncodedInput | None] = [None] * len(rows)
        formatted = [i for i, (prompt, _) in enumerate(rows) if isinstance(prompt, Preformatted)]
        if formatted:
            texts = [rows[i][1] for i in formatted]
            for i, encoding in zip(formatted, self.tokenizer.encode_batch_fast(texts, add_special_tokens=False)):
                out[i] = self._finish([], encoding.ids, whole=True)
        chat = [i for i, (prompt, _) in enumerate(rows) if not isinstance(prompt, Preformatted)]
        if chat:
            pieces = self._template_pieces(rows, chat) if self.template else self._plain_pieces(rows, chat)
            for i, (prompt_ids, response_ids) in zip(chat, pieces):
                if self.step_id is not None and self.step_id in prompt_ids:
                    raise RowError("the prompt contains the step separator; only a response's steps may", i)
                out[i] = self._finish(prompt_ids, response_ids, whole=False)
        return out  # type: ignore[return-value]

    def steps_read(self, row: EncodedInput) -> int:
        """The steps a tokenized row holds: one per separator token kept, and those truncation cut. Fewer than
        the steps written when the separator merged with the text beside it ("two" + "ten" read as "twoten"),
        more when it occurs in the prompt or the template: either way a score would belong to the wrong step."""
        assert self.step_id is not None, "a step spec only"
        return row.ids.count(self.step_id) + row.steps_cut

    def steps_cut(self, response: list[int], response_cut: int) -> int:
        """Step separators among the first `response_cut` tokens of a response (0 for an outcome spec)."""
        return 0 if self.step_id is None or not response_cut else response[:response_cut].count(self.step_id)

    def _plain_pieces(self, rows: Sequence[tuple[Prompt, str]], chosen: list[int]) -> list[tuple[list[int], list[int]]]:
        keys: dict[Any, int] = {}
        prompt_of = [keys.setdefault(prompt_key(rows[i][0]), len(keys)) for i in chosen]
        texts: list[str] = [""] * len(keys)
        for i, slot in zip(chosen, prompt_of):
            if not texts[slot]:
                texts[slot] = render_prompt(rows[i][0], self.spec)
        # The fast call skips character offsets (ids only: the same ids, about 20 % less CPU); the template
        # path needs offsets to find its seam and keeps encode_batch.
        if self.spec.join == "text":  # whole, with offsets to find where each response begins
            whole = self.tokenizer.encode_batch([texts[slot] + rows[i][1] for i, slot in zip(chosen, prompt_of)],
                                                add_special_tokens=False)
            cuts = [starting_before(e.offsets, len(texts[slot])) for e, slot in zip(whole, prompt_of)]
            return [(e.ids[:cut], e.ids[cut:]) for e, cut in zip(whole, cuts)]
        encodings = self.tokenizer.encode_batch_fast(texts + [rows[i][1] for i in chosen], add_special_tokens=False)
        prompt_ids = [e.ids for e in encodings[: len(keys)]]
        return [(prompt_ids[slot], e.ids) for slot, e in zip(prompt_of, encodings[len(keys) :])]

    def _template_pieces(self, rows: Sequence[tuple[Prompt, str]], chosen: list[int]) -> list[tuple[list[int], list[int]]]:
        assert self.template is not None
        try:
            return self.template.pieces([rows[i] for i in chosen])
        except TemplateError as e:
            raise RowError(str(e), chosen[getattr(e, "row", 0)]) from e

    def _finish(self, prompt: list[int], response: list[int], whole: bool) -> EncodedInput:
        """Truncate and add the special tokens. `whole`: `response` is a preformatted row (cut like a prompt)."""
        if self.template is not None:
            return self._finish_templated(prompt, response, whole)
        if whole:  # one sequence, framed as a single one; cutting it is cutting a prompt
            text, _, cut, _ = cut_left(response, [], self.spec.max_length - self.single.size - len(self.eos))
            ids = self.single.head + text + self.single.tail + self.eos
            return EncodedInput(ids=ids, prompt_tokens_cut=cut, response_tokens_cut=0,
                                steps_cut=self.steps_cut(response, cut))
        original = response
        prompt, response, prompt_cut, response_cut = cut_left(prompt, response, self.budget)
        f = self.frame
        ids = f.head + prompt + f.middle + response + f.tail + self.eos
        assert len(ids) <= self.spec.max_length, f"row of {len(ids)} tokens exceeds max_length {self.spec.max_length}"
        return EncodedInput(ids=ids, prompt_tokens_cut=prompt_cut, response_tokens_cut=response_cut,
                            steps_cut=self.steps_cut(original, response_cut))

    def _finish_templated(self, prompt: list[int], response: list[int], whole: bool) -> EncodedInput:
        assert self.template is not None
        if whole:
            prompt, response = response, []
        first = prompt[:1] if prompt else response[:1]
        head, tail = [], []
        if self.spec.chat_template.add_special_tokens:  # type: ignore[union-attr]
            head, tail = list(self.single.head), list(self.single.tail)
            if first and head and first[0] == self.template.bos_id and head[0] == self.template.bos_id:
                head = head[1:]  # the template wrote BOS already: never a second one
        keep = 1 if prompt and first and first[0] == self.template.bos_id else 0  # a leading BOS survives truncation
        budget = self.spec.max_length - len(head) - len(tail) - keep
        body, kept, prompt_cut, response_cut = cut_left(prompt[keep:], response, budget)
        ids = head + prompt[:keep] + body + kept + tail
        assert len(ids) <= self.spec.max_length, f"row of {len(ids)} tokens exceeds max_length {self.spec.max_length}"
        cut_text = prompt[keep : keep + prompt_cut] if whole else response[:response_cut]
        return EncodedInput(ids=ids, prompt_tokens_cut=prompt_cut, response_tokens_cut=response_cut,
                            steps_cut=self.steps_cut(cut_text, len(cut_text)))

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

