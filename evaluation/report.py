"""``<pipeline-root>/report.html``: one self-contained page with the run's plots.

Plots (matplotlib, Agg backend, embedded as base64 PNGs, so the file can be mailed
or opened offline):

* recall@K and coverage@K of the model against the baselines on the evaluator's split
* popularity bias: the train popularity of the items the model recommends to eval
  users, against the popularity of the catalog items
* the compression trade-off: size against recall for every method the compressor tried
* training loss per epoch
* wall time (and peak memory) of every pipeline component

Everything comes from artifacts the run recorded in ML Metadata, plus the prepared
split for item popularity; the recommendations are asked from the Trainer's
SavedModel through ``serving_default``.
"""
from __future__ import annotations

import base64
import dataclasses
import datetime
import glob
import html
import io
import json
import os
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

REPORT_FILE = "report.html"
BIAS_TOP_K = 10  # recommendations per user counted in the popularity-bias histogram
MAX_BIAS_USERS = 2000  # eval users asked for recommendations (a fixed sample)
MAX_ITEMS_FOR_ITEM_BASELINES = 5000  # ItemKNN/EASE need a dense items x items matrix
COLOURS = {"model": "#1f77b4", "popularity": "#ff7f0e", "served": "#7f7f7f",
           "itemknn": "#2ca02c", "ease": "#d62728"}
LABELS = {"model": "two-tower (this run)", "popularity": "popularity",
          "served": "served model", "itemknn": "ItemKNN", "ease": "EASE"}


@dataclasses.dataclass
class PopularityBias:
    """Train interaction counts of catalog items and of recommended items.

    ``catalog_counts``: ``[num_catalog_items]``; ``recommended_counts``: one entry per
    recommendation slot (``[users * k]``), the train count of the recommended item.
    """

    catalog_counts: np.ndarray
    recommended_counts: np.ndarray
    users: int
    k: int
    distinct_recommended: int


@dataclasses.dataclass
class ReportInputs:
    pipeline_root: str
    evaluation: dict  # the evaluator's metrics.json
    history: Optional[dict] = None  # the Trainer's training_history.json
    compression: Optional[dict] = None  # the compressor's compression.json
    component_seconds: Mapping[str, float] = dataclasses.field(default_factory=dict)
    component_peak_mb: Mapping[str, float] = dataclasses.field(default_factory=dict)
    extra_baselines: Dict[str, dict] = dataclasses.field(default_factory=dict)
    bias: Optional[PopularityBias] = None
    run_summary: Optional[dict] = None
    notes: List[str] = dataclasses.field(default_factory=list)


# ---------------------------------------------------------------------- inputs

def _read_json(path: str) -> Optional[dict]:
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def item_train_counts(train_dir: str) -> Dict[str, int]:
    """``{item_id: train interactions}`` from the prepared Parquet train split."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    files = sorted(glob.glob(os.path.join(train_dir, "*.parquet")))
    if not files:
        raise FileNotFoundError(f"no Parquet files in {train_dir}")
    counts = pc.value_counts(pq.read_table(files, columns=["item_id"])["item_id"])
    return dict(zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist()))


def eval_users(eval_dir: str, limit: int = MAX_BIAS_USERS, seed: int = 0) -> List[str]:
    """Up to ``limit`` distinct eval users (a fixed random sample when there are more)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    files = sorted(glob.glob(os.path.join(eval_dir, "*.parquet")))
    users = sorted(pc.unique(pq.read_table(files, columns=["user_id"])["user_id"]).to_pylist())
    if len(users) > limit:
        users = sorted(np.random.default_rng(seed).choice(users, limit, replace=False).tolist())
    return users


def recommend(model_dir: str, users: Sequence[str], k: int = BIAS_TOP_K,
              batch_size: int = 256) -> List[List[str]]:
    """Top ``k`` raw item IDs per user from the SavedModel's ``serving_default``."""
    import tensorflow as tf
    fn = tf.saved_model.load(model_dir).signatures["serving_default"]
    out: List[List[str]] = []
    for lo in range(0, len(users), batch_size):
        ids = fn(user_id=tf.constant(list(users[lo:lo + batch_size])))["item_ids"].numpy()
        out.extend([x.decode() for x in row[:k]] for row in ids)
    return out


def popularity_bias(model_dir: str, span_dir: str, k: int = BIAS_TOP_K) -> PopularityBias:
    counts = item_train_counts(os.path.join(span_dir, "train"))
    recs = recommend(model_dir, eval_users(os.path.join(span_dir, "eval")), k)
    flat = [item for row in recs for item in row]
    return PopularityBias(np.array(list(counts.values()), np.int64),
                          np.array([counts.get(item, 0) for item in flat], np.int64),
                          len(recs), k, len(set(flat)))


def item_baselines(span_dir: str, ks: Sequence[int]) -> Tuple[Dict[str, dict], List[str]]:
    """ItemKNN and EASE on the prepared split (skipped for large catalogs)."""
    from evaluation.baselines import evaluate_baseline
    from evaluation.split_data import load_split
    split = load_split(span_dir)
    if len(split.item_ids) > MAX_ITEMS_FOR_ITEM_BASELINES:
        return {}, [f"ItemKNN and EASE skipped: {len(split.item_ids):,} catalog items "
                    f"(dense item-item matrices above {MAX_ITEMS_FOR_ITEM_BASELINES:,})"]
    return {"itemknn": evaluate_baseline(split, "itemknn", ks),
            "ease": evaluate_baseline(split, "ease", ks, l2=300.0)}, []


def collect(pipeline_root: str, uris: Mapping[str, Mapping[str, str]], span_dir: Optional[str],
            component_seconds: Mapping[str, float],
            component_peak_mb: Optional[Mapping[str, float]] = None,
            run_summary: Optional[dict] = None,
            with_item_baselines: bool = True) -> ReportInputs:
    """Reads what the report shows; ``uris`` is ``{component: {output key: uri}}``.

    A part that cannot be read is left out with a note, so one missing artifact does
    not cost the whole report.
    """
    from components.compression.component import REPORT_FILE as COMPRESSION_FILE
    from components.retrieval_evaluator.component import METRICS_FILE
    from trainer.task import HISTORY_FILE
    evaluation = _read_json(os.path.join(uris["RetrievalEvaluator"]["evaluation"], METRICS_FILE))
    if evaluation is None:
        raise FileNotFoundError("the evaluator's metrics.json is missing")
    inputs = ReportInputs(pipeline_root, evaluation, component_seconds=dict(component_seconds),
                          component_peak_mb=dict(component_peak_mb or {}),
                          run_summary=run_summary)
    trainer = uris.get("Trainer", {})
    if "model_run" in trainer:
        inputs.history = _read_json(os.path.join(trainer["model_run"], HISTORY_FILE))
    if "report" in uris.get("ModelCompressor", {}):
        inputs.compression = _read_json(os.path.join(uris["ModelCompressor"]["report"],
                                                     COMPRESSION_FILE))
    if not span_dir:
        inputs.notes.append("popularity bias and ItemKNN/EASE need the prepared split, "
                            "which this run did not record")
    elif "model" in trainer:
        try:
            inputs.bias = popularity_bias(os.path.join(trainer["model"], "Format-Serving"),
                                          span_dir)
        except (OSError, ValueError) as e:
            inputs.notes.append(f"popularity bias not computed: {e}")
        if with_item_baselines:
            try:
                inputs.extra_baselines, notes = item_baselines(span_dir, evaluation["ks"])
                inputs.notes.extend(notes)
            except (OSError, ValueError, MemoryError) as e:
                inputs.notes.append(f"ItemKNN/EASE not computed: {e}")
    return inputs


# ----------------------------------------------------------------------- plots

def _png(fig) -> str:
    import matplotlib.pyplot as plt
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _figure(ncols: int = 1, width: float = 6.4, height: float = 4.0):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt.subplots(1, ncols, figsize=(width * ncols, height), squeeze=False)


def method_metrics(inputs: ReportInputs) -> Dict[str, dict]:
    """``{method: metrics}`` for every method with recall@K figures, model first."""
    methods = {k: v for k, v in inputs.evaluation["metrics"].items() if v}
    methods.update(inputs.extra_baselines)
    return methods


def plot_recall_curves(inputs: ReportInputs) -> str:
    ks = sorted(inputs.evaluation["ks"])
    fig, axes = _figure(2)
    for ax, metric in zip(axes[0], ("recall", "coverage")):
        for name, m in method_metrics(inputs).items():
            values = [m.get(f"{metric}@{k}") for k in ks]
            if None in values:
                continue
            ax.plot(ks, values, marker="o", label=LABELS.get(name, name),
                    color=COLOURS.get(name), linewidth=2.5 if name == "model" else 1.5)
        ax.set_xscale("log")
        ax.set_xticks(ks)
        ax.set_xticklabels([str(k) for k in ks])
        ax.set_xlabel("K (items recommended per user)")
        ax.set_ylabel(f"{metric}@K")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.set_title(f"{metric}@K on the held-out split")
    axes[0][0].legend()
    return _png(fig)


def plot_popularity_bias(bias: PopularityBias) -> str:
    fig, axes = _figure()
    ax = axes[0][0]
    top = max(int(bias.catalog_counts.max(initial=1)), 1)
    bins = np.unique(np.geomspace(1, top + 1, 30).astype(int))
    catalog = np.maximum(bias.catalog_counts, 1)
    recommended = np.maximum(bias.recommended_counts, 1)
    ax.hist(catalog, bins=bins, alpha=0.55, color="#7f7f7f",
            weights=np.full(len(catalog), 1 / max(len(catalog), 1)),
            label=f"catalog items ({len(catalog):,})")
    ax.hist(recommended, bins=bins, alpha=0.6, color=COLOURS["model"],
            weights=np.full(len(recommended), 1 / max(len(recommended), 1)),
            label=f"recommended top-{bias.k} ({bias.users:,} eval users, "
                  f"{bias.distinct_recommended:,} distinct items)")
    ax.set_xscale("log")
    ax.set_xlabel("item popularity (train interactions, log scale)")
    ax.set_ylabel("share")
    ax.set_title("Popularity of recommended items vs the catalog")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _png(fig)


def compression_points(compression: dict) -> Tuple[List[dict], int]:
    """``([{method, size_bytes, recall, chosen}], k)`` from ``compression.json``.

    Uses the ``tried`` list when the compressor wrote one; otherwise the original
    and the compressed model from the summary fields.
    """
    k = int(compression.get("gate_k", 50))
    if compression.get("tried"):
        return [{"method": t["method"], "size_bytes": t["size_bytes"],
                 "recall": t.get(f"recall@{k}"), "chosen": bool(t.get("chosen"))}
                for t in compression["tried"] if t.get(f"recall@{k}") is not None], k
    if compression.get("original_bytes") is None:
        return [], k
    return [{"method": "original", "size_bytes": compression["original_bytes"],
             "recall": compression.get(f"recall@{k}_original"), "chosen": False},
            {"method": compression.get("method", "compressed"),
             "size_bytes": compression["compressed_bytes"],
             "recall": compression.get(f"recall@{k}_compressed"), "chosen": True}], k


def plot_compression(compression: dict) -> Optional[str]:
    points, k = compression_points(compression)
    if not points:
        return None
    fig, axes = _figure()
    ax = axes[0][0]
    for p in points:
        colour = COLOURS["model"] if p["chosen"] else "#7f7f7f"
        ax.scatter(p["size_bytes"] / 1024, p["recall"], s=80, color=colour,
                   edgecolor="black", zorder=3)
        ax.annotate(p["method"] + (" (chosen)" if p["chosen"] else ""),
                    (p["size_bytes"] / 1024, p["recall"]), textcoords="offset points",
                    xytext=(6, 6), fontsize=8)
    original = next((p for p in points if p["method"].startswith("original")), None)
    if original and original["recall"]:
        drop = compression.get("max_recall_drop")
        if drop is not None:
            ax.axhline(original["recall"] * (1 - drop), color="#d62728", linestyle="--",
                       linewidth=1, label=f"gate: at most {100 * drop:.0f}% relative drop")
            ax.legend(fontsize=8)
    ax.set_xlabel("SavedModel size on disk (KB)")
    ax.set_ylabel(f"recall@{k}")
    ax.set_title("Compression: size against recall, per method tried")
    ax.grid(alpha=0.3)
    ax.margins(x=0.25, y=0.2)
    return _png(fig)


def plot_training(history: dict) -> Optional[str]:
    if not history or not history.get("loss"):
        return None
    fig, axes = _figure()
    ax = axes[0][0]
    epochs = np.arange(1, len(history["loss"]) + 1)
    ax.plot(epochs, history["loss"], marker="o", label="train loss")
    if history.get("val_loss"):
        val_epochs = history.get("val_epochs") or epochs[:len(history["val_loss"])]
        ax.plot(val_epochs, history["val_loss"], marker="s", label="eval loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"{history.get('softmax', 'sampled')}-softmax loss")
    ax.set_title(f"Training loss ({history.get('examples_per_second', 0):,.0f} examples/s)")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend()
    ax.grid(alpha=0.3)
    return _png(fig)


def plot_timings(seconds: Mapping[str, float], peak_mb: Mapping[str, float]) -> Optional[str]:
    if not seconds:
        return None
    names = list(seconds)
    fig, axes = _figure(width=7.5, height=0.45 * len(names) + 1.2)
    ax = axes[0][0]
    y = np.arange(len(names))
    ax.barh(y, [seconds[n] for n in names], color=COLOURS["model"])
    ax.set_yticks(y)
    ax.set_yticklabels(names)
    ax.invert_yaxis()
    for i, n in enumerate(names):
        label = f" {seconds[n]:.1f}s" + (f", {peak_mb[n]:,.0f} MB" if n in peak_mb else "")
        ax.text(seconds[n], i, label, va="center", fontsize=8)
    ax.set_xlabel("wall time (s)")
    ax.set_title("Component wall time (peak memory of the process tree)")
    ax.margins(x=0.3)
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


# ------------------------------------------------------------------------ HTML

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


def _image(png: Optional[str], plot_id: str, alt: str) -> str:
    if png is None:
        return f'<p class="note">{html.escape(alt)}: no data in this run.</p>'
    return (f'<img id="{plot_id}" class="plot" alt="{html.escape(alt)}" '
            f'src="data:image/png;base64,{png}">')


def render_html(inputs: ReportInputs) -> str:
    ev = inputs.evaluation
    k = ev.get("gate_k", 50)
    methods = method_metrics(inputs)
    shown = ["recall@10", f"recall@{k}", "ndcg@10", "coverage@10"]
    metric_rows = [[LABELS.get(n, n)] + [m.get(s) for s in shown] for n, m in methods.items()]
    sections = [
        ("Recall and coverage against the baselines", _caption(
            "Each eval user's train items are excluded from every ranking; recall counts "
            "eval items outside the train catalog as misses. Coverage@K: share of the "
            "catalog that appears in at least one user's top K.")
         + _image(plot_recall_curves(inputs), "plot-recall", "recall@K and coverage@K")
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
    path = path or os.path.join(inputs.pipeline_root, REPORT_FILE)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(render_html(inputs))
    os.replace(tmp, path)
    return path


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Rebuilds the report of the newest run under ``--pipeline-root``."""
    import argparse
    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("--pipeline-root", required=True)
    p.add_argument("--output", help="default: <pipeline-root>/report.html")
    a = p.parse_args(argv)
    from runner import local, mlmd_summary, run_summary
    import pipeline as pipeline_def
    from tfx import v1 as tfx
    root = os.path.abspath(a.pipeline_root)
    connection = tfx.orchestration.metadata.sqlite_metadata_connection_config(
        local.metadata_path(root))
    records = mlmd_summary.last_run_records(connection, pipeline_def.PIPELINE_NAME)
    summary = _read_json(os.path.join(root, run_summary.SUMMARY_FILE)) or {}
    timings = summary.get("timings", {})
    span_dir = summary.get("prepared_span_dir")
    if not span_dir:  # runs before the summary recorded it: the only prepared span
        example_gen = next((r for r in records if r.component == "FileBasedExampleGen"), None)
        span = example_gen.output("examples").span if example_gen else None
        found = glob.glob(os.path.join(root, "prepared", "*", f"span-{span}"))
        span_dir = found[0] if len(found) == 1 else None
    inputs = collect(root, {r.component: r.uris() for r in records}, span_dir,
                     timings.get("component_seconds", {}),
                     timings.get("peak_memory_mb", {}), summary or None)
    print(write_report(inputs, a.output))
    return 0


if __name__ == "__main__":
    import sys
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import project_env  # noqa: F401
    sys.exit(main())
