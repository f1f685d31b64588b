"""The candidate index: every catalog item's embedding, float32 or int8 per row.

Every index answers ``search(query, exclusions, k)`` (the top ``k`` items of a batch of
queries, leaving out given items), ``exact(...)`` (the same by brute force, which is
``search`` itself here) and ``rows(ids)``, the rows of given items, which the query
side reads as the history's item vectors, so the served model holds one item matrix,
not two. These two score the whole catalog; ``ivf.PartitionedIndex`` scores a few of
its lists, and the export picks by catalog size (``IndexConfig``).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional, Tuple

import numpy as np
import tensorflow as tf

from serving.savedmodel.quantize import dequantize_rows, quantize_rows

NEG_INF = float("-inf")


@dataclasses.dataclass(frozen=True)
class IndexConfig:
    """Which candidate index the export builds.

    Catalogs of ``partitioned_min_items`` items or more get the partitioned index
    (``ivf.PartitionedIndex``) of ``lists`` balanced lists (0: ``auto_lists``);
    smaller ones are scored in full. How many lists a query probes is chosen at export
    (``export.choose_probes``): the fewest of 8, 16, ... up to ``max_probes`` whose
    recall@k against brute force reaches ``target_recall`` on ``recall_queries``
    sampled stored users; with ``target_recall`` 0, exactly ``probes``. The export
    then measures ``serving_default`` against ``recommend_exact`` on as many other
    stored users and records both (``export.INDEX_REPORT_FILE``).
    """

    partitioned_min_items: int = 250_000
    lists: int = 0
    probes: int = 128
    target_recall: float = 0.95
    max_probes: int = 1024
    list_slack: float = 0.05
    seed: int = 0
    recall_queries: int = 256

    def __post_init__(self) -> None:
        if not 0.0 <= self.target_recall <= 1.0:
            raise ValueError(f"target_recall must be in [0, 1], got {self.target_recall}")
        for name in ("partitioned_min_items", "probes", "max_probes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lists < 0 or self.recall_queries < 0 or self.list_slack < 0:
            raise ValueError(f"lists, recall_queries and list_slack must be >= 0, got "
                             f"{self.lists}, {self.recall_queries} and {self.list_slack}")

    def num_lists(self, num_items: int) -> int:
        return min(num_items, self.lists or auto_lists(num_items))


def auto_lists(num_items: int) -> int:
    """About ``4 sqrt(n)`` lists, a power of two: 4,096 at 1M items, 16,384 at 10M."""
    return max(1, 2 ** int(round(math.log2(max(1.0, 4 * math.sqrt(num_items))))))


def exclude(scores: tf.Tensor, items: tf.Tensor) -> tf.Tensor:
    """Sets ``scores[b, items[b, j]]`` to -inf for every valid (>= 0) item."""
    where = tf.where(items >= 0)
    idx = tf.stack([where[:, 0], tf.gather_nd(items, where)], axis=1)
    return tf.tensor_scatter_nd_update(scores, idx, tf.fill([tf.shape(idx)[0]], NEG_INF))


def is_listed(candidates: tf.Tensor, items: tf.Tensor) -> tf.Tensor:
    """``[batch, C]`` bool: ``candidates[b, c]`` is among ``items[b]`` (``[batch, L]``,
    -1 pads), by binary search in each sorted row."""
    pad = tf.fill(tf.stack([tf.shape(items)[0], 1]), tf.constant(-1, items.dtype))
    listed = tf.sort(tf.concat([pad, items], axis=1), axis=1)
    at = tf.minimum(tf.searchsorted(listed, candidates, side="left"), tf.shape(listed)[1] - 1)
    return tf.equal(tf.gather(listed, at, batch_dims=1), candidates)


class _BruteForce:
    """``search`` and ``exact`` of an index that scores the whole catalog."""

    def search(self, query: tf.Tensor, exclusions: tf.Tensor, k: int,
               needed: Optional[tf.Tensor] = None) -> Tuple[tf.Tensor, tf.Tensor]:
        """``[batch, d]`` queries, ``[batch, L]`` item indices to leave out (-1 pads) ->
        ``(scores, item indices)``, each ``[batch, k]``, best first; -inf past the
        last item left. ``needed`` (rows whose answer is used) matters to an
        approximate index only."""
        top = tf.math.top_k(exclude(self.scores(query), exclusions), k=k, sorted=True)
        return top.values, tf.cast(top.indices, tf.int64)

    def exact(self, query: tf.Tensor, exclusions: tf.Tensor,
              k: int) -> Tuple[tf.Tensor, tf.Tensor]:
        return self.search(query, exclusions, k)


class FloatIndex(_BruteForce, tf.Module):
    """Candidate embeddings ``[num_items, d]`` in float32."""

    def __init__(self, embeddings: np.ndarray) -> None:
        super().__init__(name="float_index")
        self.embeddings = tf.Variable(np.asarray(embeddings, np.float32), trainable=False)
        self.num_items = int(embeddings.shape[0])

    def scores(self, query: tf.Tensor) -> tf.Tensor:
        """``[batch, d]`` queries -> ``[batch, num_items]`` scores."""
        return tf.matmul(query, self.embeddings, transpose_b=True)

    def rows(self, ids: tf.Tensor) -> tf.Tensor:
        """``[...]`` item indices -> ``[..., d]`` embeddings.

        Gathered from the whole matrix as read for ``scores``, not from the variable:
        a gather on the variable makes TensorFlow copy all of it on every later read
        (copy-on-read), i.e. on every request."""
        return tf.gather(tf.convert_to_tensor(self.embeddings), ids)


class Int8Index(_BruteForce, tf.Module):
    """Candidate index stored as int8 rows with a float32 scale per item.

    The int8 matrix is what is saved; the first call dequantizes it once into a
    float32 cache variable that is saved empty (``[0, d]``), so the model stays small
    on disk and a 1M-item catalog is not converted again on every request (that made
    each request about 10x slower than a float index). The warm-up requests fill the
    cache before the first user request.
    """

    def __init__(self, embeddings: np.ndarray) -> None:
        super().__init__(name="int8_index")
        q, scale = quantize_rows(embeddings)
        self.q = tf.Variable(q, trainable=False)
        self.scale = tf.Variable(scale, trainable=False)
        self.num_items = int(q.shape[0])
        dim = int(q.shape[1])
        self.cache = tf.Variable(tf.zeros([0, dim], tf.float32), trainable=False,
                                 shape=tf.TensorShape([None, dim]))
        # A flag, not tf.shape(cache): shape inference folds the variable's shape to
        # the assigned value's inside the traced function.
        self.cached = tf.Variable(False, trainable=False)

    def _dequantized(self) -> tf.Tensor:
        def fill():
            value = tf.cast(self.q, tf.float32) * self.scale[:, tf.newaxis]
            with tf.control_dependencies([self.cache.assign(value, read_value=False)]):
                with tf.control_dependencies([self.cached.assign(True, read_value=False)]):
                    return tf.identity(value)
        return tf.cond(self.cached, self.cache.read_value, fill)

    def scores(self, query: tf.Tensor) -> tf.Tensor:
        """``[batch, d]`` queries -> ``[batch, num_items]`` scores."""
        return tf.matmul(query, self._dequantized(), transpose_b=True)

    def rows(self, ids: tf.Tensor) -> tf.Tensor:
        """``[...]`` item indices -> ``[..., d]`` dequantized embeddings."""
        flat = tf.reshape(ids, [-1])
        out = dequantize_rows(self.q, self.scale, flat)
        return tf.reshape(out, tf.concat([tf.shape(ids), tf.shape(self.q)[1:]], axis=0))

