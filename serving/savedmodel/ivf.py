"""The partitioned (IVF) candidate index, in core TensorFlow ops.

Brute force reads every item row per query (256 MB of float32 at 1M items x 64 dims),
so latency grows with the catalog. Here the catalog is split into balanced lists
(``partition.py``); a query scores the lists' centroids, then only the rows of its
``probes`` best lists, laid out ``[lists, list_size, d]`` so that a list is one
contiguous block (-1 items pad short lists). Rows are int8 with a float32 scale per
row; only the gathered rows are cast to float32, so the served process never holds a
float copy of the catalog (the brute-force ``Int8Index`` does). ScaNN would be faster
but its ops are not in the stock ``tensorflow_model_server``.

``exact`` scores every row, a chunk of lists at a time (again no float copy), so
``recommend_exact`` can measure what the probes miss; ``search`` falls back to it for
a row whose probed lists leave fewer than ``k`` items.

The stored rows are only ever gathered, never read whole: once a gather has touched a
resource variable, TensorFlow copies all of it on every plain read (copy-on-read, to
keep sparse updates safe), which cost 10 ms a request at 1M items.
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import tensorflow as tf

from serving.savedmodel.index import NEG_INF
from serving.savedmodel.partition import Partition
from serving.savedmodel.quantize import quantize_rows

_BUILD_ROWS = 1 << 17  # rows quantized at a time (bounds the export's temporaries)


class PartitionedIndex(tf.Module):
    """Args:
      embeddings: ``[num_items, d]`` float32 rows (unit vectors, scored by inner product).
      partition: the lists (``partition.partition_catalog``).
      probes: lists scored per query.
      int8: rows as int8 and a per-row scale (else float32).
      exact_chunk_rows: rows ``exact`` scores at a time.
    """

    def __init__(self, embeddings: np.ndarray, partition: Partition, probes: int,
                 int8: bool = True, exact_chunk_rows: int = 131_072) -> None:
        super().__init__(name="partitioned_index")
        lists, size = partition.items.shape
        if len(partition.position) != len(embeddings):
            raise ValueError(f"got {len(embeddings)} embeddings and a partition of "
                             f"{len(partition.position)} items")
        if probes < 1:
            raise ValueError(f"probes must be >= 1, got {probes}")
        dim = int(embeddings.shape[1])
        codes = np.zeros((lists, size, dim), np.int8 if int8 else np.float32)
        scale = np.zeros((lists, size), np.float32)
        step = max(1, _BUILD_ROWS // size)
        for lo in range(0, lists, step):
            items = partition.items[lo:lo + step]
            where = np.nonzero(items >= 0)
            rows = np.asarray(embeddings[items[where]], np.float32)
            if int8:
                codes[lo:lo + step][where], scale[lo:lo + step][where] = quantize_rows(rows)
            else:
                codes[lo:lo + step][where] = rows
        self.codes = tf.Variable(codes, trainable=False)
        del codes
        self.scale = tf.Variable(scale, trainable=False) if int8 else None
        self.centroids = tf.Variable(partition.centroids, trainable=False)
        self.items = tf.Variable(partition.items, trainable=False)
        self.position = tf.Variable(partition.position, trainable=False)
        self.num_items, self.num_lists, self.list_size = len(embeddings), lists, size
        self.dim, self.int8 = dim, int8
        self.probes = min(probes, lists)
        self.chunk_lists = max(1, exact_chunk_rows // size)

    # -- rows ---------------------------------------------------------------------
    def _scores(self, codes: tf.Tensor, scale: Optional[tf.Tensor], query: tf.Tensor):
        """``[n, d]`` stored rows, their ``[n]`` scales, ``[b, d]`` -> ``[b, n]``."""
        out = tf.matmul(query, tf.cast(codes, tf.float32), transpose_b=True)
        return out if scale is None else out * scale[tf.newaxis, :]

    def rows(self, ids: tf.Tensor) -> tf.Tensor:
        """``[...]`` item indices -> ``[..., d]`` float32 rows (dequantized)."""
        at = tf.cast(tf.gather(self.position, tf.reshape(ids, [-1])), tf.int64)
        slots = tf.stack([at // self.list_size, at % self.list_size], axis=1)
        out = tf.cast(tf.gather_nd(self.codes, slots), tf.float32)
        if self.scale is not None:
            out *= tf.gather_nd(self.scale, slots)[:, tf.newaxis]
        return tf.reshape(out, tf.concat([tf.shape(ids), [self.dim]], axis=0))

    def _positions(self, exclusions: tf.Tensor) -> tf.Tensor:
        """Item indices (-1 pads) -> flat slots ``list * list_size + slot`` (-1 pads)."""
        at = tf.cast(tf.gather(self.position, tf.maximum(exclusions, 0)), tf.int64)
        return tf.where(exclusions >= 0, at, -1)

    # -- approximate --------------------------------------------------------------
    def search(self, query: tf.Tensor, exclusions: tf.Tensor, k: int,
               needed: Optional[tf.Tensor] = None) -> Tuple[tf.Tensor, tf.Tensor]:
        """Top ``k`` among the rows of each query's ``probes`` best lists.

        ``[batch, d]`` queries, ``[batch, L]`` item indices to leave out (-1 pads) ->
        ``(scores, item indices)``, each ``[batch, k]``, best first, -inf / -1 past the
        last item. A row of ``needed`` (default: all) with fewer than ``k`` items left
        in its lists gets ``exact``'s answer instead.
        """
        probed = tf.math.top_k(tf.matmul(query, self.centroids, transpose_b=True),
                               k=self.probes, sorted=False).indices
        values, items = tf.map_fn(
            lambda a: self._search_one(*a, k=k),
            (query, probed, self._positions(exclusions)),
            fn_output_signature=(tf.TensorSpec([k], tf.float32),
                                 tf.TensorSpec([k], tf.int64)),
            parallel_iterations=2)
        short = tf.reduce_any(tf.math.is_inf(values), axis=1)
        if needed is not None:
            short = tf.logical_and(short, needed)

        def patched():
            exact_values, exact_items = self.exact(query, exclusions, k)
            return (tf.where(short[:, tf.newaxis], exact_values, values),
                    tf.where(short[:, tf.newaxis], exact_items, items))
        return tf.cond(tf.reduce_any(short), patched, lambda: (values, items))

    def _search_one(self, query: tf.Tensor, lists: tf.Tensor, excluded: tf.Tensor, k: int):
        """One query ``[d]``, its lists ``[P]``, flat slots to leave out ``[L]``."""
        size = self.list_size
        codes = tf.reshape(tf.gather(self.codes, lists), [-1, self.dim])
        scale = None if self.scale is None else tf.reshape(tf.gather(self.scale, lists), [-1])
        scores = self._scores(codes, scale, query[tf.newaxis, :])[0]
        items = tf.cast(tf.reshape(tf.gather(self.items, lists), [-1]), tf.int64)
        scores = tf.where(items >= 0, scores, NEG_INF)
        # An excluded item sits in list excluded // size: where that list was probed,
        # its column is that list's place among the probes times size, plus its slot.
        hit = tf.logical_and(
            tf.equal((excluded // size)[:, tf.newaxis], tf.cast(lists, tf.int64)[tf.newaxis]),
            (excluded >= 0)[:, tf.newaxis])
        found = tf.where(tf.reduce_any(hit, axis=1))[:, 0]
        column = tf.argmax(tf.cast(tf.gather(hit, found), tf.int32), axis=1) * size + \
            tf.gather(excluded, found) % size
        scores = tf.tensor_scatter_nd_update(scores, column[:, tf.newaxis],
                                             tf.fill(tf.shape(column), NEG_INF))
        if self.probes * size < k:  # a tiny catalog: pad up to k candidates
            pad = k - self.probes * size
            scores = tf.concat([scores, tf.fill([pad], NEG_INF)], axis=0)
            items = tf.concat([items, tf.fill([pad], tf.constant(-1, tf.int64))], axis=0)
        top = tf.math.top_k(scores, k=k, sorted=True)
        return top.values, tf.where(top.values > NEG_INF, tf.gather(items, top.indices), -1)

    # -- exact --------------------------------------------------------------------
    def exact(self, query: tf.Tensor, exclusions: tf.Tensor,
              k: int) -> Tuple[tf.Tensor, tf.Tensor]:
        """``search``'s answer by brute force over every stored row, ``chunk_lists``
        lists at a time, keeping the running top ``k``."""
        batch = tf.shape(query)[0]
        excluded = self._positions(exclusions)
        chunks = -(-self.num_lists // self.chunk_lists)

        def step(c, best_values, best_items):
            lo = c * self.chunk_lists
            lists = tf.range(lo, tf.minimum(lo + self.chunk_lists, self.num_lists))
            codes = tf.reshape(tf.gather(self.codes, lists), [-1, self.dim])
            scale = None if self.scale is None else \
                tf.reshape(tf.gather(self.scale, lists), [-1])
            scores = self._scores(codes, scale, query)
            items = tf.cast(tf.reshape(tf.gather(self.items, lists), [-1]), tf.int64)
            scores = tf.where(items[tf.newaxis] >= 0, scores, NEG_INF)
            local = excluded - tf.cast(lo * self.list_size, tf.int64)
            inside = tf.where(tf.logical_and(
                excluded >= 0, tf.logical_and(local >= 0, local < tf.size(items, tf.int64))))
            at = tf.stack([inside[:, 0], tf.gather_nd(local, inside)], axis=1)
            scores = tf.tensor_scatter_nd_update(scores, at, tf.fill([tf.shape(at)[0]],
                                                                     NEG_INF))
            # The chunk's own top k first: merging it costs k, not the chunk's rows.
            top = tf.math.top_k(scores, k=tf.minimum(k, tf.size(items)), sorted=False)
            values = tf.concat([best_values, top.values], axis=1)
            candidates = tf.concat([best_items, tf.gather(items, top.indices)], axis=1)
            top = tf.math.top_k(values, k=k, sorted=True)
            chosen = tf.gather(candidates, top.indices, batch_dims=1)
            return c + 1, top.values, tf.where(top.values > NEG_INF, chosen, -1)

        start = (tf.constant(0), tf.fill(tf.stack([batch, k]), NEG_INF),
                 tf.fill(tf.stack([batch, k]), tf.constant(-1, tf.int64)))
        _, values, items = tf.while_loop(lambda c, *_: c < chunks, step, start,
                                         parallel_iterations=1)
        return values, items
