"""The candidate index: every catalog item's embedding, float32 or int8 per row.

Both score a batch of queries against the whole catalog (``scores``) and return the
rows of given items (``rows``), which the query side reads as the history's item
vectors, so the served model holds one item matrix, not two.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from serving.savedmodel.quantize import dequantize_rows, quantize_rows


class FloatIndex(tf.Module):
    """Candidate embeddings ``[num_items, d]`` in float32."""

    def __init__(self, embeddings: np.ndarray) -> None:
        super().__init__(name="float_index")
        self.embeddings = tf.Variable(np.asarray(embeddings, np.float32), trainable=False)
        self.num_items = int(embeddings.shape[0])

    def scores(self, query: tf.Tensor) -> tf.Tensor:
        """``[batch, d]`` queries -> ``[batch, num_items]`` scores."""
        return tf.matmul(query, self.embeddings, transpose_b=True)

    def rows(self, ids: tf.Tensor) -> tf.Tensor:
        """``[...]`` item indices -> ``[..., d]`` embeddings."""
        return tf.gather(self.embeddings, ids)


class Int8Index(tf.Module):
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
