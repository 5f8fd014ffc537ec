"""The HTML report of a process reward model's evaluation (`rmserve eval --report` on a PRM bundle): the
figures of training/evaluate_steps.py with their intervals, the shortcut baselines beside the step AUC,
best-of-N selection against an outcome model and random choice as a chart, the training curves, and every
metric in a table. Drawn with training/report.py's chart and table helpers (inline SVG, no library)."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from rmserve.training.report import (
    COLORS,
    Chart,
    _cell,
    _table,
    flatten,
    page_head,
    read_train_log,
    training_curves,
)

STEP_CURVES = ("dev_step_auc", "dev_first_error")


def _with_interval(value: Any, interval: list[float] | None) -> str:
    return _cell(value) + (f" [{interval[0]:.4f}, {interval[1]:.4f}]" if interval else "")


def selection_chart(best: dict[str, Any]) -> str:
    """Selection accuracy of each chooser as a bar with its 95 % interval."""
    names = [n for n in ("prm_min", "prm_last", "prm_mean", "prm_prod", "outcome", "random") if best.get(n) is not None]
    chart = Chart(f"best-of-{best['candidates_per_problem']} selection accuracy", "chooser", "share of problems "
                  "solved", (-0.5, len(names) - 0.5), (0.0, 1.0), width=520)
    for i, name in enumerate(names):
        color = COLORS["rejected"] if name == "outcome" else "#888" if name == "random" else COLORS["chosen"]
        chart.bar(i - 0.35, i + 0.35, best[name], color, 0.6)
        interval = best["intervals"].get(name)
        if interval:
            chart.line([i, i], interval, "#222")
        chart.text(i, min(best[name], 0.9) + 0.05, name.replace("prm_", "PRM "), size=9)
    return chart.svg()


def render_step_report(metrics: dict[str, Any], train_log: list[dict[str, Any]] | None, source: str) -> str:
    ci = metrics["intervals"]
    figures = _table(["figure", "value [95 % interval]"], [
        ["step AUC", _with_interval(metrics["step_auc"], ci.get("step_auc"))],
        ["step accuracy (good at reward >= 0.5)", _with_interval(metrics["step_accuracy"], ci.get("step_accuracy"))],
        ["first-error localisation", _with_interval(metrics["first_error_localisation"],
                                                    ci.get("first_error_localisation"))],
        ["right chains with no step below 0.5", _with_interval(metrics["right_chains_all_above"],
                                                               ci.get("right_chains_all_above"))],
    ]).replace("&lt;", "<")
    shortcuts = _table(["shortcut feature", "step AUC (better direction)"],
                       [[name.replace("_", " "), value] for name, value in metrics["shortcut_baselines"].items()])
    best = metrics.get("best_of")
    if best:
        rows = [[name.replace("prm_", "PRM, aggregate ").replace("_minus_", " − "), _with_interval(
            best[name], best["intervals"].get(name))] for name in
            ("prm_min", "prm_last", "prm_mean", "prm_prod", "outcome", "random", "prm_minus_outcome", "prm_minus_random")
            if name in best]
        best_html = (f"<p>{best['problems']} problems of {best['candidates_per_problem']} candidates from "
                     f"{html.escape(Path(best['data']).name)}; a problem counts when the chosen candidate is right "
                     "(ties split evenly).</p>" + selection_chart(best) + _table(["chooser", "accuracy [95 % interval]"],
                                                                                 rows))
    else:
        best_html = "<p class=note>No best-of-N data given (--best-of).</p>"
    records = [r for r in train_log or [] if any(k in r for k in ("loss", "accuracy", "lr", *STEP_CURVES))]
    curves = training_curves(records) if records else []
    curves_html = (f"<p>From {html.escape(source)}.</p>" + "".join(curves)) if curves else \
        f"<p class=note>No training curves ({html.escape(source)}).</p>"
    title = f"rmserve evaluation: process reward model {metrics['bundle_id']} on {Path(metrics['data']).name}"
    return page_head(title) + f"""<p>{metrics['chains']} chains of {metrics['problems']} problems, {metrics['steps']} steps ({metrics['bad_steps']} bad),
{metrics['steps_cut']} steps cut by truncation. Intervals: 95 %, from 1,000 bootstrap resamples of the problems.</p>
<h2 id="steps">Step figures</h2>
{figures}
<h3>Shortcut baselines</h3>
<p>What a surface feature alone reaches on the same steps; the step AUC means something only above these.</p>
{shortcuts}
<h2 id="best-of">Best-of-N selection</h2>
{best_html}
<h2 id="training-curves">Training curves</h2>
{curves_html}
<h2 id="metrics">All metrics</h2>
{_table(["metric", "value"], flatten(metrics))}
</body></html>
"""


def write_step_report(path: str | Path, metrics: dict[str, Any], train_log: tuple[Path | None, str]) -> Path:
    log_path, source = train_log
    records = read_train_log(log_path) if log_path else None
    path = Path(path)
    path.write_text(render_step_report(metrics, records, source), encoding="utf-8")
    return path
