"""The self-contained serving SavedModel (signature contract in CONTRACTS.md).

Signatures, all returning ``item_ids`` (``[batch, K]`` raw IDs) and ``scores``
(``[batch, K]`` float32, highest first):

* ``serving_default(user_id [batch] string)``: user features come from a table in
  the model; an unknown user gets the most popular items (cold start), scored by
  their share of train interactions.
* ``recommend_excluding(user_id, exclude_item_ids [batch, M] string)``: the same,
  never returning the listed items ("" pads rows). The evaluator uses it to leave
  out what each user saw in training.
* ``serve_tf_examples(examples [batch] string)``: serialized tf.Examples with raw
  user features go through the Transform graph, so a new user with known
  demographics still gets a personal answer.

The candidate index is every item of the train vocabulary, embedded once at export.
Everything is core TensorFlow (hash tables, gathers, matmul, top_k), so
``tensorflow_model_server`` and a process importing only ``tensorflow`` can run it.
"""
from __future__ import annotations

from typing import Dict

import numpy as np
import tensorflow as tf

from trainer.data import CANDIDATE_FEATURES, QUERY_FEATURES, USER_ID

SERVING_DEFAULT = "serving_default"
RECOMMEND_EXCLUDING = "recommend_excluding"
SERVE_TF_EXAMPLES = "serve_tf_examples"

# Defaults for raw features absent from a tf.Example request (same meaning as ingest).
_RAW_DEFAULTS = {tf.string: "unknown", tf.int64: -1, tf.float32: 0.0}


def _raw_serving_spec(raw_spec: Dict[str, tf.io.FixedLenFeature]) -> dict:
    """Every raw feature optional, so a request may carry only the user's fields."""
    spec = {}
    for name, s in raw_spec.items():
        if isinstance(s, tf.io.FixedLenFeature):
            spec[name] = tf.io.FixedLenFeature(s.shape, s.dtype,
                                               default_value=[_RAW_DEFAULTS[s.dtype]])
        else:
            spec[name] = s
    return spec


def vocab_table(path: str) -> tf.lookup.StaticHashTable:
    """Token -> line number of a Transform vocabulary file (an asset); -1 if absent."""
    return tf.lookup.StaticHashTable(tf.lookup.TextFileInitializer(
        path, tf.string, tf.lookup.TextFileIndex.WHOLE_LINE,
        tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER), -1)


def _smallest_int(values: np.ndarray):
    """Narrowest integer dtype that holds ``values`` (bucket indices are small)."""
    for dtype in (np.int8, np.int16, np.int32):
        if values.size == 0 or (values.min() >= np.iinfo(dtype).min
                                and values.max() <= np.iinfo(dtype).max):
            return dtype
    return np.int64


class FloatIndex(tf.Module):
    """Candidate embeddings ``[num_items, d]`` in float32."""

    def __init__(self, embeddings: np.ndarray) -> None:
        super().__init__(name="float_index")
        self.embeddings = tf.Variable(np.asarray(embeddings, np.float32), trainable=False)
        self.num_items = int(embeddings.shape[0])

    def scores(self, query: tf.Tensor) -> tf.Tensor:
        """``[batch, d]`` queries -> ``[batch, num_items]`` scores."""
        return tf.matmul(query, self.embeddings, transpose_b=True)


class TransformQueryFeatures(tf.Module):
    """Query-tower inputs from raw features through the Transform graph (no skew)."""

    def __init__(self, tft_layer) -> None:
        super().__init__(name="transform_query_features")
        self.tft_layer = tft_layer

    def __call__(self, raw: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
        transformed = self.tft_layer(raw)
        return {name: tf.reshape(transformed[name], [-1]) for name in QUERY_FEATURES}


class RetrievalModule(tf.Module):
    """Holds the query tower, the candidate index and the lookup tables.

    ``query_tower`` maps the query-feature dict to ``[batch, d]`` unit vectors (a
    Keras tower, or its quantized core-ops copy); ``candidate_embeddings`` is a float
    matrix or an index object with a ``scores(query)`` method. ``example_features``
    maps parsed raw features to query-tower inputs (``TransformQueryFeatures``, or a
    core-ops lookup in the compressed model).
    """

    def __init__(self, query_tower, candidate_embeddings,
                 item_vocab_file: str, user_vocab_file: str, user_features: np.ndarray,
                 item_counts: np.ndarray, example_features, raw_feature_spec: dict,
                 top_k: int) -> None:
        super().__init__(name="retrieval")
        index = candidate_embeddings if hasattr(candidate_embeddings, "scores") \
            else FloatIndex(candidate_embeddings)
        num_items, num_users = index.num_items, len(user_features)
        self.query_tower = query_tower
        self.example_features = example_features
        self.k = min(top_k, num_items)
        self.num_users = num_users
        self.user_table = vocab_table(user_vocab_file)
        self.item_table = vocab_table(item_vocab_file)
        # Index -> raw item ID from the vocabulary asset (not a second copy in variables).
        self.item_ids = tf.lookup.StaticHashTable(tf.lookup.TextFileInitializer(
            item_vocab_file, tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER,
            tf.string, tf.lookup.TextFileIndex.WHOLE_LINE), "")
        self.index = index
        # Row num_users is the unknown user: all features in their "unknown" buckets.
        table = np.concatenate([user_features, np.zeros((1, 3), np.int64)])
        self.user_features = tf.Variable(table.astype(_smallest_int(table)), trainable=False)
        share = item_counts / max(1, item_counts.sum())
        self.popularity = tf.Variable(share.astype(np.float32), trainable=False)
        self._raw_spec = _raw_serving_spec(raw_feature_spec)

    def _query_inputs(self, user_id: tf.Tensor):
        idx = self.user_table.lookup(user_id)
        known = idx >= 0
        row = tf.where(known, idx, self.num_users)
        feats = tf.cast(tf.gather(self.user_features, row), tf.int64)
        inputs = {USER_ID: row}  # OOV users get the first OOV bucket, index num_users
        for i, name in enumerate(QUERY_FEATURES[1:]):
            inputs[name] = feats[:, i]
        return inputs, known

    # A tf.function of its own, so the query path is stored once in the SavedModel and
    # called from every signature instead of being inlined into each.
    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def _scores(self, user_id: tf.Tensor) -> tf.Tensor:
        inputs, known = self._query_inputs(user_id)
        query = self.query_tower(inputs, training=False)
        scores = self.index.scores(query)
        cold = tf.broadcast_to(self.popularity[tf.newaxis, :], tf.shape(scores))
        return tf.where(known[:, tf.newaxis], scores, cold)

    def _top_k(self, scores: tf.Tensor) -> Dict[str, tf.Tensor]:
        top = tf.math.top_k(scores, k=self.k, sorted=True)
        return {"item_ids": self.item_ids.lookup(tf.cast(top.indices, tf.int64)),
                "scores": top.values}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="user_id")])
    def serve(self, user_id):
        return self._top_k(self._scores(user_id))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="user_id"),
                                  tf.TensorSpec([None, None], tf.string,
                                                name="exclude_item_ids")])
    def recommend_excluding(self, user_id, exclude_item_ids):
        scores = self._scores(user_id)
        idx = self.item_table.lookup(exclude_item_ids)  # [batch, M], -1 for padding
        rows = tf.broadcast_to(tf.range(tf.shape(idx)[0], dtype=tf.int64)[:, tf.newaxis],
                               tf.shape(idx))
        hit = idx >= 0
        where = tf.stack([tf.boolean_mask(rows, hit), tf.boolean_mask(idx, hit)], axis=1)
        scores = tf.tensor_scatter_nd_update(
            scores, where, tf.fill([tf.shape(where)[0]], tf.constant(-np.inf, tf.float32)))
        return self._top_k(scores)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def serve_tf_examples(self, examples):
        raw = tf.io.parse_example(examples, self._raw_spec)
        query = self.query_tower(self.example_features(raw), training=False)
        return self._top_k(self.index.scores(query))

    def signatures(self) -> dict:
        # tf.functions, not concrete functions: traced once, inside the save, instead of
        # once here and again by tf.saved_model.save (which doubled the graph).
        return {SERVING_DEFAULT: self.serve, RECOMMEND_EXCLUDING: self.recommend_excluding,
                SERVE_TF_EXAMPLES: self.serve_tf_examples}


def embed_catalog(candidate_tower, item_features: Dict[str, np.ndarray],
                  batch_size: int = 8192) -> np.ndarray:
    """``[num_items, d]`` candidate embeddings of every catalog item."""
    n = len(item_features[CANDIDATE_FEATURES[0]])
    out = []
    for lo in range(0, n, batch_size):
        batch = {k: v[lo:lo + batch_size] for k, v in item_features.items()}
        out.append(candidate_tower(batch, training=False).numpy())
    return np.concatenate(out) if out else np.zeros((0, 1), np.float32)

