"""The report's matplotlib figures, each returned as a base64 PNG."""
from __future__ import annotations

import base64
import dataclasses
import io
from typing import Dict, List, Mapping, Optional

import numpy as np

from evaluation.report.inputs import PopularityBias, ReportInputs, method_metrics

COLOURS = {"model": "#1f77b4", "popularity": "#ff7f0e", "served": "#7f7f7f",
           "itemknn": "#2ca02c", "ease": "#d62728"}
LABELS = {"model": "two-tower (this run)", "popularity": "popularity",
          "served": "served model", "itemknn": "ItemKNN", "ease": "EASE"}


@dataclasses.dataclass
class Plot:
    """A rendered figure and the points its lines were drawn through.

    ``points``: ``{y-axis label: {method: [[x, y], ...]}}``, read back from the
    figure's lines, so it is what the PNG shows, not what the code meant to draw.
    """

    png: str
    points: Dict[str, Dict[str, List[List[float]]]]


def figure(ncols: int = 1, width: float = 6.4, height: float = 4.0):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt.subplots(1, ncols, figsize=(width * ncols, height), squeeze=False)


def png(fig) -> str:
    """The figure as a base64 PNG; closes it."""
    import matplotlib.pyplot as plt
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def drawn_points(fig) -> Dict[str, Dict[str, List[List[float]]]]:
    """``{y label: {gid: [[x, y], ...]}}`` of every line that has a ``gid``."""
    return {ax.get_ylabel(): {line.get_gid(): line.get_xydata().tolist()
                              for line in ax.get_lines() if line.get_gid()}
            for ax in fig.axes}


def recall_figure(inputs: ReportInputs):
    """recall@K and coverage@K against K, one line per method (``gid`` = method)."""
    ks = sorted(inputs.evaluation["ks"])
    fig, axes = figure(2)
    for ax, metric in zip(axes[0], ("recall", "coverage")):
        for name, m in method_metrics(inputs).items():
            values = [m.get(f"{metric}@{k}") for k in ks]
            if None in values:
                continue
            ax.plot(ks, values, marker="o", label=LABELS.get(name, name), gid=name,
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
    return fig


def plot_recall_curves(inputs: ReportInputs) -> Plot:
    fig = recall_figure(inputs)
    points = drawn_points(fig)
    return Plot(png(fig), points)


def plot_popularity_bias(bias: PopularityBias) -> str:
    fig, axes = figure()
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
    return png(fig)


def plot_training(history: Optional[dict]) -> Optional[str]:
    if not history or not history.get("loss"):
        return None
    fig, axes = figure()
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
    return png(fig)


def plot_timings(seconds: Mapping[str, float], peak_mb: Mapping[str, float]) -> Optional[str]:
    if not seconds:
        return None
    names = list(seconds)
    fig, axes = figure(width=7.5, height=0.45 * len(names) + 1.2)
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
    return png(fig)
