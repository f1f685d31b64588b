"""Two-tower retrieval model written with TensorFlow Recommenders.

Both towers embed an ID and side features, run an MLP and L2-normalise, so scores
are cosine similarities divided by the softmax temperature. Training is in-batch
sampled softmax with the log-Q correction for popularity-biased in-batch sampling,
optionally mixed with uniformly sampled catalog negatives (Yang et al., 2020).
"""
from __future__ import annotations

from typing import Dict, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs

from trainer.config import TrainerConfig
from trainer.data import CANDIDATE_FEATURES, ITEM_ID, QUERY_FEATURES

keras = tf.keras  # tf_keras, because project_env sets TF_USE_LEGACY_KERAS=1


class Tower(keras.Model):
    """Embeds ``[batch]`` categorical inputs (and dense multi-hot ones), then an MLP.

    Args:
      categorical: ``{feature: vocabulary size}`` for integer-index inputs; the first
        one is the ID and gets ``id_embedding_dim``, the others ``feature_embedding_dim``.
      dense: names of ``[batch, width]`` float inputs, projected linearly (an
        embedding bag for multi-hot vectors).
    Returns ``[batch, output_dim]`` unit vectors.
    """

    def __init__(self, categorical: Dict[str, int], dense: Sequence[str],
                 cfg: TrainerConfig, name: str) -> None:
        super().__init__(name=name)
        reg = keras.regularizers.l2(cfg.l2) if cfg.l2 else None
        self._categorical = list(categorical)
        self._dense = list(dense)
        self.embeddings = {}
        for i, (feature, size) in enumerate(categorical.items()):
            dim = cfg.id_embedding_dim if i == 0 else cfg.feature_embedding_dim
            self.embeddings[feature] = keras.layers.Embedding(
                size, dim, embeddings_regularizer=reg, name=f"{feature}_embedding")
        self.projections = {f: keras.layers.Dense(cfg.feature_embedding_dim * 2, use_bias=False,
                                                  name=f"{f}_projection") for f in dense}
        layers = []
        for width in cfg.tower_layers:
            layers.append(keras.layers.Dense(width, activation="relu", kernel_regularizer=reg))
            if cfg.dropout:
                layers.append(keras.layers.Dropout(cfg.dropout))
        layers.append(keras.layers.Dense(cfg.output_dim, kernel_regularizer=reg))
        self.mlp = keras.Sequential(layers, name="mlp")

    # No tensor-dependent Python control flow here or in TFRS's task, so AutoGraph's
    # source conversion (about 25 s of tracing per model) buys nothing.
    @tf.autograph.experimental.do_not_convert
    def call(self, features: Dict[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        parts = [self.embeddings[f](tf.reshape(features[f], [-1])) for f in self._categorical]
        parts += [self.projections[f](tf.cast(features[f], tf.float32)) for f in self._dense]
        x = self.mlp(tf.concat(parts, axis=1), training=training)
        return tf.math.l2_normalize(tf.cast(x, tf.float32), axis=1)


def build_towers(sizes: Dict[str, int], cfg: TrainerConfig):
    """``sizes`` gives the vocabulary size (OOV included) of each categorical feature."""
    query = Tower({f: sizes[f] for f in QUERY_FEATURES}, (), cfg, "query_tower")
    candidate = Tower({f: sizes[f] for f in (CANDIDATE_FEATURES[0], CANDIDATE_FEATURES[2])},
                      (CANDIDATE_FEATURES[1],), cfg, "candidate_tower")
    return query, candidate


class TwoTowerModel(tfrs.Model):
    """In-batch softmax over ``[batch (+ mixed negatives)]`` candidates.

    Args:
      item_probability: ``[num_item_buckets]`` sampling probability of each item
        index in a training batch (its share of train interactions).
      catalog_features: candidate-tower inputs for every catalog item, used to
        embed mixed negatives.
    """

    def __init__(self, query_tower: Tower, candidate_tower: Tower, cfg: TrainerConfig,
                 item_probability: np.ndarray, catalog_features: Dict[str, np.ndarray]) -> None:
        super().__init__()
        self.query_tower = query_tower
        self.candidate_tower = candidate_tower
        self.cfg = cfg
        self.item_probability = tf.constant(item_probability, tf.float32)
        self.catalog = {k: tf.constant(v) for k, v in catalog_features.items()}
        self.num_catalog_items = int(len(catalog_features[ITEM_ID]))
        self.task = tfrs.tasks.Retrieval(temperature=cfg.temperature,
                                         remove_accidental_hits=cfg.remove_accidental_hits)

    @tf.autograph.experimental.do_not_convert
    def compute_loss(self, features: Dict[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        query = self.query_tower({f: features[f] for f in QUERY_FEATURES}, training=training)
        cand_inputs = {f: features[f] for f in CANDIDATE_FEATURES}
        ids = tf.reshape(features[ITEM_ID], [-1])
        prob = tf.gather(self.item_probability, ids)
        m = self.cfg.mixed_negatives
        if m:
            extra = tf.random.uniform([m], 0, self.num_catalog_items, dtype=tf.int64)
            cand_inputs = {f: tf.concat([tf.cast(cand_inputs[f], self.catalog[f].dtype),
                                         tf.gather(self.catalog[f], extra)], axis=0)
                           for f in CANDIDATE_FEATURES}
            ids = tf.concat([ids, extra], axis=0)
            prob = tf.gather(self.item_probability, ids)
            # Each candidate came from the mixture of B popularity draws and m uniform ones.
            b = tf.cast(tf.shape(query)[0], tf.float32)
            prob = (b * prob + m / self.num_catalog_items) / (b + m)
        candidates = self.candidate_tower(cand_inputs, training=training)
        return self.task(query, candidates,
                         candidate_sampling_probability=prob if self.cfg.logq_correction
                         else None,
                         candidate_ids=ids, compute_metrics=False)
