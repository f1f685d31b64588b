"""The served copy of a trained ``trainer.model.Tower``, float32 or int8, in core ops.

One forward pass for both the Trainer's model and the compressor's: embedding
lookups, the linear projection of dense inputs, the MLP and L2 normalisation, as
plain variables and matmuls, so the SavedModel holds no Keras objects (saving them
traced every layer, which made the export slow and its graph large). With ``int8``,
embedding tables are quantized per row and kernels per output unit, and dequantized
by core ops at serving time; biases stay float32.
"""
from __future__ import annotations

from typing import Dict, List, Tuple

import numpy as np
import tensorflow as tf

from serving.savedmodel.quantize import quantize_columns, quantize_rows


class _Weights(tf.Module):
    """One matrix, float32 or int8 with a float32 scale per row or per column."""

    def __init__(self, w: np.ndarray, int8: bool, per: str) -> None:
        super().__init__()
        w = np.asarray(w, np.float32)
        self.int8 = int8
        if int8:
            q, scale = quantize_rows(w) if per == "row" else quantize_columns(w)
            self.q = tf.Variable(q, trainable=False)
            self.scale = tf.Variable(scale, trainable=False)
        else:
            self.w = tf.Variable(w, trainable=False)
        self.shape = w.shape

    def rows(self, ids: tf.Tensor) -> tf.Tensor:
        """``[n]`` row indices -> ``[n, cols]`` float32."""
        if not self.int8:
            return tf.gather(self.w, ids)
        return tf.cast(tf.gather(self.q, ids), tf.float32) * \
            tf.gather(self.scale, ids)[:, tf.newaxis]

    def matrix(self) -> tf.Tensor:
        if not self.int8:
            return self.w.read_value()
        return tf.cast(self.q, tf.float32) * self.scale[tf.newaxis, :]


class ServingTower(tf.Module):
    """Forward pass of a trained tower: ``{feature: [batch, ...]}`` -> ``[batch, d]`` unit
    vectors, equal to the Keras tower's at inference (up to int8 rounding)."""

    def __init__(self, tower, int8: bool = False) -> None:
        super().__init__(name=f"serving_{tower.name}")
        self.int8 = bool(int8)
        self._categorical = list(tower._categorical)
        self._dense_inputs = list(tower._dense)
        self.input_names = tuple(self._categorical + self._dense_inputs)  # + passthrough
        self._passthrough = list(tower._passthrough)
        self.tables = {f: _Weights(tower.embeddings[f].embeddings.numpy(), int8, "row")
                       for f in self._categorical}
        self.projections = {f: _Weights(tower.projections[f].kernel.numpy(), int8, "column")
                            for f in self._dense_inputs}
        dense = [l for l in tower.mlp.layers if isinstance(l, tf.keras.layers.Dense)]
        self.layers: List[Tuple[_Weights, tf.Variable]] = [
            (_Weights(l.kernel.numpy(), int8, "column"),
             tf.Variable(l.bias.numpy(), trainable=False)) for l in dense]
        # Width of the passthrough inputs: what the first layer takes beyond the rest.
        width = int(dense[0].kernel.shape[0]) - sum(
            int(t.shape[1]) for t in self.tables.values()) - sum(
            int(p.shape[1]) for p in self.projections.values())
        spec = {f: tf.TensorSpec([None], tf.int64) for f in self._categorical}
        spec.update({f: tf.TensorSpec([None, int(self.projections[f].shape[0])], tf.float32)
                     for f in self._dense_inputs})
        spec.update({f: tf.TensorSpec([None, width // max(1, len(self._passthrough))],
                                      tf.float32) for f in self._passthrough})
        # One traced graph, stored once, for every signature that calls the tower.
        self._forward = tf.function(self._forward_impl, input_signature=[spec],
                                    autograph=False)

    def __call__(self, features: Dict[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        inputs = {f: tf.cast(tf.reshape(features[f], [-1]), tf.int64) for f in self._categorical}
        inputs.update({f: tf.cast(features[f], tf.float32)
                       for f in self._dense_inputs + self._passthrough})
        return self._forward(inputs)

    def _forward_impl(self, features: Dict[str, tf.Tensor]) -> tf.Tensor:
        # Same order as the Keras tower's concatenation.
        parts = [self.tables[f].rows(features[f]) for f in self._categorical]
        parts += [tf.matmul(features[f], self.projections[f].matrix())
                  for f in self._dense_inputs]
        parts += [features[f] for f in self._passthrough]
        x = tf.concat(parts, axis=1)
        for i, (kernel, bias) in enumerate(self.layers):
            x = tf.matmul(x, kernel.matrix()) + bias
            if i < len(self.layers) - 1:  # ReLU after every layer but the last
                x = tf.nn.relu(x)
        return tf.math.l2_normalize(x, axis=1)
