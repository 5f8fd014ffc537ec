"""The chat-template renderer: what transformers' chat templates use, rendered byte for byte as transformers
renders it, inside a sandbox; a template's refusal is a TemplateError with the template's message."""

from __future__ import annotations

import datetime as dt

import pytest

from rmserve.service.core.chat_template import ChatTemplate, TemplateError, TemplateRenderer
from tests.chat_models import CHATML, CONVERSATIONS, GEMMA2, LLAMA3, MISTRAL, QWEN3, conversation

SPECIAL = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}
FEATURES = (
    "{%- set ns = namespace(n=0) %}{%- for m in messages %}{%- set ns.n = ns.n + 1 %}{%- endfor %}"
    "{{ bos_token }}{{ ns.n }} {{ messages | tojson }} {{ {'a': '<&>', 'b': 'é'} | tojson(indent=1) }}"
    "{% for m in messages %}{% if loop.index0 == 2 %}{% break %}{% endif %}[{{ m.role | upper }}]"
    "{% generation %}{{ m['content'] | trim }}{% endgeneration %}{% endfor %}"
    "{{ dict(x=1)['x'] }}{% if add_generation_prompt %}<gen>{% endif %}{{ eos_token }}"
)


def renderer(template: str, **options) -> TemplateRenderer:
    return TemplateRenderer(ChatTemplate(template=template, special_tokens=SPECIAL, **options))


def transformers_render(template: str, messages, add_generation_prompt: bool) -> str:
    from transformers.utils.chat_template_utils import render_jinja_template

    rendered, _ = render_jinja_template([messages], chat_template=template, add_generation_prompt=add_generation_prompt,
                                        **SPECIAL)
    return rendered[0]


@pytest.mark.parametrize("template", [CHATML, LLAMA3, MISTRAL, QWEN3, FEATURES], ids=["chatml", "llama3", "mistral",
                                                                                     "qwen3", "features"])
def test_renders_exactly_as_transformers(template):
    pytest.importorskip("transformers")
    ours = renderer(template)
    for prompt, response in CONVERSATIONS:
        for messages, generation in ((conversation(prompt, response), False),
                                     (conversation(prompt, response)[:-1], True)):
            assert ours.render(messages, generation) == transformers_render(template, messages, generation)


def test_features_render_as_documented():
    text = renderer(FEATURES).render([{"role": "user", "content": " hi "}, {"role": "assistant", "content": "é<b>"},
                                      {"role": "user", "content": "x"}], True)
    assert text.startswith("<s>3 [")
    assert '"content": "é<b>"' in text  # tojson: no HTML escaping, no ASCII escaping
    assert '{\n "a": "<&>",\n "b": "é"\n}' in text  # tojson's keyword arguments honoured
    assert "[USER]hi[ASSISTANT]é<b>" in text and "[USER]x" not in text  # trim, generation block, break
    assert text.endswith("1<gen></s>")


def test_raise_exception_is_a_template_error_with_the_templates_message():
    with pytest.raises(TemplateError, match="System role not supported"):
        renderer(GEMMA2).render([{"role": "system", "content": "s"}, {"role": "user", "content": "u"}], True)
    with pytest.raises(TemplateError, match="roles must alternate"):
        renderer(LLAMA3).render([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], True)


@pytest.mark.parametrize("expression", ["1 // (messages | length - 2)", "(messages | length) ** 5000 * 1.0"])
def test_any_failure_of_the_template_on_a_conversation_is_that_conversations_template_error(expression):
    """ZeroDivisionError and OverflowError too, not only the usual TypeError / KeyError: such an error must
    answer its own request (a validation error naming its prompt), not every request tokenized with it."""
    failing = renderer("{{ " + expression + " }}{% for m in messages %}{{ m.content }}{% endfor %}")
    with pytest.raises(TemplateError, match="failed on the conversation"):
        failing.render([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], False)


def test_strftime_now_reads_the_clock_or_the_pinned_time():
    template = "{{ strftime_now('%d %b %Y') }}"
    assert renderer(template).render([], False) == dt.datetime.now().strftime("%d %b %Y")
    pinned = renderer(template, fixed_time="2024-07-26T10:00:00+00:00")
    assert pinned.render([], False) == "26 Jul 2024"


@pytest.mark.parametrize("template", [
    "{{ messages.append(1) }}",  # the immutable sandbox: no mutation of the caller's data
    "{{ ''.__class__.__mro__ }}",  # no walking to interpreter internals
    "{% set ns = namespace() %}{% set ns.__class__ = 1 %}",  # no private names on a namespace
    "{{ namespace(_x=1) }}",
])
def test_the_sandbox_refuses_unsafe_templates(template):
    with pytest.raises(TemplateError):
        renderer(template).render([{"role": "user", "content": "hi"}], False)


def test_a_template_that_does_not_parse_is_refused_at_once():
    with pytest.raises(TemplateError, match="does not parse"):
        renderer("{% for m in messages %}")


def test_only_plain_data_reaches_the_template():
    class Sneaky:
        def __str__(self):
            return "sneaky"

    text = renderer("{{ messages[0]['content'] }}|{{ messages[0].get('extra', 'none') }}").render(
        [{"role": "user", "content": Sneaky(), "extra": None}], False)
    assert text == "sneaky|none"  # objects become text; None-valued keys are dropped, as transformers drops them
