"""The ``preprocessing_fn`` run by TFX Transform on Beam.

Analyzers see the train split only, so vocabularies and quantiles never leak eval
data. Outputs (all dense, ``[batch]`` unless noted):

* ``user_id_xf``, ``item_id_xf``: int64 vocabulary indices (OOV buckets after the
  vocabulary); files ``user_id_vocab`` / ``item_id_vocab``.
* ``item_genres_xf``: float32 multi-hot ``[batch, genre_buckets]``.
* ``user_age_xf``: int64 age group, 0 = unknown.
* ``user_gender_xf``, ``user_occupation_xf``: int64 vocabulary indices.
* ``item_year_xf``: int64 quantile bucket of the release year, 0 = unknown.
* ``hour_of_day``, ``day_of_week`` (Monday = 0): int64; ``time_scaled``: float32 in [0, 1].
* ``rating_xf``: float32, passed through.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

import tensorflow as tf
import tensorflow_transform as tft

from transform import features as F
from transform.config import TransformConfig

_SECONDS_PER_DAY = 86_400


def _threshold(value: int):
    """TFT treats a threshold of 1 as a no-op and warns; None says so explicitly."""
    return value if value > 1 else None


def _dense(x: Any, default: Any) -> tf.Tensor:
    """``[batch, 1]`` dense or sparse input -> ``[batch]`` tensor."""
    if isinstance(x, tf.SparseTensor):
        x = tf.sparse.to_dense(tf.sparse.reset_shape(x, [x.dense_shape[0], 1]),
                               default_value=default)
    return tf.reshape(x, [-1])


def _as_sparse(x: Any) -> tf.SparseTensor:
    if isinstance(x, tf.RaggedTensor):
        return x.to_sparse()
    if isinstance(x, tf.SparseTensor):
        return x
    return tf.sparse.from_dense(x)


def preprocessing_fn(inputs: Dict[str, Any],
                     custom_config: Optional[Mapping[str, Any]] = None) -> Dict[str, tf.Tensor]:
    cfg = TransformConfig.from_custom_config(custom_config)
    out: Dict[str, tf.Tensor] = {}

    user = _dense(inputs[F.USER_ID], "")
    item = _dense(inputs[F.ITEM_ID], "")
    out[F.transformed_name(F.USER_ID)] = tft.compute_and_apply_vocabulary(
        user, frequency_threshold=_threshold(cfg.user_frequency_threshold),
        num_oov_buckets=cfg.num_oov_buckets, vocab_filename=F.USER_VOCAB)
    out[F.transformed_name(F.ITEM_ID)] = tft.compute_and_apply_vocabulary(
        item, frequency_threshold=_threshold(cfg.item_frequency_threshold),
        num_oov_buckets=cfg.num_oov_buckets, vocab_filename=F.ITEM_VOCAB)

    genres = _as_sparse(inputs[F.ITEM_GENRES])
    genre_ids = tft.compute_and_apply_vocabulary(
        genres, top_k=cfg.genre_buckets - 1, num_oov_buckets=1, vocab_filename=F.GENRE_VOCAB)
    # Rows need a fixed width for to_indicator; padding never adds an index.
    genre_ids = tf.sparse.reset_shape(
        genre_ids, [genre_ids.dense_shape[0], tf.maximum(genre_ids.dense_shape[1], 1)])
    out[F.transformed_name(F.ITEM_GENRES)] = tf.cast(
        tf.sparse.to_indicator(genre_ids, cfg.genre_buckets), tf.float32)

    age = tf.cast(_dense(inputs[F.USER_AGE], -1), tf.float32)
    out[F.transformed_name(F.USER_AGE)] = tft.apply_buckets(
        age, tf.constant([F.AGE_BOUNDARIES], dtype=tf.float32))
    for key, vocab in ((F.USER_GENDER, F.GENDER_VOCAB), (F.USER_OCCUPATION, F.OCCUPATION_VOCAB)):
        out[F.transformed_name(key)] = tft.compute_and_apply_vocabulary(
            _dense(inputs[key], "unknown"), num_oov_buckets=1, vocab_filename=vocab)

    year = tf.cast(_dense(inputs[F.ITEM_YEAR], -1), tf.float32)
    known = year >= 0
    # Quantiles of known years only, so the "unknown" value does not bend them.
    boundaries = tft.quantiles(tf.boolean_mask(year, known), num_buckets=cfg.year_buckets,
                               epsilon=0.01)
    out[F.transformed_name(F.ITEM_YEAR)] = tf.where(
        known, tft.apply_buckets(year, boundaries) + 1, tf.zeros_like(year, tf.int64))

    ts = tf.cast(_dense(inputs[F.TIMESTAMP], 0), tf.int64)
    out[F.HOUR_OF_DAY] = (ts % _SECONDS_PER_DAY) // 3600
    out[F.DAY_OF_WEEK] = (ts // _SECONDS_PER_DAY + 3) % 7  # 1970-01-01 was a Thursday
    out[F.TIME_SCALED] = tft.scale_to_0_1(tf.cast(ts, tf.float32))

    out[F.transformed_name(F.RATING)] = tf.cast(_dense(inputs[F.RATING], 0.0), tf.float32)
    return out
