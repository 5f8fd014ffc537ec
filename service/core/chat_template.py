"""A model's own chat template: what the bundle stores of it, and how it is rendered without transformers.

Decoder reward models read a conversation in the format their tokenizer's Jinja chat template writes
(`tokenizer_config.json` or `chat_template.jinja`). The bundle carries that template with the values it
reads besides the messages (the special tokens' texts: `bos_token`, `eos_token`, ...) and the rule for
special tokens: `add_special_tokens` false (the default) tokenizes the rendering as transformers'
`apply_chat_template` does, adding nothing; true also applies the tokenizer's post-processor, without
doubling a BOS the template already wrote.

Rendering follows transformers' conventions so that the text is the same byte for byte: an immutable
sandboxed Jinja environment with `trim_blocks` and `lstrip_blocks`, loop controls, a `tojson` filter that
does not escape HTML, `raise_exception(message)`, `strftime_now(format)`, a `namespace` that refuses
private attribute names, a no-op `{% generation %}` block, and the variables `messages`,
`add_generation_prompt`, `tools` and `documents` (both None). A template that raises, or that cannot be
rendered, gives `TemplateError` with the template's own message: the caller's conversation is at fault.

`strftime_now` reads the clock, so a template that prints today's date would make a reward depend on the
day; a bundle can pin the instant it reads (`fixed_time`), which import does for such templates.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment
from pydantic import BaseModel, ConfigDict, Field

# Older Jinja releases have known sandbox escapes, and a chat template is code from a model's author.
_MIN_JINJA = (3, 1, 6)


class TemplateError(ValueError):
    """The template refused the conversation (its raise_exception) or could not render it."""


class ChatTemplate(BaseModel):
    """A tokenizer's chat template and the special-token rules that go with it; stored in the manifest."""

    model_config = ConfigDict(extra="forbid")
    template: str = Field(min_length=1, description="The Jinja source, as the tokenizer's chat_template.")
    special_tokens: dict[str, str] = Field(
        default_factory=dict,
        description="Template variables naming special tokens (bos_token, eos_token, pad_token, ...) and their text.",
    )
    add_special_tokens: bool = Field(
        False, description="Apply the tokenizer's post-processor to the rendering (never doubling BOS). False: "
        "the rendering's tokens only, as transformers' apply_chat_template.",
    )
    fixed_time: str | None = Field(
        None, description="ISO time that strftime_now formats, so that scores do not depend on the day. "
        "None: the clock.",
    )

    @property
    def bos_token(self) -> str | None:
        return self.special_tokens.get("bos_token") or None


class _GenerationBlock(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}`: transformers marks assistant text with it; it renders its body."""

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.Scope(body, lineno=lineno)


class _GuardedNamespace(jinja2.utils.Namespace):
    """Jinja's namespace() lets a template set any attribute name; private ones could reach interpreter
    internals, so they are refused."""

    def __init__(*args: Any, **kwargs: Any) -> None:  # noqa: N805 - Jinja's own signature trick
        self, rest = args[0], args[1:]
        values = dict(*rest, **kwargs)
        for name in values:
            _GuardedNamespace._check(name)
        jinja2.utils.Namespace.__init__(self, values)

    def __setitem__(self, name: str, value: Any) -> None:
        _GuardedNamespace._check(name)
        super().__setitem__(name, value)

    @staticmethod
    def _check(name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"a chat template may not set the private name {name!r}")


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
            sort_keys: bool = False) -> str:
    # Jinja's own tojson escapes <, >, & and ' for HTML; chat templates expect plain JSON.
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _environment(fixed_time: str | None) -> ImmutableSandboxedEnvironment:
    if tuple(int(p) for p in jinja2.__version__.split(".")[:3] if p.isdigit()) < _MIN_JINJA:
        raise RuntimeError(f"chat templates need jinja2 >= 3.1.6 (sandbox fixes); found {jinja2.__version__}")
    instant = dt.datetime.fromisoformat(fixed_time) if fixed_time else None

    def strftime_now(format: str) -> str:  # noqa: A002 - the name templates call it with
        return (instant or dt.datetime.now()).strftime(format)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[jinja2.ext.loopcontrols, _GenerationBlock])
    env.filters["tojson"] = _tojson
    env.globals.update(raise_exception=_raise_exception, strftime_now=strftime_now, namespace=_GuardedNamespace)
    return env


def _plain(value: Any) -> Any:
    """Only plain JSON-like data reaches the template: no object whose methods the sandbox does not know."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "model_dump"):
        return _plain(value.model_dump())
    return str(value)


class TemplateRenderer:
    """Compiles one ChatTemplate once; renders conversations to text."""

    def __init__(self, chat_template: ChatTemplate):
        self.spec = chat_template
        try:
            self._compiled = _environment(chat_template.fixed_time).from_string(chat_template.template)
        except jinja2.exceptions.TemplateSyntaxError as e:
            raise TemplateError(f"the chat template does not parse: {e.message} (line {e.lineno})") from e
        self._variables = dict(chat_template.special_tokens)

    def render(self, messages: Sequence[Any], add_generation_prompt: bool) -> str:
        """The conversation as the template writes it; `add_generation_prompt` opens an assistant turn."""
        try:
            return self._compiled.render(**self._variables, messages=_plain(list(messages)), tools=None,
                                         documents=None, add_generation_prompt=add_generation_prompt)
        except jinja2.exceptions.TemplateError as e:
            raise TemplateError(f"the model's chat template refused the conversation: {e}") from e
        except Exception as e:  # any failure of a template that compiled is this conversation's:
            # it must be answered as that request's error, not fail the other requests tokenized with it
            raise TemplateError(f"the model's chat template failed on the conversation: {type(e).__name__}: {e}") from e
