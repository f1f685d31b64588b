"""The report's HTML: the plots as embedded PNGs, tables, notes, and the run's status."""
from __future__ import annotations

import datetime
import html
import json
import os
from typing import Optional, Sequence

from layout import REPORT_FILE
from evaluation.report.compression_plot import plot_compression
from evaluation.report.inputs import ReportInputs, method_metrics
from evaluation.report.plots import (LABELS, plot_popularity_bias, plot_recall_curves,
                                     plot_timings, plot_training)

_STYLE = """body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;
text-align:right}th:first-child,td:first-child{text-align:left}img{max-width:100%}
.note{color:#666;font-size:.9em}"""


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    def cell(v: object) -> str:
        if isinstance(v, float):
            return f"{v:.4f}" if abs(v) < 10 else f"{v:,.1f}"
        return html.escape(str(v))
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _caption(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def _image(png: Optional[str], plot_id: str, alt: str, points: Optional[dict] = None) -> str:
    """An ``<img>`` with the PNG inline; ``points`` (drawn data) go in ``data-points``."""
    if png is None:
        return f'<p class="note">{html.escape(alt)}: no data in this run.</p>'
    data = f' data-points="{html.escape(json.dumps(points))}"' if points is not None else ""
    return (f'<img id="{plot_id}" class="plot" alt="{html.escape(alt)}"{data} '
            f'src="data:image/png;base64,{png}">')


def render_html(inputs: ReportInputs) -> str:
    ev = inputs.evaluation
    k = ev.get("gate_k", 50)
    methods = method_metrics(inputs)
    shown = ["recall@10", f"recall@{k}", "ndcg@10", "coverage@10"]
    metric_rows = [[LABELS.get(n, n)] + [m.get(s) for s in shown] for n, m in methods.items()]
    recall = plot_recall_curves(inputs)
    sections = [
        ("Recall and coverage against the baselines", _caption(
            "Each eval user's train items are excluded from every ranking; recall counts "
            "eval items outside the train catalog as misses. Coverage@K: share of the "
            "catalog that appears in at least one user's top K.")
         + _image(recall.png, "plot-recall", "recall@K and coverage@K", recall.points)
         + _table(["method"] + shown, metric_rows)),
        ("Popularity bias", _caption(
            "Train interactions of each recommended item (top 10 of serving_default for "
            "eval users, one count per slot) against those of the catalog items. Mass "
            "further right than the catalog's means the model favours popular items.")
         + _image(plot_popularity_bias(inputs.bias) if inputs.bias else None,
                  "plot-popularity", "popularity bias histogram")),
        ("Compression trade-off", _caption(
            "Every model the compressor measured on the evaluator's split; the chosen one "
            "is pushed if it stays above the dashed line.")
         + _image(plot_compression(inputs.compression) if inputs.compression else None,
                  "plot-compression", "compression size against recall")),
        ("Training loss", _image(plot_training(inputs.history), "plot-loss", "training loss")),
        ("Component timings", _caption(
            "Wall time of the steps before the pipeline and of every component in this "
            "run (cached components take about 0 s); peak memory is the sampled resident "
            "memory of the run's process and its Beam worker processes.")
         + _image(plot_timings(inputs.component_seconds, inputs.component_peak_mb),
                  "plot-timings", "component wall time")),
    ]
    status = []
    if inputs.run_summary:
        s = inputs.run_summary
        status.append(f"evaluator: {'BLESSED' if s.get('blessed') else 'NOT BLESSED'}")
        status.append(f"pushed: {s.get('pushed_version_dir')}" if s.get("pushed")
                      else "not pushed")
    status.append(f"gate K = {k}; {ev.get('eval_users', '?')} eval users; "
                  f"catalog {ev.get('catalog_size', '?')} items")
    notes = "".join(f'<p class="note">{html.escape(n)}</p>' for n in inputs.notes)
    created = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    body = "".join(f"<h2>{html.escape(title)}</h2>{content}" for title, content in sections)
    return (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>Two-tower run report"
            f"</title><style>{_STYLE}</style></head><body><h1>Two-tower recommender: run "
            f"report</h1><p>{html.escape(inputs.pipeline_root)} &middot; {created}</p>"
            f"<p>{'<br>'.join(html.escape(x) for x in status)}</p>{notes}{body}"
            f"</body></html>\n")


def write_report(inputs: ReportInputs, path: Optional[str] = None) -> str:
    """Writes the page (atomically) to ``path``, by default ``<root>/report.html``."""
    path = path or os.path.join(inputs.pipeline_root, REPORT_FILE)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(render_html(inputs))
    os.replace(tmp, path)
    return path
