"""How the vLLM adapter turns its inputs into scoring rows (service/transports/http/vllm.py): a whole
formatted conversation becomes exactly the token ids that /score gives the same conversation as prompt and
response, for a concatenating decoder bundle (BOS from the tokenizer, EOS appended: one sequence) and for
a pair-template encoder bundle (split after the response prefix); a chat's last message is the response."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from rmserve.service.core.errors import ScoringError
from rmserve.service.core.inputs import ChatMessage, InputEncoder, InputSpec, render_prompt
from rmserve.service.settings import Settings
from rmserve.service.transports.http.vllm import chat_row, text_rows
from rmserve.service.transports.http.vllm_protocol import VllmError
from tests.conftest import build_tiny_tokenizer
from tests.tiny_decoders import build_decoder_tokenizer

CHAT = [ChatMessage(role="user", content="hello"), ChatMessage(role="assistant", content="hello there"),
        ChatMessage(role="user", content="can you help with a lock ?")]
RESPONSE = "sure , i can help with that lock"
SPECS = {
    "decoder": (lambda: build_decoder_tokenizer("llama"), InputSpec(max_length=64, join="concat", pad_id=2, eos_id=2)),
    "encoder": (build_tiny_tokenizer, InputSpec(max_length=64)),
}


def scorer_for(spec: InputSpec, **settings) -> SimpleNamespace:
    """What text_rows reads of a Scorer: its settings and its manifest's input spec."""
    return SimpleNamespace(settings=Settings(bundle="unused", **settings), manifest=SimpleNamespace(input=spec))


@pytest.mark.parametrize("kind", list(SPECS))
def test_a_whole_conversation_gets_the_ids_of_its_prompt_and_response(kind):
    make_tokenizer, spec = SPECS[kind]
    encoder = InputEncoder(make_tokenizer(), spec)
    full_text = render_prompt(CHAT, spec) + " " + RESPONSE  # what a chat template writes, as verl sends it
    (row,) = text_rows([full_text], ["input"], scorer_for(spec))
    assert row.field == "input"
    (whole,) = encoder.encode([(row.prompt, row.response)])
    (reference,) = encoder.encode([(CHAT, RESPONSE)])
    assert whole.ids == reference.ids
    if kind == "decoder":  # one sequence: no prompt of its own, BOS once (the tokenizer's), EOS last
        assert row.prompt == "" and whole.ids[0] == 1 and whole.ids.count(1) == 1 and whole.ids[-1] == 2


def test_a_long_conversation_keeps_its_end_as_score_does():
    make_tokenizer, spec = SPECS["decoder"]
    spec = spec.model_copy(update={"max_length": 16})
    encoder = InputEncoder(make_tokenizer(), spec)
    (row,) = text_rows([render_prompt(CHAT, spec) + " " + RESPONSE], ["input"], scorer_for(spec))
    (whole,) = encoder.encode([(row.prompt, row.response)])
    (reference,) = encoder.encode([(CHAT, RESPONSE)])
    assert whole.truncated and reference.truncated and whole.ids == reference.ids and len(whole.ids) == 16


def test_text_a_pair_bundle_cannot_split_is_refused_naming_it():
    _, spec = SPECS["encoder"]
    with pytest.raises(ScoringError) as refused:
        text_rows(["\n\nHuman: hi\n\nAssistant: fine", "no turn"], ["input.0", "input.1"], scorer_for(spec))
    assert refused.value.field == "input.1" and "response_prefix" in refused.value.message


def test_whole_text_limits_name_the_input():
    _, spec = SPECS["decoder"]
    with pytest.raises(ScoringError) as refused:
        text_rows(["fine", "x" * 101], ["input.0", "input.1"], scorer_for(spec, max_text_chars=100))
    assert refused.value.field == "input.1" and "max_text_chars" in refused.value.message


def test_a_chat_scores_its_last_message_against_the_ones_before():
    row = chat_row([*CHAT, ChatMessage(role="assistant", content=RESPONSE)])
    assert row.prompt == CHAT and row.response == RESPONSE and row.field == "messages.3.content"
    with pytest.raises(VllmError) as refused:
        chat_row(CHAT)
    assert refused.value.param == "messages.2.role" and refused.value.status == 400
    with pytest.raises(VllmError) as refused:
        chat_row([ChatMessage(role="assistant", content=RESPONSE)])
    assert refused.value.param == "messages"
