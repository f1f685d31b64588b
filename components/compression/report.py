"""``compression.json`` and the compressor's console line.

Every key of the chosen model against the original is on the gate's eval split
(``run_summary.json``'s ``compression``, CONTRACTS.md); the ``validation_*`` keys
are the same figures on the validation slice the choice was made on. Imports
nothing heavy.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict

from layout import COMPRESSION_REPORT_FILE as REPORT_FILE
VALIDATION = "validation"  # the choice is made on the validation slice (``validation_*``)
EVAL = "eval"  # ... or, without one, on the gate's eval split


def summary(original: Dict[str, Any], chosen: Dict[str, Any], k: int) -> Dict[str, Any]:
    """The chosen model against the original, in ``run_summary.json``'s terms."""
    out = {
        "method": chosen["method"],
        "original_bytes": original["size_bytes"], "compressed_bytes": chosen["size_bytes"],
        "original_gzip_bytes": original["gzip_bytes"],
        "compressed_gzip_bytes": chosen["gzip_bytes"],
        "size_ratio": chosen["size_ratio"],
        # The learned weights alone: the per-user state tables are the same data in
        # both models and bound the whole-directory ratio.
        "original_weight_bytes": original["weight_bytes"],
        "compressed_weight_bytes": chosen["weight_bytes"],
        "weight_size_ratio": chosen["weight_size_ratio"],
        "gzip_size_ratio": original["gzip_bytes"] / chosen["gzip_bytes"],
        "recall_drop_relative": chosen["recall_drop_relative"],
        "latency_ms_per_batch_original": original["latency_ms_per_batch"],
        "latency_ms_per_batch_compressed": chosen["latency_ms_per_batch"],
    }
    for key in sorted({10, k}):
        out[f"recall@{key}_original"] = original[f"recall@{key}"]
        out[f"recall@{key}_compressed"] = chosen[f"recall@{key}"]
    if f"{VALIDATION}_recall_drop_relative" in chosen:
        out[f"{VALIDATION}_recall_drop_relative"] = chosen[f"{VALIDATION}_recall_drop_relative"]
        for key in sorted({10, k}):
            out[f"{VALIDATION}_recall@{key}_original"] = original[f"{VALIDATION}_recall@{key}"]
            out[f"{VALIDATION}_recall@{key}_compressed"] = chosen[f"{VALIDATION}_recall@{key}"]
    for key in ("sparsity", "fine_tune_loss", "seconds"):
        if key in chosen:
            out[key] = chosen[key]
    return out


def tried_line(entry: Dict[str, Any], k: int) -> str:
    """One candidate's size and recall drops, as it is measured."""
    drops = f"{100 * entry['recall_drop_relative']:.2f}% on eval"
    if f"{VALIDATION}_recall_drop_relative" in entry:
        drops = f"{100 * entry[f'{VALIDATION}_recall_drop_relative']:.2f}% on validation, {drops}"
    return (f"ModelCompressor tried {entry['method']}: {entry['size_bytes']} bytes "
            f"({entry['size_ratio']:.2f}x), recall@{k} drop {drops}")


def console_line(report: Dict[str, Any]) -> str:
    """One line: what was chosen, on which split, and the verdict on the gate's."""
    if "method" not in report or "size_ratio" not in report:
        return f"ModelCompressor: nothing compressed: {report.get('reason', '')}"
    k = report["gate_k"]
    line = f"ModelCompressor chose {report['method']} ({report['size_ratio']:.2f}x smaller)"
    if report.get("chosen_on") == VALIDATION:
        v = report[VALIDATION]
        line += (f" on the validation slice ({v['users']} train users, {v['targets']} "
                 f"targets): recall@{k} drop "
                 f"{100 * report[f'{VALIDATION}_recall_drop_relative']:.2f}%")
    else:
        line += " on the eval split (no validation slice)"
    if report.get("fell_back_from"):
        line += (f", falling back from {', '.join(report['fell_back_from'])} (past the "
                 "tolerance on the gate's eval split)")
    return line + (f"; gate's eval split: recall@{k} drop "
                   f"{100 * report['recall_drop_relative']:.2f}% (tolerance "
                   f"{100 * report['max_recall_drop']:.2f}%): "
                   f"{'BLESSED' if report['blessed'] else 'NOT BLESSED'}")


def write_report(directory: str, report: Dict[str, Any]) -> None:
    with open(os.path.join(directory, REPORT_FILE), "w") as f:
        json.dump(report, f, indent=2)
