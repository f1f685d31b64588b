"""History-aware two-tower retrieval model written with TensorFlow Recommenders.

The candidate tower embeds an item's ID and content features. The query tower sees
the user's recent items as the candidate tower embeds them (shared, so the served
model reads them from its own candidate index and needs no second item table),
encoded by ``MeanEncoder`` or ``AttentionEncoder``, plus the optional user ID and
demographics. Training predicts the next item at every position of a window in one
pass (position ``t`` sees items ``<= t`` only), with a full softmax over the catalog
when it is small enough, else a sampled softmax over in-batch targets with the log-Q
correction (the choice and its reasons: docs/model.md).
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs

from trainer.config import TrainerConfig
from trainer.data import CANDIDATE_FEATURES, HISTORY, ITEM_ID, QUERY_FEATURES, USER_ID
from transform import features as F
from transform.time_features import DAY, log_days

keras = tf.keras  # tf_keras, because project_env sets TF_USE_LEGACY_KERAS=1


class Tower(keras.Model):
    """Embeds ``[batch]`` categorical inputs, adds dense ones, then an MLP.

    Args:
      categorical: ``{feature: vocabulary size}`` of integer-index inputs; ``id_feature``
        gets ``id_embedding_dim``, the others ``feature_embedding_dim``.
      dense: names of ``[batch, width]`` float inputs, projected linearly (an
        embedding bag for multi-hot vectors).
      passthrough: names of ``[batch, width]`` float inputs concatenated as they are
        (the encoded history).
    Returns ``[batch, output_dim]`` unit vectors.
    """

    def __init__(self, categorical: Dict[str, int], dense: Sequence[str],
                 cfg: TrainerConfig, name: str, id_feature: Optional[str] = None,
                 passthrough: Sequence[str] = ()) -> None:
        super().__init__(name=name)
        reg = keras.regularizers.l2(cfg.l2) if cfg.l2 else None
        self._categorical = list(categorical)
        self._dense = list(dense)
        self._passthrough = list(passthrough)
        self.embeddings = {}
        for feature, size in categorical.items():
            dim = cfg.id_embedding_dim if feature == id_feature else cfg.feature_embedding_dim
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

    # No tensor-dependent Python control flow here or in the loss, so AutoGraph's
    # source conversion (about 25 s of tracing per model) buys nothing.
    @tf.autograph.experimental.do_not_convert
    def call(self, features: Dict[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        parts = [self.embeddings[f](tf.reshape(features[f], [-1])) for f in self._categorical]
        parts += [self.projections[f](tf.cast(features[f], tf.float32)) for f in self._dense]
        # The compute dtype: float16 under mixed_float16, where the embeddings are too.
        parts += [tf.cast(features[f], self.compute_dtype) for f in self._passthrough]
        x = self.mlp(tf.concat(parts, axis=1), training=training)
        return tf.math.l2_normalize(tf.cast(x, tf.float32), axis=1)


def causal_mean(vectors: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """``[batch, T, d]`` and ``[batch, T]`` bool -> mean of the valid items up to each
    position, ``[batch, T, d]`` (zeros before the first valid item)."""
    m = tf.cast(mask, vectors.dtype)[..., tf.newaxis]
    return tf.cumsum(vectors * m, axis=1) / tf.maximum(tf.cumsum(m, axis=1), 1.0)


class MeanEncoder(keras.layers.Layer):
    """The causal mean of the history's item vectors: ``[batch, T, d]``."""

    output_factor = 1

    @tf.autograph.experimental.do_not_convert
    def call(self, vectors: tf.Tensor, mask: tf.Tensor, training: bool = False) -> tf.Tensor:
        return causal_mean(vectors, mask)


class AttentionEncoder(keras.layers.Layer):
    """SASRec-style causal self-attention over the history, concatenated with the
    causal mean: ``[batch, T, 2 d]``.

    Learned positions are aligned to the newest item (position ``max_len - 1``), so a
    served history of any length up to ``max_len`` reads them as training did.
    Pre-norm blocks: LayerNorm, causal multi-head attention, residual; LayerNorm, a
    ReLU feed-forward of width ``2 d``, residual.
    """

    output_factor = 2

    def __init__(self, max_len: int, dim: int, blocks: int, heads: int,
                 dropout: float, **kwargs) -> None:
        super().__init__(**kwargs)
        self.max_len = max_len
        self.positions = keras.layers.Embedding(max_len, dim, name="positions")
        self.blocks = []
        for b in range(blocks):
            self.blocks.append((
                keras.layers.LayerNormalization(epsilon=1e-6, name=f"ln_attn_{b}"),
                keras.layers.MultiHeadAttention(heads, dim // heads, dropout=dropout,
                                                name=f"attention_{b}"),
                keras.layers.LayerNormalization(epsilon=1e-6, name=f"ln_ffn_{b}"),
                keras.layers.Dense(2 * dim, activation="relu", name=f"ffn_in_{b}"),
                keras.layers.Dense(dim, name=f"ffn_out_{b}")))
        self.final_norm = keras.layers.LayerNormalization(epsilon=1e-6, name="ln_final")
        self.drop = keras.layers.Dropout(dropout)

    @tf.autograph.experimental.do_not_convert
    def call(self, vectors: tf.Tensor, mask: tf.Tensor, training: bool = False) -> tf.Tensor:
        t = tf.shape(vectors)[1]
        positions = self.positions(tf.range(self.max_len - t, self.max_len))
        m = tf.cast(mask, vectors.dtype)[..., tf.newaxis]
        x = self.drop((vectors + positions[tf.newaxis]) * m, training=training)
        causal = tf.linalg.band_part(tf.ones([t, t], tf.bool), -1, 0)
        attend = tf.logical_and(causal[tf.newaxis], mask[:, tf.newaxis, :])
        for ln1, attention, ln2, ffn_in, ffn_out in self.blocks:
            h = ln1(x)
            x = x + attention(h, h, attention_mask=attend, training=training)
            h = ln2(x)
            x = (x + self.drop(ffn_out(ffn_in(h)), training=training)) * m
        return tf.concat([self.final_norm(x) * m, causal_mean(vectors, mask)], axis=-1)


def query_categorical(sizes: Dict[str, int], cfg: TrainerConfig) -> Dict[str, int]:
    names = ((USER_ID,) if cfg.use_user_id else ()) + \
        (QUERY_FEATURES[1:] if cfg.use_user_features else ())
    return {f: sizes[f] for f in names}


def time_inputs(cfg: TrainerConfig) -> tuple:
    """The query tower's ``[batch, 1]`` time inputs, in the order the tower reads them."""
    return ((F.QUERY_AGE,) if cfg.query_age else ()) + ((F.QUERY_GAP,) if cfg.query_gap else ())


def build_towers(sizes: Dict[str, int], cfg: TrainerConfig, max_len: Optional[int] = None):
    """``(query tower, candidate tower, history encoder)``; ``sizes`` gives the
    vocabulary size (OOV included) of each categorical feature."""
    encoder = (AttentionEncoder(max_len or cfg.max_history, cfg.output_dim,
                                cfg.attention_blocks, cfg.attention_heads, cfg.dropout,
                                name="history_encoder")
               if cfg.encoder == "attention" else MeanEncoder(name="history_encoder"))
    query = Tower(query_categorical(sizes, cfg), time_inputs(cfg), cfg, "query_tower",
                  id_feature=USER_ID, passthrough=(HISTORY,))
    candidate = Tower({f: sizes[f] for f in (CANDIDATE_FEATURES[0], CANDIDATE_FEATURES[2])},
                      (CANDIDATE_FEATURES[1],), cfg, "candidate_tower", id_feature=ITEM_ID)
    return query, candidate, encoder


class SequenceRetrievalModel(tfrs.Model):
    """Next-item softmax at every position of ``[batch, N + 1]`` item windows.

    Args:
      item_probability: ``[num_item_buckets]`` share of train interactions per item
        index (the log-Q correction of the sampled softmax).
      catalog_features: candidate-tower inputs of every catalog item ``[num_items]``.
      user_features: ``[num_users + 1, 3]`` demographic indices; the last row is the
        unknown user, which ``feature_dropout`` trains.
      reference_time: the newest train interaction's timestamp, from which the
        positions' ages are counted (``cfg.query_age``); None: every age is 0.
    """

    def __init__(self, query_tower: Tower, candidate_tower: Tower, encoder,
                 cfg: TrainerConfig, item_probability: np.ndarray,
                 catalog_features: Dict[str, np.ndarray], user_features: np.ndarray,
                 reference_time: Optional[int] = None) -> None:
        super().__init__()
        self.query_tower, self.candidate_tower, self.encoder = query_tower, candidate_tower, \
            encoder
        self.cfg = cfg
        self.item_probability = tf.constant(item_probability, tf.float32)
        self.catalog = {k: tf.constant(v) for k, v in catalog_features.items()}
        self.num_items = int(len(catalog_features[ITEM_ID]))
        self.user_features = tf.constant(user_features, tf.int64)
        self.num_users = int(user_features.shape[0]) - 1
        self.full_softmax = self.num_items <= cfg.full_softmax_max_items
        self.reference_time = reference_time

    def _candidates(self, ids: tf.Tensor, training: bool) -> tf.Tensor:
        feats = {f: tf.gather(self.catalog[f], ids) for f in CANDIDATE_FEATURES}
        return self.candidate_tower(feats, training=training)

    def _query_features(self, users: tf.Tensor, training: bool) -> Dict[str, tf.Tensor]:
        """``[P]`` user indices (-1 unknown) -> query-tower categorical inputs, with
        ``feature_dropout`` of them replaced by the unknown user's while training."""
        row = tf.where(users >= 0, users, self.num_users)
        feats = tf.gather(self.user_features, row)
        unknown = self.user_features[-1]
        out = {}
        if self.cfg.use_user_id:
            out[USER_ID] = row
        for i, name in enumerate(QUERY_FEATURES[1:]):
            out[name] = feats[:, i]
        if training and self.cfg.feature_dropout:
            for i, name in enumerate(QUERY_FEATURES):
                if name not in out:
                    continue
                drop = tf.random.uniform(tf.shape(row)) < self.cfg.feature_dropout
                fill = self.num_users if name == USER_ID else unknown[i - 1]
                out[name] = tf.where(drop, tf.cast(fill, tf.int64), out[name])
        return out

    def positions(self, features: Dict[str, tf.Tensor], training: bool = False):
        """``(queries [P, d], targets [P], candidate ids [C], candidates [C, d], where)``
        over the ``P`` valid positions of this replica's batch; ``where`` maps item
        indices to rows of ``candidates``."""
        items = tf.cast(features[F.WINDOW_ITEMS], tf.int64)
        inputs, targets = items[:, :-1], items[:, 1:]
        in_mask, valid = inputs >= 0, targets >= 0
        if self.full_softmax:
            cand_ids = tf.range(self.num_items, dtype=tf.int64)
        else:
            flat = tf.concat([tf.boolean_mask(inputs, in_mask),
                              tf.boolean_mask(targets, valid)], axis=0)
            cand_ids = tf.unique(flat).y
        candidates = self._candidates(cand_ids, training)
        # Item index -> its row in cand_ids (the index itself in the full case).
        where = (lambda x: x) if self.full_softmax else self._row_lookup(cand_ids)
        vectors = tf.gather(candidates, where(tf.maximum(inputs, 0)))
        encoded = self.encoder(vectors * tf.cast(in_mask, tf.float32)[..., tf.newaxis], in_mask,
                               training=training)
        pos = tf.where(valid)  # [P, 2]
        users = tf.gather(tf.reshape(tf.cast(features[F.WINDOW_USER], tf.int64), [-1]),
                          pos[:, 0])
        q_in = self._query_features(users, training)
        times = tf.cast(features[F.WINDOW_TIMES], tf.int64)
        target_time = tf.gather_nd(times[:, 1:], pos)
        if self.cfg.query_age:
            q_in[F.QUERY_AGE] = self._age(target_time)
        q_in[HISTORY] = tf.gather_nd(encoded, pos)
        # Days from the history's newest item (the input position's) to the target.
        last_time = tf.where(tf.gather_nd(in_mask, pos), tf.gather_nd(times[:, :-1], pos), 0)
        if training and self.cfg.history_dropout:
            # The encoding of an empty history, as the served model computes it for a
            # user without one, in place of ``history_dropout`` of the positions'.
            empty = self.encoder(tf.zeros_like(vectors[:1]), tf.zeros_like(in_mask[:1]),
                                 training=training)[:, -1, :]
            drop = tf.random.uniform([tf.shape(pos)[0], 1]) < self.cfg.history_dropout
            q_in[HISTORY] = tf.where(drop, empty, q_in[HISTORY])
            last_time = tf.where(drop[:, 0], tf.zeros_like(last_time), last_time)
        if self.cfg.query_gap:
            known = tf.logical_and(last_time > 0, target_time > 0)
            q_in[F.QUERY_GAP] = log_days(tf.where(
                known, tf.cast(tf.maximum(target_time - last_time, 0), tf.float32) / DAY, 0.0))
        queries = self.query_tower(q_in, training=training)
        return queries, tf.gather_nd(targets, pos), cand_ids, candidates, where

    def _age(self, times: tf.Tensor) -> tf.Tensor:
        """``[P]`` target timestamps -> ``[P, 1]`` log(1 + days before the reference
        time); 0 for a target after it (eval windows) or without a time (0)."""
        if self.reference_time is None:
            return tf.zeros([tf.shape(times)[0], 1])
        days = tf.cast(self.reference_time - times, tf.float32) / DAY
        return log_days(tf.where(times > 0, days, 0.0))

    def logits(self, queries, targets, cand_ids, candidates, where,
               negatives: Optional[tf.Tensor] = None):
        """``[P, 1 + C']`` logits with the positive first, and ``negatives``, the
        candidate rows used (all of them, or a sample of the global batch's targets).

        With several replicas in sync, the sampled softmax first gathers every
        replica's targets, candidate IDs and candidate vectors, so the negatives and
        their vectors come from the global batch as in one process (the full softmax
        already sees the whole catalog on every replica).
        """
        t = self.cfg.temperature
        if self.full_softmax:
            return tf.matmul(queries, candidates, transpose_b=True) / t, None
        pool = targets
        replicas = synced_replicas()
        if replicas is not None:
            # Integer IDs carry no gradient, so they are gathered apart from the
            # vectors: all_gather's gradient all-reduces its output gradient and hands
            # each replica the rows it contributed, which ``tests/test_distribution.py``
            # checks against one process's gradient.
            pool, cand_ids = replicas.all_gather([targets, cand_ids], axis=0)
            candidates = dense_gradient(replicas.all_gather(candidates, axis=0))
            where = self._row_lookup(cand_ids)
        if negatives is None:
            negatives = self._draw_negatives(pool)
        pos_vec = tf.gather(candidates, where(targets))
        neg_vec = tf.gather(candidates, where(negatives))
        pos = tf.reduce_sum(queries * pos_vec, axis=1, keepdims=True) / t
        neg = tf.matmul(queries, neg_vec, transpose_b=True) / t
        if self.cfg.logq_correction:
            # Expected count of each item among num_negatives popularity draws.
            logq = lambda ids: tf.math.log(  # noqa: E731
                float(self.cfg.num_negatives) * tf.gather(self.item_probability, ids))
            pos -= logq(targets)[:, tf.newaxis]
            neg -= logq(negatives)[tf.newaxis, :]
        if self.cfg.remove_accidental_hits:
            hit = tf.equal(targets[:, tf.newaxis], negatives[tf.newaxis, :])
            neg = tf.where(hit, tf.constant(-1e9, neg.dtype), neg)
        return tf.concat([pos, neg], axis=1), negatives

    def _row_lookup(self, cand_ids: tf.Tensor):
        """``[C]`` item indices, possibly repeated (one copy per replica) -> a function
        from item indices to a row of ``cand_ids`` holding that item (the last one);
        row 0 for an absent item (only padding looks one up, and is masked)."""
        rows = tf.tensor_scatter_nd_max(tf.zeros([self.num_items], tf.int32),
                                        cand_ids[:, tf.newaxis],
                                        tf.range(tf.size(cand_ids)))
        return lambda ids: tf.gather(rows, ids)

    def _draw_negatives(self, pool: tf.Tensor) -> tf.Tensor:
        """``num_negatives`` draws, with replacement, from the ``[P]`` targets ``pool``.

        The pool is sorted and the stateless seed is ``cfg.seed`` and a digest of the
        pool, so the draw depends only on the multiset of the global batch's targets:
        every replica draws the same negatives, the same as one process given the same
        global batch, whatever order the batch was split in.
        """
        pool = tf.sort(pool)
        size = tf.shape(pool, out_type=tf.int64)[0]
        digest = tf.math.floormod(
            tf.reduce_sum(pool * tf.range(1, size + 1, dtype=tf.int64)), 2 ** 31 - 1)
        seed = tf.stack([tf.constant(self.cfg.seed, tf.int64), digest])
        picks = tf.random.stateless_uniform([self.cfg.num_negatives], seed, minval=0,
                                            maxval=tf.maximum(size, 1), dtype=tf.int64)
        return tf.gather(pool, picks)

    @tf.autograph.experimental.do_not_convert
    def compute_loss(self, features: Dict[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        """This replica's share of the mean next-item cross-entropy over the valid
        positions of the global batch (the mean itself in one process)."""
        queries, targets, cand_ids, candidates, where = self.positions(features, training)
        logits, _ = self.logits(queries, targets, cand_ids, candidates, where)
        labels = targets if self.full_softmax else tf.zeros_like(targets)
        return global_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))

    def _step_losses(self, inputs, training: bool) -> Dict[str, tf.Tensor]:
        loss = self.compute_loss(inputs, training=training)
        # Every replica holds the whole regularisation loss; Keras sums the replicas'
        # gradients and logged values, so each contributes its 1/N share.
        replicas = synced_replicas()
        regularization = tf.add_n(self.losses) if self.losses else tf.constant(0.0)
        if replicas is not None:
            regularization /= replicas.num_replicas_in_sync
        return {"loss": loss, "regularization_loss": regularization,
                "total_loss": loss + regularization}

    def train_step(self, inputs) -> Dict[str, tf.Tensor]:
        """TFRS's step, plus the regularisation share per replica and the loss scaling
        that ``mixed_float16``'s ``LossScaleOptimizer`` expects (TFRS's step calls
        ``apply_gradients`` without it). Keras sums the returned values over the
        replicas, which gives the global batch's loss."""
        optimizer = self.optimizer
        scaled = hasattr(optimizer, "get_scaled_loss")
        with tf.GradientTape() as tape:
            losses = self._step_losses(inputs, training=True)
            total = losses["total_loss"]
            if scaled:
                total = optimizer.get_scaled_loss(total)
        gradients = tape.gradient(total, self.trainable_variables)
        if scaled:
            gradients = optimizer.get_unscaled_gradients(gradients)
        optimizer.apply_gradients(zip(gradients, self.trainable_variables))
        return losses

    def test_step(self, inputs) -> Dict[str, tf.Tensor]:
        return self._step_losses(inputs, training=False)


def synced_replicas() -> Optional[tf.distribute.ReplicaContext]:
    """The replica context when this code runs in one of several replicas trained in
    sync (``MirroredStrategy``, ``MultiWorkerMirroredStrategy``), else None."""
    context = tf.distribute.get_replica_context()
    return context if context is not None and context.num_replicas_in_sync > 1 else None


@tf.custom_gradient
def dense_gradient(x: tf.Tensor):
    """``x`` unchanged, its gradient made dense: rows picked with ``tf.gather`` have an
    ``IndexedSlices`` gradient, which all_gather's gradient (an all-reduce) rejects."""
    return tf.identity(x), lambda dy: tf.convert_to_tensor(dy)


def global_mean(values: tf.Tensor) -> tf.Tensor:
    """This replica's share of the mean of ``values`` ``[P]`` over every replica's
    positions: its sum over the global count.

    Keras sums the replicas' gradients (and, for TFRS models, their logged losses),
    so the shares add up to one process's mean over the global batch however the
    valid positions fall between the replicas; a per-replica mean would weight them
    by replica instead, and the sum of the means is N times the loss.
    """
    total = tf.reduce_sum(values)
    count = tf.cast(tf.size(values), values.dtype)
    replicas = synced_replicas()
    if replicas is not None:
        count = replicas.all_reduce(tf.distribute.ReduceOp.SUM, count)
    return total / tf.maximum(count, 1.0)
