"""`rmserve data`: the pre-training report (labels, length bias, duplicates, contradictions, truncation by
the service's own encoder) and conversion to pairs, on literal files, the shipped HH data and the CLI."""

import gzip
import json
import os

import pytest

from rmserve.cli import main
from rmserve.service.core.bundle import load_bundle
from rmserve.training.data import load_pairs, load_preferences, shipped_data
from rmserve.training.data_report import format_report, inspect_data
from rmserve.training.ratings import RatingOptions


def write_rows(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_duplicates_and_contradictions(tmp_path):
    path = write_rows(tmp_path / "d.jsonl", [
        {"prompt": "q", "chosen": "a", "rejected": "b"},
        {"prompt": "q", "chosen": "a", "rejected": "b"},  # duplicate of line 1
        {"prompt": "q", "chosen": "b", "rejected": "a"},  # contradicts line 1
        {"prompt": "q", "chosen": "a", "rejected": "b", "label": 0.5},  # a tie: neither
        {"prompt": "q", "responses": ["a", "c", "b"]},  # a over b again: a duplicate; its other pairs are new
        {"prompt": "q", "chosen": "b", "rejected": "a", "label": 0.1},  # says a is likelier better: a duplicate
        {"prompt": [{"role": "user", "content": "q"}], "chosen": "b", "rejected": "a"},  # another prompt
        {"prompt": "r", "chosen": "b", "rejected": "a"},
    ])
    report = inspect_data(load_preferences(path))
    assert report["duplicate_pairs"] == 3
    assert report["duplicate_examples"] == [f"{path}:2 repeats {path}:1", f"{path}:5 repeats {path}:1",
                                            f"{path}:6 repeats {path}:1"]
    assert report["contradictory_pairs"] == 1 and report["contradictory_examples"] == [f"{path}:1 vs {path}:3"]
    assert (report["rows"], report["prompts"], report["groups"], report["pairs"], report["ties"]) == (8, 3, 8, 9, 1)
    text = format_report(report)
    assert "duplicate pairs: 3" in text and f"opposite preference): 1 (e.g. {path}:1 vs {path}:3)" in text


def test_raters_who_disagree_are_contradictory_pairs(tmp_path):
    path = write_rows(tmp_path / "r.jsonl", [
        {"prompt": "q", "response": "a", "rating": 2, "rater": "ann"}, {"prompt": "q", "response": "b", "rating": 4, "rater": "ann"},
        {"prompt": "q", "response": "a", "rating": 7, "rater": "bob"}, {"prompt": "q", "response": "b", "rating": 1, "rater": "bob"},
    ])
    report = inspect_data(load_preferences(path))
    assert report["format"] == "ratings" and report["contradictory_pairs"] == 1
    assert report["contradictory_examples"] == [f"{path}:3,4 vs {path}:1,2"]


def test_labels_and_the_preferred_response_length(tmp_path):
    path = write_rows(tmp_path / "d.jsonl", [
        {"prompt": "p1", "chosen": "aaaa", "rejected": "b"},  # preferred longer
        {"prompt": "p2", "chosen": "a", "rejected": "bbbb", "label": 0.2},  # preferred is "bbbb": longer
        {"prompt": "p3", "chosen": "aa", "rejected": "bb", "label": 0.5},  # a tie: not counted
        {"prompt": "p4", "chosen": "a", "rejected": "bbb", "label": 0.8},  # preferred shorter
        {"prompt": "p5", "chosen": "xy", "rejected": "zw", "margin": 2},  # same length
        {"prompt": "p6", "chosen": "x", "rejected": "y", "label": 0},  # same length
    ])
    report = inspect_data(load_preferences(path))
    assert report["labels"] == {"1": 2, "(0.5, 1)": 1, "0.5": 1, "(0, 0.5)": 1, "0": 1,
                                "with_margin": 1, "mean_margin": 2.0, "max_margin": 2.0}
    chars = report["chars"]
    assert chars["decided_pairs"] == 5
    assert (chars["preferred_longer"], chars["preferred_shorter"], chars["same_length"]) == (0.4, 0.2, 0.4)
    assert chars["chosen"] == {"mean": 1.8, "p50": 1.5, "p95": 3.5, "max": 4}
    assert "tokens" not in report and "truncation" not in report
    assert "preferred response longer in 40.0% of 5 decided pairs (chars)" in format_report(report)


def test_shipped_hh_chosen_is_longer_rate():
    path = shipped_data("train")
    # Independently of rmserve.training.data: both full dialogues share the prompt, so the reply after the last
    # shared "\n\nAssistant:" decides; rows with an empty or identical reply are the loader's bad rows.
    longer = usable = 0
    with gzip.open(path, "rt") as f:
        for line in f:
            row = json.loads(line)
            shared = os.path.commonprefix([row["chosen"], row["rejected"]])
            end = shared.rfind("\n\nAssistant:") + len("\n\nAssistant:")
            chosen, rejected = row["chosen"][end:], row["rejected"][end:]
            if end < len("\n\nAssistant:") or not chosen.strip() or not rejected.strip() or chosen == rejected:
                continue
            usable += 1
            longer += len(chosen) > len(rejected)
    report = inspect_data(load_preferences(path, skip_bad_rows=True))
    assert report["chars"]["decided_pairs"] == usable == 1658
    assert report["chars"]["preferred_longer"] == longer / usable
    assert report["bad_rows"] == 2 and report["rows"] == 1660
    assert f"preferred response longer in {longer / usable:.1%} of {usable} decided pairs" in format_report(report)


def truncation_file(tmp_path):
    # Tiny tokenizer: one token per word; pair rows are [CLS] prompt [SEP] response [SEP].
    return write_rows(tmp_path / "t.jsonl", [
        {"prompt": "hello there how are you", "chosen": "i am fine", "rejected": "no"},
        {"prompt": "hello", "chosen": "hello one two three four five", "rejected": "no one two three four five"},
        {"prompt": "sure", "chosen": "thanks", "rejected": "no"},
    ])


def test_tokens_and_truncation_use_the_bundle_encoder(tiny_bundle, tmp_path):
    loaded = load_preferences(truncation_file(tmp_path))
    encoder = load_bundle(tiny_bundle).encoder()
    at_24 = inspect_data(loaded, encoder)["truncation"]
    assert (at_24["max_length"], at_24["truncated_rows"], at_24["pairs_with_a_truncated_row"]) == (24, 0, 0)
    # At 8 tokens, 5 are left beside the 3 special ones: the first pair's prompt is cut on both rows, the
    # second pair's 6-word responses lose their first word and become the same row.
    short = encoder.spec.model_copy(update={"max_length": 8})
    report = inspect_data(loaded, type(encoder)(encoder.tokenizer, short))
    t = report["truncation"]
    assert (t["rows"], t["truncated_rows"], t["prompt_cut_rows"], t["response_cut_rows"]) == (6, 4, 4, 2)
    assert (t["pairs_with_a_truncated_row"], t["pairs_with_a_cut_response"], t["pairs_identical_after_truncation"]) == (2, 1, 1)
    assert t["row_tokens_untruncated"] == {"mean": 8.3, "p50": 9.5, "p95": 10.8, "max": 11}
    tokens = report["tokens"]
    assert tokens["chosen"]["max"] == 6 and tokens["rejected"]["mean"] == pytest.approx(2.7)
    assert (tokens["preferred_longer"], tokens["same_length"]) == (pytest.approx(1 / 3), pytest.approx(2 / 3))
    assert report["chars"]["preferred_longer"] == 1.0
    assert "max_length 8: 4 of 6 rows over it" in format_report(report)


def test_cli_inspect_with_bundle_tokenizer_and_json(tiny_bundle, tmp_path, capsys):
    data = truncation_file(tmp_path)
    assert main(["data", "inspect", str(data), "--bundle", str(tiny_bundle), "--max-length", "8", "--json"]) == 0
    by_bundle = json.loads(capsys.readouterr().out)
    assert by_bundle["truncation"]["truncated_rows"] == 4
    assert main(["data", "inspect", str(data), "--tokenizer", str(tiny_bundle / "tokenizer.json"), "--json"]) == 0
    by_tokenizer = json.loads(capsys.readouterr().out)
    assert by_tokenizer["truncation"]["max_length"] == 256 and by_tokenizer["tokens"] == by_bundle["tokens"]
    assert main(["data", "inspect", str(data)]) == 0
    assert "preferred response longer in 100.0% of 3 decided pairs (chars)" in capsys.readouterr().out
    assert main(["data", "inspect", str(data), "--max-length", "8"]) == 2
    assert "--max-length needs --bundle or --tokenizer" in capsys.readouterr().err
    assert main(["data", "inspect", str(data), "--tokenizer", str(tmp_path / "missing.json")]) == 2
    assert "cannot read tokenizer" in capsys.readouterr().err


RATINGS = [
    {"prompt": "q1", "response": "a", "rating": 9}, {"prompt": "q1", "response": "b", "rating": 5},
    {"prompt": "q1", "response": "c", "rating": 5}, {"prompt": "q2", "response": "x", "rating": 3},
    {"prompt": "q3", "response": "a", "rating": 2}, {"prompt": "q3", "response": "b", "rating": 1},
]


def pair_tuples(pairs):
    return [(p.prompt, p.chosen, p.rejected, p.label, p.margin) for p in pairs]


@pytest.mark.parametrize("ties, expected", [
    ("keep", "wrote {out}: 4 pairs (3 preferences, 1 ties) from 3 prompts, 6 rows; dropped: 0 tied pairs, "
             "0 bad rows; 1 single-response prompts (no pair)"),
    ("drop", "wrote {out}: 3 pairs (3 preferences, 0 ties) from 3 prompts, 6 rows; dropped: 1 tied pairs, "
             "0 bad rows; 1 single-response prompts (no pair)"),
])
def test_cli_convert_ratings_round_trip(tmp_path, capsys, ties, expected):
    source = write_rows(tmp_path / "ratings.jsonl", RATINGS)
    out = tmp_path / "pairs.jsonl.gz"
    assert main(["data", "convert", str(source), str(out), "--rating-ties", ties, "--rating-margin-scale", "0.5"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == expected.format(out=out)
    assert "1 single-response prompts yield no pair" in captured.err
    converted = load_preferences(out)  # a pairs file now, trainable as any other
    assert converted.ratings is None
    direct = load_preferences(source, ratings=RatingOptions(margin_scale=0.5, ties=ties))
    assert pair_tuples(converted.pairs) == pair_tuples(direct.pairs)
    assert pair_tuples(converted.pairs)[0] == ("q1", "a", "b", 1.0, 2.0)


def test_cli_convert_rankings_and_bad_rows(tmp_path, capsys):
    source = write_rows(tmp_path / "rank.jsonl", [
        {"prompt": "q", "responses": ["a", "b", "c"], "ranks": [1, 2, 2]}, {"prompt": "q", "responses": ["a"]},
    ])
    out = tmp_path / "pairs.jsonl"
    assert main(["data", "convert", str(source), str(out)]) == 2
    assert "rank.jsonl:2 field 'responses'" in capsys.readouterr().err
    assert main(["data", "convert", str(source), str(out), "--skip-bad-rows"]) == 0
    captured = capsys.readouterr()
    assert "wrote" in captured.out and "3 pairs (2 preferences, 1 ties) from 1 prompts, 2 rows" in captured.out
    assert "1 bad rows" in captured.out and "skipped bad row: " in captured.err
    assert pair_tuples(load_pairs(out).pairs) == [("q", "a", "b", 1.0, 0.0), ("q", "a", "c", 1.0, 0.0),
                                                  ("q", "b", "c", 0.5, 0.0)]
    assert main(["data", "convert", str(out), str(out)]) == 2
    assert "is the input file" in capsys.readouterr().err
