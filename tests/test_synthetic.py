"""The synthetic generator: deterministic, power-law, with structure a model can find."""
import filecmp

import numpy as np

from ingest import synthetic
from ingest.readers import read_dataset
from ingest.report import DropReport
from ingest.split import SplitConfig, temporal_split

SMALL = synthetic.SyntheticConfig(num_interactions=20_000, num_users=400, num_items=1000,
                                  users_per_chunk=150, seed=7)


def test_same_seed_same_files_other_seed_other_files(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    synthetic.generate(str(a), SMALL)
    synthetic.generate(str(b), SMALL)
    synthetic.generate(str(c), synthetic.SyntheticConfig(**{**SMALL.__dict__, "seed": 8}))
    for name in ("interactions.csv", "users.csv", "items.csv"):
        assert filecmp.cmp(a / name, b / name, shallow=False)
    assert not filecmp.cmp(a / "interactions.csv", c / "interactions.csv", shallow=False)


def test_reads_back_cleanly_with_features_and_no_repeats(tmp_path):
    summary = synthetic.generate(str(tmp_path), SMALL)
    report = DropReport()
    ds = read_dataset(str(tmp_path), report)
    assert report.rows_dropped == 0
    assert len(ds.interactions) == summary["interactions"]
    assert 0.9 * 20_000 <= summary["interactions"] <= 1.1 * 20_000
    assert len(ds.users) == 400 and len(ds.items) == 1000
    pairs = ds.interactions.user.astype(np.int64) * 1000 + ds.interactions.item
    assert len(np.unique(pairs)) == len(pairs)  # no (user, item) repeats
    assert all(it.genres and 1920 <= it.year <= 2020 for it in ds.items.values())
    assert {u.gender for u in ds.users.values()} == {"F", "M"}


def test_item_popularity_is_heavy_tailed(tmp_path):
    synthetic.generate(str(tmp_path), SMALL)
    data = read_dataset(str(tmp_path), DropReport()).interactions
    counts = np.sort(np.bincount(data.item))[::-1]
    top_decile_share = counts[: len(counts) // 10].sum() / counts.sum()
    assert top_decile_share > 0.3  # uniform popularity would give 0.1


def _recall_at(scores, train_mask, eval_sets, k):
    scores = np.where(train_mask, -np.inf, scores)
    top = np.argsort(-scores, axis=1)[:, :k]
    hits = [len(set(top[u]) & s) / len(s) for u, s in eval_sets.items() if s]
    return float(np.mean(hits))


def test_planted_structure_beats_popularity(tmp_path):
    """Item-item co-occurrence, a weak model, must clearly beat popularity."""
    synthetic.generate(str(tmp_path), SMALL)
    data = read_dataset(str(tmp_path), DropReport()).interactions
    train, ev = temporal_split(data, SplitConfig("per_user", 0.2))
    n_users, n_items = len(data.user_ids), len(data.item_ids)
    x = np.zeros((n_users, n_items))
    x[data.user[train], data.item[train]] = 1.0
    eval_sets = {u: set() for u in range(n_users)}
    for u, i in zip(data.user[ev], data.item[ev]):
        eval_sets[u].add(int(i))
    pop = np.tile(x.sum(axis=0), (n_users, 1))
    norms = np.sqrt(x.sum(axis=0)) + 1e-9
    sim = (x.T @ x) / norms[:, None] / norms[None, :]
    np.fill_diagonal(sim, 0.0)
    knn = x @ sim
    r_pop = _recall_at(pop, x > 0, eval_sets, 20)
    r_knn = _recall_at(knn, x > 0, eval_sets, 20)
    assert r_knn > 1.5 * r_pop, (r_knn, r_pop)


def test_config_validation():
    import pytest
    with pytest.raises(ValueError, match="num_interactions must be at least 1000, got 10"):
        synthetic.SyntheticConfig(num_interactions=10)
