"""Steps in the one input formatter (service/core/inputs.py) and step scores (service/core/step_scores.py):
joining and splitting, truncation that keeps the last steps and counts those cut, the separator refused in
prompts and steps, reading scores at the separators of a padded batch, and the aggregates on literal values."""

import numpy as np
import pytest
from tokenizers import AddedToken

from rmserve.service.core.errors import ScoringError
from rmserve.service.core.inputs import InputEncoder, InputSpec, RowError, StepError, join_steps, split_steps
from rmserve.service.core.step_scores import activate, aggregate, read_step_scores, step_text

SEP = "<step>"


@pytest.fixture
def encoder(tiny_tokenizer):
    tiny_tokenizer.add_special_tokens([AddedToken(SEP, special=True, normalized=False)])
    spec = InputSpec(max_length=16, step_separator=SEP, step_separator_id=tiny_tokenizer.token_to_id(SEP))
    return InputEncoder(tiny_tokenizer, spec)


def test_join_and_split_are_inverse_and_a_trailing_separator_is_optional():
    assert join_steps(["a b", "c"], SEP) == f"a b{SEP}c{SEP}"
    assert split_steps(f"a b{SEP}c{SEP}", SEP) == ["a b", "c"] == split_steps(f"a b{SEP}c", SEP)
    assert split_steps("no separator at all", SEP) == ["no separator at all"]
    assert split_steps(f"a b{SEP}c{SEP}\n", SEP) == ["a b", "c"] == split_steps(f"a b{SEP}c{SEP} \n\t", SEP)


@pytest.mark.parametrize("steps, index, message", [
    (["a", " "], 1, "empty"), ([f"a{SEP}b"], 0, "contains the step separator"), ([], 0, "no steps")])
def test_bad_steps_are_named_by_index(steps, index, message):
    with pytest.raises(StepError, match=message) as info:
        join_steps(steps, SEP)
    assert info.value.step == index


def test_a_double_separator_is_an_empty_step():
    with pytest.raises(StepError, match="empty") as info:
        split_steps(f"a{SEP}{SEP}b", SEP)
    assert info.value.step == 1


def test_every_step_ends_with_the_separator_token(encoder, tiny_tokenizer):
    (row,) = encoder.encode([("hello there", join_steps(["one two", "three"], SEP))])
    words = [tiny_tokenizer.id_to_token(i) for i in row.ids]
    assert words == ["[CLS]", "hello", "there", "[SEP]", "one", "two", SEP, "three", SEP, "[SEP]"]
    assert row.steps_cut == 0 and not row.truncated


def test_truncation_cuts_the_prompt_first_then_whole_first_steps(encoder, tiny_tokenizer):
    steps = ["one two three", "four five six", "seven eight", "nine"]  # 4 + 4 + 3 + 2 = 13 tokens
    (row,) = encoder.encode([("hello there how are you", join_steps(steps, SEP))])
    # 16 - 3 special tokens = 13: the response alone fits exactly, the whole prompt is cut, no step is.
    assert (row.prompt_tokens_cut, row.response_tokens_cut, row.steps_cut) == (5, 0, 0)
    (row,) = encoder.encode([("hello", join_steps(["one two three four five"] + steps, SEP))])
    # 19 response tokens for 13 places: the first 6 go, the first step's separator among them.
    assert row.response_tokens_cut == 6 and row.steps_cut == 1
    assert row.ids.count(encoder.step_id) == len(steps)
    kept = [tiny_tokenizer.id_to_token(i) for i in row.ids]
    assert kept[:4] == ["[CLS]", "[SEP]", "one", "two"] and kept[-3:] == ["nine", SEP, "[SEP]"]


def test_the_separator_in_a_prompt_is_refused(encoder):
    with pytest.raises(RowError, match="prompt contains the step separator") as info:
        encoder.encode([("hello", f"one{SEP}"), (f"hello {SEP}", f"two{SEP}")])
    assert info.value.row == 1
    with pytest.raises(ScoringError, match="step separator") as error:
        step_text(f"hi {SEP}", "one", None, SEP, "responses.0", "prompt")
    assert error.value.field == "prompt"
    with pytest.raises(ScoringError) as error:
        step_text("hi", "", ["one", f"t{SEP}"], SEP, "items.2.steps", "items.2.prompt")
    assert error.value.field == "items.2.steps.1"


def test_a_spec_whose_separator_is_not_one_token_is_refused(tiny_tokenizer):
    with pytest.raises(ValueError, match="not the one token"):
        InputEncoder(tiny_tokenizer, InputSpec(step_separator="hello there", step_separator_id=5))
    with pytest.raises(ValueError, match="go together"):
        InputSpec(step_separator=SEP)


def test_step_scores_are_read_at_real_separators_only():
    ids = np.array([[5, 9, 7, 9, 0], [9, 9, 3, 9, 9]])  # 9 is the separator, 0 padding
    mask = np.array([[1, 1, 1, 1, 0], [0, 1, 1, 1, 1]])  # the second row is left-padded with a 9
    scores = np.arange(10, dtype=np.float32).reshape(2, 5)
    rows = read_step_scores(ids, mask, scores, separator_id=9)
    assert [r.tolist() for r in rows] == [[1.0, 3.0], [6.0, 8.0, 9.0]]


@pytest.mark.parametrize("how, expected", [("min", 0.2), ("last", 0.5), ("mean", 0.5), ("prod", 0.8 * 0.2 * 0.5)])
def test_aggregates(how, expected):
    assert aggregate(np.array([0.8, 0.2, 0.5]), how) == pytest.approx(expected)


def test_activation_is_a_stable_sigmoid():
    np.testing.assert_allclose(activate(np.array([0.0, 800.0, -800.0, np.log(3)])), [0.5, 1.0, 0.0, 0.75])
