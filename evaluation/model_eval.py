"""Evaluates an exported retrieval SavedModel through its own serving signatures.

The query must not see the held-out split: a model that stores every interaction
ingested (the served history) is asked through ``recommend_given_history`` with each
user's train items only, oldest first, as of the moment the user comes back (the days
from their newest train interaction to their first eval one), and told to leave out
all of them. Models from before
the history signature are asked through ``recommend_excluding``.
"""
from __future__ import annotations

import time
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import numpy as np
import tensorflow as tf

from evaluation.baselines import relevant_lists
from evaluation.holdout import history_batch
from evaluation.metrics import MetricAccumulator
from evaluation.split_data import SplitMatrices

RECOMMEND_GIVEN_HISTORY = "recommend_given_history"
RECOMMEND_EXCLUDING = "recommend_excluding"
DAYS_SINCE_HISTORY = "days_since_history"


def _id_batch(split: SplitMatrices, lists) -> np.ndarray:
    """``[len(lists), longest]`` raw item IDs of catalog-index lists, "" padded."""
    return history_batch([[split.item_ids[j] for j in s] for s in lists])


def _exclusion_batch(split: SplitMatrices, rows: np.ndarray) -> np.ndarray:
    """``[len(rows), max seen]`` raw item IDs each user saw in train, "" padded."""
    return _id_batch(split, [split.train.indices[split.train.indptr[r]:split.train.indptr[r + 1]]
                             for r in rows])


# Cells of the padded [users, longest list] request arrays at most per batch: a batch
# holding a user with 100,000 train items is cut short rather than padded to 256 x
# 100,000 IDs twice (history and exclusions).
MAX_BATCH_CELLS = 1 << 21


def _batches(split: SplitMatrices, users: np.ndarray, batch_size: int):
    """``users`` in order, ``batch_size`` at a time, fewer where the longest train list
    of a batch would make it more than ``MAX_BATCH_CELLS`` padded cells."""
    lengths = np.diff(split.train.indptr)[users]
    if split.train_order is not None:
        lengths = np.maximum(lengths, np.diff(split.train_order_indptr)[users])
    lo = 0
    while lo < len(users):
        hi = min(lo + batch_size, len(users))
        longest = np.maximum.accumulate(np.maximum(lengths[lo:hi], 1))
        fits = np.flatnonzero(longest * np.arange(1, hi - lo + 1) <= MAX_BATCH_CELLS)
        hi = lo + (int(fits[-1]) + 1 if len(fits) else 1)
        yield users[lo:hi]
        lo = hi


def load_signatures(model: Union[str, Any]):
    """The signatures of a SavedModel directory, or of an already loaded one."""
    return (tf.saved_model.load(model) if isinstance(model, str) else model).signatures


def item_index(split: SplitMatrices) -> Dict[str, int]:
    """Raw item ID -> catalog index, built once per split (1M items: ~100 MB)."""
    cached = split.__dict__.get("_item_index")
    if cached is None or cached[0] is not split.item_ids:
        cached = (split.item_ids, {item: i for i, item in enumerate(split.item_ids)})
        split.__dict__["_item_index"] = cached
    return cached[1]


def accumulate_saved_model(model: Union[str, Any], split: SplitMatrices, ks: Sequence[int],
                           batch_size: int = 256, users: Optional[np.ndarray] = None
                           ) -> Tuple[MetricAccumulator, float]:
    """``(metrics of every user in users, mean ms per batch)``; ``users``: split rows
    (default: every user with eval items); ``model``: a SavedModel directory or an
    already loaded one."""
    signatures = load_signatures(model)
    given = RECOMMEND_GIVEN_HISTORY in signatures and split.train_order is not None
    fn = signatures[RECOMMEND_GIVEN_HISTORY if given else RECOMMEND_EXCLUDING]
    # Models from before the gap input do not take it.
    timed = given and DAYS_SINCE_HISTORY in fn.structured_input_signature[1]
    index = item_index(split)
    acc = MetricAccumulator(ks, len(split.item_ids))
    if users is None:
        users = np.flatnonzero(split.relevant_counts() > 0)
    seconds = []
    for rows in _batches(split, users, batch_size):
        args = {"user_id": tf.constant([split.user_ids[r] for r in rows]),
                "exclude_item_ids": tf.constant(_exclusion_batch(split, rows))}
        if given:
            args["history_item_ids"] = tf.constant(
                _id_batch(split, [split.train_history(r) for r in rows]))
        if timed:  # without eval times: no gap, as right after the history
            args[DAYS_SINCE_HISTORY] = tf.constant(
                split.days_since_history(rows) if split.eval_first_time is not None
                else np.zeros(len(rows), np.float32))
        start = time.perf_counter()
        out = fn(**args)
        seconds.append(time.perf_counter() - start)
        ranked = out["item_ids"].numpy()
        del out, args
        for r, row_items, rel in zip(rows, ranked, relevant_lists(split, rows)):
            acc.add([index.get(x.decode(), ("unknown", x)) for x in row_items], rel)
    return acc, 1000.0 * float(np.mean(seconds[1:] or seconds)) if seconds else 0.0


def evaluate_saved_model(model: Union[str, Any], split: SplitMatrices, ks: Sequence[int],
                         batch_size: int = 256,
                         users: Optional[np.ndarray] = None) -> Dict[str, float]:
    """Metrics for ``users`` (default: every user with eval items), in batches, with
    train items left out.

    Also reports ``latency_ms_per_batch`` (mean over batches of ``batch_size`` users).
    """
    acc, latency = accumulate_saved_model(model, split, ks, batch_size, users)
    result = acc.result()
    result["latency_ms_per_batch"] = latency
    return result


def ann_recall_against_exact(model: Union[str, Any], split: SplitMatrices,
                             users: Optional[np.ndarray] = None, max_users: int = 256,
                             seed: int = 0) -> Optional[Dict]:
    """``serving_default`` (the served, possibly approximate, index) against
    ``recommend_exact`` (brute force) for up to ``max_users`` of ``users`` (default:
    every user with eval items) chosen by ``seed``; None for a model without
    ``recommend_exact``."""
    from serving.savedmodel.ann_recall import signature_recall_against_exact
    from evaluation.sampling import hash_order
    signatures = load_signatures(model)
    if users is None:
        users = np.flatnonzero(split.relevant_counts() > 0)
    ids = [split.user_ids[r] for r in users]
    chosen = [ids[i] for i in np.sort(hash_order(ids, seed)[:max_users])]
    return signature_recall_against_exact(signatures, chosen)
