"""Rows through a chat template: (prompt, response) → the prompt's and the response's token ids of the rendering.

A row's text is the template's rendering of the prompt's messages (a plain-text prompt is one user
message) followed by the response as the final assistant turn, tokenized without special tokens, exactly
as transformers' `apply_chat_template` tokenizes it. The prompt's tokens are those that start before the
end of the prompt's own rendering with `add_generation_prompt` (the text the response extends); truncation
(service/core/inputs.py) cuts those from the left.

Each distinct prompt is rendered and tokenized once per call, however many responses share it. The
tokenizer splits its input at added special tokens before it normalizes or pre-tokenizes anything, so the
tokens of a text up to a special token do not depend on what follows it. A row whose rendering starts with
its prompt's rendering therefore takes the prompt's tokens before the prompt's last special token, and
tokenizes only the rest of its text, from that special token on (tokenized with the token itself in front,
so that the piece is never the first of a string, which some pre-tokenizers treat differently). A special
token that another added token contains, or that is normalized before matching, is not used as such a
seam. Rows without a seam are tokenized whole. tests/unit/test_template_parity.py proves the ids equal.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tokenizers import Tokenizer

from rmserve.service.core.chat_template import ChatTemplate, TemplateError, TemplateRenderer


def messages_of(prompt: Any) -> list[dict[str, str]]:
    """A prompt as chat messages: plain text is one user turn."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return [dict(m) if isinstance(m, dict) else {"role": m.role, "content": m.content} for m in prompt]


def prompt_key(prompt: Any) -> Any:
    """A hashable identity of a prompt's content: equal prompts share their rendering and tokens."""
    if isinstance(prompt, str):
        return prompt
    return tuple((m["role"], m["content"]) if isinstance(m, dict) else (m.role, m.content) for m in prompt)


def seam_tokens(tokenizer: Tokenizer) -> set[int]:
    """Special added tokens after which tokenization starts afresh, whatever came before."""
    added = tokenizer.get_added_tokens_decoder()
    contents = [token.content for token in added.values()]
    return {
        token_id for token_id, token in added.items()
        if token.special and not token.normalized
        and sum(token.content in other for other in contents) == 1  # no longer added token contains it
    }


@dataclass
class _PromptPlan:
    text: str
    ids: list[int]
    seam: int | None  # index of the last seam token in ids
    seam_char: int  # where that token starts in text


def _common_prefix(a: str, b: str) -> int:
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n  # the longest equal prefix, by bisection on slices (C speed)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def starting_before(offsets: list[tuple[int, int]], boundary: int) -> int:
    """How many tokens start before character `boundary` (offsets are in order)."""
    count = 0
    for start, _ in offsets:
        if start >= boundary:
            break
        count += 1
    return count


class TemplateRows:
    """Renders and tokenizes rows for one tokenizer and chat template."""

    def __init__(self, tokenizer: Tokenizer, chat_template: ChatTemplate):
        self.tokenizer = tokenizer
        self.renderer = TemplateRenderer(chat_template)
        self.seams = seam_tokens(tokenizer)
        bos = chat_template.bos_token
        self.bos_id = tokenizer.token_to_id(bos) if bos else None

    def render(self, prompt: Any, response: str) -> str:
        """The whole row as the model reads it."""
        return self.renderer.render(messages_of(prompt) + [{"role": "assistant", "content": response}], False)

    def pieces(self, rows: Sequence[tuple[Any, str]]) -> list[tuple[list[int], list[int]]]:
        """(prompt ids, response ids) per row; their concatenation is the tokenized rendering. A conversation
        the template refuses raises TemplateError with `row` set to its index."""
        plans: dict[Any, _PromptPlan] = {}
        plan_of: list[_PromptPlan] = []
        texts: list[str] = []
        for index, (prompt, response) in enumerate(rows):
            key = prompt_key(prompt)
            try:
                if key not in plans:
                    plans[key] = _PromptPlan(self.renderer.render(messages_of(prompt), True), [], None, 0)
                texts.append(self.render(prompt, response))
            except TemplateError as e:
                e.row = index  # type: ignore[attr-defined]
                raise
            plan_of.append(plans[key])
        self._tokenize_prompts(list(plans.values()))

        spliced = [plan.seam is not None and text.startswith(plan.text) for plan, text in zip(plan_of, texts)]
        pieces = [text[plan.seam_char :] if ok else text for plan, text, ok in zip(plan_of, texts, spliced)]
        encodings = self.tokenizer.encode_batch(pieces, add_special_tokens=False)
        out = []
        for plan, text, ok, encoding in zip(plan_of, texts, spliced, encodings):
            ids = encoding.ids
            if ok and ids and ids[0] == plan.ids[plan.seam]:  # type: ignore[index]
                in_prompt = starting_before(encoding.offsets, len(plan.text) - plan.seam_char)
                out.append((plan.ids[: plan.seam] + ids[:in_prompt], ids[in_prompt:]))
                continue
            if ok:  # the seam did not hold (cannot happen with tokenizers' splitting): tokenize the text whole
                encoding = self.tokenizer.encode(text, add_special_tokens=False)
                ids = encoding.ids
            in_prompt = starting_before(encoding.offsets, _common_prefix(plan.text, text))
            out.append((ids[:in_prompt], ids[in_prompt:]))
        return out

    def _tokenize_prompts(self, plans: list[_PromptPlan]) -> None:
        for plan, encoding in zip(plans, self.tokenizer.encode_batch([p.text for p in plans], add_special_tokens=False)):
            plan.ids = encoding.ids
            for index in range(len(plan.ids) - 1, -1, -1):
                if plan.ids[index] in self.seams:
                    plan.seam, plan.seam_char = index, encoding.offsets[index][0]
                    break

