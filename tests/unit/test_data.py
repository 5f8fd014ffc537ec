import gzip
import json

import pytest

from rmserve.training.data import load_pairs, split_dialogue
from rmserve.training.records import DataError


def write_jsonl(path, rows, gz=False):
    text = "\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n"
    if gz:
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        path.write_text(text)
    return path


def test_split_dialogue_takes_the_shared_prefix_up_to_the_last_assistant_turn():
    chosen = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: help me\n\nAssistant: Sure thing."
    rejected = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: help me\n\nAssistant: No."
    prompt, c, r = split_dialogue(chosen, rejected)
    assert prompt == "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: help me\n\nAssistant:"
    assert (c, r) == (" Sure thing.", " No.")


def test_split_dialogue_when_replies_share_a_start():
    # The replies both begin with "S": the prompt must still end at the turn marker.
    prompt, c, r = split_dialogue("\n\nHuman: q\n\nAssistant: Sure.", "\n\nHuman: q\n\nAssistant: Sorry.")
    assert prompt.endswith("Assistant:") and (c, r) == (" Sure.", " Sorry.")
    assert split_dialogue("abc", "abd") is None


def test_both_row_shapes_and_gzip(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl.gz", [
        {"prompt": "q", "chosen": "good", "rejected": "bad"},
        {"prompt": [{"role": "user", "content": "q"}], "chosen": "good", "rejected": "bad"},
        {"chosen": "\n\nHuman: q\n\nAssistant: good", "rejected": "\n\nHuman: q\n\nAssistant: bad"},
    ], gz=True)
    pairs = load_pairs(path).pairs
    assert [p.chosen for p in pairs] == ["good", "good", " good"]
    assert pairs[1].prompt == [{"role": "user", "content": "q"}]
    assert pairs[2].prompt == "\n\nHuman: q\n\nAssistant:"


@pytest.mark.parametrize("row, line_field", [
    ({"prompt": "q", "chosen": "a"}, "rejected"),
    ({"prompt": "q", "chosen": 3, "rejected": "b"}, "chosen"),
    ({"prompt": "q", "chosen": "a", "rejected": "   "}, "rejected"),
    ({"prompt": 5, "chosen": "a", "rejected": "b"}, "prompt"),
    ({"chosen": "x y", "rejected": "z"}, "chosen"),
])
def test_bad_rows_name_file_line_and_field(tmp_path, row, line_field):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "q", "chosen": "a", "rejected": "b"}, row])
    with pytest.raises(DataError) as info:
        load_pairs(path)
    assert info.value.line == 2 and info.value.field == line_field
    assert f"d.jsonl:2 field '{line_field}'" in str(info.value)


def test_invalid_json_names_the_line(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "q", "chosen": "a", "rejected": "b"}, "{not json"])
    with pytest.raises(DataError, match=r"d.jsonl:2: not valid JSON"):
        load_pairs(path)


def test_skip_bad_rows_only_when_asked_and_reports_them(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [
        {"prompt": "q", "chosen": "a", "rejected": "b"}, {"prompt": "q", "chosen": ""}, {"prompt": "q", "chosen": "c", "rejected": "d"},
    ])
    with pytest.raises(DataError, match="--skip-bad-rows"):
        load_pairs(path)
    result = load_pairs(path, skip_bad_rows=True)
    assert len(result.pairs) == 2 and [e.line for e in result.skipped] == [2]


def test_shipped_data_is_complete():
    from rmserve.training.data import shipped_data

    train = load_pairs(shipped_data("train"), skip_bad_rows=True)
    dev = load_pairs(shipped_data("dev"), skip_bad_rows=True)
    assert len(train.pairs) + len(train.skipped) == 1660
    assert len(dev.pairs) + len(dev.skipped) == 204


# --- load_preferences: every row shape ---------------------------------------------------------------

from rmserve.training.data import load_preferences  # noqa: E402
from rmserve.training.records import Comparison, PreferenceFile, PreferenceGroup, PreferencePair  # noqa: E402

PAIR = {"prompt": "q", "chosen": "a", "rejected": "b"}


def test_pair_row_is_a_group_of_two_responses_and_one_comparison(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{**PAIR, "id": 7, "source": "x"}])  # extra fields are ignored
    loaded = load_preferences(path)
    assert isinstance(loaded, PreferenceFile) and loaded.skipped == []
    assert loaded.groups == [PreferenceGroup("q", ("a", "b"), (Comparison(0, 1, 1.0, 0.0),), f"{path}:1")]
    assert loaded.pairs == [PreferencePair("q", "a", "b", 1.0, 0.0)]


def test_label_and_margin_reach_the_pairs(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl.gz", [
        {**PAIR, "label": 0.5},
        {**PAIR, "label": 0.8},
        {**PAIR, "label": 1, "margin": 2},
        {**PAIR, "margin": 0.5},
        {**PAIR, "label": 0.3, "margin": 0},  # a zero margin is the same as none
        {"chosen": "\n\nHuman: q\n\nAssistant: a", "rejected": "\n\nHuman: q\n\nAssistant: b", "label": 0.7},
        {**PAIR, "label": True, "margin": None},  # null = absent, so only label is checked
    ], gz=True)
    loaded = load_preferences(path, skip_bad_rows=True)
    assert [(p.label, p.margin) for p in loaded.pairs] == [(0.5, 0.0), (0.8, 0.0), (1.0, 2.0), (1.0, 0.5),
                                                          (0.3, 0.0), (0.7, 0.0)]
    assert [(e.line, e.field) for e in loaded.skipped] == [(7, "label")]


def test_chat_message_prompt_is_checked_like_serving_does(tmp_path):
    messages = [{"role": "system", "content": "be nice"}, {"role": "user", "content": "q"}]
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": messages, "responses": ["a", "b", "c"]}])
    group = load_preferences(path).groups[0]
    assert group.prompt == messages and group.responses == ("a", "b", "c")


def test_ranking_best_first_expands_to_every_pair_with_each_response_stored_once(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "q", "responses": ["r0", "r1", "r2", "r3"]}])
    loaded = load_preferences(path)
    (group,) = loaded.groups
    assert group.responses == ("r0", "r1", "r2", "r3")
    assert [(c.better, c.worse, c.label) for c in group.comparisons] == [
        (0, 1, 1.0), (0, 2, 1.0), (0, 3, 1.0), (1, 2, 1.0), (1, 3, 1.0), (2, 3, 1.0)]
    assert [(p.chosen, p.rejected) for p in loaded.pairs] == [
        ("r0", "r1"), ("r0", "r2"), ("r0", "r3"), ("r1", "r2"), ("r1", "r3"), ("r2", "r3")]


def test_ranking_with_ranks_lower_is_better_and_equal_ranks_tie(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "q", "responses": ["x", "y", "z"], "ranks": [2, 1, 2.0]}])
    group = load_preferences(path).groups[0]
    assert group.responses == ("x", "y", "z")  # file order kept; comparisons carry the order
    assert set(group.comparisons) == {Comparison(1, 0, 1.0), Comparison(0, 2, 0.5), Comparison(1, 2, 1.0)}
    assert {(p.chosen, p.rejected, p.label) for p in group.pairs()} == {
        ("y", "x", 1.0), ("x", "z", 0.5), ("y", "z", 1.0)}


def test_limit_counts_rows_and_load_pairs_flattens_rankings(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "q", "responses": ["a", "b", "c"]}, PAIR, PAIR])
    assert len(load_preferences(path, limit=2).groups) == 2
    pairs = load_pairs(path, limit=2).pairs
    assert [(p.chosen, p.rejected) for p in pairs] == [("a", "b"), ("a", "c"), ("b", "c"), ("a", "b")]


# --- bad rows: file, line and field -------------------------------------------------------------------

@pytest.mark.parametrize("row, field, words", [
    ({**PAIR, "label": 1.5}, "label", "[0, 1]"),
    ({**PAIR, "label": -0.1}, "label", "[0, 1]"),
    ({**PAIR, "label": True}, "label", "got bool"),
    ({**PAIR, "label": "0.5"}, "label", "got str"),
    ('{"prompt": "q", "chosen": "a", "rejected": "b", "label": NaN}', "label", "nan"),
    ({**PAIR, "margin": -1}, "margin", ">= 0"),
    ({**PAIR, "margin": False}, "margin", "got bool"),
    ('{"prompt": "q", "chosen": "a", "rejected": "b", "margin": Infinity}', "margin", "finite"),
    ({**PAIR, "label": 0.9, "margin": 1.0}, "margin", "label 1"),
    ({**PAIR, "rejected": "a"}, "rejected", "same text"),
    ({"prompt": [{"role": "bot", "content": "hi"}], "chosen": "a", "rejected": "b"}, "prompt.0.role", "user"),
    ({"prompt": [{"role": "user"}], "chosen": "a", "rejected": "b"}, "prompt.0.content", "required"),
    ({"prompt": ["hi"], "chosen": "a", "rejected": "b"}, "prompt.0", "role, content"),
    ({"prompt": [], "chosen": "a", "rejected": "b"}, "prompt", "non-empty"),
    ({"prompt": "q", "responses": ["a"]}, "responses", "at least 2"),
    ({"prompt": "q", "responses": "a b"}, "responses", "list"),
    ({"prompt": "q", "ranks": [1, 2]}, "responses", "missing"),
    ({"responses": ["a", "b"]}, "prompt", "missing"),
    ({"prompt": "q", "responses": ["a", "b", "c", "b"]}, "responses.3", "responses.1"),
    ({"prompt": "q", "responses": ["a", "b", " "]}, "responses.2", "empty"),
    ({"prompt": "q", "responses": ["a", 2]}, "responses.1", "string"),
    ({"prompt": "q", "responses": ["a", "b", "c"], "ranks": [1, 2]}, "ranks", "2 ranks"),
    ({"prompt": "q", "responses": ["a", "b"], "ranks": {"a": 1}}, "ranks", "dict"),
    ({"prompt": "q", "responses": ["a", "b"], "ranks": [1, "2"]}, "ranks.1", "number"),
    ({"prompt": "q", "responses": ["a", "b"], "ranks": [1, True]}, "ranks.1", "number"),
    ('{"prompt": "q", "responses": ["a", "b"], "ranks": [NaN, 1]}', "ranks.0", "finite"),
    ({"prompt": "q", "responses": ["a", "b"], "chosen": "a"}, "chosen", "accepted row shapes"),
    ({"prompt": "q", "responses": ["a", "b"], "label": 0.5}, "label", "accepted row shapes"),
])
def test_every_bad_row_names_file_line_and_field(tmp_path, row, field, words):
    path = write_jsonl(tmp_path / "d.jsonl", [PAIR, PAIR, row])
    with pytest.raises(DataError) as info:
        load_preferences(path)
    assert (info.value.line, info.value.field) == (3, field)
    assert f"d.jsonl:3 field '{field}':" in str(info.value) and words in str(info.value)
    assert "--skip-bad-rows" in str(info.value)
    loaded = load_preferences(path, skip_bad_rows=True)
    assert len(loaded.groups) == 2 and [(e.line, e.field) for e in loaded.skipped] == [(3, field)]


@pytest.mark.parametrize("row", ['{"prompt": "q"}', '{"id": 3}', "{}"])
def test_a_row_of_no_known_shape_lists_the_accepted_shapes(tmp_path, row):
    path = write_jsonl(tmp_path / "d.jsonl", [PAIR, row])
    with pytest.raises(DataError, match=r"d\.jsonl:2: no preference fields .*accepted row shapes") as info:
        load_preferences(path)
    assert info.value.field is None


def test_skip_bad_rows_counts_every_kind_and_limit_counts_good_rows(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [
        PAIR, "{not json", "[1, 2]", {"prompt": "q", "responses": ["a", "a"]}, {"id": 1}, PAIR, PAIR,
    ])
    loaded = load_preferences(path, skip_bad_rows=True)
    assert len(loaded.groups) == 3 and [e.line for e in loaded.skipped] == [2, 3, 4, 5]
    assert [g.source for g in loaded.groups] == [f"{path}:1", f"{path}:6", f"{path}:7"]
    assert len(load_preferences(path, limit=2, skip_bad_rows=True).groups) == 2


def test_a_file_with_no_good_rows_is_an_error_even_when_skipping(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"id": 1}, {"id": 2}])
    with pytest.raises(DataError, match=r"d\.jsonl: holds no preference rows \(2 bad rows skipped\)"):
        load_preferences(path, skip_bad_rows=True)
    with pytest.raises(FileNotFoundError):
        load_preferences(tmp_path / "missing.jsonl")


# --- Hugging Face datasets saved to disk --------------------------------------------------------------

def test_dataset_saved_to_disk_round_trip_with_mixed_shapes(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = [
        {"prompt": "q", "chosen": "a", "rejected": "b", "label": 0.75, "id": "x1"},
        {"prompt": "q2", "responses": ["r0", "r1", "r2"], "ranks": [1, 1, 0]},
        {"prompt": "q3", "responses": ["s0", "s1"]},
        {"chosen": "\n\nHuman: q\n\nAssistant: a", "rejected": "\n\nHuman: q\n\nAssistant: b", "margin": 1.0},
    ]
    columns = {key for row in rows for key in row}  # a table: each row holds None in other shapes' columns
    datasets.Dataset.from_list([{key: row.get(key) for key in columns} for row in rows]).save_to_disk(
        str(tmp_path / "ds"))
    loaded = load_preferences(tmp_path / "ds")
    assert [g.source for g in loaded.groups] == [f"{tmp_path / 'ds'}:row {i}" for i in range(4)]
    assert [(p.chosen, p.rejected, p.label, p.margin) for p in loaded.pairs] == [
        ("a", "b", 0.75, 0.0),
        ("r0", "r1", 0.5, 0.0), ("r2", "r0", 1.0, 0.0), ("r2", "r1", 1.0, 0.0),
        ("s0", "s1", 1.0, 0.0),
        (" a", " b", 1.0, 1.0),
    ]
    assert loaded.groups[1].responses == ("r0", "r1", "r2")


def test_dataset_with_chat_prompts_and_a_bad_row(tmp_path):
    datasets = pytest.importorskip("datasets")
    messages = [{"role": "user", "content": "hi"}]
    datasets.Dataset.from_list([
        {"prompt": messages, "chosen": "a", "rejected": "b", "label": 0.5},
        {"prompt": messages, "chosen": "a", "rejected": "b", "label": 2.0},
    ]).save_to_disk(str(tmp_path / "ds"))
    with pytest.raises(DataError) as info:
        load_preferences(tmp_path / "ds")
    assert str(info.value).startswith(f"{tmp_path / 'ds'}:row 1 field 'label':")
    loaded = load_preferences(tmp_path / "ds", skip_bad_rows=True)
    assert loaded.pairs == [PreferencePair(messages, "a", "b", 0.5, 0.0)] and len(loaded.skipped) == 1


def test_dataset_dict_and_plain_directories_are_explained(tmp_path):
    datasets = pytest.importorskip("datasets")
    split = datasets.Dataset.from_list([PAIR])
    datasets.DatasetDict({"train": split}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(DataError, match=r"holds the splits \['train'\]; give one split's directory"):
        load_preferences(tmp_path / "dd")
    assert load_preferences(tmp_path / "dd" / "train").pairs == [PreferencePair("q", "a", "b")]
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="not a dataset written by datasets' save_to_disk"):
        load_preferences(tmp_path / "empty")


# --- files that are not readable text ----------------------------------------------------------------


def test_a_line_that_is_not_utf8_names_file_and_line_and_can_be_skipped(tmp_path):
    path = tmp_path / "d.jsonl"
    good = json.dumps({"prompt": "q", "chosen": "a", "rejected": "b"}).encode()
    path.write_bytes(good + b"\n" + b'{"prompt": "q\xff", "chosen": "a", "rejected": "c"}\n' + good + b"\n")
    with pytest.raises(DataError, match=r"d.jsonl:2: not valid UTF-8") as info:
        load_pairs(path)
    assert info.value.line == 2
    loaded = load_pairs(path, skip_bad_rows=True)
    assert len(loaded.pairs) == 2 and [e.line for e in loaded.skipped] == [2]


GOOD_ROWS = "".join(json.dumps({"prompt": f"q{i}", "chosen": f"a{i * i}", "rejected": f"b{i}"}) + "\n"
                    for i in range(200)).encode()


@pytest.mark.parametrize("content", [b"not gzip at all\n", gzip.compress(GOOD_ROWS)[:-400]], ids=["not gzip", "truncated"])
def test_a_gz_file_that_does_not_decompress_names_the_file(tmp_path, content):
    path = tmp_path / "d.jsonl.gz"
    path.write_bytes(content)
    with pytest.raises(DataError, match=r"d.jsonl.gz(:\d+)?: not a readable gzip file"):
        load_pairs(path)
