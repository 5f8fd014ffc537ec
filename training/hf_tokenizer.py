"""What transformers' own tokenizer says about a model directory, for the bundle to carry and to check.

The service tokenizes with the `tokenizers` library reading tokenizer.json and renders chat templates with
its own Jinja sandbox; transformers is the reference both must match, since models are trained and
evaluated through it. This module reads, through `AutoTokenizer` (never with remote code):
- the chat template (tokenizer_config.json or chat_template.jinja; the "default" one of a named set) and the
  special-token texts the template may print, as a `ChatTemplate`; a template that calls `strftime_now` is
  pinned to the time it was read, so that a reward does not change with the date;
- whether tokenizer.json, as `tokenizers` loads it, gives transformers' ids. transformers 5 rebuilds some
  tokenizers' normalizer and pre-tokenizer from its own code (Qwen2's among them) instead of reading
  tokenizer.json, so the two can disagree; `check_tokenizer_parity` then refuses, naming the first text
  that differs.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from rmserve.service.core.chat_template import ChatTemplate

# Texts every parity check covers besides the model's own: scripts, whitespace runs, digits, code, emoji,
# combining marks, and text that looks like markup.
PARITY_TEXTS = [
    "Hello, world! How are you doing today?", "  leading and trailing spaces  ", "tabs\tand\nnew\n\nlines\r\n",
    "Numbers: 1234567890 3.14159 -42 1e-9", "def f(x):\n    return x ** 2  # square\n",
    "héllo wörld, café naïve résumé", "e\u0301 a\u0308 o\u0302 (combining marks)", "日本語のテキストです。",
    "中文文本，标点符号。", "Привет, как дела?", "مرحبا بالعالم", "emoji 😀🎉👍🏽 and ZWJ 👨‍👩‍👧",
    "<b>markup</b> &amp; {\"json\": [1, 2]}", "UPPER lower MiXeD", "don't can't it's we'll they're",
    "a" * 300, "end with space ", " ", "",
]


class TokenizerMismatch(ValueError):
    """tokenizer.json and transformers' tokenizer give different ids."""


def load_auto_tokenizer(model_dir: str | Path) -> Any:
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # "sequence longer than model_max_length" is expected in the checks
    return AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=False)


def chat_template_of(hf_tokenizer: Any) -> ChatTemplate | None:
    """The tokenizer's chat template and the special-token texts it can print; None without a template."""
    template = getattr(hf_tokenizer, "chat_template", None)
    if isinstance(template, dict):  # named templates: the one apply_chat_template uses by default
        template = template.get("default")
    if not template:
        return None
    special = {name: str(value) for name, value in hf_tokenizer.special_tokens_map.items() if isinstance(value, str)}
    pinned = None
    if "strftime_now" in template:
        pinned = dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()
    return ChatTemplate(template=template, special_tokens=special, add_special_tokens=False, fixed_time=pinned)


def tokenizer_json_of(model_dir: Path, hf_tokenizer: Any) -> str:
    """The tokenizer.json text to ship: the directory's own, or transformers' tokenizer when it has none
    (a SentencePiece-only model, converted by transformers)."""
    path = Path(model_dir) / "tokenizer.json"
    if path.is_file():
        return path.read_text(encoding="utf-8")
    backend = getattr(hf_tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise FileNotFoundError(f"{model_dir} has no tokenizer.json and transformers loads no fast tokenizer for it")
    return backend.to_str()


def _short(text: str) -> str:
    return repr(text if len(text) <= 80 else text[:77] + "...")


def check_tokenizer_parity(tokenizer: Tokenizer, hf_tokenizer: Any, texts: Iterable[str],
                           pairs: Iterable[tuple[str, str]] = ()) -> int:
    """Compare ids text by text, with and without special tokens, and for pairs; raise TokenizerMismatch
    naming the first text that differs. Returns how many encodings were compared."""
    tokenizer.no_truncation()
    tokenizer.no_padding()
    compared = 0
    for text in dict.fromkeys([*PARITY_TEXTS, *texts]):
        for special in (False, True):
            ours = tokenizer.encode(text, add_special_tokens=special).ids
            theirs = hf_tokenizer(text, add_special_tokens=special)["input_ids"]
            compared += 1
            if ours != theirs:
                raise TokenizerMismatch(
                    f"tokenizer.json and transformers' {type(hf_tokenizer).__name__} disagree on {_short(text)} "
                    f"(add_special_tokens={special}): {ours[:12]} vs {theirs[:12]}. transformers rebuilds some "
                    "tokenizers in code; the model was trained with one of the two, and rmserve cannot tell which"
                )
    for first, second in pairs:
        ours = tokenizer.encode(first, second).ids
        theirs = hf_tokenizer(first, second)["input_ids"]
        compared += 1
        if ours != theirs:
            raise TokenizerMismatch(f"tokenizer.json and transformers' {type(hf_tokenizer).__name__} disagree on the "
                                    f"pair ({_short(first)}, {_short(second)}): {ours[:12]} vs {theirs[:12]}")
    return compared
