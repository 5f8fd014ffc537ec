"""InputEncoder.encode tokenizes each distinct prompt once per call and joins rows on token ids with the
post-processor's special tokens found once (`probe_frame`): the rows must equal, row by row and whatever
the truncation, those of the straightforward way (each row's own Encodings, truncated and passed through
the tokenizer's post-processor)."""

import random

import pytest
from tokenizers import Encoding, Tokenizer

from rmserve.service.core.inputs import EncodedInput, InputEncoder, InputSpec, probe_frame
from tests.conftest import build_tiny_tokenizer

WORDS = "the a cat dog sat on mat hello world run ran fast slow big small".split()


def text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


def one_row_at_a_time(tokenizer: Tokenizer, spec: InputSpec, prompt: str, response: str) -> EncodedInput:
    """The reference: this row alone, cut on its Encodings (prompt from the left first, then the response)
    and joined by the tokenizer's own post-processor."""
    p, r = tokenizer.encode_batch([prompt, response], add_special_tokens=False)
    budget = spec.max_length - tokenizer.num_special_tokens_to_add(is_pair=spec.join == "pair") - (spec.eos_id is not None)
    response_cut = max(0, len(r) - budget)
    if response_cut:
        r.truncate(budget, direction="left")
    room = budget - len(r)
    prompt_cut = max(0, len(p) - room)
    if prompt_cut:
        p = Encoding.merge([]) if room == 0 else (p.truncate(room, direction="left") or p)
    if spec.join == "pair":
        joined = tokenizer.post_process(p, r, add_special_tokens=True)
    else:
        joined = tokenizer.post_process(Encoding.merge([p, r], growing_offsets=True), None, add_special_tokens=True)
    ids = joined.ids + ([] if spec.eos_id is None else [spec.eos_id])
    return EncodedInput(ids=ids, prompt_tokens_cut=prompt_cut, response_tokens_cut=response_cut)


@pytest.mark.parametrize("spec", [InputSpec(max_length=16), InputSpec(max_length=16, join="concat"),
                                  InputSpec(max_length=12, join="concat", eos_id=3), InputSpec(max_length=40)])
def test_rows_equal_the_post_processor_join_under_every_truncation(spec):
    encoder = InputEncoder(build_tiny_tokenizer(), spec)
    reference = build_tiny_tokenizer()
    rng = random.Random(0)
    for _ in range(200):
        prompt = text(rng, rng.randint(0, 60))
        responses = [text(rng, rng.randint(1, 50)) for _ in range(rng.randint(1, 4))]
        rows = encoder.encode([(prompt, r) for r in responses])
        for response, row in zip(responses, rows):
            expected = one_row_at_a_time(reference, spec, prompt, response)
            assert (row.ids, row.prompt_tokens_cut, row.response_tokens_cut) == \
                (expected.ids, expected.prompt_tokens_cut, expected.response_tokens_cut)
            assert len(row.ids) <= spec.max_length


def test_a_shared_prompt_is_tokenized_once_per_call(monkeypatch):
    encoder = InputEncoder(build_tiny_tokenizer(), InputSpec(max_length=16))
    seen: list[list[str]] = []

    class Counting:
        def __init__(self, inner: Tokenizer):
            self.inner = inner

        def encode_batch_fast(self, texts, **kwargs):
            seen.append(list(texts))
            return self.inner.encode_batch_fast(texts, **kwargs)

    monkeypatch.setattr(encoder, "tokenizer", Counting(encoder.tokenizer))
    long_prompt = "the cat sat " * 2000
    encoder.encode([(long_prompt, f"dog {i}") for i in range(64)] + [("other", "x")])
    assert len(seen) == 1
    assert seen[0].count(long_prompt) == 1 and seen[0].count("other") == 1 and len(seen[0]) == 2 + 65


def test_the_special_tokens_are_found_for_a_template_and_for_no_post_processor():
    tokenizer = build_tiny_tokenizer()
    pair, single = probe_frame(tokenizer, pair=True), probe_frame(tokenizer, pair=False)
    assert (pair.head, pair.middle, pair.tail) == ([2], [3], [3])
    assert (single.head, single.middle, single.tail) == ([2], [], [3])
    tokenizer.post_processor = None
    bare = probe_frame(tokenizer, pair=True)
    assert (bare.head, bare.middle, bare.tail) == ([], [], [])


def _trained(kind: str, texts: list[str]) -> Tokenizer:
    from tokenizers import models, normalizers, pre_tokenizers, trainers

    if kind == "wordpiece":  # BERT-style: normalizer, pre-tokenizer, ## continuations
        tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
        tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        trainer = trainers.WordPieceTrainer(vocab_size=300, special_tokens=["[UNK]"])
    else:  # GPT-style byte-level BPE
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        trainer = trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(texts, trainer)
    return tokenizer


@pytest.mark.parametrize("kind", ["wordpiece", "bpe"])
def test_the_fast_batch_call_gives_the_ids_of_the_full_one(kind):
    # The encoder asks for ids only (encode_batch_fast, no character offsets): they must be encode_batch's.
    rng = random.Random(7)
    texts = [text(rng, rng.randint(0, 40)) for _ in range(200)]
    texts += ["", " ", "x\ty\nz", "Héllo WÖRLD, naïve café 日本語 🙂\u200b", "a" * 500]
    tokenizer = _trained(kind, texts)
    full = [e.ids for e in tokenizer.encode_batch(texts, add_special_tokens=False)]
    assert [e.ids for e in tokenizer.encode_batch_fast(texts, add_special_tokens=False)] == full
