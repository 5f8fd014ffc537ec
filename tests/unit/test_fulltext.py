"""How a whole formatted text (OpenRLHF's /get_reward query, vLLM's /classify input) becomes a scoring row,
for each kind of bundle: as is, split after the response prefix, or refused."""

import pytest

from rmserve.service.core.chat_template import ChatTemplate
from rmserve.service.core.errors import ErrorKind, ScoringError
from rmserve.service.core.inputs import PREFORMATTED, InputSpec
from rmserve.service.transports.http.fulltext import formatted_row

TEXT = "\n\nHuman: add <step> one and two\n\nAssistant: one<step>two<step>"
TEMPLATE = ChatTemplate(template="{% for m in messages %}{{ m.content }}{% endfor %}")
STEPS = {"step_separator": "<step>", "step_separator_id": 5}


@pytest.mark.parametrize("spec", [InputSpec(join="concat"), InputSpec(join="text"),
                                  InputSpec(join="concat", chat_template=TEMPLATE)])
def test_a_one_sequence_bundle_scores_the_text_as_it_is(spec):
    assert formatted_row(TEXT, spec, "input.0", "") == (PREFORMATTED, TEXT, "input.0", None)


@pytest.mark.parametrize("spec", [InputSpec(join="pair"), InputSpec(join="pair", **STEPS),
                                  InputSpec(join="concat", **STEPS), InputSpec(join="text", **STEPS)])
def test_pair_and_process_reward_bundles_split_after_the_response_prefix(spec):
    """A PRM's steps are its response's: the prompt's separator must reach the core as the prompt's (which
    refuses it), not be scored as a step of a text taken whole."""
    prompt, response, field, steps = formatted_row(TEXT, spec, "query.3", "")
    assert (prompt, response, field, steps) == ("\n\nHuman: add <step> one and two\n\nAssistant:", " one<step>two<step>",
                                                "query.3", None)


def test_a_process_reward_model_with_a_chat_template_refuses_a_whole_conversation():
    spec = InputSpec(join="concat", chat_template=TEMPLATE, **STEPS)
    with pytest.raises(ScoringError) as info:
        formatted_row(TEXT, spec, "input.1", "send `messages` instead")
    assert (info.value.kind, info.value.field) == (ErrorKind.VALIDATION, "input.1")
    assert "steps" in info.value.message and "send `messages` instead" in info.value.message
