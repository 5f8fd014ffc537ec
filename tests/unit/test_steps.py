"""Step-labelled data: TRL stepwise rows, Math-Shepherd tagged rows and PRM800K solutions become one record,
and bad rows name file, line and field as preference data does."""

import json

import pytest

from rmserve.cli import main
from rmserve.training.records import DataError
from rmserve.training.steps import StepChain, StepOptions, load_steps, step_counts, write_steps


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows))
    return path


STEPWISE = {"prompt": "What is 2 + 3 * 4?", "completions": ["3 * 4 = 12.", "2 + 12 = 15."], "labels": [True, False]}
# A Math-Shepherd row as the data set has it: the question, then steps each ended by the tag "ки"; the label
# text is the same with each tag replaced by "+" or "-".
SHEPHERD_INPUT = ("Janet has 3 apples and buys 5 more. How many does she have? Step 1: She buys 5, so 3 + 5 = "
                  "<<3+5=8>>8. ки\nStep 2: The answer is: 9 ки")
SHEPHERD = {"input": SHEPHERD_INPUT, "label": SHEPHERD_INPUT.replace("8. ки", "8. +").replace("9 ки", "9 -"),
            "task": "GSM8K"}


def prm800k_row(steps, finish="found_error", problem="What is 1 + 1?"):
    return {"labeler": "x", "question": {"problem": problem, "ground_truth_answer": "2"},
            "label": {"steps": steps, "finish_reason": finish, "total_time": 1}}


def step(*ratings, chosen=0, human=None):
    return {"completions": [{"text": f"step rated {r} #{i}", "rating": r, "flagged": None} for i, r in enumerate(ratings)],
            "chosen_completion": chosen, "human_completion": human}


def test_stepwise_rows_with_text_and_chat_prompts(tmp_path):
    chat = {**STEPWISE, "prompt": [{"role": "user", "content": "What is 2 + 3 * 4?"}], "labels": [1, 0],
            "problem": 7, "answer": 14}
    loaded = load_steps(write_jsonl(tmp_path / "s.jsonl", [STEPWISE, chat]))
    first, second = loaded.chains
    assert loaded.format == "stepwise"
    assert first == StepChain("What is 2 + 3 * 4?", ("3 * 4 = 12.", "2 + 12 = 15."), (True, False), f"{tmp_path}/s.jsonl:1")
    assert second.prompt == [{"role": "user", "content": "What is 2 + 3 * 4?"}]
    assert (second.labels, second.group, second.answer) == ((True, False), "7", "14")
    assert first.first_error == 1 and not first.correct
    assert step_counts(loaded) == {"format": "stepwise", "chains": 2, "steps": 4, "good_steps": 2, "bad_steps": 2,
                                   "correct_chains": 0, "bad_rows": 0}


@pytest.mark.parametrize("row, field", [
    ({**STEPWISE, "labels": [True]}, "labels"),
    ({**STEPWISE, "labels": [True, "no"]}, "labels.1"),
    ({**STEPWISE, "labels": [True, 2]}, "labels.1"),
    ({**STEPWISE, "completions": ["ok", "  "]}, "completions.1"),
    ({**STEPWISE, "completions": []}, "completions"),
    ({**STEPWISE, "completions": "one step"}, "completions"),
    ({k: v for k, v in STEPWISE.items() if k != "prompt"}, "prompt"),
    ({**STEPWISE, "prompt": [{"role": "robot", "content": "q"}]}, "prompt.0.role"),
    ({**STEPWISE, "problem": [1]}, "problem"),
    ({**STEPWISE, "labels": None}, "labels"),
    (SHEPHERD, "input"),  # a row of another format in a stepwise file
])
def test_bad_stepwise_rows_name_file_line_and_field(tmp_path, row, field):
    path = write_jsonl(tmp_path / "s.jsonl", [STEPWISE, row])
    with pytest.raises(DataError) as info:
        load_steps(path)
    assert (info.value.line, info.value.field) == (2, field)
    assert f"s.jsonl:2 field '{field}'" in str(info.value) and "--skip-bad-rows" in str(info.value)


def test_skip_bad_rows_leaves_them_out_and_lists_them(tmp_path):
    path = write_jsonl(tmp_path / "s.jsonl", [STEPWISE, "{not json", {**STEPWISE, "labels": [True]}, STEPWISE])
    loaded = load_steps(path, skip_bad_rows=True)
    assert len(loaded.chains) == 2 and [e.line for e in loaded.skipped] == [2, 3]
    assert [c.source.rsplit(":", 1)[1] for c in loaded.chains] == ["1", "4"]
    assert len(load_steps(path, limit=1, skip_bad_rows=True).chains) == 1
    with pytest.raises(DataError, match="holds no step-labelled rows"):
        load_steps(write_jsonl(tmp_path / "bad.jsonl", ["[1]"]), skip_bad_rows=True)


def test_math_shepherd_rows(tmp_path):
    loaded = load_steps(write_jsonl(tmp_path / "m.jsonl", [SHEPHERD]))
    (chain,) = loaded.chains
    assert loaded.format == "math-shepherd"
    assert chain.prompt == "Janet has 3 apples and buys 5 more. How many does she have?"
    assert chain.steps == ("Step 1: She buys 5, so 3 + 5 = <<3+5=8>>8.", "Step 2: The answer is: 9")
    assert chain.labels == (True, False)


def test_math_shepherd_step_tag_is_an_option(tmp_path):
    text = "Q? Step 1: a <tag> Step 2: b <tag>"
    row = {"input": text, "label": text.replace("a <tag>", "a -").replace("b <tag>", "b -")}
    chain = load_steps(write_jsonl(tmp_path / "m.jsonl", [row]), options=StepOptions(step_tag="<tag>")).chains[0]
    assert chain.steps == ("Step 1: a", "Step 2: b") and chain.labels == (False, False)


@pytest.mark.parametrize("row, field, message", [
    ({"input": "Q? Step 1: a", "label": "Q? Step 1: a"}, "input", "no step tag"),
    ({"input": "Q? Step 1: a ки tail", "label": "Q? Step 1: a + tail"}, "input", "after its last step tag"),
    ({"input": "Q? Step 1: a ки", "label": "Q? Step 1: a +  extra"}, "label", "characters"),
    ({"input": "Q? Step 1: a ки", "label": "Q? Step 1: a ?"}, "label", "where input has step tag 1"),
    ({"input": "Q? a ки", "label": "Q? a +"}, "input", "no 'Step 1:'"),
    ({"input": "Q ки? Step 1: a ки", "label": "Q +? Step 1: a +"}, "input", "inside the question"),
    ({"input": "Step 1: a ки", "label": "Step 1: a +"}, "input", "no question"),
    ({"input": "Q? Step 1: a ки ки", "label": "Q? Step 1: a + +"}, "input", "step 2 is empty"),
    ({"input": "Q? Step 1: a ки"}, "label", "missing"),
])
def test_bad_math_shepherd_rows(tmp_path, row, field, message):
    path = write_jsonl(tmp_path / "m.jsonl", [SHEPHERD, row])
    with pytest.raises(DataError, match=message) as info:
        load_steps(path)
    assert (info.value.line, info.value.field) == (2, field)


def test_prm800k_follows_the_chosen_steps_and_maps_neutral(tmp_path):
    row = prm800k_row([step(1), step(0), step(1, -1, chosen=1)], finish="found_error")
    path = write_jsonl(tmp_path / "p.jsonl", [row])
    # Every step has a chosen completion (the last one rated -1): the solution is followed to its end.
    only = load_steps(path, options=StepOptions(prm800k_alternatives=False)).chains
    assert [c.labels for c in only] == [(True, True, False)]
    assert only[0].steps[-1] == "step rated -1 #1" and only[0].answer == "2"
    assert load_steps(path, options=StepOptions(neutral="bad", prm800k_alternatives=False)).chains[0].labels == \
        (True, False, False)
    # With alternatives, the not-continued candidate (rated 1) ends a chain of its own.
    chains = load_steps(path).chains
    assert [(c.steps[-1], c.labels) for c in chains] == [
        ("step rated 1 #0", (True, True, True)), ("step rated -1 #1", (True, True, False))]


def test_prm800k_final_step_without_a_choice_and_human_steps(tmp_path):
    stopped = prm800k_row([step(1), step(-1, 0, chosen=None)])
    human = prm800k_row([step(-1, -1, chosen=None, human={"text": "my own step"}), step(1)], finish="solution")
    bad_problem = prm800k_row([step(1)], finish="bad_problem")
    loaded = load_steps(write_jsonl(tmp_path / "p.jsonl", [stopped, human, bad_problem]))
    assert [(c.steps, c.labels) for c in loaded.chains] == [
        (("step rated 1 #0", "step rated -1 #0"), (True, False)),
        (("step rated 1 #0", "step rated 0 #1"), (True, True)),
        (("step rated -1 #0",), (False,)), (("step rated -1 #1",), (False,)),
        (("my own step", "step rated 1 #0"), (True, True)),
    ]
    assert loaded.left_out == {"bad_problem": 1}
    only = load_steps(tmp_path / "p.jsonl", options=StepOptions(prm800k_alternatives=False)).chains
    assert [c.labels for c in only] == [(True, False), (True, True)]


@pytest.mark.parametrize("steps, field", [
    ([step(2)], "label.steps.0.completions.0.rating"),
    ([step(1, chosen=3)], "label.steps.0.chosen_completion"),
    ([{"completions": [{"text": "", "rating": 1}], "chosen_completion": 0}], "label.steps.0.completions.0.text"),
    ([step(1), "not a step"], "label.steps.1"),
    ([{"completions": [{"text": "a", "rating": None}], "chosen_completion": 0}], "label.steps.0.completions.0.rating"),
])
def test_bad_prm800k_rows(tmp_path, steps, field):
    path = write_jsonl(tmp_path / "p.jsonl", [prm800k_row([step(1)]), prm800k_row(steps)])
    with pytest.raises(DataError) as info:
        load_steps(path)
    assert (info.value.line, info.value.field) == (2, field)


def test_options_are_checked():
    with pytest.raises(ValueError, match="neutral"):
        StepOptions(neutral="maybe")
    with pytest.raises(ValueError, match="step tag"):
        StepOptions(step_tag="")


def test_written_steps_read_back_the_same(tmp_path):
    loaded = load_steps(write_jsonl(tmp_path / "m.jsonl", [SHEPHERD, SHEPHERD]))
    write_steps(loaded.chains, tmp_path / "out.jsonl.gz")
    again = load_steps(tmp_path / "out.jsonl.gz")
    assert [(c.prompt, c.steps, c.labels) for c in again.chains] == [(c.prompt, c.steps, c.labels) for c in loaded.chains]
    with pytest.raises(ValueError, match="is the input file"):
        write_steps(loaded.chains, tmp_path / "m.jsonl", source=tmp_path / "m.jsonl")


def test_convert_steps_command(tmp_path, capsys):
    path = write_jsonl(tmp_path / "p.jsonl", [prm800k_row([step(1), step(0)], finish="solution"), "{oops"])
    assert main(["data", "convert-steps", str(path), str(tmp_path / "out.jsonl")]) == 2
    assert "p.jsonl:2: not valid JSON" in capsys.readouterr().err
    assert main(["data", "convert-steps", str(path), str(tmp_path / "out.jsonl"), "--skip-bad-rows",
                 "--prm800k-neutral", "bad"]) == 0
    out = capsys.readouterr()
    assert "skipped bad row" in out.err and "chains 1" in out.out
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert rows == [{"prompt": "What is 1 + 1?", "completions": ["step rated 1 #0", "step rated 0 #0"],
                     "labels": [True, False], "answer": "2", "source": f"{path}:1"}]


def test_a_saved_dataset_with_a_bad_row(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = [STEPWISE, {**STEPWISE, "labels": [True, True, False]}, {**STEPWISE, "problem": "p1"}]
    datasets.Dataset.from_list([{**{"problem": None}, **row} for row in rows]).save_to_disk(str(tmp_path / "ds"))
    with pytest.raises(DataError, match=r"ds:row 1 field 'labels'"):
        load_steps(tmp_path / "ds")
    loaded = load_steps(tmp_path / "ds", skip_bad_rows=True)
    assert [c.group for c in loaded.chains] == [None, "p1"] and loaded.chains[1].source.endswith("ds:row 2")
