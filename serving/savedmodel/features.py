"""Query-side inputs from raw request features, through the Transform graph, and
vocabulary lookups for the signatures' raw IDs."""
from __future__ import annotations

from typing import Dict

import tensorflow as tf

from transform.features import QUERY_FEATURES

# Defaults for raw features absent from a tf.Example request (same meaning as ingest).
_RAW_DEFAULTS = {tf.string: "unknown", tf.int64: -1, tf.float32: 0.0}


def raw_serving_spec(raw_spec: Dict[str, tf.io.FixedLenFeature]) -> dict:
    """Every raw feature optional, so a request may carry only the user's fields."""
    spec = {}
    for name, s in raw_spec.items():
        if isinstance(s, tf.io.FixedLenFeature):
            spec[name] = tf.io.FixedLenFeature(s.shape, s.dtype,
                                               default_value=[_RAW_DEFAULTS[s.dtype]])
        else:
            spec[name] = s
    return spec


def described(raw: Dict[str, tf.Tensor], names, batch: tf.Tensor) -> tf.Tensor:
    """``[batch]`` bool: the request carries at least one of the raw features ``names``
    (a value other than the default an absent feature gets); a schema without any of
    them describes nobody."""
    out = tf.zeros([batch], tf.bool)
    for name in (n for n in names if n in raw):
        value = tf.reshape(raw[name], [-1])
        present = tf.not_equal(value, tf.constant(_RAW_DEFAULTS[value.dtype], value.dtype))
        out = tf.logical_or(out, present)
    return out


def vocab_table(path: str) -> tf.lookup.StaticHashTable:
    """Token -> line number of a vocabulary file (an asset); -1 if absent."""
    return tf.lookup.StaticHashTable(tf.lookup.TextFileInitializer(
        path, tf.string, tf.lookup.TextFileIndex.WHOLE_LINE,
        tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER), -1)


class TransformQueryFeatures(tf.Module):
    """Query-tower inputs from raw features through the Transform graph (no skew)."""

    def __init__(self, tft_layer) -> None:
        super().__init__(name="transform_query_features")
        self.tft_layer = tft_layer

    def __call__(self, raw: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
        transformed = self.tft_layer(raw)
        return {name: tf.reshape(transformed[name], [-1]) for name in QUERY_FEATURES}
