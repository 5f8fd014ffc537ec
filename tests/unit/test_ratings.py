"""Ratings files → preference groups: grouping by prompt and rater, labels and margins from rating gaps,
ties kept or dropped, single-response prompts counted, bad rows named by file, line and field."""

import json
import math

import pytest

from rmserve.training.config import TrainConfig
from rmserve.training.data import load_pairs, load_preferences
from rmserve.training.ratings import RatingOptions, parse_levels
from rmserve.training.records import Comparison, DataError

try:  # the training test needs torch; everything else here does not
    from tests.unit.test_train_smoke import tiny_base  # noqa: F401 - fixture
except (ImportError, pytest.skip.Exception):
    tiny_base = None


def write_rows(path, rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def rating(prompt, response, value, rater=None):
    row = {"prompt": prompt, "response": response, "rating": value}
    if rater is not None:
        row["rater"] = rater
    return row


RATED = [
    rating("q1", "a", 9), rating("q1", "b", 5), rating("q1", "c", 5),  # one prompt, one tie
    rating("q2", "x", 3),  # a single rated response: no pair
    rating("q3", "a", 2, "ann"), rating("q3", "b", 4, "ann"),  # ann prefers b
    rating("q3", "a", 7, "bob"), rating("q3", "b", 1, "bob"),  # bob prefers a: never compared with ann's
    rating("q3", "c", 1),  # no rater on a prompt with raters: a group of its own, of one response
]


def test_groups_by_prompt_and_rater_with_margins_from_the_file_range(tmp_path):
    path = write_rows(tmp_path / "r.jsonl", RATED)
    loaded = load_preferences(path)
    # Ratings span 1..9, so the default margin is gap / 8.
    assert [(g.prompt, g.responses, g.comparisons, g.source) for g in loaded.groups] == [
        ("q1", ("a", "b", "c"), (Comparison(0, 1, 1.0, 0.5), Comparison(0, 2, 1.0, 0.5), Comparison(1, 2, 0.5)),
         f"{path}:1,2,3"),
        ("q3", ("a", "b"), (Comparison(1, 0, 1.0, 0.25),), f"{path}:5,6"),
        ("q3", ("a", "b"), (Comparison(0, 1, 1.0, 0.75),), f"{path}:7,8"),
    ]
    c = loaded.ratings
    assert (c.rows, c.prompts, c.raters, c.groups, c.pairs, c.ties, c.ties_dropped) == (9, 3, 2, 3, 4, 1, 0)
    assert (c.single_response, c.all_tied, c.mixed_rater_prompts) == (2, 0, 1)
    assert c.single_response_at == [f"{path}:4", f"{path}:9"] and c.margin_scale == 0.125
    summary = c.summary()
    assert "2 single-response prompts (per rater) yield no pair" in summary and "1 ties kept" in summary
    # Flattened for evaluation: chosen is the better rated response.
    pairs = load_pairs(path).pairs
    assert [(p.prompt, p.chosen, p.rejected, p.label, p.margin) for p in pairs] == [
        ("q1", "a", "b", 1.0, 0.5), ("q1", "a", "c", 1.0, 0.5), ("q1", "b", "c", 0.5, 0.0),
        ("q3", "b", "a", 1.0, 0.25), ("q3", "a", "b", 1.0, 0.75),
    ]


def test_ties_dropped_and_groups_left_with_only_ties(tmp_path):
    path = write_rows(tmp_path / "r.jsonl", [*RATED, rating("q4", "u", 6), rating("q4", "v", 6)])
    kept = load_preferences(path, ratings=RatingOptions(ties="keep"))
    assert [g.comparisons for g in kept.groups if g.prompt == "q4"] == [(Comparison(0, 1, 0.5),)]
    assert (kept.ratings.ties, kept.ratings.ties_dropped, kept.ratings.all_tied, kept.ratings.groups) == (2, 0, 0, 4)
    dropped = load_preferences(path, ratings=RatingOptions(ties="drop"))
    assert dropped.groups[0].comparisons == (Comparison(0, 1, 1.0, 0.5), Comparison(0, 2, 1.0, 0.5))
    assert all(g.prompt != "q4" for g in dropped.groups)
    c = dropped.ratings
    assert (c.pairs, c.ties, c.ties_dropped, c.all_tied, c.groups) == (4, 0, 2, 1, 3)
    assert "1 prompts (per rater) with only tied ratings left out" in c.summary()


def gaps_file(tmp_path):
    # One prompt, ratings 0, 1, 2.5, 5: gaps 1, 2.5, 5, 1.5, 4, 2.5 in comparison order.
    return write_rows(tmp_path / "g.jsonl", [rating("q", r, v) for r, v in (("w", 0), ("x", 1), ("y", 2.5), ("z", 5))])


def test_margin_scale_and_levels(tmp_path):
    path = gaps_file(tmp_path)
    scaled = load_preferences(path, ratings=RatingOptions(margin_scale=0.5)).groups[0]
    assert [(c.better, c.worse, c.label, c.margin) for c in scaled.comparisons] == [
        (1, 0, 1.0, 0.5), (2, 0, 1.0, 1.25), (3, 0, 1.0, 2.5), (2, 1, 1.0, 0.75), (3, 1, 1.0, 2.0), (3, 2, 1.0, 1.25)]
    # Llama 2's small-margin levels for gaps 1, 2, 3, >= 4; a gap is rounded up (2.5 -> level of 3).
    levels = RatingOptions(margin_levels=parse_levels("0, 0.33,0.67,1"))
    leveled = load_preferences(path, ratings=levels)
    assert [c.margin for c in leveled.groups[0].comparisons] == [0.0, 0.67, 1.0, 0.33, 1.0, 0.67]
    assert leveled.ratings.margin_scale is None
    hard = load_preferences(path, ratings=RatingOptions(labels="hard")).groups[0]
    assert {(c.label, c.margin) for c in hard.comparisons} == {(1.0, 0.0)}


def test_soft_labels_are_a_sigmoid_of_the_gap(tmp_path):
    group = load_preferences(gaps_file(tmp_path), ratings=RatingOptions(labels="soft", temperature=2.0)).groups[0]
    gaps = [1, 2.5, 5, 1.5, 4, 2.5]
    assert [c.label for c in group.comparisons] == pytest.approx([1 / (1 + math.exp(-g / 2)) for g in gaps], abs=1e-12)
    assert {c.margin for c in group.comparisons} == {0.0}


@pytest.mark.parametrize("options, message", [
    (dict(labels="rank"), "--rating-labels must be one of"),
    (dict(ties="half"), "--rating-ties must be one of"),
    (dict(temperature=0.0), "--rating-temperature"),
    (dict(margin_scale=-1.0), "--rating-margin-scale"),
    (dict(margin_scale=1.0, margin_levels=(0.0, 1.0)), "not both"),
    (dict(labels="soft", margin_scale=1.0), "need --rating-labels margin"),
])
def test_bad_options_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        RatingOptions(**options)


@pytest.mark.parametrize("text", ["a,b", "1,0.5", "-1", "1,inf"])
def test_bad_margin_levels_are_refused(text):
    with pytest.raises(ValueError, match="--rating-margin-levels"):
        parse_levels(text)


def test_options_come_from_the_training_config():
    config = TrainConfig(rating_labels="soft", rating_temperature=3.0, rating_ties="drop")
    assert RatingOptions.from_config(config) == RatingOptions(labels="soft", temperature=3.0, ties="drop")
    levels = TrainConfig(rating_margin_levels="0,1")
    assert RatingOptions.from_config(levels).margin_levels == (0.0, 1.0)
    assert RatingOptions.from_config(TrainConfig()) == RatingOptions()


@pytest.mark.parametrize("row, field", [
    ({"prompt": "q", "response": "b"}, "rating"),
    ({"prompt": "q", "response": "b", "rating": "7"}, "rating"),
    ({"prompt": "q", "response": "b", "rating": True}, "rating"),
    ('{"prompt": "q", "response": "b", "rating": NaN}', "rating"),
    ({"prompt": "q", "rating": 3}, "response"),
    ({"prompt": "q", "response": " ", "rating": 3}, "response"),
    ({"response": "b", "rating": 3}, "prompt"),
    ({"prompt": "q", "response": "b", "rating": 3, "rater": ["ann"]}, "rater"),
    ({"prompt": "q", "response": "b", "rating": 3, "rater": ""}, "rater"),
    ({"prompt": "q", "response": "a", "rating": 3}, "response"),  # a rated twice by the same (no) rater
    ({"prompt": "q", "chosen": "b", "rejected": "c"}, "chosen"),  # another shape inside a ratings file
])
def test_bad_rating_rows_name_file_line_and_field(tmp_path, row, field):
    path = write_rows(tmp_path / "r.jsonl", [rating("q", "a", 1), rating("q", "c", 2), row])
    with pytest.raises(DataError) as info:
        load_preferences(path)
    assert (info.value.line, info.value.field) == (3, field)
    assert f"r.jsonl:3 field '{field}'" in str(info.value) and "--skip-bad-rows" in str(info.value)


def test_same_response_by_two_raters_is_fine_but_twice_by_one_is_not(tmp_path):
    path = write_rows(tmp_path / "r.jsonl", [rating("q", "a", 1, 7), rating("q", "a", 2, "7"), rating("q", "b", 2, 7),
                                             rating("q", "a", 5, 7)])
    with pytest.raises(DataError, match=r"r.jsonl:4 field 'response': rated twice for this prompt by rater 7 "
                                        r"\(first at line 1\)"):
        load_preferences(path)


def test_skip_bad_rows_groups_the_rest_and_reports_them(tmp_path):
    rows = [rating("q", "a", 1), "{not json", rating("q", "b", "high"), rating("q", "c", 3), rating("p", "a", 2)]
    loaded = load_preferences(write_rows(tmp_path / "r.jsonl", rows), skip_bad_rows=True)
    assert [(e.line, e.field) for e in loaded.skipped] == [(2, None), (3, "rating")]
    assert [(g.responses, g.comparisons) for g in loaded.groups] == [(("a", "c"), (Comparison(1, 0, 1.0, 1.0),))]
    assert (loaded.ratings.rows, loaded.ratings.single_response) == (3, 1)


def test_detection_needs_the_first_object_row_to_be_a_rating(tmp_path):
    # A bad first line does not hide the format; a pair with a `rating` field of metadata stays a pair.
    path = write_rows(tmp_path / "r.jsonl", ["[1, 2]", rating("q", "a", 1), rating("q", "b", 2)])
    assert load_preferences(path, skip_bad_rows=True).ratings.pairs == 1
    pair = write_rows(tmp_path / "p.jsonl", [{"prompt": "q", "chosen": "a", "rejected": "b", "rating": 4}])
    assert load_preferences(pair).ratings is None
    with pytest.raises(DataError, match="no preference fields.*a ratings file has only"):
        load_preferences(write_rows(tmp_path / "m.jsonl", [{"prompt": "q", "chosen": "a", "rejected": "b"},
                                                           rating("q", "a", 1)]))


def test_a_file_of_single_responses_yields_nothing_and_says_why(tmp_path):
    path = write_rows(tmp_path / "r.jsonl", [rating("q", "a", 1), rating("p", "a", 2)])
    with pytest.raises(DataError, match=r"r.jsonl: yields no preference .*2 single-response prompts"):
        load_preferences(path)


def test_limit_counts_groups(tmp_path):
    loaded = load_preferences(write_rows(tmp_path / "r.jsonl", RATED), limit=2)
    assert [g.source for g in loaded.groups] == [f"{tmp_path / 'r.jsonl'}:1,2,3", f"{tmp_path / 'r.jsonl'}:5,6"]


def test_saved_dataset_of_ratings(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = [rating("q", "a", 1, "ann"), rating("q", "b", 3, "ann"), rating("q", "c", 2)]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "ds"))
    loaded = load_preferences(tmp_path / "ds")
    assert [(g.responses, g.source) for g in loaded.groups] == [(("a", "b"), f"{tmp_path / 'ds'}:row 0,1")]
    assert (loaded.ratings.single_response, loaded.ratings.mixed_rater_prompts) == (1, 1)


@pytest.mark.skipif(tiny_base is None, reason="needs torch and transformers")
def test_training_reads_a_ratings_file_with_its_options(tiny_base, tmp_path, capsys):  # noqa: F811
    from rmserve.training.train import train

    rows = []
    for i in range(6):
        rows += [rating(f"hello there {i}", "sure i am fine thanks", 8), rating(f"hello there {i}", "no", 2),
                 rating(f"hello there {i}", "fine", 5)]
    rows.append(rating("how are you", "fine", 4))
    data = write_rows(tmp_path / "ratings.jsonl", rows)
    metrics = train(TrainConfig(
        output_dir=str(tmp_path / "ckpt"), base_model=str(tiny_base), train_data=str(data), dev_data=str(data),
        max_length=32, batch_size=3, max_steps=2, learning_rate=1e-2, warmup_ratio=0.0, progress=False,
        tensorboard=False, threads=1, rating_labels="soft", rating_temperature=2.0))
    # Six prompts of three rated responses: six listwise groups of three pairs each.
    assert (metrics["train_rows"], metrics["train_pairs"], metrics["dev_pairs"]) == (6, 18, 18)
    out = capsys.readouterr().out
    assert "train ratings ratings.jsonl: 19 rated responses to 7 prompts → 6 groups, 18 pairs" in out
    assert "1 single-response prompts yield no pair" in out


def test_options_recorded_in_a_checkpoint():
    recorded = {"rating_labels": "soft", "rating_temperature": 2.0, "rating_ties": "drop", "dev_data": "x"}
    assert RatingOptions.from_checkpoint(recorded) == RatingOptions(labels="soft", temperature=2.0, ties="drop")
    assert RatingOptions.from_checkpoint({"rating_margin_levels": "0,1"}).margin_levels == (0.0, 1.0)
    assert RatingOptions.from_checkpoint({}) == RatingOptions()  # a checkpoint from before ratings existed


def test_pairs_of_a_ratings_file_follow_the_options(tmp_path):
    path = gaps_file(tmp_path)
    soft = load_pairs(path, ratings=RatingOptions(labels="soft", temperature=2.0)).pairs
    default = load_pairs(path).pairs
    assert [p.label for p in default] == [1.0] * len(default)
    assert [p.label for p in soft] == pytest.approx([1 / (1 + math.exp(-g / 2)) for g in [1, 2.5, 5, 1.5, 4, 2.5]])


def test_eval_reads_a_ratings_file_with_the_rating_options(tiny_bundle, tmp_path, capsys):
    from rmserve.cli import main
    from rmserve.training.evaluate import run_evaluation

    data = write_rows(tmp_path / "ratings.jsonl", [rating("hello there", "i am fine thanks", 9),
                                                    rating("hello there", "no", 1), rating("hello there", "fine", 1),
                                                    rating("how are you", "fine", 7), rating("how are you", "no", 2)])
    _, soft = run_evaluation(tiny_bundle, data, device="cpu", ratings=RatingOptions(labels="soft", ties="drop"))
    _, default = run_evaluation(tiny_bundle, data, device="cpu")
    assert list(default.labels) == [1.0, 1.0, 0.5, 1.0]  # the tie between the two 1s is kept by default
    assert list(soft.labels) == pytest.approx([1 / (1 + math.exp(-g)) for g in (8, 8, 5)])
    assert main(["eval", "--bundle", str(tiny_bundle), "--data", str(data), "--device", "cpu", "--json",
                 "--rating-labels", "soft", "--rating-ties", "drop"]) == 0
    assert json.loads(capsys.readouterr().out)["pairs"] == 3


@pytest.mark.skipif(tiny_base is None, reason="needs torch and transformers")
def test_export_reads_a_ratings_dev_file_as_training_did(tiny_base, tmp_path):  # noqa: F811
    from rmserve.training.export import export_bundle
    from rmserve.training.train import train

    rows = []
    for i in range(6):  # three rated responses per prompt, two of them tied: 3 pairs kept, 2 when ties drop
        rows += [rating(f"hello there {i}", "sure i am fine thanks", 8), rating(f"hello there {i}", "no", 5),
                 rating(f"hello there {i}", "fine", 5)]
    data = write_rows(tmp_path / "ratings.jsonl", rows)
    metrics = train(TrainConfig(
        output_dir=str(tmp_path / "ckpt"), base_model=str(tiny_base), train_data=str(data), dev_data=str(data),
        max_length=32, batch_size=3, max_steps=1, warmup_ratio=0.0, progress=False, tensorboard=False, threads=1,
        rating_ties="drop"))
    assert metrics["dev_pairs"] == 12
    bundle = export_bundle(tmp_path / "ckpt", tmp_path / "bundle")
    assert bundle.manifest.normalization.computed_on.endswith("of 12 pairs")
