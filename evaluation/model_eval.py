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
from typing import Dict, Sequence

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


def evaluate_saved_model(model_dir: str, split: SplitMatrices, ks: Sequence[int],
                         batch_size: int = 256) -> Dict[str, float]:
    """Metrics for every user with eval items, in batches, with train items left out.

    Also reports ``latency_ms_per_batch`` (mean over batches of ``batch_size`` users).
    """
    signatures = tf.saved_model.load(model_dir).signatures
    given = RECOMMEND_GIVEN_HISTORY in signatures and split.train_order is not None
    fn = signatures[RECOMMEND_GIVEN_HISTORY if given else RECOMMEND_EXCLUDING]
    # Models from before the gap input do not take it.
    timed = given and DAYS_SINCE_HISTORY in fn.structured_input_signature[1]
    item_index = {item: i for i, item in enumerate(split.item_ids)}
    acc = MetricAccumulator(ks, len(split.item_ids))
    users = np.flatnonzero(split.relevant_counts() > 0)
    seconds = []
    for lo in range(0, len(users), batch_size):
        rows = users[lo:lo + batch_size]
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
        for r, row_items, rel in zip(rows, ranked, relevant_lists(split, rows)):
            acc.add([item_index.get(x.decode(), ("unknown", x)) for x in row_items], rel)
    result = acc.result()
    result["latency_ms_per_batch"] = 1000.0 * float(np.mean(seconds[1:] or seconds))
    return result
