"""Towers, loss and configuration on tiny hand-built tensors."""
import numpy as np
import pytest
import tensorflow as tf

from trainer.config import TrainerConfig
from trainer.data import CANDIDATE_FEATURES, ITEM_ID, QUERY_FEATURES
from trainer.model import TwoTowerModel, build_towers
from trainer.strategy import cluster_spec, is_chief
from trainer.task import item_sampling_probability
from trainer.data import Catalog

SIZES = {QUERY_FEATURES[0]: 5, QUERY_FEATURES[1]: 8, QUERY_FEATURES[2]: 3,
         QUERY_FEATURES[3]: 4, CANDIDATE_FEATURES[0]: 7, CANDIDATE_FEATURES[2]: 4}
CFG = TrainerConfig(id_embedding_dim=4, feature_embedding_dim=2, tower_layers=(8, 8),
                    output_dim=3, dropout=0.0, temperature=0.5, epochs=1)


def _batch(n=4):
    return {QUERY_FEATURES[0]: np.arange(n) % 5, QUERY_FEATURES[1]: np.zeros(n, np.int64),
            QUERY_FEATURES[2]: np.ones(n, np.int64), QUERY_FEATURES[3]: np.zeros(n, np.int64),
            CANDIDATE_FEATURES[0]: np.array([0, 1, 2, 3][:n]),
            CANDIDATE_FEATURES[1]: np.eye(n, 6, dtype=np.float32),
            CANDIDATE_FEATURES[2]: np.zeros(n, np.int64)}


def test_towers_output_unit_vectors_of_configured_width():
    query, candidate = build_towers(SIZES, CFG)
    q = query({f: _batch()[f] for f in QUERY_FEATURES})
    c = candidate({f: _batch()[f] for f in CANDIDATE_FEATURES})
    assert q.shape == (4, 3) and c.shape == (4, 3)
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1.0, rtol=1e-5)
    # Depth: two hidden layers plus the output layer.
    assert len([l for l in query.mlp.layers if isinstance(l, tf.keras.layers.Dense)]) == 3


def test_loss_is_logq_corrected_in_batch_softmax():
    query, candidate = build_towers(SIZES, CFG)
    prob = np.array([0.4, 0.3, 0.2, 0.05, 0.03, 0.01, 0.01], np.float32)
    catalog = {CANDIDATE_FEATURES[0]: np.arange(6), CANDIDATE_FEATURES[1]: np.eye(6, 6,
               dtype=np.float32), CANDIDATE_FEATURES[2]: np.zeros(6, np.int64)}
    model = TwoTowerModel(query, candidate, CFG, prob, catalog)
    batch = _batch()
    loss = float(model.compute_loss(batch))
    q = query({f: batch[f] for f in QUERY_FEATURES}).numpy()
    c = candidate({f: batch[f] for f in CANDIDATE_FEATURES}).numpy()
    # logits[i, j] = q_i . c_j / T - log p(item_j); softmax cross-entropy on the diagonal,
    # summed over the batch (TFRS's reduction).
    logits = q @ c.T / 0.5 - np.log(prob[[0, 1, 2, 3]])[None, :]
    logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    assert loss == pytest.approx(-np.trace(logp), rel=1e-4)


def test_mixed_negatives_add_catalog_candidates():
    query, candidate = build_towers(SIZES, CFG)
    cfg = TrainerConfig(**{**CFG.__dict__, "mixed_negatives": 3})
    prob = np.full(7, 1 / 7, np.float32)
    catalog = {CANDIDATE_FEATURES[0]: np.arange(6), CANDIDATE_FEATURES[1]: np.eye(6, 6,
               dtype=np.float32), CANDIDATE_FEATURES[2]: np.zeros(6, np.int64)}
    model = TwoTowerModel(query, candidate, cfg, prob, catalog)
    loss = float(model.compute_loss(_batch()))
    assert np.isfinite(loss) and loss > 0


def test_sampling_probability_covers_oov_buckets():
    cat = Catalog(np.array([6, 3, 1]), None, None, None, None, None, None, num_examples=12)
    p = item_sampling_probability(cat, 4)  # 3 items + 1 OOV bucket holding 2 examples
    np.testing.assert_allclose(p, [0.5, 0.25, 1 / 12, 2 / 12], rtol=1e-6)


def test_config_validation_and_round_trip():
    cfg = TrainerConfig(tower_layers=(32, 16), mixed_negatives=64)
    assert TrainerConfig.from_custom_config(cfg.to_custom_config()) == cfg
    with pytest.raises(ValueError, match="top_k must be >= 100"):
        TrainerConfig(top_k=10)
    with pytest.raises(ValueError, match="optimizer must be one of"):
        TrainerConfig(optimizer="sgd")
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
