"""Popularity bias: how popular the items are that the trained model recommends."""
from __future__ import annotations

import glob
import os
from typing import Dict, List, Sequence

import numpy as np

from evaluation.report.inputs import PopularityBias

BIAS_TOP_K = 10  # recommendations per user counted in the popularity-bias histogram
MAX_BIAS_USERS = 2000  # eval users asked for recommendations (a fixed sample)


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
    """Train counts of the catalog and of the model's top ``k`` for the eval users."""
    counts = item_train_counts(os.path.join(span_dir, "train"))
    recs = recommend(model_dir, eval_users(os.path.join(span_dir, "eval")), k)
    flat = [item for row in recs for item in row]
    return PopularityBias(np.array(list(counts.values()), np.int64),
                          np.array([counts.get(item, 0) for item in flat], np.int64),
                          len(recs), k, len(set(flat)))
