"""Towers, history encoders, the next-item loss and configuration on tiny tensors."""
import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from trainer.config import TrainerConfig
from trainer.data import CANDIDATE_FEATURES, HISTORY, QUERY_FEATURES, Catalog
from trainer.model import (AttentionEncoder, SequenceRetrievalModel, build_towers,
                           causal_mean)
from trainer.strategy import cluster_spec, is_chief
from trainer.task import item_sampling_probability
from transform import features as F

SIZES = {QUERY_FEATURES[0]: 5, QUERY_FEATURES[1]: 8, QUERY_FEATURES[2]: 3,
         QUERY_FEATURES[3]: 4, CANDIDATE_FEATURES[0]: 7, CANDIDATE_FEATURES[2]: 4}
CFG = TrainerConfig(id_embedding_dim=4, feature_embedding_dim=2, tower_layers=(8, 8),
                    output_dim=4, dropout=0.0, feature_dropout=0.0, temperature=0.5, epochs=1,
                    max_history=3, attention_heads=2, query_age=True)
CATALOG = {CANDIDATE_FEATURES[0]: np.arange(6), CANDIDATE_FEATURES[1]: np.eye(6, 6,
           dtype=np.float32), CANDIDATE_FEATURES[2]: np.zeros(6, np.int64)}
# Users 0..3 and the unknown user (last row, every feature in its OOV bucket).
USERS = np.array([[1, 0, 1], [2, 1, 0], [3, 0, 2], [4, 1, 3], [0, 2, 3]], np.int64)
PROB = np.array([0.3, 0.2, 0.2, 0.1, 0.1, 0.05, 0.05], np.float32)
# Windows of N + 1 = 4: valid targets are row 0 t=1 (0, empty history) and t=2 (1 after
# 0); row 1 t=0..2 (3, 4, 5 after 2, 2 3, 2 3 4); row 2 t=2 (5, empty, unknown user).
# Their times: targets 3 and 1 days before the reference time (row 0), 8, 7 and 0 days
# (row 1), and one day after it (row 2: age 0, as in an eval window).
DAY, REF = 86400, 100 * 86400
WINDOWS = {F.WINDOW_ITEMS: np.array([[-1, -1, 0, 1], [2, 3, 4, 5], [-1, -1, -1, 5]]),
           F.WINDOW_TIMES: np.array([[0, 0, REF - 3 * DAY, REF - DAY],
                                     [REF - 9 * DAY, REF - 8 * DAY, REF - 7 * DAY, REF],
                                     [0, 0, 0, REF + DAY]]),
           F.WINDOW_USER: np.array([[0], [1], [-1]])}


def _model(cfg=CFG):
    query, candidate, encoder = build_towers(SIZES, cfg)
    return SequenceRetrievalModel(query, candidate, encoder, cfg, PROB, CATALOG, USERS, REF)


def test_towers_output_unit_vectors_of_configured_width():
    model = _model()
    c = model.candidate_tower({f: CATALOG[f] for f in CANDIDATE_FEATURES})
    feats = {f: np.zeros(2, np.int64) for f in QUERY_FEATURES}
    feats[HISTORY] = np.ones((2, 4), np.float32)
    feats[F.QUERY_AGE] = feats[F.QUERY_GAP] = np.zeros((2, 1), np.float32)
    q = model.query_tower(feats)
    assert q.shape == (2, 4) and c.shape == (6, 4)
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1.0, rtol=1e-5)
    # Depth: two hidden layers plus the output layer.
    assert len([l for l in model.query_tower.mlp.layers
                if isinstance(l, tf.keras.layers.Dense)]) == 3
    # Without the user ID (the default) the query tower has no per-user table.
    assert QUERY_FEATURES[0] not in model.query_tower.embeddings
    with_id = _model(dataclasses.replace(CFG, use_user_id=True))
    assert QUERY_FEATURES[0] in with_id.query_tower.embeddings


def test_causal_mean_by_hand():
    v = tf.constant([[[1.0], [3.0], [5.0], [100.0]]])
    mask = tf.constant([[False, True, True, True]])
    # The padded first item is ignored: 0, 3, (3+5)/2, (3+5+100)/3.
    np.testing.assert_allclose(causal_mean(v, mask).numpy()[0, :, 0], [0, 3, 4, 36], rtol=1e-6)


def test_attention_sees_only_the_past_and_ignores_padding():
    enc = AttentionEncoder(max_len=5, dim=4, blocks=2, heads=2, dropout=0.0)
    rng = np.random.default_rng(0)
    v = rng.normal(size=(1, 5, 4)).astype(np.float32)
    mask = np.array([[False, False, True, True, True]])
    base = enc(v, mask).numpy()
    later = v.copy()
    later[:, 4] += 1.0  # change the newest item
    np.testing.assert_allclose(enc(later, mask).numpy()[:, :4], base[:, :4], atol=1e-6)
    padded = v.copy()
    padded[:, :2] = 9.0  # change what sits under the padding
    np.testing.assert_allclose(enc(padded, mask).numpy(), base, atol=1e-6)
    assert base.shape == (1, 5, 8)  # attention output and the causal mean


def test_full_softmax_loss_is_next_item_cross_entropy_at_every_valid_position():
    model = _model()
    loss = float(model.compute_loss(WINDOWS))
    cands = model.candidate_tower({f: CATALOG[f] for f in CANDIDATE_FEATURES}).numpy()
    # (row, history items, target, days before REF, days since the history's newest
    # item) of each valid position; the unknown user is row 4.
    positions = [(0, [], 0, 3, 0), (0, [0], 1, 1, 2), (1, [2], 3, 8, 1), (1, [2, 3], 4, 7, 1),
                 (1, [2, 3, 4], 5, 0, 7), (4, [], 5, 0, 0)]
    total = 0.0
    for user, history, target, days, gap in positions:
        feats = {name: USERS[user:user + 1, i] for i, name in enumerate(QUERY_FEATURES[1:])}
        feats[HISTORY] = (cands[history].mean(axis=0) if history else np.zeros(4))[None]
        feats[F.QUERY_AGE] = np.array([[np.log1p(days)]], np.float32)
        feats[F.QUERY_GAP] = np.array([[np.log1p(gap)]], np.float32)
        q = model.query_tower({k: tf.constant(v) for k, v in feats.items()}).numpy()[0]
        logits = cands @ q / CFG.temperature
        total += -(logits[target] - np.log(np.exp(logits).sum()))
    assert loss == pytest.approx(total / len(positions), rel=1e-4)


def test_sampled_softmax_corrects_for_popularity_and_masks_accidental_hits():
    cfg = dataclasses.replace(CFG, full_softmax_max_items=2, num_negatives=3)
    model = _model(cfg)
    assert not model.full_softmax
    queries, targets, ids, cands, where = model.positions(WINDOWS)
    negatives = tf.constant([5, 0, 3], tf.int64)
    logits, _ = model.logits(queries, targets, ids, cands, where, negatives=negatives)
    q, t = queries.numpy(), targets.numpy()
    c = {int(i): cands.numpy()[k] for k, i in enumerate(ids.numpy())}
    # Positive first: q . c / T - log(S p(target)); negatives likewise, -1e9 on a hit.
    for i in range(len(t)):
        pos = q[i] @ c[t[i]] / 0.5 - np.log(3 * PROB[t[i]])
        assert logits[i, 0].numpy() == pytest.approx(pos, rel=1e-4)
        for j, n in enumerate([5, 0, 3]):
            expected = -1e9 if n == t[i] else q[i] @ c[n] / 0.5 - np.log(3 * PROB[n])
            assert logits[i, 1 + j].numpy() == pytest.approx(expected, rel=1e-4)
    assert np.isfinite(float(model.compute_loss(WINDOWS)))


def test_feature_dropout_trains_the_unknown_user_row():
    model = _model(dataclasses.replace(CFG, feature_dropout=0.9, use_user_id=True))
    users = tf.constant([0, 1, 2, 3] * 50, tf.int64)
    train = model._query_features(users, training=True)
    assert (train[QUERY_FEATURES[0]].numpy() == 4).mean() > 0.8  # the OOV bucket
    assert (train[QUERY_FEATURES[2]].numpy() == USERS[-1, 1]).mean() > 0.8
    serve = model._query_features(users, training=False)
    assert serve[QUERY_FEATURES[0]].numpy().tolist() == users.numpy().tolist()


def test_sampling_probability_covers_oov_buckets():
    cat = Catalog(np.array([6, 3, 1]), None, None, None, None, None, None, num_examples=12)
    p = item_sampling_probability(cat, 4)  # 3 items + 1 OOV bucket holding 2 examples
    np.testing.assert_allclose(p, [0.5, 0.25, 1 / 12, 2 / 12], rtol=1e-6)


def test_config_validation_and_round_trip():
    cfg = TrainerConfig(tower_layers=(32, 16), encoder="attention")
    assert TrainerConfig.from_custom_config(cfg.to_custom_config()) == cfg
    with pytest.raises(ValueError, match="top_k must be >= 100"):
        TrainerConfig(top_k=10)
    with pytest.raises(ValueError, match="optimizer must be one of"):
        TrainerConfig(optimizer="sgd")
    with pytest.raises(ValueError, match="encoder must be one of"):
        TrainerConfig(encoder="rnn")
    with pytest.raises(ValueError, match="output_dim 10 must divide by attention_heads 4"):
        TrainerConfig(encoder="attention", output_dim=10, attention_heads=4)
    with pytest.raises(ValueError, match=r"unknown trainer settings: \['depth'\]"):
        TrainerConfig.from_custom_config({"trainer": {"depth": 3}})


def test_cluster_spec_and_chief():
    two = ('{"cluster": {"worker": ["localhost:1", "localhost:2"]}, '
           '"task": {"type": "worker", "index": %d}}')
    assert cluster_spec(two % 1) == (2, "worker", 1)
    assert is_chief(two % 0) and not is_chief(two % 1)
    assert is_chief("{}")
    with_chief = ('{"cluster": {"chief": ["h:1"], "worker": ["h:2"]}, '
                  '"task": {"type": "worker", "index": 0}}')
    assert not is_chief(with_chief)
