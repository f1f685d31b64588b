"""The query tower's time inputs (``features.QUERY_AGE``, ``features.QUERY_GAP``), one
formula for the Trainer and the served model."""
from __future__ import annotations

import tensorflow as tf

from transform.features import DAY_SECONDS as DAY


def log_days(days: tf.Tensor) -> tf.Tensor:
    """``[P]`` days (negative ones count as 0) -> ``[P, 1]`` ``log(1 + days)``: a week and
    a year stay a few units apart, so neither dominates the tower's first layer."""
    return tf.math.log1p(tf.maximum(tf.cast(days, tf.float32), 0.0))[:, tf.newaxis]
