"""Self-contained HTML pages for the Kubeflow UI's HTML viewer: training curves, the evaluation report and the
validation result, each one file with its pictures inline.

Why hand-written: the UI shows an HTML artifact as one file in a sandboxed frame, so a page may not link to
other pages or load scripts and styles from a CDN (the Great Expectations Data Docs index does both and shows
broken there). Plotting libraries that write HTML (plotly, mpld3, bokeh) load their JavaScript from a CDN
unless a megabyte of it is inlined; a static PNG from matplotlib, base64-encoded in a data URI, needs nothing
at view time. What remains is a few escaped tables around those images.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from softprompt.io import atomic_write_text
from softprompt.validation import show_example

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.5em; color: #1f2328; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.9em; }
th, td { border: 1px solid #d0d7de; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f6f8fa; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.pass { color: #1a7f37; font-weight: 600; } .fail { color: #cf222e; font-weight: 600; }
.text { max-width: 48em; white-space: pre-wrap; word-break: break-word; }
img { max-width: 100%; height: auto; }
"""


# ------------------------------------------------------------------------------------------- page parts


def page(title: str, parts: Iterable[str]) -> str:
    """One complete HTML document: inline style, no external URL."""
    body = "\n".join(parts)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{STYLE}</style></head>\n<body>\n<h1>{html.escape(title)}</h1>\n{body}\n</body></html>\n")


def heading(text: str) -> str:
    return f"<h2>{html.escape(text)}</h2>"


def paragraph(text: str) -> str:
    return f"<p>{html.escape(text)}</p>"


def cell(value: Any, css: str = "") -> str:
    if value is None:
        value = "-"
    if isinstance(value, float):
        value, css = f"{value:.4g}", css or "num"
    elif isinstance(value, int) and not isinstance(value, bool):
        css = css or "num"
    attr = f' class="{css}"' if css else ""
    return f"<td{attr}>{html.escape(str(value))}</td>"


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A table of escaped values; a row item given as (value, css class) gets that class."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(cell(*v) if isinstance(v, tuple) else cell(v) for v in row) + "</tr>"
                   for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def key_values(values: dict[str, Any]) -> str:
    return table(("name", "value"), values.items())


def figure_png(fig: Any) -> bytes:
    """A matplotlib figure as PNG bytes; the figure is closed."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    pyplot().close(fig)
    return buf.getvalue()


def figure_tag(fig: Any, alt: str) -> str:
    """A matplotlib figure as an inline PNG (<img src="data:image/png;base64,...">); the figure is closed."""
    data = base64.b64encode(figure_png(fig)).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # no display: render to memory only
    import matplotlib.pyplot as plt

    return plt


def line_chart(series: dict[str, Sequence[tuple[float, float]]], xlabel: str, ylabel: str, title: str) -> str:
    """One or more curves over steps, as an inline image; empty series are left out."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for name, points in series.items():
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker="o" if len(points) < 30 else None, markersize=3, label=name)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    if len([s for s in series.values() if s]) > 1:
        ax.legend()
    return figure_tag(fig, title)


def bar_chart(values: dict[str, float], ylabel: str, title: str) -> str:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(values) + 2), 3.4))
    bars = ax.bar(list(values), list(values.values()), color=["#4c72b0"] * (len(values) - 1) + ["#dd8452"])
    ax.bar_label(bars, fmt="%.2f")
    ax.set(ylabel=ylabel, title=title)
    ax.set_ylim(0, max([*values.values(), 0.0]) * 1.15 or 1.0)  # from 0, room for the labels
    return figure_tag(fig, title)


def confusion_chart(labels: Sequence[str], matrix: Sequence[Sequence[int]], title: str) -> str:
    """The confusion matrix as a heat map with counts (rows: target, columns: output)."""
    plt = pyplot()
    n = len(labels)
    fig, ax = plt.subplots(figsize=(1.3 * n + 2.5, 1.1 * n + 1.8))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(n), labels, rotation=30, ha="right")
    ax.set_yticks(range(n), labels)
    ax.set(xlabel="output", ylabel="target", title=title)
    peak = max((max(row) for row in matrix), default=0) or 1
    for i, row in enumerate(matrix):
        for j, count in enumerate(row):
            ax.text(j, i, str(count), ha="center", va="center", color="white" if count > peak / 2 else "black")
    return figure_tag(fig, title)


def write_page(path: str | Path, text: str) -> Path:
    return atomic_write_text(path, text)


# ------------------------------------------------------------------------------------------- training


def points(curve: Sequence[dict[str, Any]], key: str) -> list[tuple[float, float]]:
    return [(row["step"], row[key]) for row in curve if row.get(key) is not None]


def training_page(meta: dict[str, Any], summary: dict[str, Any]) -> str:
    """The train step's page: training loss and validation score over steps, and the run's summary numbers."""
    main = meta.get("main_metric") or "score"
    title = f"{meta.get('task')}: training (seed {meta.get('train', {}).get('seed')})"
    parts = [line_chart({"training loss": points(meta.get("loss_curve") or [], "loss")}, "step", "loss",
                        "Training loss"),
             line_chart({f"validation {main}": points(meta.get("validation_curve") or [], main)}, "step", main,
                        f"Validation {main}") if meta.get("validation_curve") else
             paragraph("No validation split: no validation curve."),
             heading("Summary"), key_values(summary),
             heading("Settings"), key_values({"base model": meta.get("base_model"),
                                              "prompt length": meta.get("prompt_length"), "init": meta.get("init"),
                                              **{k: v for k, v in (meta.get("train") or {}).items()
                                                 if not isinstance(v, dict)}})]
    return page(title, parts)


def lm_adapt_page(meta: dict[str, Any], summary: dict[str, Any]) -> str:
    """The lm-adapt step's page: its loss curve (training and validation) and validation loss before/after."""
    before = meta.get("validation_loss_before")
    series = {"training loss": points(meta.get("loss_curve") or [], "loss"),  # validation: before training too
              "validation loss": ([(0, before)] if before is not None else [])
              + points(meta.get("validation_loss_curve") or [], "loss")}
    parts = [line_chart(series, "step", "loss", f"LM adaptation ({meta.get('objective')}) loss"),
             heading("Summary"), key_values(summary)]
    return page(f"LM adaptation of {meta.get('base_model')}", parts)


# ------------------------------------------------------------------------------------------- evaluation


def non_label_share(confusion: dict[str, Any]) -> float:
    """Share of outputs that were not a label: the `<other>` column of the confusion matrix."""
    from softprompt.metrics import OTHER  # here: the other pages need no sklearn

    labels, matrix = confusion["labels"], confusion["matrix"]
    total = sum(map(sum, matrix))
    if OTHER not in labels or not total:
        return 0.0
    j = labels.index(OTHER)
    return sum(row[j] for row in matrix) / total


def wrong_predictions(rows: Iterable[dict[str, Any]], limit: int = 20) -> list[dict[str, Any]]:
    """The first `limit` labeled examples the model got wrong (rows of NAME.predictions.jsonl)."""
    wrong = (r for r in rows if not r.get("correct") and r.get("targets") != "<unk>")
    return [r for r, _ in zip(wrong, range(limit))]


def evaluation_page(result: dict[str, Any], wrong: Sequence[dict[str, Any]]) -> str:
    """Per-prompt scores beside the ensemble, the confusion matrix, the non-label share and wrong predictions."""
    main = result["main_metric"]
    scores = {f"prompt {i}": v for i, v in enumerate(result.get("per_prompt") or [result[main]])}
    if result.get("ensemble"):
        scores["ensemble"] = result["ensemble"].get(main, result["ensemble"].get("accuracy"))
    parts = [paragraph(f"{result['split']} split, {result['num_examples']} examples, mode {result['mode']}; "
                       f"best prompt: {result.get('best_prompt', 0)}."),
             heading(f"Scores ({main})"), bar_chart(scores, main, f"{main} per prompt and ensemble"),
             table(("", main), scores.items())]
    if cm := result.get("confusion_matrix"):
        parts += [heading("Confusion matrix (best prompt)"), confusion_chart(cm["labels"], cm["matrix"],
                                                                             "Confusion matrix"),
                  paragraph(f"Outputs that were not a label: {non_label_share(cm):.1%} "
                            f"(the {cm['labels'][-1]} column).")]
    parts += [heading(f"Wrong predictions (first {len(wrong)})"),
              table(("idx", "input", "target", "output"),
                    [(r.get("idx"), (r.get("inputs"), "text"), r.get("targets"), (r.get("prediction"), "text"))
                     for r in wrong]) if wrong else paragraph("None: every prediction was right.")]
    return page(f"{result['task']}: evaluation", parts)


# ------------------------------------------------------------------------------------------- validation


def verdict_cell(success: bool) -> tuple[str, str]:
    """A table cell (value, css class) that reads pass or FAIL."""
    return ("pass", "pass") if success else ("FAIL", "fail")


def validation_page(report: dict[str, Any]) -> str:
    """Every expectation with its result and sample offending rows; failures first."""
    stats = report["statistics"]
    verdict = "PASSED" if report["success"] else "FAILED"
    checks = sorted(report["checks"], key=lambda c: c["success"])
    rows = []
    for c in checks:
        counts = (f"{c['unexpected_count']} of {c.get('element_count')}" if "unexpected_count" in c
                  else str(c.get("observed_share", c.get("observed_value", ""))))
        examples = "; ".join(show_example(e) for e in c.get("examples", []))
        rows.append((c["split"], c["check"], c.get("column") or "", c["expectation"], c.get("description") or "",
                     verdict_cell(c["success"]), counts,
                     (c.get("error") or examples, "text")))
    splits = [(s, i["file"], i["rows"], i["unreadable_lines"], verdict_cell(i["success"]))
              for s, i in report["splits"].items()]
    parts = [f'<p class="{"pass" if report["success"] else "fail"}">{verdict}: '
             f"{stats['successful_expectations']} of {stats['evaluated_expectations']} expectations met</p>",
             heading("Splits"), table(("split", "file", "rows", "unreadable lines", "result"), splits),
             heading("Expectations"),
             table(("split", "check", "column", "expectation", "meaning", "result", "failing / observed",
                    "sample offending rows"), rows)]
    return page(f"{report['task']}: data validation", parts)

