"""Evaluates an exported retrieval SavedModel through its own serving signature."""
from __future__ import annotations

import time
from typing import Dict, Sequence

import numpy as np
import tensorflow as tf

from evaluation.baselines import relevant_lists
from evaluation.metrics import MetricAccumulator
from evaluation.split_data import SplitMatrices
from trainer.export import RECOMMEND_EXCLUDING



def _exclusion_batch(split: SplitMatrices, rows: np.ndarray) -> np.ndarray:
    """``[len(rows), max seen]`` raw item IDs each user saw in train, "" padded."""
    seen = [split.train.indices[split.train.indptr[r]:split.train.indptr[r + 1]] for r in rows]
    width = max(1, max(len(s) for s in seen))
    out = np.full((len(rows), width), "", dtype=object)
    for i, s in enumerate(seen):
        out[i, :len(s)] = [split.item_ids[j] for j in s]
    return out.astype(bytes)


def evaluate_saved_model(model_dir: str, split: SplitMatrices, ks: Sequence[int],
                         batch_size: int = 256) -> Dict[str, float]:
    """Metrics of ``recommend_excluding`` for every user with eval items, in batches.

    Also reports ``latency_ms_per_batch`` (mean over batches of ``batch_size`` users).
    """
    fn = tf.saved_model.load(model_dir).signatures[RECOMMEND_EXCLUDING]
    item_index = {item: i for i, item in enumerate(split.item_ids)}
    acc = MetricAccumulator(ks, len(split.item_ids))
    users = np.flatnonzero(split.relevant_counts() > 0)
    seconds = []
    for lo in range(0, len(users), batch_size):
        rows = users[lo:lo + batch_size]
        ids = tf.constant([split.user_ids[r] for r in rows])
        exclude = tf.constant(_exclusion_batch(split, rows))
        start = time.perf_counter()
        out = fn(user_id=ids, exclude_item_ids=exclude)
        seconds.append(time.perf_counter() - start)
        ranked = out["item_ids"].numpy()
        for r, row_items, rel in zip(rows, ranked, relevant_lists(split, rows)):
            acc.add([item_index.get(x.decode(), ("unknown", x)) for x in row_items], rel)
    result = acc.result()
    result["latency_ms_per_batch"] = 1000.0 * float(np.mean(seconds[1:] or seconds))
    return result
