"""Core-ops copies of the serving pieces with int8 weights."""
from __future__ import annotations

from typing import Dict

import numpy as np
import tensorflow as tf

from trainer.data import QUERY_FEATURES
from trainer.export import vocab_table
from transform import features as F
from components.compression.quantize import (dequantize_kernel, dequantize_rows,
                                             quantize_columns, quantize_rows)


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


class QuantizedTower(tf.Module):
    """Forward pass of a trained ``trainer.model.Tower`` with int8 tables and kernels.

    Embedding tables are quantized per row, Dense kernels per output unit; biases stay
    float32. Output: ``[batch, d]`` unit vectors, like the Keras tower.
    """

    def __init__(self, tower) -> None:
        super().__init__(name=f"quantized_{tower.name}")
        self._categorical = list(tower._categorical)
        self._dense_inputs = list(tower._dense)
        self.tables: Dict[str, tuple] = {}
        for f in self._categorical:
            q, s = quantize_rows(tower.embeddings[f].embeddings.numpy())
            self.tables[f] = (tf.Variable(q, trainable=False), tf.Variable(s, trainable=False))
        self.projections = {}
        for f in self._dense_inputs:
            q, s = quantize_columns(tower.projections[f].kernel.numpy())
            self.projections[f] = (tf.Variable(q, trainable=False),
                                   tf.Variable(s, trainable=False))
        dense = [l for l in tower.mlp.layers if isinstance(l, tf.keras.layers.Dense)]
        self.layers = []
        for layer in dense:
            q, s = quantize_columns(layer.kernel.numpy())
            self.layers.append((tf.Variable(q, trainable=False), tf.Variable(s, trainable=False),
                                tf.Variable(layer.bias.numpy(), trainable=False)))
        self._hidden = len(dense) - 1  # ReLU after every layer but the last
        spec = {f: tf.TensorSpec([None], tf.int64) for f in self._categorical}
        spec.update({f: tf.TensorSpec([None, int(tower.projections[f].kernel.shape[0])],
                                      tf.float32) for f in self._dense_inputs})
        # One traced graph, stored once, for every signature that calls the tower.
        self._forward = tf.function(self._forward_impl, input_signature=[spec])

    def __call__(self, features: Dict[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        inputs = {f: tf.cast(tf.reshape(features[f], [-1]), tf.int64) for f in self._categorical}
        inputs.update({f: tf.cast(features[f], tf.float32) for f in self._dense_inputs})
        return self._forward(inputs)

    def _forward_impl(self, features: Dict[str, tf.Tensor]) -> tf.Tensor:
        # Same order as the Keras tower's concatenation.
        parts = [dequantize_rows(*self.tables[f], tf.reshape(features[f], [-1]))
                 for f in self._categorical]
        parts += [tf.matmul(tf.cast(features[f], tf.float32),
                            dequantize_kernel(*self.projections[f]))
                  for f in self._dense_inputs]
        x = tf.concat(parts, axis=1)
        for i, (q, s, b) in enumerate(self.layers):
            x = tf.matmul(x, dequantize_kernel(q, s)) + b
            if i < self._hidden:
                x = tf.nn.relu(x)
        return tf.math.l2_normalize(x, axis=1)


class LookupQueryFeatures(tf.Module):
    """The query side of ``transform.preprocessing`` in a few core ops.

    The full Transform graph costs about 220 KB of the SavedModel, more than all of
    the compressed weights; the query tower needs only four of its outputs. Those are
    reproduced here from the same vocabulary files and age boundaries, and a test
    checks them against the Transform graph on the same examples. It assumes one OOV
    bucket per vocabulary (the default); the compressor keeps the Transform graph
    otherwise.
    """

    def __init__(self, vocab_files: Dict[str, str]) -> None:
        super().__init__(name="lookup_query_features")
        self.tables = {name: vocab_table(path) for name, path in vocab_files.items()}
        self.sizes = {name: int(sum(1 for _ in tf.io.gfile.GFile(path)))
                      for name, path in vocab_files.items()}
        self.boundaries = tf.constant(F.AGE_BOUNDARIES, tf.float32)

    def _index(self, name: str, values: tf.Tensor) -> tf.Tensor:
        idx = self.tables[name].lookup(tf.reshape(values, [-1]))
        # Unseen values go to the first OOV bucket, right after the vocabulary.
        return tf.where(idx >= 0, idx, tf.constant(self.sizes[name], tf.int64))

    def __call__(self, raw: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
        age = tf.cast(tf.reshape(raw[F.USER_AGE], [-1]), tf.float32)
        age_bucket = tf.reduce_sum(
            tf.cast(age[:, tf.newaxis] >= self.boundaries[tf.newaxis, :], tf.int64), axis=1)
        return {
            QUERY_FEATURES[0]: self._index(F.USER_VOCAB, raw[F.USER_ID]),
            QUERY_FEATURES[1]: age_bucket,
            QUERY_FEATURES[2]: self._index(F.GENDER_VOCAB, raw[F.USER_GENDER]),
            QUERY_FEATURES[3]: self._index(F.OCCUPATION_VOCAB, raw[F.USER_OCCUPATION]),
        }
