"""What the trainers' protocols share: a full text (prompt and response in one string, as OpenRLHF's
`/get_reward` and verl's `/classify` send them) split into the scoring row the bundle expects, and a list
of any length scored in chunks of `max_responses_per_request` on the shared batcher.

Used by openrlhf.py and vllm.py; moved here from openrlhf.py so that the two protocols split and chunk
exactly alike.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from fastapi import Request

from rmserve.service.core.errors import ErrorKind, ScoringError
from rmserve.service.core.inputs import PREFORMATTED, InputSpec
from rmserve.service.core.limits import effective_deadline
from rmserve.service.core.scoring import Row, Scorer, Scores
from rmserve.service.transports.http.common import unless_client_leaves


def split_at_response_prefix(text: str, spec: InputSpec, field: str, advice: str) -> Row:
    """The row of a full text, cut after the last occurrence of the bundle's `response_prefix` (e.g.
    "\\n\\nAssistant:"): earlier turns belong to the prompt. A text without it is refused naming `field`;
    `advice` tells the caller what to send instead."""
    marker = spec.response_prefix
    cut = text.rfind(marker) if marker else -1
    if cut < 0:
        raise ScoringError(ErrorKind.VALIDATION, f"cannot split the text into prompt and response: it has no "
                           f"{marker!r} (the bundle's response_prefix); {advice}", field)
    end = cut + len(marker)
    return Row(text[:end], text[end:], field)


def formatted_row(text: str, spec: InputSpec, field: str, advice: str) -> Row:
    """The row of a whole formatted conversation. A bundle with a chat template, or one that joins prompt
    and response into one sequence (join concat or text), scores the text as it is (the core's PREFORMATTED
    row: tokenized as is, cut from the left, never rendered again). A pair-template bundle needs prompt and
    response apart, so the text is split after its response prefix; so does a process reward model's, whose
    steps are the response's alone (a separator in the prompt is refused, not scored as a step). A PRM with
    a chat template cannot tell its steps from the template's text in a whole conversation: refused."""
    if spec.step_separator is not None and spec.chat_template is not None:
        raise ScoringError(ErrorKind.VALIDATION, "a process reward model with a chat template cannot find the "
                           "steps of a whole formatted conversation; send the prompt and the response's steps "
                           f"apart{f' ({advice})' if advice else ''}", field)
    if spec.step_separator is None and (spec.chat_template is not None or spec.join != "pair"):
        return Row(PREFORMATTED, text, field)
    return split_at_response_prefix(text, spec, field, advice)


async def score_in_chunks(scorer: Scorer, rows: Sequence[Row], request: Request) -> Scores:
    """Scores of any number of rows, `max_responses_per_request` at a time, one chunk after the other (so
    that one large request cannot take the whole queue); dropped when the client leaves."""
    limit = scorer.settings.max_responses_per_request
    deadline = effective_deadline(None, scorer.settings)  # the request's, once: not a fresh one for each chunk
    parts: list[Scores] = []
    for start in range(0, len(rows), limit):
        parts.append(await unless_client_leaves(request, scorer.score(rows[start:start + limit], deadline)))
    if len(parts) == 1:
        return parts[0]
    return Scores(raw=np.concatenate([p.raw for p in parts]), truncated=[t for p in parts for t in p.truncated],
                  tokenize_seconds=sum(p.tokenize_seconds for p in parts),
                  queue_seconds=max(p.queue_seconds for p in parts),
                  inference_seconds=sum(p.inference_seconds for p in parts))
