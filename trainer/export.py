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
* ``query_embedding(user_id)``: ``embeddings [batch, d]``, for the compression step.

The candidate index is every item of the train vocabulary, embedded once at export.
Everything is core TensorFlow (hash tables, gathers, matmul, top_k), so
``tensorflow_model_server`` and a process importing only ``tensorflow`` can run it.
"""
from __future__ import annotations

from typing import Dict

import numpy as np
import tensorflow as tf

from trainer.data import CANDIDATE_FEATURES, QUERY_FEATURES, USER_ID
from trainer.model import Tower

SERVING_DEFAULT = "serving_default"
RECOMMEND_EXCLUDING = "recommend_excluding"
SERVE_TF_EXAMPLES = "serve_tf_examples"
QUERY_EMBEDDING = "query_embedding"

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


class RetrievalModule(tf.Module):
    """Holds the query tower, the candidate index and the lookup tables."""

    def __init__(self, query_tower: Tower, candidate_embeddings: np.ndarray,
                 item_vocab_file: str, user_vocab_file: str, user_features: np.ndarray,
                 item_counts: np.ndarray, tft_layer, raw_feature_spec: dict, top_k: int) -> None:
        super().__init__(name="retrieval")
        num_items, num_users = len(candidate_embeddings), len(user_features)
        self.query_tower = query_tower
        self.tft_layer = tft_layer
        self.k = min(top_k, num_items)
        self.num_users = num_users
        init = lambda path: tf.lookup.TextFileInitializer(  # noqa: E731
            path, tf.string, tf.lookup.TextFileIndex.WHOLE_LINE,
            tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER)
        self.user_table = tf.lookup.StaticHashTable(init(user_vocab_file), -1)
        self.item_table = tf.lookup.StaticHashTable(init(item_vocab_file), -1)
        with tf.io.gfile.GFile(item_vocab_file, "rb") as f:
            item_ids = f.read().decode("utf-8").split("\n")[:num_items]
        self.item_ids = tf.Variable(item_ids, dtype=tf.string, trainable=False)
        self.candidates = tf.Variable(candidate_embeddings.astype(np.float32), trainable=False)
        # Row num_users is the unknown user: all features in their "unknown" buckets.
        self.user_features = tf.Variable(
            np.concatenate([user_features, np.zeros((1, 3), np.int64)]), trainable=False)
        share = item_counts / max(1, item_counts.sum())
        self.popularity = tf.Variable(share.astype(np.float32), trainable=False)
        self._raw_spec = _raw_serving_spec(raw_feature_spec)

    def _query_inputs(self, user_id: tf.Tensor):
        idx = self.user_table.lookup(user_id)
        known = idx >= 0
        row = tf.where(known, idx, self.num_users)
        feats = tf.gather(self.user_features, row)
        inputs = {USER_ID: row}  # OOV users get the first OOV bucket, index num_users
        for i, name in enumerate(QUERY_FEATURES[1:]):
            inputs[name] = feats[:, i]
        return inputs, known

    def _scores(self, user_id: tf.Tensor) -> tf.Tensor:
        inputs, known = self._query_inputs(user_id)
        query = self.query_tower(inputs, training=False)
        scores = tf.matmul(query, self.candidates, transpose_b=True)
        cold = tf.broadcast_to(self.popularity[tf.newaxis, :], tf.shape(scores))
        return tf.where(known[:, tf.newaxis], scores, cold)

    def _top_k(self, scores: tf.Tensor) -> Dict[str, tf.Tensor]:
        top = tf.math.top_k(scores, k=self.k, sorted=True)
        return {"item_ids": tf.gather(self.item_ids, top.indices), "scores": top.values}

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
        transformed = self.tft_layer(raw)
        inputs = {name: tf.reshape(transformed[name], [-1]) for name in QUERY_FEATURES}
        query = self.query_tower(inputs, training=False)
        return self._top_k(tf.matmul(query, self.candidates, transpose_b=True))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="user_id")])
    def query_embedding(self, user_id):
        inputs, _ = self._query_inputs(user_id)
        return {"embeddings": self.query_tower(inputs, training=False)}

    def signatures(self) -> dict:
        return {SERVING_DEFAULT: self.serve.get_concrete_function(),
                RECOMMEND_EXCLUDING: self.recommend_excluding.get_concrete_function(),
                SERVE_TF_EXAMPLES: self.serve_tf_examples.get_concrete_function(),
                QUERY_EMBEDDING: self.query_embedding.get_concrete_function()}


def embed_catalog(candidate_tower: Tower, item_features: Dict[str, np.ndarray],
                  batch_size: int = 8192) -> np.ndarray:
    """``[num_items, d]`` candidate embeddings of every catalog item."""
    n = len(item_features[CANDIDATE_FEATURES[0]])
    out = []
    for lo in range(0, n, batch_size):
        batch = {k: v[lo:lo + batch_size] for k, v in item_features.items()}
        out.append(candidate_tower(batch, training=False).numpy())
    return np.concatenate(out) if out else np.zeros((0, 1), np.float32)

