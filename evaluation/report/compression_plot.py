"""The compression trade-off: size against recall for every model the compressor tried."""
from __future__ import annotations

from typing import List, Optional, Tuple

from evaluation.report.plots import COLOURS, figure, png


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
    fig, axes = figure()
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
    return png(fig)
