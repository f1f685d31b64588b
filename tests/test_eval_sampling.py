"""The evaluator's fixed-seed sample of eval users, its intervals, and the ANN recall."""
import json
import os

import numpy as np
import pytest
from tfx.types import standard_artifacts

from evaluation.baselines import accumulate_baseline, evaluate_baseline, rank_batches, \
    _ranked, popularity_scores
from evaluation.sampling import mean_interval, sample_eval_users
from evaluation.split_data import build_split

A = lambda xs: np.array(xs, dtype=object)  # noqa: E731


def _split(users=400, items=60, per_user=12, seed=0, shuffle=False):
    """Users with a few train and eval items each, drawn by popularity."""
    rng = np.random.default_rng(seed)
    weight = 1.0 / np.arange(1, items + 1)
    rows = []
    for u in range(users):
        picks = rng.choice(items, per_user, replace=False, p=weight / weight.sum())
        rows += [(f"u{u}", f"i{i}", j >= per_user - 3) for j, i in enumerate(picks)]
    if shuffle:
        rows = [rows[i] for i in rng.permutation(len(rows))]
    train = [(u, i) for u, i, e in rows if not e]
    ev = [(u, i) for u, i, e in rows if e]
    return build_split(A([u for u, _ in train]), A([i for _, i in train]),
                       A([u for u, _ in ev]), A([i for _, i in ev]),
                       catalog=[f"i{i}" for i in range(items)])


def test_the_sample_is_fixed_by_the_seed_and_the_user_ids():
    split = _split()
    rows, population = sample_eval_users(split, 50, seed=3)
    assert population == 400 and len(rows) == 50 and (np.diff(rows) > 0).all()
    again, _ = sample_eval_users(split, 50, seed=3)
    assert rows.tolist() == again.tolist()
    other, _ = sample_eval_users(split, 50, seed=4)
    assert set(rows.tolist()) != set(other.tolist())
    # The same users whatever the order of the input rows.
    shuffled = _split(shuffle=True)
    rows_s, _ = sample_eval_users(shuffled, 50, seed=3)
    assert sorted(shuffled.user_ids[r] for r in rows_s) == \
        sorted(split.user_ids[r] for r in rows)
    # Everyone when the cap is off or not reached.
    assert len(sample_eval_users(split, 0)[0]) == 400
    assert len(sample_eval_users(split, 400)[0]) == 400
    with pytest.raises(ValueError):
        sample_eval_users(split, -1)


def test_the_interval_holds_everyones_recall_and_shrinks_to_it_for_everyone():
    split = _split()
    everyone = evaluate_baseline(split, "popularity", [10])["recall@10"]
    rows, population = sample_eval_users(split, 100, seed=0)
    acc = accumulate_baseline(split, "popularity", [10], rows)
    sample = acc.result()["recall@10"]
    lo, hi = mean_interval(acc.user_recall(10), population)
    assert acc.result()["users"] == 100 and sample != everyone
    assert lo < sample < hi and lo <= everyone <= hi
    # Half width: 1.96 sd / sqrt(n), times the finite-population correction.
    values = acc.user_recall(10)
    assert hi - lo == pytest.approx(2 * 1.959964 * values.std(ddof=1) / 10 *
                                    np.sqrt(300 / 399), rel=1e-5)
    full = accumulate_baseline(split, "popularity", [10])
    assert mean_interval(full.user_recall(10), population) == \
        pytest.approx((everyone, everyone))


def test_popularity_from_one_list_ranks_as_the_dense_scores(monkeypatch):
    # Item i has 31 i filler users plus up to 30 scored ones: no two counts tie, so
    # the one-list walk and the per-row dense ranking must give the same lists.
    import evaluation.baselines as B
    items, rng = 40, np.random.default_rng(1)
    tu, ti, eu, ei = [], [], [], []
    for u in range(30):
        seen = rng.choice(items, rng.integers(0, items - 2), replace=False)
        tu += [f"u{u}"] * len(seen)
        ti += [f"i{i}" for i in seen]
        eu.append(f"u{u}")
        ei.append(f"i{next(i for i in range(items) if i not in seen)}")
    for i in range(items):
        tu += [f"f{i}_{j}" for j in range(31 * i)]
        ti += [f"i{i}"] * (31 * i)
    split = build_split(A(tu), A(ti), A(eu), A(ei), catalog=[f"i{i}" for i in range(items)])
    monkeypatch.setattr(B, "DENSE_POPULARITY_MAX_ITEMS", 0)
    for k in (5, 40):
        got = {r: list(x) for rows, ranked in rank_batches(split, "popularity", k)
               for r, x in zip(rows, ranked)}
        assert len(got) == 30
        x = split.train[sorted(got)]
        want = _ranked(np.tile(popularity_scores(split.train), (x.shape[0], 1)), x, k)
        # Past a user's last unseen item both fill in seen ones (in any order: ties).
        unseen = items - np.diff(x.indptr)
        assert [got[r][:n] for r, n in zip(sorted(got), unseen)] == \
            [w[:n] for w, n in zip(want.tolist(), unseen)]


# -- the executor, on a real brute-force model --------------------------------------
def _artifact(cls, uri):
    a = cls()
    a.uri = str(uri)
    os.makedirs(a.uri, exist_ok=True)
    return a


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """A 300-item brute-force served model (the export's code), its 120 users' train
    and eval examples, and a transform graph that holds the item vocabulary."""
    from bench.evaluator_memory import write_examples
    from bench.synthetic_catalog import build_synthetic
    from transform import features as F
    root = tmp_path_factory.mktemp("eval_sampling")
    items, users = 300, 120
    model_dir = build_synthetic(items, str(root / "serving"), index="int8", num_users=users,
                                recall_users=16)
    model = _artifact(standard_artifacts.Model, root / "model")
    os.symlink(model_dir, os.path.join(model.uri, "Format-Serving"))
    examples = write_examples(str(root / "examples"), items, users, 2400, shards=1)
    graph = root / "graph"
    os.makedirs(graph / "transform_fn" / "assets")
    (graph / "transform_fn" / "assets" / F.ITEM_VOCAB).write_text(
        "".join(f"item{i}\n" for i in range(items)))
    return root, model, examples, str(graph), os.path.dirname(model_dir)


def _evaluate(small_run, out, **props):
    from components.retrieval_evaluator import component as evaluator
    root, model, examples, graph, served = small_run
    outputs = {"evaluation": [_artifact(standard_artifacts.ModelEvaluation, out / "e")],
               "blessing": [_artifact(standard_artifacts.ModelBlessing, out / "b")]}
    inputs = {"model": [model],
              "examples": [_artifact(standard_artifacts.Examples, examples)],
              "transform_graph": [_artifact(standard_artifacts.TransformGraph, graph)]}
    base = {"ks": "[10, 50]", "gate_k": 50, "min_recall": -1.0, "min_coverage": -1.0,
            "regression_tolerance": 0.05, "batch_size": 64, "baseline_serving_dir": served}
    evaluator.Executor().Do(inputs, outputs, {**base, **props})
    with open(out / "e" / evaluator.METRICS_FILE) as f:
        result = json.load(f)
    return result, (out / "e" / evaluator.REPORT_FILE).read_text()


def test_the_evaluator_reports_its_sample_intervals_and_ann_recall(small_run, tmp_path):
    full, _ = _evaluate(small_run, tmp_path / "full", max_eval_users=0)
    sampled, report = _evaluate(small_run, tmp_path / "s1", max_eval_users=40,
                                eval_sample_seed=7)
    population = full["sample"]["population"]
    assert full["sample"]["users"] == population > 40 and not full["sample"]["sampled"]
    assert sampled["sample"]["users"] == sampled["eval_users"] == 40
    assert sampled["sample"]["population"] == sampled["eval_population"] == population
    assert sampled["sample"]["sampled"] and "40 of" in report and "seed 7" in report
    for name in ("model", "popularity", "served"):
        everyone = full["metrics"][name]["recall@50"]
        lo, hi = sampled["sample"]["recall@50_ci95"][name]
        assert lo <= sampled["metrics"][name]["recall@50"] <= hi
        assert lo <= everyone <= hi, name
        assert full["sample"]["recall@50_ci95"][name] == pytest.approx([everyone] * 2)
    # The served model is this one: scored on the same users, no difference at all.
    assert sampled["sample"]["recall@50_diff_ci95"]["model-served"] == [0.0, 0.0]
    # A brute-force index returns what brute force does.
    for result in (full, sampled):
        assert result["metrics"]["model"]["ann_recall@100_vs_exact"] == 1.0
        assert result["ann_recall"]["index"] == "brute_force"
        assert result["ann_recall"]["recall_queries"] == min(
            256, result["sample"]["users"])
    assert "ANN recall@100 vs exact: 1.0000 (brute_force index" in report


def test_no_ann_recall_for_a_model_without_recommend_exact(tmp_path):
    import tensorflow as tf
    from evaluation.model_eval import ann_recall_against_exact
    module = tf.Module()
    module.f = tf.function(lambda user_id: {"item_ids": tf.fill([tf.size(user_id), 1], "a")},
                           input_signature=[tf.TensorSpec([None], tf.string)])
    tf.saved_model.save(module, str(tmp_path), signatures={"serving_default": module.f})
    split = _split(users=5)
    assert ann_recall_against_exact(str(tmp_path), split) is None
