"""The HTML report (sections, parseable SVG, training curves) and `rmserve eval` on a real tiny bundle."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from rmserve.training.evaluate import ScoredPairs, evaluate_scores
from rmserve.training.report import find_train_log, read_train_log, render_report, write_report

ROOT = Path(__file__).resolve().parents[2]
SVG = "{http://www.w3.org/2000/svg}"
SECTIONS = ("training-curves", "calibration", "length", "histograms", "metrics")

PAIRS = [
    {"prompt": "hello there", "chosen": "i am fine thanks my friend", "rejected": "no"},
    {"prompt": "how are you", "chosen": "sure", "rejected": "i cannot help with that"},
    {"prompt": "one two", "chosen": "three four five", "rejected": "six"},
    {"prompt": [{"role": "user", "content": "lock pick"}], "chosen": "i cannot help with that", "rejected": "sure one"},
    {"prompt": "hello", "chosen": "hello there how are you doing today", "rejected": "no thanks"},
    {"prompt": "hi", "chosen": "fine", "rejected": "fine thanks", "label": 0.5},
    {"prompt": "two", "chosen": "one", "rejected": "three", "label": 0.2},
    {"prompt": "count", "responses": ["one two three", "one two", "one"]},
]


def svgs(page: str) -> list[ET.Element]:
    return [ET.fromstring(block) for block in re.findall(r"<svg\b.*?</svg>", page, re.S)]


def sample_pairs(n: int = 40) -> ScoredPairs:
    rng = np.random.default_rng(3)
    chosen_tokens, rejected_tokens = rng.integers(5, 200, n), rng.integers(5, 200, n)
    return ScoredPairs(
        chosen=rng.normal(0.3, 1, n).astype(np.float32), rejected=rng.normal(0, 1, n).astype(np.float32),
        labels=np.where(np.arange(n) % 10 == 0, 0.5, 1.0), chosen_tokens=chosen_tokens,
        rejected_tokens=rejected_tokens, chosen_chars=4 * chosen_tokens, rejected_chars=4 * rejected_tokens,
    )


def write_log(path: Path) -> list[dict]:
    records = []
    for step in range(1, 21):
        records.append({"step": step, "loss": 0.7 - 0.01 * step, "accuracy": 0.5 + 0.01 * step, "lr": 1e-5 * step})
        if step % 10 == 0:
            records.append({"step": step, "dev_loss": 0.69 - 0.005 * step, "dev_accuracy": 0.55})
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return records


def test_report_has_every_section_and_valid_svg(tmp_path):
    records = write_log(tmp_path / "train_log.jsonl")
    scored = sample_pairs()
    metrics = {"bundle_id": "rm-x", "data": "dev.jsonl", **evaluate_scores(scored, temperature=1.5)}
    out = write_report(tmp_path / "r.html", metrics, scored, (tmp_path / "train_log.jsonl", "the log"))
    page = out.read_text()
    for section in SECTIONS:
        assert f'id="{section}"' in page, section
    assert "<script" not in page and "src=" not in page and "<link" not in page  # self-contained
    charts = svgs(page)
    titles = [c.get("aria-label") for c in charts]
    assert titles[:3] == ["loss", "accuracy", "learning rate"]
    assert any(t.startswith("reliability (T = 1.5") for t in titles)
    assert "reward vs response length" in titles and "reward histograms" in titles
    assert all(c.tag == SVG + "svg" for c in charts)
    # each curve has one vertex per logged value: 20 training steps, 2 dev evaluations
    loss_lines = charts[0].findall(f"{SVG}polyline")
    assert [len(line.get("points").split()) for line in loss_lines] == [20, 2]
    scatter = charts[titles.index("reward vs response length")]
    assert len(scatter.findall(f"{SVG}circle")) == 2 * len(scored.chosen)
    # the metrics table lists the scalar metrics by dotted name
    assert "<td>length.correlation.tokens.spearman</td>" in page and "<td>auc</td>" in page
    assert len(records) == 22
    # every interval is shown: beside the headline figures, in the length tables and in the metrics table
    lo, hi = metrics["accuracy_ci95"]
    assert f"pairwise accuracy {metrics['accuracy']:.4f} [{lo:.4f}, {hi:.4f}]" in page
    for figure in (metrics["length"]["buckets"][0], metrics["length"]["preferred_shorter"]):
        assert f"<td>[{figure['accuracy_ci95'][0]:.4f}, {figure['accuracy_ci95'][1]:.4f}]</td>" in page
    assert "<td>calibration.ece_at_t1_ci95</td>" in page and "1000 resamples of the 40 prompts" in page


def test_report_without_a_training_log_says_so(tmp_path):
    scored = sample_pairs()
    metrics = {"bundle_id": "rm-x", "data": "dev.jsonl", **evaluate_scores(scored)}
    page = render_report(metrics, scored, None, "looked for /nowhere/train_log.jsonl")
    assert "No training log found (looked for /nowhere/train_log.jsonl)" in page
    assert len(svgs(page)) == 3 and all(f'id="{s}"' in page for s in SECTIONS)


def test_find_and_read_the_training_log(tmp_path):
    assert find_train_log({}) == (None, "the bundle's provenance names no checkpoint and no --train-log was given")
    path, where = find_train_log({"checkpoint": str(tmp_path)})
    assert path is None and str(tmp_path / "train_log.jsonl") in where
    write_log(tmp_path / "train_log.jsonl")
    assert find_train_log({"checkpoint": str(tmp_path)})[0] == tmp_path / "train_log.jsonl"
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        find_train_log({}, tmp_path / "missing.jsonl")

    log = tmp_path / "log.jsonl"
    log.write_text('{"step": 1, "loss": 0.7}\n{"step": 2, "lo')  # a run still writing its last line
    assert read_train_log(log) == [{"step": 1, "loss": 0.7}]
    log.write_text('{"step": 1}\nnot json\n{"step": 3}\n')
    with pytest.raises(ValueError, match=r"log.jsonl:2: not a JSON object"):
        read_train_log(log)


def run_eval(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rmserve.cli", "eval", "--device", "cpu", *args],
                          capture_output=True, text=True, cwd=ROOT)


@pytest.fixture
def pairs_file(tmp_path) -> Path:
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in PAIRS))
    return path


def test_cli_eval_json_and_report_on_the_tiny_bundle(tiny_bundle, pairs_file, tmp_path):
    from rmserve.service.core.bundle import load_bundle
    from rmserve.service.core.engine import OnnxRewardModel

    report = tmp_path / "report.html"
    done = run_eval("--bundle", str(tiny_bundle), "--data", str(pairs_file), "--json", "--report", str(report))
    assert done.returncode == 0, done.stderr
    metrics = json.loads(done.stdout)

    bundle = load_bundle(tiny_bundle)
    engine, encoder = OnnxRewardModel(str(bundle.model_path), device="cpu"), bundle.encoder()
    def reward(prompt, response):
        return float(engine(encoder.pad(encoder.encode([(prompt, response)])))[0])
    ranking = PAIRS[-1]["responses"]
    pairs = [(p["prompt"], p["chosen"], p["rejected"], p.get("label", 1.0)) for p in PAIRS[:-1]]
    pairs += [("count", ranking[i], ranking[j], 1.0) for i, j in ((0, 1), (0, 2), (1, 2))]
    delta = np.array([reward(p, c) - reward(p, r) for p, c, r, _ in pairs])
    labels = np.array([label for *_, label in pairs])
    oriented = np.where(labels > 0.5, delta, -delta)[labels != 0.5]  # the 0.2 label prefers "rejected"
    assert (metrics["pairs"], metrics["ties"]) == (len(PAIRS) + 2, 1)
    assert metrics["accuracy"] == pytest.approx(np.mean(oriented > 0) + 0.5 * np.mean(oriented == 0))
    assert metrics["mean_margin"] == pytest.approx(delta.mean(), abs=1e-5)
    assert metrics["temperature"] == bundle.manifest.calibration.temperature
    # every accuracy, AUC and ECE figure has its interval, resampled by prompt ("count" is one prompt, 3 pairs)
    assert metrics["bootstrap"]["prompts"] == len(PAIRS) and metrics["bootstrap"]["pairs"] == len(PAIRS) + 2
    for figures, name in ((metrics, "accuracy"), (metrics, "auc"), (metrics, "ece"), (metrics, "log_loss"),
                          (metrics["calibration"], "ece_at_t1"), (metrics["length"], "longer_wins_accuracy"),
                          *((b, "accuracy") for b in metrics["length"]["buckets"])):
        lo, hi = figures[f"{name}_ci95"]
        assert lo <= hi, name
    assert metrics["calibration"]["fitted_on"] == bundle.manifest.calibration.fitted_on
    assert metrics["calibration"]["in_sample"] is False
    assert set(metrics["length"]) >= {"buckets", "preferred_longer", "preferred_shorter", "correlation"}
    # the tiny bundle names no checkpoint, so the report says there is no log
    page = report.read_text()
    assert "No training log found" in page and len(svgs(page)) == 3


def test_cli_eval_summary_and_explicit_training_log(tiny_bundle, pairs_file, tmp_path):
    write_log(tmp_path / "log.jsonl")
    report = tmp_path / "report.html"
    done = run_eval("--bundle", str(tiny_bundle), "--data", str(pairs_file), "--limit", "4", "--report",
                    str(report), "--train-log", str(tmp_path / "log.jsonl"))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("bundle tiny on pairs.jsonl: 4 pairs (0 ties), accuracy ")
    assert any(line.startswith("AUC ") for line in lines) and any("Spearman" in line for line in lines)
    assert f"report written to {report}" in done.stderr
    assert len(svgs(report.read_text())) == 6

    assert lines[0].count("[") == 2 and lines[-1].startswith("[lo, hi]: 95% percentile bootstrap intervals")
    plain = run_eval("--bundle", str(tiny_bundle), "--data", str(pairs_file), "--bootstrap", "0", "--json")
    assert plain.returncode == 0 and "accuracy_ci95" not in json.loads(plain.stdout)
    negative = run_eval("--bundle", str(tiny_bundle), "--data", str(pairs_file), "--bootstrap", "-1")
    assert negative.returncode == 2 and "--bootstrap must be 0 or more" in negative.stderr

    missing = run_eval("--bundle", str(tiny_bundle), "--data", str(pairs_file), "--report", str(report),
                       "--train-log", str(tmp_path / "nope.jsonl"))
    assert missing.returncode == 2 and "nope.jsonl does not exist" in missing.stderr
