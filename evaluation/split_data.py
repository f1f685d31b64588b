"""The prepared train/eval split as sparse user-item matrices over one item index."""
from __future__ import annotations

import copy

import dataclasses
import glob
import os
from typing import Dict, List, Optional, Sequence

import numpy as np
import pyarrow.parquet as pq
import scipy.sparse as sp

from transform.features import DAY_SECONDS


@dataclasses.dataclass
class SplitMatrices:
    """``train``/``eval``: ``[num_users, num_items]`` binary CSR; IDs are raw strings.

    Items are those seen in train (the catalog); eval interactions with items never
    seen in train stay in ``eval_cold_items`` per user so recall counts them as misses.
    """

    user_ids: List[str]
    item_ids: List[str]
    train: sp.csr_matrix
    eval: sp.csr_matrix
    eval_cold_items: np.ndarray  # [num_users] count of eval items outside the catalog
    # Each user's train items in time order (catalog indices, repeats kept), as CSR;
    # None when the split was built without timestamps.
    train_order_indptr: Optional[np.ndarray] = None
    train_order: Optional[np.ndarray] = None
    # Each user's newest train and oldest eval timestamp (0: none); None without
    # timestamps.
    train_last_time: Optional[np.ndarray] = None
    eval_first_time: Optional[np.ndarray] = None

    def relevant_counts(self) -> np.ndarray:
        return np.asarray(self.eval.sum(axis=1)).ravel() + self.eval_cold_items

    def days_since_history(self, rows: np.ndarray) -> np.ndarray:
        """``[len(rows)]`` float32 days from each user's newest train interaction to their
        first eval one: the model is asked at the moment the user comes back, as a
        server would ask it when their request arrives. 0 for a user without both."""
        if self.train_last_time is None or self.eval_first_time is None:
            raise ValueError("this split was built without timestamps")
        last, first = self.train_last_time[rows], self.eval_first_time[rows]
        return np.where((last > 0) & (first > 0), (first - last) / DAY_SECONDS,
                        0.0).astype(np.float32)

    def train_history(self, row: int) -> np.ndarray:
        """Catalog indices of the user's train items, oldest first."""
        if self.train_order is None:
            raise ValueError("this split was built without timestamps")
        return self.train_order[self.train_order_indptr[row]:self.train_order_indptr[row + 1]]


def _read(directory: str):
    files = sorted(glob.glob(os.path.join(directory, "*.parquet")))
    if not files:
        raise FileNotFoundError(f"no Parquet files in {directory}")
    table = pq.read_table(files, columns=["user_id", "item_id"])
    return (np.asarray(table["user_id"].to_pylist(), dtype=object),
            np.asarray(table["item_id"].to_pylist(), dtype=object))


def load_split(span_dir: str) -> SplitMatrices:
    """Reads ``span_dir/{train,eval}/*.parquet`` written by ``ingest.prepare``."""
    tu, ti = _read(os.path.join(span_dir, "train"))
    eu, ei = _read(os.path.join(span_dir, "eval"))
    return build_split(tu, ti, eu, ei)


def read_examples(pattern: str, batch_size: int = 65536):
    """Raw ``user_id`` / ``item_id`` strings and timestamps from gzip tf.Example files."""
    import tensorflow as tf
    files = tf.io.gfile.glob(pattern)
    if not files:
        raise FileNotFoundError(f"no examples match {pattern}")
    spec = {"user_id": tf.io.FixedLenFeature([], tf.string),
            "item_id": tf.io.FixedLenFeature([], tf.string),
            "timestamp": tf.io.FixedLenFeature([], tf.int64)}
    users, items, times = [], [], []
    ds = tf.data.TFRecordDataset(files, compression_type="GZIP").batch(batch_size)
    for batch in ds.map(lambda x: tf.io.parse_example(x, spec)).as_numpy_iterator():
        users.append(batch["user_id"].astype(object))
        items.append(batch["item_id"].astype(object))
        times.append(batch["timestamp"])
    cat = lambda parts, t: np.concatenate(parts) if parts else np.zeros(0, t)  # noqa: E731
    return cat(users, object), cat(items, object), cat(times, np.int64)


def load_split_from_examples(examples_uri: str,
                             catalog: Optional[Sequence[str]] = None) -> SplitMatrices:
    """The same matrices from an ExampleGen ``Examples`` artifact (``Split-train/eval``),
    with each user's train items in time order."""
    tu, ti, tt = read_examples(os.path.join(examples_uri, "Split-train", "*"))
    eu, ei, et = read_examples(os.path.join(examples_uri, "Split-eval", "*"))
    decode = lambda a: np.array([x.decode() for x in a], dtype=object)  # noqa: E731
    return build_split(decode(tu), decode(ti), decode(eu), decode(ei), catalog, tt, et)


def build_split(tu: np.ndarray, ti: np.ndarray, eu: np.ndarray, ei: np.ndarray,
                catalog: Optional[Sequence[str]] = None,
                train_times: Optional[np.ndarray] = None,
                eval_times: Optional[np.ndarray] = None) -> SplitMatrices:
    """Matrices over ``catalog`` (default: every item in train) from raw ID arrays;
    with ``train_times``, also each user's train items in time order and newest train
    time; with ``eval_times`` too, each user's first eval time."""
    item_ids = list(catalog) if catalog is not None else sorted(set(ti))
    item_index: Dict[str, int] = {it: i for i, it in enumerate(item_ids)}
    user_ids = np.unique(np.concatenate([tu, eu])) if len(tu) + len(eu) else np.zeros(0)
    user_index: Dict[str, int] = {u: i for i, u in enumerate(user_ids)}
    n_u, n_i = len(user_ids), len(item_ids)

    def matrix(users, items):
        rows = np.fromiter((user_index[u] for u in users), np.int64, len(users))
        cols = np.fromiter((item_index.get(i, -1) for i in items), np.int64, len(items))
        known = cols >= 0
        m = sp.csr_matrix((np.ones(known.sum(), np.float32), (rows[known], cols[known])),
                          shape=(n_u, n_i))
        m.data[:] = 1.0  # repeats count once
        return m, rows[~known], np.asarray(items)[~known]

    train, _, _ = matrix(tu, ti)
    ev, cold_rows, cold_items = matrix(eu, ei)
    ev = ev - ev.multiply(train)  # an eval item the user already had in train is not new
    ev.eliminate_zeros()
    # Items outside the catalog, once per (user, item) like the repeats in ``ev``.
    cold_pairs = set(zip(cold_rows.tolist(), cold_items.tolist()))
    cold = np.bincount(np.fromiter((r for r, _ in cold_pairs), np.int64, len(cold_pairs)),
                       minlength=n_u)
    split = SplitMatrices(list(user_ids), item_ids, train.tocsr(), ev.tocsr(), cold)
    if train_times is not None:
        rows = np.fromiter((user_index[u] for u in tu), np.int64, len(tu))
        cols = np.fromiter((item_index.get(i, -1) for i in ti), np.int64, len(ti))
        known = cols >= 0
        rows, cols, times = rows[known], cols[known], np.asarray(train_times)[known]
        order = np.lexsort((cols, times, rows))  # by user, then time (item breaks ties)
        split.train_order = cols[order]
        split.train_order_indptr = np.concatenate(
            [[0], np.cumsum(np.bincount(rows, minlength=n_u))]).astype(np.int64)
        split.train_last_time = np.zeros(n_u, np.int64)
        np.maximum.at(split.train_last_time, rows, times.astype(np.int64))
        if eval_times is not None:
            first = np.full(n_u, np.iinfo(np.int64).max)
            np.minimum.at(first, np.fromiter((user_index[u] for u in eu), np.int64, len(eu)),
                          np.asarray(eval_times, np.int64))
            split.eval_first_time = np.where(first == np.iinfo(np.int64).max, 0, first)
    return split


def only_users(split: SplitMatrices, keep: np.ndarray) -> SplitMatrices:
    """A shallow copy of ``split`` whose eval rows are kept only where ``keep`` is true
    (train, catalog and histories unchanged), to score one group of users."""
    out = copy.copy(split)
    out.eval = split.eval.multiply(np.asarray(keep)[:, None]).tocsr()
    out.eval.eliminate_zeros()
    out.eval_cold_items = split.eval_cold_items * keep
    return out
