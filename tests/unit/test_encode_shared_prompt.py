"""InputEncoder.encode tokenizes each distinct prompt once per call and joins rows on token ids with the
post-processor's special tokens found once: the rows must equal those of the Encoding-based join, row by
row, whatever the truncation."""

import random

import pytest
from tokenizers import Tokenizer

from rmserve.service.core.inputs import InputEncoder, InputSpec, special_template
from tests.conftest import build_tiny_tokenizer

WORDS = "the a cat dog sat on mat hello world run ran fast slow big small".split()


def text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


def one_row_at_a_time(encoder: InputEncoder, prompt: str, response: str):
    """The reference: the Encoding join (post_process) of this row alone."""
    prompt_enc, response_enc = encoder.tokenizer.encode_batch([prompt, response], add_special_tokens=False)
    return encoder._join(prompt_enc, response_enc)


@pytest.mark.parametrize("spec", [InputSpec(max_length=16), InputSpec(max_length=16, join="concat"),
                                  InputSpec(max_length=12, join="concat", eos_id=3), InputSpec(max_length=40)])
def test_rows_equal_the_encoding_join_under_every_truncation(spec):
    encoder = InputEncoder(build_tiny_tokenizer(), spec)
    assert encoder._template is not None
    rng = random.Random(0)
    for _ in range(200):
        prompt = text(rng, rng.randint(0, 60))
        responses = [text(rng, rng.randint(1, 50)) for _ in range(rng.randint(1, 4))]
        rows = encoder.encode([(prompt, r) for r in responses])
        for response, row in zip(responses, rows):
            expected = one_row_at_a_time(encoder, prompt, response)
            assert (row.ids, row.prompt_tokens_cut, row.response_tokens_cut) == \
                (expected.ids, expected.prompt_tokens_cut, expected.response_tokens_cut)
            assert len(row.ids) <= spec.max_length


def test_a_shared_prompt_is_tokenized_once_per_call(monkeypatch):
    encoder = InputEncoder(build_tiny_tokenizer(), InputSpec(max_length=16))
    seen: list[list[str]] = []

    class Counting:
        def __init__(self, inner: Tokenizer):
            self.inner = inner

        def encode_batch(self, texts, **kwargs):
            seen.append(list(texts))
            return self.inner.encode_batch(texts, **kwargs)

    monkeypatch.setattr(encoder, "tokenizer", Counting(encoder.tokenizer))
    long_prompt = "the cat sat " * 2000
    encoder.encode([(long_prompt, f"dog {i}") for i in range(64)] + [("other", "x")])
    assert len(seen) == 1
    assert seen[0].count(long_prompt) == 1 and seen[0].count("other") == 1 and len(seen[0]) == 2 + 65


def test_the_special_tokens_are_found_for_a_template_and_for_no_post_processor():
    tokenizer = build_tiny_tokenizer()
    assert special_template(tokenizer, pair=True) == ([2], [3], [3])
    assert special_template(tokenizer, pair=False) == ([2], [], [3])
    tokenizer.post_processor = None
    assert special_template(tokenizer, pair=True) == ([], [], [])


def test_without_a_template_every_row_is_joined_by_the_post_processor():
    rows = [("the cat sat " * 9, "dog ran"), ("a", "big " * 30), ("the cat sat " * 9, "mat")]
    fast = InputEncoder(build_tiny_tokenizer(), InputSpec(max_length=16))
    slow = InputEncoder(build_tiny_tokenizer(), InputSpec(max_length=16))
    slow._template = None  # as for a post-processor whose special tokens depend on the text
    assert [(e.ids, e.prompt_tokens_cut) for e in slow.encode(rows)] == \
        [(e.ids, e.prompt_tokens_cut) for e in fast.encode(rows)]
