import numpy as np
import pytest

from rmserve.service.core.inputs import ChatMessage, InputEncoder, InputSpec, render_prompt


def words(tokenizer, ids):
    return tokenizer.decode(ids, skip_special_tokens=False).split()


def test_chat_prompt_rendering_uses_role_prefixes_and_response_prefix():
    spec = InputSpec()
    messages = [ChatMessage(role="user", content="hi"), {"role": "assistant", "content": "hello"}, {"role": "user", "content": "help?"}]
    assert render_prompt(messages, spec) == "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: help?\n\nAssistant:"
    assert render_prompt("plain text", spec) == "plain text"


def test_pair_join_uses_tokenizer_pair_template(tiny_tokenizer):
    encoder = InputEncoder(tiny_tokenizer, InputSpec(max_length=32))
    (row,) = encoder.encode([("hello there", "i am fine")])
    assert words(tiny_tokenizer, row.ids) == ["[CLS]", "hello", "there", "[SEP]", "i", "am", "fine", "[SEP]"]
    assert not row.truncated


def test_concat_join_is_one_sequence(tiny_tokenizer):
    encoder = InputEncoder(tiny_tokenizer, InputSpec(max_length=32, join="concat"))
    (row,) = encoder.encode([("hello there", "i am fine")])
    assert words(tiny_tokenizer, row.ids) == ["[CLS]", "hello", "there", "i", "am", "fine", "[SEP]"]


def test_long_prompt_is_cut_from_the_left_and_response_kept_whole(tiny_tokenizer):
    encoder = InputEncoder(tiny_tokenizer, InputSpec(max_length=10))
    prompt = "one two three four five six seven eight"
    (row,) = encoder.encode([(prompt, "i am fine thanks")])
    # 10 - 3 special tokens = 7 content tokens: all 4 response tokens, the last 3 prompt tokens.
    assert words(tiny_tokenizer, row.ids) == ["[CLS]", "six", "seven", "eight", "[SEP]", "i", "am", "fine", "thanks", "[SEP]"]
    assert (row.prompt_tokens_cut, row.response_tokens_cut) == (5, 0)
    assert len(row.ids) == 10


def test_response_alone_too_long_keeps_its_end_and_drops_the_prompt(tiny_tokenizer):
    encoder = InputEncoder(tiny_tokenizer, InputSpec(max_length=8))
    response = "one two three four five six seven eight nine ten"
    (row,) = encoder.encode([("hello there", response)])
    assert words(tiny_tokenizer, row.ids) == ["[CLS]", "[SEP]", "six", "seven", "eight", "nine", "ten", "[SEP]"]
    assert (row.prompt_tokens_cut, row.response_tokens_cut) == (2, 5)


def test_no_row_exceeds_max_length(tiny_tokenizer):
    encoder = InputEncoder(tiny_tokenizer, InputSpec(max_length=12))
    text = " ".join(["hello"] * 50)
    rows = encoder.encode([(text, text), ("", text), (text, "no"), ("hi", "no")])
    assert all(len(r.ids) <= 12 for r in rows)


@pytest.mark.parametrize("side", ["right", "left"])
def test_padding_side_and_pad_id(tiny_tokenizer, side):
    encoder = InputEncoder(tiny_tokenizer, InputSpec(max_length=32, padding_side=side, pad_id=0))
    batch, rows = encoder.encode_and_pad([("hello", "no"), ("hello there how are you", "i am fine thanks")])
    assert batch.input_ids.dtype == np.int64 and batch.input_ids.shape == (2, len(rows[1].ids))
    short = len(rows[0].ids)
    expected = rows[0].ids + [0] * (batch.input_ids.shape[1] - short)
    if side == "left":
        expected = [0] * (batch.input_ids.shape[1] - short) + rows[0].ids
    assert batch.input_ids[0].tolist() == expected
    assert batch.attention_mask.sum(axis=1).tolist() == [short, len(rows[1].ids)]
    assert 0 < batch.padding_ratio < 0.5


def test_max_length_too_small_for_special_tokens_is_an_error(tiny_tokenizer):
    with pytest.raises(ValueError, match="no room"):
        InputEncoder(tiny_tokenizer, InputSpec(max_length=8).model_copy(update={"max_length": 4}))
