"""``<pipeline-root>/run_summary.json`` (CONTRACTS.md) from what the run recorded."""
from __future__ import annotations

import json
import os
from typing import Dict, List, Optional

from layout import (COMPRESSION_REPORT_FILE as COMPRESSION_FILE,
                    EVALUATION_METRICS_FILE as METRICS_FILE, INDEX_REPORT_FILE,
                    SERVING_MODEL_DIR,
                    RUN_SUMMARY_FILE as SUMMARY_FILE, TRAINING_HISTORY_FILE as HISTORY_FILE)
from layout.mlmd import ComponentRecord
from serving.savedmodel.fingerprint import unchanged_reason


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
    pusher = by_name["Pusher"]
    pushed = pusher.output("pushed_model").properties
    was_pushed = bool(pushed.get("pushed", 0))
    reason = pushed.get("push_skipped_reason")
    if was_pushed and pusher.state == "CACHED":
        was_pushed, reason = False, (
            f"nothing new to push: every step's inputs are those of the run that pushed "
            f"{pushed.get('pushed_destination')} (their results came from the cache)")
    elif not was_pushed and not reason:
        # A model trained on the same data with the same settings as the one served is
        # nothing new, whatever the gate said of it.
        reason = unchanged_reason(os.path.join(by_name["Trainer"].uris()["model"],
                                               "Format-Serving"), ev.get("baseline_model"),
                                  keys=("data", "settings")) or (
            "the evaluator did not bless the model" if not ev["blessed"]
            else "the compressor did not bless the compressed model")
    summary = {
        "evaluation": _metrics_only(ev["metrics"]["model"]),
        "baseline": {"popularity": _metrics_only(ev["metrics"]["popularity"]),
                     # "last_blessed": the key's earlier name, kept for readers of it.
                     **({k: _metrics_only(ev["metrics"]["served"])
                         for k in ("served", "last_blessed")}
                        if ev["metrics"].get("served") else {})},
        "blessed": bool(ev["blessed"]),
        "gate": {"k": ev["gate_k"], "floors": ev["floors"],
                 "failed": [c["message"] for c in ev["checks"] if not c["passed"]],
                 "checks": ev["checks"]},
        "compression": compression,
        "pushed": was_pushed,
        "pushed_version_dir": pushed.get("pushed_destination") if was_pushed else None,
    }
    if not was_pushed:
        summary["push_skipped_reason"] = reason
    summary["training"] = training_block(by_name.get("Trainer"))
    summary["index"] = index_block(by_name)
    return summary


def index_block(by_name: Dict[str, ComponentRecord]) -> Optional[dict]:
    """The candidate index of the model the Pusher was given (the compressor's, else the
    Trainer's): kind, settings and recall against brute force, as the export recorded
    them; None for models from before the report."""
    for component, key in (("ModelCompressor", "compressed_model"), ("Trainer", "model")):
        record = by_name.get(component)
        uri = record.uris().get(key) if record is not None else None
        path = os.path.join(uri or "", SERVING_MODEL_DIR, INDEX_REPORT_FILE)
        if uri and os.path.isfile(path):
            with open(path) as f:
                return json.load(f)
    return None


def index_line(index: Optional[dict]) -> Optional[str]:
    if not index:
        return None
    if index.get("kind") != "partitioned":
        return (f"[summary] candidate index: brute force over {index['num_items']:,} items "
                f"({index.get('storage', '')})")
    recall = index.get("recall_vs_exact")
    return (f"[summary] candidate index: partitioned, {index['num_items']:,} items in "
            f"{index['lists']:,} lists, {index['probes']} probed"
            + (f" (target recall {index['target_recall']})" if index.get("target_recall")
               else "")
            + f"; recall@{index.get('k')} against brute force "
            + ("n/a" if recall is None else f"{recall:.4f}")
            + f" on {index.get('recall_queries', 0)} stored users")


def training_block(trainer: Optional[ComponentRecord]) -> Optional[dict]:
    """``{"mode", "base_model", "examples", "steps", "seconds", ...}`` of the Trainer's
    ``training_history.json``; ``cached`` when that result came from an earlier run."""
    if trainer is None or "model_run" not in trainer.uris():
        return None
    path = os.path.join(trainer.uris()["model_run"], HISTORY_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        block = json.load(f).get("training")
    if block is not None and trainer.state == "CACHED":
        block = {**block, "cached": True}
    return block


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
                     f"drop {100 * c['recall_drop_relative']:.2f}% relative"
                     + (f" (chosen on a validation slice of {c['validation']['users']} train "
                        f"users: drop {100 * c['validation_recall_drop_relative']:.2f}%)"
                        if c.get("chosen_on") == "validation" else "")
                     + f"; {'BLESSED' if c['blessed'] else 'NOT BLESSED'}")
    else:
        lines.append(f"[summary] compression skipped: {c.get('reason', '')}")
    t = s.get("training")
    if t:
        lines.append(f"[summary] training: {t['mode']} ({t.get('reason', '')}); "
                     f"{t['examples']:,} examples, {t['steps']:,} steps, {t['seconds']:.1f}s"
                     + (" (from the cache)" if t.get("cached") else ""))
    if index_line(s.get("index")):
        lines.append(index_line(s["index"]))
    lines.append(f"[summary] pushed: {s['pushed_version_dir']}" if s["pushed"]
                 else f"[summary] not pushed ({s.get('push_skipped_reason')}); earlier "
                 f"versions are untouched")
    return "\n".join(lines)
