import gzip
import json

import pytest

from training.data import DataError, load_pairs, split_dialogue


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
    from training.data import shipped_data

    train = load_pairs(shipped_data("train"), skip_bad_rows=True)
    dev = load_pairs(shipped_data("dev"), skip_bad_rows=True)
    assert len(train.pairs) + len(train.skipped) == 1660
    assert len(dev.pairs) + len(dev.skipped) == 204
