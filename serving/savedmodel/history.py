"""The served model's per-user state: what each user did, as compact CSR tables.

SequenceGen writes, per user ingested, the newest ``max_history`` items (oldest first,
repeats kept: the query's history) and the distinct items newest first up to
``exclusion_cap`` (never recommended again). Stored as they come, both lists hold
the same items for most users, so one table serves both:

* ``recent``: the distinct items ordered by their last interaction, oldest first,
  capped at the newest ``exclusion_cap``. Every item in it is excluded, and its last
  ``max_history`` entries are the query's history;
* ``override``: the history of the users for whom that is wrong (repeats among their
  newest items, or a cap below ``max_history``). Empty rows everywhere else.

Item indices are int16 when the catalog fits (under 32,768 items), else int32.
``last_time`` holds each user's newest interaction timestamp, from which the query's
gap input is counted (``transform.features.QUERY_GAP``).
"""
from __future__ import annotations

import dataclasses
from typing import Iterable, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from transform import features as F


@dataclasses.dataclass
class UserHistory:
    """Row ``r`` of every table belongs to ``user_ids[r]`` (raw IDs)."""

    user_ids: List[bytes]
    recent_indptr: np.ndarray  # [users + 1] int32
    recent: np.ndarray  # [entries] int16 or int32 item indices
    override_indptr: np.ndarray  # [users + 1] int32
    override: np.ndarray
    last_time: Optional[np.ndarray] = None  # [users] int64, 0 = unknown

    def __post_init__(self) -> None:
        if self.last_time is None:
            self.last_time = np.zeros(len(self.user_ids), np.int64)

    @property
    def num_entries(self) -> int:
        return int(len(self.recent) + len(self.override))


def index_dtype(num_items: int):
    return np.int16 if num_items <= np.iinfo(np.int16).max else np.int32


def build_user_history(rows: Iterable[Tuple], max_history: int, num_items: int
                       ) -> UserHistory:
    """``(user, history oldest first, exclusions newest first[, newest timestamp])``
    rows of item indices -> the tables. Rows may be lists or NumPy arrays; memory is
    the tables' own."""
    if max_history < 1:
        raise ValueError(f"max_history must be >= 1, got {max_history}")
    dtype = index_dtype(num_items)
    users: List[bytes] = []
    recent_sizes, recent, override_sizes, override, last_time = [], [], [], [], []
    for user, history, exclude, *when in rows:
        users.append(user)
        last_time.append(int(when[0]) if when else 0)
        ordered = np.asarray(exclude, dtype)[::-1]
        history = np.asarray(history, dtype)[-max_history:]
        recent.append(ordered)
        recent_sizes.append(len(ordered))
        derived = ordered[-max_history:]
        if len(history) != len(derived) or not np.array_equal(history, derived):
            override.append(history)
            override_sizes.append(len(history))
        else:
            override_sizes.append(0)
    indptr = lambda sizes: np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]  # noqa: E731
                                          ).astype(np.int32)
    cat = lambda parts: np.concatenate(parts) if parts else np.zeros(0, dtype)  # noqa: E731
    return UserHistory(users, indptr(recent_sizes), cat(recent), indptr(override_sizes),
                       cat(override), np.asarray(last_time, np.int64))


def read_user_history(pattern: str, num_items: int, max_history: int) -> UserHistory:
    """SequenceGen's ``history`` split (gzip tf.Examples matching ``pattern``)."""
    spec = {F.HISTORY_USER: tf.io.FixedLenFeature([], tf.string),
            F.HISTORY_ITEMS: tf.io.RaggedFeature(tf.int64),
            F.HISTORY_EXCLUDE: tf.io.RaggedFeature(tf.int64),
            # Rows from before the timestamp read 0 (unknown: no gap).
            F.HISTORY_LAST_TIME: tf.io.FixedLenFeature([1], tf.int64, default_value=[0])}
    files = tf.io.gfile.glob(pattern)
    if not files:
        raise FileNotFoundError(f"no SequenceGen history rows match {pattern}")

    def split(ragged) -> List[np.ndarray]:
        values, bounds = ragged.flat_values.numpy(), ragged.row_splits.numpy()
        return np.split(values, bounds[1:-1])

    def rows():
        ds = tf.data.TFRecordDataset(files, compression_type="GZIP").batch(4096)
        for batch in ds.map(lambda x: tf.io.parse_example(x, spec)):
            yield from zip(batch[F.HISTORY_USER].numpy(), split(batch[F.HISTORY_ITEMS]),
                           split(batch[F.HISTORY_EXCLUDE]),
                           batch[F.HISTORY_LAST_TIME].numpy()[:, 0])

    return build_user_history(rows(), max_history, num_items)


def csr_bounds(indptr: tf.Tensor, rows: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
    """``(start, end)`` ``[batch]`` int64 of CSR ``rows``; row -1 is empty."""
    safe = tf.maximum(rows, 0)
    start = tf.cast(tf.gather(indptr, safe), tf.int64)
    end = tf.cast(tf.gather(indptr, safe + 1), tf.int64)
    return tf.where(rows >= 0, start, 0), tf.where(rows >= 0, end, 0)


def tail(values: tf.Tensor, start: tf.Tensor, end: tf.Tensor, n: int) -> tf.Tensor:
    """``[batch, n]``: the last ``n`` entries of each ``values[start:end]``, right-aligned,
    -1 in front (int64)."""
    idx = end[:, tf.newaxis] - n + tf.range(n, dtype=tf.int64)[tf.newaxis]
    out = tf.cast(tf.gather(values, tf.maximum(idx, 0)), tf.int64)
    return tf.where(idx >= start[:, tf.newaxis], out, -1)


def rows_of(values: tf.Tensor, start: tf.Tensor, end: tf.Tensor) -> tf.Tensor:
    """``[batch, longest]`` entries of each ``values[start:end]`` (int64), -1 padded."""
    positions = tf.ragged.range(start, end)
    items = tf.cast(tf.gather(values, positions.flat_values), tf.int64)
    return positions.with_flat_values(items).to_tensor(default_value=-1)
