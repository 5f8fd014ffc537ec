"""The evaluation report: one self-contained HTML file with inline SVG plots drawn here, no plotting library.

Sections: the headline figures with their bootstrap intervals and what the calibration temperature was
fitted on, training curves (from the checkpoint's JSONL training log), reliability diagram, reward vs
response length (accuracy of each length subset with its interval), reward histograms of chosen vs
rejected, and a table of every metric and interval. The metrics and the
scored pairs come from `rmserve.training.evaluate`; this module only draws them.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from rmserve.training.evaluate import ScoredPairs
from rmserve.training.log import LOG_FILE

SCATTER_POINTS = 1500  # per side; more only slows the browser down
COLORS = {"chosen": "#1f77b4", "rejected": "#d62728", "loss": "#1f77b4", "dev_loss": "#ff7f0e",
          "accuracy": "#1f77b4", "dev_accuracy": "#ff7f0e", "lr": "#2ca02c"}
CURVES = (("loss", ("loss", "dev_loss")), ("accuracy", ("accuracy", "dev_accuracy")), ("learning rate", ("lr",)))


def find_train_log(provenance: dict[str, Any], explicit: str | Path | None = None) -> tuple[Path | None, str]:
    """(the training log, where it was looked for): `explicit` if given (it must exist), else
    train_log.jsonl in the checkpoint the bundle was exported from."""
    if explicit is not None:
        path = Path(explicit)
        if not path.is_file():
            raise FileNotFoundError(f"training log {path} does not exist")
        return path, str(path)
    checkpoint = provenance.get("checkpoint")
    if not checkpoint:
        return None, "the bundle's provenance names no checkpoint and no --train-log was given"
    path = Path(checkpoint) / LOG_FILE
    return (path, str(path)) if path.is_file() else (None, f"looked for {path}; pass --train-log")


def read_train_log(path: Path) -> list[dict[str, Any]]:
    """JSON objects of a JSONL log; an unfinished last line (a run still writing) is left out."""
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            if number == len(lines):
                break
            raise ValueError(f"{path}:{number}: not a JSON object: {e}") from None
        if not isinstance(record, dict):
            raise ValueError(f"{path}:{number}: not a JSON object")
        records.append(record)
    return records


def _nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / count
    power = 10.0 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def _fmt(x: float) -> str:
    return f"{x:.3g}" if x != 0 else "0"


class Chart:
    """An x/y plot area with axes, drawn as SVG elements in data coordinates."""

    def __init__(self, title: str, x_label: str, y_label: str, x_range: tuple[float, float],
                 y_range: tuple[float, float], width: int = 460, height: int = 300):
        self.width, self.height = width, height
        self.left, self.right, self.top, self.bottom = 60, 15, 30, 45
        self.x0, self.x1 = self._widen(*x_range)
        self.y0, self.y1 = self._widen(*y_range)
        self.title, self.x_label, self.y_label = title, x_label, y_label
        self.items: list[str] = []
        self.legend: list[tuple[str, str]] = []

    @staticmethod
    def _widen(lo: float, hi: float) -> tuple[float, float]:
        if not (math.isfinite(lo) and math.isfinite(hi)):
            return 0.0, 1.0
        if hi <= lo:
            pad = abs(lo) * 0.1 or 1.0
            return lo - pad, hi + pad
        return lo, hi

    def px(self, x: float) -> float:
        return self.left + (x - self.x0) / (self.x1 - self.x0) * (self.width - self.left - self.right)

    def py(self, y: float) -> float:
        return self.height - self.bottom - (y - self.y0) / (self.y1 - self.y0) * (self.height - self.top - self.bottom)

    def line(self, xs, ys, color: str, label: str | None = None, dashed: bool = False, markers: bool = False) -> None:
        points = [(self.px(x), self.py(y)) for x, y in zip(xs, ys) if math.isfinite(x) and math.isfinite(y)]
        if not points:
            return
        dash = ' stroke-dasharray="5,4"' if dashed else ""
        coords = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
        self.items.append(f'<polyline points="{coords}" fill="none" stroke="{color}" stroke-width="1.6"{dash}/>')
        if markers or len(points) == 1:
            self.items.extend(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="{color}"/>' for x, y in points)
        if label:
            self.legend.append((label, color))

    def points(self, xs, ys, color: str, label: str | None = None, radius: float = 2.0) -> None:
        self.items.extend(f'<circle cx="{self.px(x):.1f}" cy="{self.py(y):.1f}" r="{radius}" fill="{color}" '
                          f'fill-opacity="0.45"/>' for x, y in zip(xs, ys) if math.isfinite(x) and math.isfinite(y))
        if label:
            self.legend.append((label, color))

    def bar(self, x_lo: float, x_hi: float, y: float, color: str, opacity: float = 0.5) -> None:
        left, right, top, base = self.px(x_lo), self.px(x_hi), self.py(max(y, self.y0)), self.py(self.y0)
        self.items.append(f'<rect x="{left:.1f}" y="{top:.1f}" width="{max(right - left, 0.5):.1f}" '
                          f'height="{max(base - top, 0.0):.1f}" fill="{color}" fill-opacity="{opacity}"/>')

    def text(self, x: float, y: float, text: str, size: int = 10) -> None:
        self.items.append(f'<text x="{self.px(x):.1f}" y="{self.py(y):.1f}" font-size="{size}" '
                          f'text-anchor="middle">{html.escape(text)}</text>')

    def svg(self) -> str:
        w, h, bottom = self.width, self.height, self.height - self.bottom
        parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" '
                 f'font-family="sans-serif" role="img" aria-label="{html.escape(self.title)}">',
                 f'<text x="{w / 2:.0f}" y="18" font-size="13" text-anchor="middle" font-weight="bold">'
                 f'{html.escape(self.title)}</text>']
        for tick in _nice_ticks(self.x0, self.x1):
            x = self.px(tick)
            parts.append(f'<line x1="{x:.1f}" y1="{self.top}" x2="{x:.1f}" y2="{bottom}" stroke="#eee"/>'
                         f'<text x="{x:.1f}" y="{bottom + 14}" font-size="10" text-anchor="middle">{_fmt(tick)}</text>')
        for tick in _nice_ticks(self.y0, self.y1):
            y = self.py(tick)
            parts.append(f'<line x1="{self.left}" y1="{y:.1f}" x2="{w - self.right}" y2="{y:.1f}" stroke="#eee"/>'
                         f'<text x="{self.left - 5}" y="{y + 3:.1f}" font-size="10" text-anchor="end">{_fmt(tick)}</text>')
        parts.append(f'<rect x="{self.left}" y="{self.top}" width="{w - self.left - self.right}" '
                     f'height="{bottom - self.top}" fill="none" stroke="#444"/>')
        parts.extend(self.items)
        parts.append(f'<text x="{(self.left + w - self.right) / 2:.0f}" y="{h - 8}" font-size="11" '
                     f'text-anchor="middle">{html.escape(self.x_label)}</text>')
        parts.append(f'<text x="14" y="{(self.top + bottom) / 2:.0f}" font-size="11" text-anchor="middle" '
                     f'transform="rotate(-90 14 {(self.top + bottom) / 2:.0f})">{html.escape(self.y_label)}</text>')
        box = 22 + 6 * max((len(label) for label, _ in self.legend), default=0)  # ~6 px per character
        left = w - self.right - box - 4
        if self.legend:  # a light box keeps the legend readable over data
            parts.append(f'<rect x="{left}" y="{self.top + 2}" width="{box}" height="{14 * len(self.legend) + 4}" '
                         'fill="#fff" fill-opacity="0.8"/>')
        for i, (label, color) in enumerate(self.legend):
            y = self.top + 12 + 14 * i
            parts.append(f'<rect x="{left + 4}" y="{y - 7}" width="10" height="10" fill="{color}"/>'
                         f'<text x="{left + 18}" y="{y + 2}" font-size="10">{html.escape(label)}</text>')
        parts.append("</svg>")
        return "\n".join(parts)


def _range(*arrays, margin: float = 0.04) -> tuple[float, float]:
    """The span of the finite values, widened a little so that no point sits on the frame."""
    values = np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in arrays])
    values = values[np.isfinite(values)]
    if not values.size:
        return 0.0, 1.0
    lo, hi = float(values.min()), float(values.max())
    return lo - margin * (hi - lo), hi + margin * (hi - lo)


def training_curves(records: list[dict[str, Any]]) -> list[str]:
    """One chart per quantity the log holds: training and dev loss, training and dev accuracy, learning rate."""
    charts = []
    for title, keys in CURVES:
        series = {}
        for k in keys:
            # A resumed run appends to its log and repeats steps: the later line is the one that counts.
            by_step = {r["step"]: r[k] for r in records
                       if isinstance(r.get(k), (int, float)) and isinstance(r.get("step"), (int, float))}
            if by_step:
                series[k] = sorted(by_step.items())
        if not series:
            continue
        steps = [s for v in series.values() for s, _ in v]
        values = [y for v in series.values() for _, y in v]
        chart = Chart(title, "step", title, _range(steps), _range(values))
        for k, v in series.items():
            chart.line([s for s, _ in v], [y for _, y in v], COLORS[k], k, markers=k.startswith("dev_"))
        charts.append(chart.svg())
    return charts


def reliability_chart(metrics: dict[str, Any]) -> str:
    bins = metrics["calibration"]["bins"]
    chart = Chart(f"reliability (T = {metrics['temperature']:.3g}, ECE {metrics['ece']:.3f})",
                  "predicted P(preferred) = σ(Δ/T)", "observed preference (mean label)", (0.0, 1.0), (0.0, 1.0))
    chart.line([0.0, 1.0], [0.0, 1.0], "#888", "perfect calibration", dashed=True)
    filled = [b for b in bins if b["count"]]
    for b in filled:
        chart.bar(b["lo"], b["hi"], b["observed"], COLORS["chosen"], 0.35)
        chart.text((b["lo"] + b["hi"]) / 2, min(b["observed"], 0.92) + 0.04, str(b["count"]), size=8)
    chart.line([b["predicted"] for b in filled], [b["observed"] for b in filled], COLORS["rejected"],
               "mean label per bin", markers=True)
    return chart.svg()


def _sample(n: int, limit: int) -> np.ndarray:
    return np.arange(n) if n <= limit else np.random.default_rng(0).choice(n, limit, replace=False)


def length_scatter(scored: ScoredPairs) -> str:
    tokens = np.concatenate([scored.chosen_tokens, scored.rejected_tokens])
    rewards = np.concatenate([scored.chosen, scored.rejected])
    chart = Chart("reward vs response length", "response tokens", "reward", _range(tokens), _range(rewards))
    for side, lengths, values in (("chosen", scored.chosen_tokens, scored.chosen),
                                  ("rejected", scored.rejected_tokens, scored.rejected)):
        keep = _sample(len(values), SCATTER_POINTS)
        chart.points(lengths[keep].astype(float), values[keep].astype(float), COLORS[side], side)
    return chart.svg()


def reward_histograms(metrics: dict[str, Any]) -> str:
    hist = metrics["reward"]["histogram"]
    edges = hist["edges"]
    top = max(hist["chosen"] + hist["rejected"] + [1])
    chart = Chart("reward histograms", "reward", "responses", (edges[0], edges[-1]), (0.0, float(top)))
    for side in ("chosen", "rejected"):
        for lo, hi, count in zip(edges[:-1], edges[1:], hist[side]):
            if count:
                chart.bar(lo, hi, count, COLORS[side], 0.45)
        chart.legend.append((side, COLORS[side]))
    return chart.svg()


def _cell(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1e4 else f"{value:.4g}"
    if isinstance(value, list) and len(value) == 2 and all(isinstance(v, float) for v in value):
        return f"[{value[0]:.4f}, {value[1]:.4f}]"  # a bootstrap interval
    return html.escape(str(value))


def _with_interval(figures: dict[str, Any], name: str) -> str:
    """A figure and, when it has one, its interval: '0.6502 [0.5850, 0.7140]'."""
    interval = figures.get(f"{name}_ci95")
    return _cell(figures.get(name)) + (f" {_cell(interval)}" if interval else "")


def _intervals_note(metrics: dict[str, Any]) -> str:
    b = metrics.get("bootstrap")
    if not b:
        return "<p>No intervals (run without bootstrap resamples).</p>"
    return (f"<p>[lo, hi] after a figure: its {b['level']:.0%} percentile bootstrap interval over {b['resamples']} "
            f"resamples of the {b['prompts']} prompts ({b['pairs']} pairs; every pair of a drawn prompt comes with "
            f"it; seed {b['seed']}).</p>")


def _temperature_note(calibration: dict[str, Any]) -> str:
    if "fitted_on" not in calibration:
        return ""
    said = ("<b>in-sample</b>: the temperature was fitted on this file, so ECE and log-loss at T flatter it"
            if calibration["in_sample"] else "not this file: ECE and log-loss at T are measured on pairs the "
            "temperature never saw")
    return f"<p>Temperature fitted on {html.escape(calibration['fitted_on'])} ({said}).</p>"


def page_head(title: str) -> str:
    """The start of an evaluation report page, up to and with its heading; both report kinds share it."""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; max-width: 1000px; }}
svg {{ margin: 0.5em 1em 0.5em 0; vertical-align: top; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; }}
td, th {{ border: 1px solid #ccc; padding: 3px 8px; text-align: right; font-size: 13px; }}
td:first-child, th:first-child {{ text-align: left; }}
.note {{ color: #a33; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
"""


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def flatten(metrics: dict[str, Any], prefix: str = "") -> list[list[Any]]:
    """(dotted name, value) for every scalar metric and interval; other lists (bins, buckets, histograms) have
    their own tables."""
    rows = []
    for key, value in metrics.items():
        if isinstance(value, dict):
            rows.extend(flatten(value, f"{prefix}{key}."))
        elif not isinstance(value, list) or key.endswith("_ci95"):
            rows.append([prefix + key, value])
    return rows


def render_report(metrics: dict[str, Any], scored: ScoredPairs, train_log: list[dict[str, Any]] | None,
                  train_log_source: str) -> str:
    """The report as one HTML string."""
    curves = training_curves(train_log) if train_log else []
    if train_log is None:
        curves_html = f"<p class=note>No training log found ({html.escape(train_log_source)}).</p>"
    elif not curves:
        curves_html = f"<p class=note>{html.escape(train_log_source)} holds no step with loss, accuracy or lr.</p>"
    else:
        curves_html = f"<p>From {html.escape(train_log_source)}.</p>" + "".join(curves)
    length = metrics["length"]
    buckets = _table(["response tokens (pair total)", "pairs", "ties", "accuracy", "95 % interval"],
                     [[f"{b['min_tokens']}–{b['max_tokens']}", b["pairs"], b["ties"], b["accuracy"],
                       b.get("accuracy_ci95")] for b in length["buckets"]])
    split = _table(["preferred response is", "pairs", "accuracy", "95 % interval"],
                   [[name.replace("_", " "), length[name]["pairs"], length[name]["accuracy"],
                     length[name].get("accuracy_ci95")]
                    for name in ("preferred_longer", "preferred_shorter", "same_length")]
                   + [["(the longer wins: accuracy of that rule)", "", length["longer_wins_accuracy"],
                       length.get("longer_wins_accuracy_ci95")]])
    calibration = _table(["predicted from", "to", "count", "mean predicted", "mean label"],
                         [[b["lo"], b["hi"], b["count"], b["predicted"], b["observed"]]
                          for b in metrics["calibration"]["bins"]])
    title = f"rmserve evaluation: {metrics.get('bundle_id', '')} on {Path(str(metrics.get('data', ''))).name}"
    return page_head(title) + f"""<p>{metrics['pairs']} pairs ({metrics['ties']} ties), pairwise accuracy {_with_interval(metrics, 'accuracy')},
AUC {_with_interval(metrics, 'auc')}; at T = {metrics['temperature']:.4g}: log-loss
{_with_interval(metrics, 'log_loss')}, ECE {_with_interval(metrics, 'ece')} (at T = 1:
{_with_interval(metrics['calibration'], 'ece_at_t1')}).</p>
{_temperature_note(metrics['calibration'])}
{_intervals_note(metrics)}
<h2 id="training-curves">Training curves</h2>
{curves_html}
<h2 id="calibration">Reliability diagram</h2>
<p>Each pair counts twice, once from each side, so the diagram is symmetric about ½.</p>
{reliability_chart(metrics)}
{calibration}
<h2 id="length">Reward vs length</h2>
{length_scatter(scored)}
{buckets}
{split}
<h2 id="histograms">Reward histograms</h2>
{reward_histograms(metrics)}
<h2 id="metrics">All metrics</h2>
{_table(["metric", "value"], flatten(metrics))}
</body></html>
"""


def write_report(path: str | Path, metrics: dict[str, Any], scored: ScoredPairs,
                 train_log: tuple[Path | None, str]) -> Path:
    """Write the HTML report; `train_log` is what `find_train_log` returns (no log: the report says so)."""
    log_path, source = train_log
    records = read_train_log(log_path) if log_path else None
    path = Path(path)
    path.write_text(render_report(metrics, scored, records, source), encoding="utf-8")
    return path
