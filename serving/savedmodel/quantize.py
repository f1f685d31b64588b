"""Symmetric int8 quantization with one scale per row (embeddings) or column (kernels).

TF-MOT's quantize registry has no scheme for ``Embedding`` layers, and its
quantization-aware wrappers emit fake-quant ops meant for TFLite, not for a
TensorFlow Serving SavedModel. Here the int8 tensors are stored as variables and
dequantized with core ops (cast and multiply) at serving time.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np
import tensorflow as tf


def quantize_rows(w: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """``w [n, d]`` -> ``(q int8 [n, d], scale float32 [n])`` with ``w ~= q * scale``."""
    w = np.asarray(w, np.float32)
    if w.ndim != 2:
        raise ValueError(f"expected a [rows, dim] matrix, got shape {w.shape}")
    scale = np.abs(w).max(axis=1) / 127.0
    scale[scale == 0] = 1.0  # all-zero rows stay zero
    q = np.clip(np.round(w / scale[:, None]), -127, 127).astype(np.int8)
    return q, scale.astype(np.float32)


def quantize_columns(w: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Dense kernel ``[in, out]`` with one scale per output unit (per-channel)."""
    q, scale = quantize_rows(np.asarray(w, np.float32).T)
    return q.T.copy(), scale


def dequantize_rows(q: tf.Tensor, scale: tf.Tensor, rows: tf.Tensor) -> tf.Tensor:
    """Gathers ``rows`` of an int8 table and dequantizes them: ``[len(rows), d]``."""
    return tf.cast(tf.gather(q, rows), tf.float32) * tf.gather(scale, rows)[:, tf.newaxis]


def dequantize_kernel(q: tf.Tensor, scale: tf.Tensor) -> tf.Tensor:
    return tf.cast(q, tf.float32) * scale[tf.newaxis, :]
