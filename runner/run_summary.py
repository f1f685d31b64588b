"""``<pipeline-root>/run_summary.json`` (CONTRACTS.md) from what the run recorded."""
from __future__ import annotations

import json
import os
from typing import Dict, List

from components.compression.component import REPORT_FILE as COMPRESSION_FILE
from components.retrieval_evaluator.component import METRICS_FILE
from runner.mlmd_summary import ComponentRecord

SUMMARY_FILE = "run_summary.json"


def _metrics_only(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if "@" in k}


def build(records: List[ComponentRecord]) -> dict:
    by_name: Dict[str, ComponentRecord] = {r.component: r for r in records}
    with open(os.path.join(by_name["RetrievalEvaluator"].uris()["evaluation"],
                           METRICS_FILE)) as f:
        ev = json.load(f)
    with open(os.path.join(by_name["ModelCompressor"].uris()["report"], COMPRESSION_FILE)) as f:
        compression = json.load(f)
    compression.setdefault("size_ratio", None)
    compression.setdefault("recall_drop_relative", None)
    pushed = by_name["Pusher"].output("pushed_model").properties
    was_pushed = bool(pushed.get("pushed", 0))
    return {
        "evaluation": _metrics_only(ev["metrics"]["model"]),
        "baseline": {"popularity": _metrics_only(ev["metrics"]["popularity"]),
                     **({"last_blessed": _metrics_only(ev["metrics"]["last_blessed"])}
                        if ev["metrics"].get("last_blessed") else {})},
        "blessed": bool(ev["blessed"]),
        "gate": {"k": ev["gate_k"], "floors": ev["floors"],
                 "failed": [c["message"] for c in ev["checks"] if not c["passed"]],
                 "checks": ev["checks"]},
        "compression": compression,
        "pushed": was_pushed,
        "pushed_version_dir": pushed.get("pushed_destination") if was_pushed else None,
    }


def timings(stage_seconds: Dict[str, float], component_seconds: Dict[str, float],
            peak_mb: Dict[str, float]) -> dict:
    """Wall time of the steps before the pipeline and of every component, and peak memory.

    ``component_seconds`` lists the pre-pipeline steps (synthetic data, prepare) first.
    ``peak_memory_mb`` is the sampled RSS high-water mark of the run's process plus its
    children (Beam workers) while each step ran.
    """
    return {"component_seconds": {**stage_seconds, **component_seconds},
            "peak_memory_mb": dict(peak_mb)}


def write(pipeline_root: str, summary: dict) -> str:
    path = os.path.join(pipeline_root, SUMMARY_FILE)
    with open(path, "w") as f:
        json.dump(summary, f, indent=2)
    return path


def format_summary(s: dict) -> str:
    k = s["gate"]["k"]
    ev, pop = s["evaluation"], s["baseline"]["popularity"]
    lines = [f"[summary] recall@10 {ev['recall@10']:.4f}, recall@{k} {ev[f'recall@{k}']:.4f}, "
             f"ndcg@10 {ev['ndcg@10']:.4f}, coverage@10 {ev['coverage@10']:.4f} "
             f"(popularity: recall@{k} {pop[f'recall@{k}']:.4f})"]
    if s["blessed"]:
        lines.append("[summary] evaluator: BLESSED")
    else:
        lines.append("[summary] evaluator: NOT BLESSED: " + "; ".join(s["gate"]["failed"]))
    c = s["compression"]
    if c.get("size_ratio") is not None:
        lines.append(f"[summary] compression ({c['method']}): {c['size_ratio']:.2f}x smaller "
                     f"({c['original_bytes']} -> {c['compressed_bytes']} bytes; weights "
                     f"{c.get('weight_size_ratio', float('nan')):.2f}x), recall@{k} "
                     f"drop {100 * c['recall_drop_relative']:.2f}% relative; "
                     f"{'BLESSED' if c['blessed'] else 'NOT BLESSED'}")
    else:
        lines.append(f"[summary] compression skipped: {c.get('reason', '')}")
    lines.append(f"[summary] pushed: {s['pushed_version_dir']}" if s["pushed"]
                 else "[summary] not pushed; earlier versions are untouched")
    return "\n".join(lines)
