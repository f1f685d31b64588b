"""The partitioned candidate index: balanced lists, the index's search and brute-force
scores, the compact item-ID maps, and a served model with the index forced on a small
catalog, against NumPy brute force.

The query tower is the identity on the encoded history (the mean of the history's
item rows, as the index stores them), so the exact answer is worked out in NumPy.
"""
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from serving.model_version import timed_load
from serving.savedmodel.export import (INDEX_REPORT_FILE, build_index, choose_probes,
                                       read_index_report, sample_users, save_serving_module)
from serving.savedmodel.history import build_user_history
from serving.savedmodel.index import IndexConfig, auto_lists
from serving.savedmodel.item_ids import ItemIds
from serving.savedmodel.ivf import PartitionedIndex
from serving.savedmodel.module import RetrievalModule
from serving.savedmodel.partition import balanced_assign, partition_catalog
from serving.savedmodel.quantize import quantize_rows
from tests.test_history_serving import HistoryOnly, _lines
from tests.tf_only_client import query_in_tensorflow_only_process
from trainer.model import MeanEncoder

K = 100


def clustered(n, d=16, topics=40, seed=0):
    """Unit rows around ``topics`` random directions (what trained item vectors look
    like far more than uniform noise does)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((topics, d))
    x = centres[rng.integers(0, topics, n)] + 0.35 * rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


# -- partition ----------------------------------------------------------------------
def test_balanced_assign_spills_the_farthest_rows_to_their_next_list():
    # Four rows, two lists of room 2; every row prefers list 0. Scores to list 0:
    # rows 0..3 = 0.9, 0.8, 0.7, 0.6, so rows 0 and 1 keep it and rows 2, 3 spill.
    choices = np.array([[0, 1]] * 4)
    scores = np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.6, 0.4]], np.float32)
    x = np.eye(2, dtype=np.float32)[[0, 0, 0, 0]]
    out = balanced_assign(choices, scores, x, np.eye(2, dtype=np.float32), capacity=2)
    assert out.tolist() == [0, 0, 1, 1]
    with pytest.raises(ValueError, match="cannot hold"):
        balanced_assign(choices, scores, x, np.eye(2, dtype=np.float32), capacity=1)


@pytest.mark.parametrize("lists", [16, 300])  # flat, and two-level (> FLAT_MAX_LISTS)
def test_partition_holds_every_item_once_within_the_cap(lists):
    x = clustered(6000, seed=1)
    p = partition_catalog(x, lists, seed=3, slack=0.05)
    items = p.items[p.items >= 0]
    assert np.array_equal(np.sort(items), np.arange(len(x)))  # each item exactly once
    assert np.array_equal(p.items.reshape(-1)[p.position], np.arange(len(x)))
    assert p.list_size == int(np.ceil(len(x) / lists * 1.05))
    assert lists <= p.num_lists <= lists + int(round(np.sqrt(lists)))
    # Centroids are the normalised means of their lists.
    first = p.items[0][p.items[0] >= 0]
    mean = x[first].mean(axis=0)
    np.testing.assert_allclose(p.centroids[0], mean / np.linalg.norm(mean), atol=1e-5)
    again = partition_catalog(x, lists, seed=3, slack=0.05)
    assert np.array_equal(again.items, p.items)  # fixed seed, same lists


def test_auto_lists_is_about_four_square_roots():
    assert auto_lists(1_000_000) == 4096 and auto_lists(10_000_000) == 16384
    assert IndexConfig(lists=0).num_lists(50) == 32 and IndexConfig(lists=64).num_lists(10) == 10


def test_index_exact_is_brute_force_and_search_leaves_out_items():
    x = clustered(2000, seed=6)
    index = PartitionedIndex(x, partition_catalog(x, 20, seed=0), probes=4)
    q, scale = quantize_rows(x)
    rows = q * scale[:, None]
    query = rows[[5, 900]] / np.linalg.norm(rows[[5, 900]], axis=1, keepdims=True)
    left_out = np.array([[5, 6, -1], [900, -1, -1]])
    exact_values, exact_items = index.exact(tf.constant(query), tf.constant(left_out), 50)
    scores = query @ rows.T
    scores[0, [5, 6]] = scores[1, 900] = -np.inf
    want = np.argsort(-scores, axis=1)[:, :50]
    assert exact_items.numpy().tolist() == want.tolist()
    np.testing.assert_allclose(exact_values, np.take_along_axis(scores, want, 1), rtol=1e-5)
    values, items = index.search(tf.constant(query), tf.constant(left_out), 50)
    assert not {5, 6} & set(items.numpy()[0]) and 900 not in items.numpy()[1]
    assert (np.diff(values.numpy(), axis=1) <= 0).all()
    # Every item returned is scored as brute force scores it; most of its top 50 found.
    np.testing.assert_allclose(values, np.take_along_axis(scores, items.numpy(), 1),
                               rtol=1e-5)
    assert np.mean([len(set(a) & set(b)) / 50 for a, b in zip(items.numpy(), want)]) > 0.8


# -- item IDs -------------------------------------------------------------------------
@pytest.mark.parametrize("buckets", [2**63 - 1, 3])  # 3 buckets: every hash is shared
def test_item_ids_map_both_ways_and_reject_unknown_ids(buckets):
    ids = [b"a", b"bb", b"item-3", "\u00e9t\u00e9".encode(), b"x" * 40]
    table = ItemIds(ids, hash_buckets=buckets)
    assert table.same_hash == (1 if buckets > 3 else max(np.bincount(
        tf.strings.to_hash_bucket_fast(ids, 3).numpy())))
    got = table.index(tf.constant([[b"bb", b"", b"zz"],
                                   [b"x" * 40, b"a", "\u00e9t\u00e9".encode()]]))
    assert got.numpy().tolist() == [[1, -1, -1], [4, 0, 3]]
    assert table.ids(tf.constant([2, -1, 4], tf.int64)).numpy().tolist() == \
        [b"item-3", b"", b"x" * 40]


# -- a served model over a partitioned index -----------------------------------------
# (The query tower is test_history_serving's: the normalised encoded history.)


def _module(tmp, vectors, histories, counts, config, int8=True):
    items = [f"i{j}".encode() for j in range(len(vectors))]
    history = build_user_history(
        [(f"u{u}".encode(), h, list(reversed(h))) for u, h in enumerate(histories)],
        max_history=5, num_items=len(vectors))
    index, report = build_index(vectors, int8, config)
    module = RetrievalModule(
        HistoryOnly(), MeanEncoder(), index, _lines(tmp / "items", items),
        _lines(tmp / "users", [b"u0"]), np.zeros((2, 3), np.int64), counts, history,
        lambda raw: {}, {"user_id": tf.io.FixedLenFeature([], tf.string)}, top_k=K,
        max_history=5)
    return module, report, history


def _numpy_exact(vectors, history, exclude, k=K):
    """Brute force over the int8 rows, the query the normalised mean of the history's."""
    q, scale = quantize_rows(vectors)
    rows = q * scale[:, None]
    query = rows[history[-5:]].mean(axis=0)
    scores = rows @ (query / np.linalg.norm(query))
    scores[list(exclude)] = -np.inf
    order = np.argsort(-scores, kind="stable")[:k]
    return order, scores[order]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ivf")
    vectors = clustered(3000, seed=2)
    rng = np.random.default_rng(4)
    # Each user's five items come from around one item, as a taste would.
    seeds = rng.choice(len(vectors), 40, replace=False)
    near = np.argsort(-(vectors[seeds] @ vectors.T), axis=1)
    histories = [[int(i) for i in rng.permutation(row[:30])[:5]] for row in near]
    counts = rng.integers(1, 50, len(vectors))
    config = IndexConfig(partitioned_min_items=1000, lists=32, probes=6)
    module, report, history = _module(tmp, vectors, histories, counts, config)
    return module, report, history, vectors, histories, counts, tmp


def test_the_index_is_partitioned_above_the_threshold_only(served, tmp_path):
    module, report, *_ = served
    assert isinstance(module.index, PartitionedIndex) and report["kind"] == "partitioned"
    assert report["lists"] >= 32 and report["probes"] == 6 and report["storage"] == "int8"
    small = clustered(500)
    index, small_report = build_index(small, True, IndexConfig(partitioned_min_items=1000))
    assert small_report["kind"] == "brute_force" and not isinstance(index, PartitionedIndex)


def test_recommend_exact_is_numpy_brute_force(served):
    module, _, _, vectors, histories, _, _ = served
    users = [f"u{u}" for u in range(len(histories))]
    out = module.recommend_exact(tf.constant(users))
    got, scores = out["item_ids"].numpy(), out["scores"].numpy()
    for u, h in enumerate(histories):
        want, want_scores = _numpy_exact(vectors, h, h)
        np.testing.assert_allclose(scores[u], want_scores, rtol=1e-4, atol=1e-5)
        # Same items, up to the order of scores within float noise of each other.
        assert {int(x[1:]) for x in got[u]} == set(want.tolist()), u


def test_serving_default_finds_most_of_the_exact_answer(served):
    module, _, _, _, histories, _, _ = served
    users = tf.constant([f"u{u}" for u in range(len(histories))])
    ann, exact = module.serve(users)["item_ids"].numpy(), \
        module.recommend_exact(users)["item_ids"].numpy()
    recall = np.mean([len(set(a) & set(e)) / K for a, e in zip(ann, exact)])
    # 6 of 32 lists (about a fifth of the catalog) find nearly all of a clustered
    # catalog's top 100; not all, or the index would not be approximate here.
    assert 0.9 <= recall < 1.0, recall


def test_both_leave_out_stored_and_listed_items(served):
    module, _, _, _, histories, _, _ = served
    users = [f"u{u}" for u in range(len(histories))]
    for fn in (module.serve, module.recommend_exact):
        got = fn(tf.constant(users))["item_ids"].numpy()
        for u, h in enumerate(histories):
            assert not {f"i{j}".encode() for j in h} & set(got[u])
    # recommend_excluding through the index: the first answer, left out, is gone.
    first = module.serve(tf.constant(["u0"]))["item_ids"].numpy()[0]
    again = module.recommend_excluding(user_id=tf.constant(["u0"]),
                                       exclude_item_ids=tf.constant([[first[0], b""]]))
    assert first[0] not in again["item_ids"].numpy()[0]
    assert again["item_ids"].numpy()[0][0] == first[1]


def test_history_rows_come_from_the_index(served):
    module, _, _, vectors, histories, _, _ = served
    q, scale = quantize_rows(vectors)
    ids = tf.constant([[3, 0], [2999, 17]], tf.int64)
    np.testing.assert_allclose(module.index.rows(ids).numpy(),
                               (q * scale[:, None])[ids.numpy()], rtol=1e-6)
    # A new user's request history goes through the same rows and is left out.
    out = module.recommend_from_history(
        user_id=tf.constant(["nobody"]),
        history_item_ids=tf.constant([[f"i{j}" for j in histories[0]] + ["zzz"]]))
    want, _ = _numpy_exact(vectors, histories[0], histories[0])
    got = {int(x[1:]) for x in out["item_ids"].numpy()[0]}
    assert len(got & set(want.tolist())) >= 90


def test_cold_users_get_popular_items(served):
    module, _, _, _, _, counts, _ = served
    popular = np.argsort(-counts, kind="stable")[:K]
    for fn in (module.serve, module.recommend_exact):
        got = fn(tf.constant(["nobody"]))["item_ids"].numpy()[0]
        assert [int(x[1:]) for x in got] == popular.tolist()
    # Leaving out the ten most popular items moves the list up by ten.
    out = module.recommend_excluding(
        user_id=tf.constant(["nobody"]),
        exclude_item_ids=tf.constant([[f"i{j}" for j in popular[:10]]]))
    assert [int(x[1:]) for x in out["item_ids"].numpy()[0][:90]] == popular[10:].tolist()
    # Leaving out more than the stored popular list holds (k + 5 + POPULAR_HEADROOM =
    # 1,129 items) ranks the whole catalog instead.
    assert module.popular_items.shape[0] == 1129
    order = np.argsort(-counts, kind="stable")
    out = module.recommend_excluding(
        user_id=tf.constant(["nobody"]),
        exclude_item_ids=tf.constant([[f"i{j}" for j in order[:1100]]]))
    assert [int(x[1:]) for x in out["item_ids"].numpy()[0]] == order[1100:1200].tolist()


def test_the_export_probes_the_fewest_lists_that_reach_the_target_recall(tmp_path):
    vectors = clustered(3000, seed=2)
    rng = np.random.default_rng(4)
    histories = [[int(i) for i in rng.choice(len(vectors), 5, replace=False)]
                 for _ in range(60)]  # five items anywhere: queries between clusters
    module, report, history = _module(tmp_path, vectors, histories,
                                      np.ones(len(vectors), np.int64),
                                      IndexConfig(partitioned_min_items=1000, lists=32))
    users = sample_users(history, 60, 0)
    # The ladder, worked out from the index's own search and exact answers.
    queries, exclusions = module.stored_queries(tf.constant(users[0::2]))
    want = module.index.exact(queries, exclusions, K)[1].numpy()

    def recall_at(probes):
        module.index.probes = probes
        got = module.index.search(queries, exclusions, K)[1].numpy()
        return np.mean([len(set(g) & set(w)) / K for g, w in zip(got, want)])
    truth = {p: recall_at(p) for p in (8, 16, 32)}
    assert truth[8] < truth[16] <= truth[32] == 1.0  # all 32 lists: brute force

    chosen = choose_probes(module, users[0::2], target_recall=truth[16] - 1e-6,
                           max_probes=1024)
    assert chosen["probes"] == module.index.probes == 16
    assert [step["probes"] for step in chosen["probe_ladder"]] == [8, 16]
    assert chosen["probe_ladder"][0]["recall"] == pytest.approx(truth[8], abs=1e-4)
    assert chosen["reached_target_recall"] and chosen["probe_choice_queries"] == 30
    # Out of reach within max_probes: the most allowed, and the report says so.
    capped = choose_probes(module, users[0::2], target_recall=1.0, max_probes=12)
    assert capped["probes"] == 12 and not capped["reached_target_recall"]
    assert [step["probes"] for step in capped["probe_ladder"]] == [8, 12]

    # Saved: chosen on one half of the users, measured on the other.
    saved = save_serving_module(module, str(tmp_path / "1"), report, users[1::2], ["u0"],
                                ["i1"], choice_users=users[0::2], target_recall=0.999,
                                max_probes=1024)
    assert saved["probes"] == 32 and saved["probe_ladder"][-1] == {"probes": 32,
                                                                  "recall": 1.0}
    assert saved["recall_vs_exact"] == 1.0 and saved["recall_queries"] == 30
    assert read_index_report(str(tmp_path / "1")) == saved


def test_fewer_items_left_than_k_gives_empty_slots(tmp_path):
    # 120 items in 8 lists of about 16, 2 probed: a user who excluded 30 has 90 items
    # left, fewer than the probes' 32 rows hold, so the index falls back to brute force.
    vectors = clustered(120, seed=5)
    h = list(range(30))
    module, _, _ = _module(tmp_path, vectors, [h], np.ones(120, np.int64),
                           IndexConfig(partitioned_min_items=100, lists=8, probes=2))
    for fn in (module.serve, module.recommend_exact):
        out = fn(tf.constant(["u0"]))
        ids, scores = out["item_ids"].numpy()[0], out["scores"].numpy()[0]
        assert (ids[:90] != b"").all() and (ids[90:] == b"").all()
        assert np.isneginf(scores[90:]).all() and np.isfinite(scores[:90]).all()
        assert {int(x[1:]) for x in ids[:90]} == set(range(30, 120))


def test_saved_model_answers_in_a_tensorflow_only_process(served, tmp_path):
    module, report, history, vectors, histories, _, _ = served
    export_dir = str(tmp_path / "1")
    saved = save_serving_module(module, export_dir, report, sample_users(history, 20, 0),
                                ["u0"], ["i1", "i2"])
    assert saved["recall_queries"] == 20 and 0.9 <= saved["recall_vs_exact"] <= 1.0
    with open(os.path.join(export_dir, INDEX_REPORT_FILE)) as f:
        assert json.load(f) == read_index_report(export_dir) == saved
    got = query_in_tensorflow_only_process(export_dir, ["u0", "u1"], ["i5", "i6"])
    assert got["loaded"] == [] and "recommend_exact" in got["signatures"]
    want, _ = _numpy_exact(vectors, histories[0], histories[0])
    assert {int(x[1:]) for x in got["exact_items"][0]} == set(want.tolist())
    assert len(set(got["items"][0]) & set(got["exact_items"][0])) >= 90
    assert got["items"][-1][:3] == got["exact_items"][-1][:3]  # cold start, both
    # The warm-up requests (recommend_exact's among them) replay against it.
    _, warmed, _ = timed_load(1, export_dir, "recommender")
    assert warmed == 4
