"""The client's-eye protocol of ``evaluation/holdout.py`` (and the bench's data writer)."""
import numpy as np
import pytest
import scipy.sparse as sp

from evaluation import holdout
from evaluation.baselines import ease_weights, evaluate_baseline
from evaluation.split_data import build_split
from ingest.tables import Dataset, Interactions, ItemFeatures, UserFeatures


def _interactions(rows):
    """``rows``: (user, item, timestamp) with raw string IDs, in the order given."""
    users, items = [], []
    for u, i, _ in rows:
        users += [u] if u not in users else []
        items += [i] if i not in items else []
    return Interactions(np.array([users.index(u) for u, _, _ in rows], np.int32),
                        np.array([items.index(i) for _, i, _ in rows], np.int32),
                        np.ones(len(rows), np.float32),
                        np.array([t for _, _, t in rows], np.int64), users, items)


# Four users, rows deliberately not in (user, time) order. With test_fraction 0.2 and
# the per_user rule (last floor(n * 0.2) rows by time; ties at the boundary go too):
#   A: 5 rows, t 10..50        -> 1 test row: t=50                 (row 4)
#   B: 5 rows, t 1,2,3,4,4     -> boundary t=4, both t=4 rows test (rows 5, 9)
#   C: 4 rows                  -> floor(0.8) = 0: all given
#   D: 10 rows, t 1..10        -> 2 test rows: t=9, 10            (rows 14, 15)
ROWS = ([("A", "a", 30), ("A", "b", 10), ("A", "c", 20), ("A", "d", 40), ("A", "e", 50),
         ("B", "a", 4), ("B", "b", 1), ("B", "c", 2), ("B", "d", 3), ("B", "e", 4),
         ("C", "a", 1), ("C", "b", 2), ("C", "c", 3), ("C", "d", 4)]
        + [("D", "x", 10), ("D", "y", 9)] + [("D", f"z{t}", t) for t in range(1, 9)])
EXPECTED_TEST = {"A": {4}, "B": {5, 9}, "C": set(), "D": {14, 15}}


def _rows_of(data, rows, user):
    return {int(r) for r in rows if data.user_ids[data.user[r]] == user}


def test_holdout_split_keeps_each_users_last_fifth_with_boundary_ties():
    data = _interactions(ROWS)
    h = holdout.holdout_split(data, test_fraction=0.2, cold_user_fraction=0.0, seed=0)
    assert len(h.cold_users) == 0 and len(h.cold_history_rows) == len(h.cold_test_rows) == 0
    assert set(h.test_rows.tolist()) == set().union(*EXPECTED_TEST.values())
    assert sorted(np.r_[h.given_rows, h.test_rows].tolist()) == list(range(len(ROWS)))
    sizes = h.sizes(data)
    assert sizes["users"] == sizes["warm_users"] == 4 and sizes["test_users"] == 3
    assert sizes["interactions_given"] == 19 and sizes["interactions_held_out"] == 5


def test_holdout_split_holds_cold_users_out_entirely_and_is_deterministic():
    data = _interactions(ROWS)
    h = holdout.holdout_split(data, 0.2, cold_user_fraction=0.25, seed=7)
    again = holdout.holdout_split(data, 0.2, cold_user_fraction=0.25, seed=7)
    assert h.cold_users.tolist() == again.cold_users.tolist()
    assert len(h.cold_users) == 1  # round(0.25 * 4)
    cold = data.user_ids[h.cold_users[0]]
    # The cold user is in no given or test row; the same time rule splits its history.
    assert not _rows_of(data, h.given_rows, cold) and not _rows_of(data, h.test_rows, cold)
    assert _rows_of(data, h.cold_test_rows, cold) == EXPECTED_TEST[cold]
    for user in set(EXPECTED_TEST) - {cold}:
        assert _rows_of(data, h.test_rows, user) == EXPECTED_TEST[user]
    parts = np.r_[h.given_rows, h.test_rows, h.cold_history_rows, h.cold_test_rows]
    assert sorted(parts.tolist()) == list(range(len(ROWS)))


@pytest.mark.parametrize("kwargs, name", [
    (dict(test_fraction=0.0), "test_fraction"), (dict(test_fraction=1.5), "test_fraction"),
    (dict(cold_user_fraction=1.0), "cold_user_fraction"),
    (dict(cold_user_fraction=-0.1), "cold_user_fraction")])
def test_holdout_split_rejects_bad_fractions(kwargs, name):
    with pytest.raises(ValueError, match=name):
        holdout.holdout_split(_interactions(ROWS), **kwargs)


def test_pick_cold_users_leaves_a_warm_user():
    with pytest.raises(ValueError, match="no warm user"):
        holdout.pick_cold_users(np.array([0, 1]), 0.9, seed=0)  # round(1.8) = 2 of 2


def test_histories_are_oldest_first_and_history_batch_pads():
    data = _interactions(ROWS)
    h = holdout.histories(data, np.arange(5))  # user A's rows
    assert h == {"A": ["b", "c", "a", "d", "e"]}  # t 10, 20, 30, 40, 50
    batch = holdout.history_batch([["a", "b"], []])
    assert batch.tolist() == [[b"a", b"b"], [b"", b""]]
    assert holdout.history_batch([]).shape == (0, 1)


def test_seen_fraction_by_hand():
    # user 0: top-2 [a, b], a seen -> 1/2; top-3 adds c, seen -> 2/3
    # user 1: nothing seen -> 0
    ranked, seen = [["a", "b", "c"], ["d", "e", "f"]], [{"a", "c"}, {"x"}]
    assert holdout.seen_fraction(ranked, seen, 2) == pytest.approx(0.25)
    assert holdout.seen_fraction(ranked, seen, 3) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="2 ranked lists and 1 seen"):
        holdout.seen_fraction(ranked, seen[:1], 2)


def test_fold_in_ranking_with_hand_weights_excludes_history():
    w = np.zeros((5, 5))
    w[0] = [0.0, 0.1, 0.5, 0.0, 0.2]
    w[2] = [0.3, 0.4, 0.0, 0.1, 0.0]
    w[3] = [0.0, 0.0, 0.9, 0.0, 0.6]
    history = sp.csr_matrix(np.array([[1, 0, 1, 0, 0], [0, 0, 0, 1, 0]], np.float32))
    # user 0: w[0] + w[2] = [0.3, 0.5, 0.5, 0.1, 0.2]; items 0 and 2 excluded -> 1, 4
    # user 1: w[3] = [0, 0, 0.9, 0, 0.6]; item 3 excluded -> 2, 4
    assert holdout.ease_fold_in(w, history, 2).tolist() == [[1, 4], [2, 4]]
    # popularity [5, 1, 3, 2, 4]: user 0 without 0, 2 -> 4, 3; user 1 without 3 -> 0, 4
    pop = np.array([5.0, 1.0, 3.0, 2.0, 4.0])
    assert holdout.popularity_ranking(pop, history, 2).tolist() == [[4, 3], [0, 4]]
    with pytest.raises(ValueError, match="weights of shape"):
        holdout.fold_in_ranking(np.zeros((4, 4)), history, 2)


def _warm_split():
    """4 users x 5 items. Given: u0 {i0}, u1 {i1, i2}, u2 {i4}, u3 {i0, i1, i3}.
    Test: u0 {i1, i3}, u1 {i0}, u2 {i2}; u3 has none and is not scored."""
    given = [("u0", "i0"), ("u1", "i1"), ("u1", "i2"), ("u2", "i4"),
             ("u3", "i0"), ("u3", "i1"), ("u3", "i3")]
    test = [("u0", "i1"), ("u0", "i3"), ("u1", "i0"), ("u2", "i2")]
    arr = lambda pairs, j: np.array([p[j] for p in pairs], dtype=object)  # noqa: E731
    return build_split(arr(given, 0), arr(given, 1), arr(test, 0), arr(test, 1),
                       ["i0", "i1", "i2", "i3", "i4"])


def test_fold_in_on_given_users_matches_the_existing_baseline():
    split = _warm_split()
    ks = (1, 2, 3)
    w = ease_weights(split.train, l2=1.0)
    ours = holdout.score_ranker(lambda x: holdout.ease_fold_in(w, x, 3), split, ks,
                                seen_ks=(3,))
    theirs = evaluate_baseline(split, "ease", ks, l2=1.0)
    assert {k: ours[k] for k in theirs} == pytest.approx(theirs)
    assert ours["seen_fraction@3"] == 0.0  # the user's given items are excluded


CATALOG = ["i0", "i1", "i2", "i3", "i4"]


def _save_stub_model(path):
    """Every user gets i0..i4 in order; ``recommend_from_history`` pushes history items last.

    ``calls`` counts the users each signature was asked about.
    """
    import tensorflow as tf

    class Stub(tf.Module):
        def __init__(self):
            super().__init__()
            self.items = tf.constant(CATALOG)
            self.base = tf.constant([5.0, 4.0, 3.0, 2.0, 1.0])
            self.calls = tf.Variable(0)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
        def serve(self, user_id):
            n = tf.shape(user_id)[0]
            self.calls.assign_add(n)
            return {"item_ids": tf.tile(self.items[None], [n, 1]),
                    "scores": tf.tile(self.base[None], [n, 1])}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string),
                                      tf.TensorSpec([None, None], tf.string)])
        def from_history(self, user_id, history_item_ids):
            self.calls.assign_add(tf.shape(user_id)[0])
            hit = tf.reduce_any(tf.equal(history_item_ids[:, :, None],
                                         self.items[None, None, :]), axis=1)
            top = tf.math.top_k(self.base[None] - 10.0 * tf.cast(hit, tf.float32), k=5)
            return {"item_ids": tf.gather(self.items, top.indices), "scores": top.values}

    stub = Stub()
    tf.saved_model.save(stub, str(path), signatures={
        "serving_default": stub.serve, "recommend_from_history": stub.from_history})
    return tf.saved_model.load(str(path))


def test_score_signature_calls_a_saved_model_as_a_client(tmp_path):
    model = _save_stub_model(tmp_path / "stub")
    split = _warm_split()
    result = holdout.score_signature(model.signatures["serving_default"], split, (2, 5),
                                     batch_size=2, seen_ks=(2,))
    assert int(model.calls.numpy()) == 3  # u0, u1, u2 (two batches); u3 has no test item
    # Every user gets [i0, i1, i2, i3, i4], nothing excluded:
    #   u0 {i1, i3}: top-2 hits i1 -> recall@2 1/2, ndcg@2 (1/log2 3) / (1 + 1/log2 3)
    #   u1 {i0}:     hit at 1       -> 1, ndcg 1
    #   u2 {i2}:     hit at 3       -> 0 at 2, 1 at 5
    # seen@2: u0 has i0 -> 1/2; u1 has i1 -> 1/2; u2 none -> 0; mean 1/3
    d = 1 / np.log2(3)
    assert result["users"] == 3
    assert result["recall@2"] == pytest.approx(0.5)
    assert result["recall@5"] == pytest.approx(1.0)
    assert result["ndcg@2"] == pytest.approx((d / (1 + d) + 1 + 0) / 3)
    assert result["coverage@2"] == pytest.approx(2 / 5)
    assert result["seen_fraction@2"] == pytest.approx(1 / 3)


def test_score_signature_sends_history_to_recommend_from_history(tmp_path):
    model = _save_stub_model(tmp_path / "stub")
    # Cold users over the warm catalog: c0 history [i0, i2], target {i1};
    # c1 history [i9] (unknown: the model ignores it), target {i3, i8} (i8 outside the
    # catalog: a miss for everyone).
    cold = build_split(np.array(["c0", "c0", "c1"], object), np.array(["i0", "i2", "i9"], object),
                       np.array(["c0", "c1", "c1"], object), np.array(["i1", "i3", "i8"], object),
                       CATALOG)
    history = {"c0": ["i0", "i2"], "c1": ["i9"]}
    result = holdout.score_signature(model.signatures["recommend_from_history"], cold, (2, 5),
                                     history=history, seen_ks=(2,))
    # c0: i0, i2 pushed last -> [i1, i3, i4, i0, i2]: recall@2 1, nothing seen in top-2
    # c1: [i0, i1, i2, i3, i4]: recall@2 0, recall@5 1/2 (i3 of {i3, i8})
    assert result["recall@2"] == pytest.approx(0.5)
    assert result["recall@5"] == pytest.approx(0.75)
    assert result["seen_fraction@2"] == 0.0
    # The same users through serving_default (no history): c0's top-2 holds i0 again.
    plain = holdout.score_signature(model.signatures["serving_default"], cold, (2,),
                                    seen_ks=(2,))
    assert plain["seen_fraction@2"] == pytest.approx(0.25)


def test_aggregate_mean_min_max_over_runs():
    agg = holdout.aggregate([{"recall@10": 0.1, "users": 3, "note": "x"},
                             {"recall@10": 0.3, "users": 3}])
    assert agg["recall@10"] == pytest.approx({"mean": 0.2, "min": 0.1, "max": 0.3})
    assert agg["users"] == {"mean": 3.0, "min": 3.0, "max": 3.0} and "note" not in agg
    with pytest.raises(ValueError, match="no runs"):
        holdout.aggregate([])


def test_bench_writes_given_data_the_generic_reader_reads_back(tmp_path):
    from bench.quality import write_given_data
    from ingest.readers import read_generic
    from ingest.report import DropReport
    data = Interactions(np.array([0, 0, 1], np.int32), np.array([0, 1, 1], np.int32),
                        np.array([4.0, 2.5, 1.0], np.float32), np.array([10, 20, 30], np.int64),
                        ["u,1", "u2"], ["m1", "m2"])
    ds = Dataset("test", data, {"u,1": UserFeatures(30, "F", "writer"),
                                "u2": UserFeatures(40, "M", "doctor")},
                 {"m1": ItemFeatures(("Drama", "War"), 1990), "m2": ItemFeatures((), -1)})
    out = write_given_data(ds, np.array([1, 0]), str(tmp_path / "given"))  # user u2 held out
    back = read_generic(out, DropReport())
    got = sorted((back.interactions.user_ids[u], back.interactions.item_ids[i], float(r), int(t))
                 for u, i, r, t in zip(back.interactions.user, back.interactions.item,
                                       back.interactions.rating, back.interactions.timestamp))
    assert got == [("u,1", "m1", 4.0, 10), ("u,1", "m2", 2.5, 20)]
    assert back.users == {"u,1": UserFeatures(30, "F", "writer")}  # nothing about u2
    assert back.items == {"m1": ItemFeatures(("Drama", "War"), 1990),
                          "m2": ItemFeatures((), -1)}


def _save_serving_only_model(path):
    """A model from before ``recommend_from_history``: only ``serving_default``."""
    import tensorflow as tf

    class Old(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
        def serve(self, user_id):
            n = tf.shape(user_id)[0]
            return {"item_ids": tf.tile(tf.constant(CATALOG)[None], [n, 1]),
                    "scores": tf.tile(tf.constant([5.0, 4.0, 3.0, 2.0, 1.0])[None], [n, 1])}

    old = Old()
    tf.saved_model.save(old, str(path), signatures={"serving_default": old.serve})
    return str(path)


def test_bench_reports_the_cold_scenario_unavailable_without_the_signature(tmp_path):
    from bench.quality import BenchOptions, score_model, served_model_dir
    model_dir = _save_serving_only_model(tmp_path / "1700000000")
    assert served_model_dir({"pushed": True, "pushed_version_dir": model_dir}, "") == (
        model_dir, "pushed")
    cold = build_split(np.array(["c0"], object), np.array(["i0"], object),
                       np.array(["c0"], object), np.array(["i1"], object), CATALOG)
    result = score_model(model_dir, _warm_split(), cold, {"c0": ["i0"]}, BenchOptions())
    assert result["warm"]["recall@10"] == pytest.approx(1.0)  # all 5 items returned
    assert result["warm"]["seen_fraction@10"] == pytest.approx((1 + 2 + 1) / 5 / 3)
    assert "recommend_from_history" in result["cold"]["unavailable"]


def test_bench_options_reject_a_seed_in_the_trainer_config():
    from bench.quality import options, parse_args
    with pytest.raises(ValueError, match="seed 1"):
        options(parse_args(["--trainer-config", '{"seed": 1}']))
    opts = options(parse_args(["--seed", "43", "--seed", "42", "--seed", "43"]))
    assert opts.seeds == (43, 42)


def test_bench_prints_and_records_a_seed_run(capsys):
    """The reporting half of the bench on a hand-made seed run (no pipeline)."""
    import json
    from bench import quality
    metrics = {**{f"recall@{k}": 0.1 for k in (10, 20, 50, 100)}, "ndcg@10": 0.2,
               "coverage@10": 0.3, "seen_fraction@10": 0.75, "seen_fraction@100": 0.5,
               "users": 3}
    baselines = {"warm": {"popularity": dict(metrics)}, "cold": {"ease": dict(metrics)}}
    run = {"run_summary": {"evaluation": {"recall@10": 0.12}, "pushed": False,
                           "timings": {"component_seconds": {"Trainer": 12.0},
                                       "peak_memory_mb": {"Trainer": 1000.0}}},
           "component_seconds": {"Trainer": 12.0}, "report": None}
    seeds = [{"seed": s, "pipeline_root": "/r", "run": run, "model_dir": "/m",
              "model_source": "compressor (NOT pushed)", "pipeline_seconds": 200.0,
              "load_at_start": 1.0, "training": {},
              "model": {"warm": {**metrics, "recall@10": r},
                        "cold": {"unavailable": "no 'recommend_from_history'"}}}
             for s, r in ((42, 0.1), (43, 0.3))]
    sizes = {"test_users": 3, "cold_users_with_test": 1}
    quality.print_baselines(baselines)
    quality.print_seed(seeds[0], baselines, sizes)
    agg = quality.aggregate_models(seeds)
    quality.print_aggregate(agg, baselines, (42, 43))
    out = capsys.readouterr().out
    assert "0.2000 [0.1000–0.3000]" in out and "unavailable: no 'recommend_from_history'" in out
    assert agg["cold"] == {"unavailable": "no 'recommend_from_history'"}
    json.dumps([quality._seed_record(s) for s in seeds])  # everything recorded is JSON
