"""Measuring a SavedModel: size on disk, recall on two splits, latency.

Recall is measured by the gate's own code (``evaluate_saved_model``) on two splits:
the gate's eval split, which gives the verdict (``recall@K``,
``recall_drop_relative``, ``within_tolerance``), and the validation slice cut from
train (``validation.py``), which alone decides the choice (``validation_*``).
"""
from __future__ import annotations

import io
import os
import tarfile
import time
from typing import Any, Dict, Optional, Sequence

import numpy as np
from components.compression.report import EVAL, VALIDATION
from evaluation.model_eval import evaluate_saved_model
from evaluation.split_data import SplitMatrices
from serving.savedmodel.export import weight_bytes


def directory_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def gzipped_bytes(path: str) -> int:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=9) as tar:
        tar.add(path, arcname=".")
    return buf.tell()


def relative_drop(original: float, compressed: float) -> float:
    return (original - compressed) / original if original else 0.0


def split_key(on: str, name: str) -> str:
    """The entry key of figure ``name`` on split ``on``."""
    return name if on == EVAL else f"{VALIDATION}_{name}"


def measure(path: str, method: str, split: SplitMatrices,
            validation: Optional[SplitMatrices], ks: Sequence[int],
            original: Optional[Dict[str, Any]] = None, gate_k: int = 50,
            max_drop: Optional[float] = None,
            users: Optional[np.ndarray] = None) -> Dict[str, Any]:
    """Size, recall@K and latency of one SavedModel on the eval split (its ``users``
    rows: the evaluator's sample; default all with eval items), and recall@K on
    the validation slice if there is one; with ``original``, also the size ratios and
    the relative recall drops at ``gate_k`` and, with ``max_drop``, whether each drop
    is within it."""
    metrics = evaluate_saved_model(path, split, list(ks), users=users)
    entry: Dict[str, Any] = {
        "method": method, "size_bytes": directory_bytes(path),
        "gzip_bytes": gzipped_bytes(path), "weight_bytes": weight_bytes(path),
        "latency_ms_per_batch": metrics["latency_ms_per_batch"],
        **{f"recall@{k}": metrics[f"recall@{k}"] for k in ks}}
    ons = [EVAL]
    if validation is not None:
        start = time.perf_counter()
        held = evaluate_saved_model(path, validation, list(ks))
        entry.update({f"{VALIDATION}_recall@{k}": held[f"recall@{k}"] for k in ks})
        entry[f"{VALIDATION}_seconds"] = round(time.perf_counter() - start, 2)
        ons.append(VALIDATION)
    if original is not None:
        entry["size_ratio"] = original["size_bytes"] / entry["size_bytes"]
        entry["weight_size_ratio"] = original["weight_bytes"] / entry["weight_bytes"]
        for on in ons:
            recall = split_key(on, f"recall@{gate_k}")
            drop = entry[split_key(on, "recall_drop_relative")] = relative_drop(
                original[recall], entry[recall])
            if max_drop is not None:
                entry[split_key(on, "within_tolerance")] = drop <= max_drop
    return entry
