"""The compressor chooses on a validation slice cut from train, and gives its verdict
on the gate's eval split: the slice's rule, and a choice where the two disagree."""
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from components.compression.measure import measure
from components.compression.report import EVAL, REPORT_FILE, VALIDATION, console_line, write_report
from components.compression.select import choose, decide
from components.compression.validation import (ValidationConfig, describe, sample_users,
                                               validation_split)
from evaluation.split_data import build_split
from ingest.readers import read_dataset
from ingest.report import DropReport
from ingest.split import SplitConfig, temporal_split
from tests.conftest import ML100K_DIR


def _column(*parts):
    return np.array([x for part in parts for x in part], dtype=object)


def test_validation_slice_by_hand():
    # a: 5 interactions -> floor(5 * 0.2) = 1 target, its newest (a4 at t=5).
    # b: 10 -> 2 targets; b8 and b9 share t=9 with b7, and ties go to the targets,
    #    as in the eval split, so 3 targets: b7, b8, b9.
    # c: 4 < 1 / 0.2 -> no target, not scored.
    users = _column(["a"] * 5, ["b"] * 10, ["c"] * 4)
    items = _column([f"a{i}" for i in range(5)], [f"b{i}" for i in range(10)],
                    [f"c{i}" for i in range(4)])
    times = np.array([1, 2, 3, 4, 5] + [1, 2, 3, 4, 5, 6, 7, 9, 9, 9] + [1, 2, 3, 4])
    catalog = sorted(set(items))
    held = validation_split(users, items, times, catalog, ValidationConfig(max_users=10))
    targets = {u: sorted(held.item_ids[j] for j in held.eval[r].indices)
               for r, u in enumerate(held.user_ids)}
    history = {u: [held.item_ids[j] for j in held.train_history(r)]
               for r, u in enumerate(held.user_ids)}
    assert targets == {"a": ["a4"], "b": ["b7", "b8", "b9"], "c": []}
    assert history["a"] == ["a0", "a1", "a2", "a3"]
    assert history["b"] == [f"b{i}" for i in range(7)] and len(history["c"]) == 4
    assert describe(held, ValidationConfig(max_users=10), 0.0)["users"] == 2
    assert describe(held, ValidationConfig(max_users=10), 0.0)["targets"] == 4
    # max_users 1 keeps one of the three users; 0 keeps none.
    one = validation_split(users, items, times, catalog, ValidationConfig(max_users=1))
    assert len(one.user_ids) == 1
    assert validation_split(users, items, times, catalog,
                            ValidationConfig(max_users=0)).relevant_counts().sum() == 0


def test_user_sample_is_fixed_by_the_seed_and_not_by_the_order():
    users = [f"u{i}" for i in range(1000)]
    a = sample_users(users, 200, seed=0)
    assert a.sum() == 200
    shuffled = list(np.random.default_rng(0).permutation(users))
    b = sample_users(shuffled, 200, seed=0)
    assert set(np.array(shuffled)[b]) == set(np.array(users)[a])
    other = sample_users(users, 200, seed=1)
    assert (a & other).sum() < 100  # about 200 * 200 / 1000 = 40 by chance


@pytest.mark.skipif(not os.path.isdir(ML100K_DIR), reason="shared MovieLens 100K missing")
def test_validation_slice_on_movielens_uses_only_each_users_newest_train_items():
    data = read_dataset(ML100K_DIR, DropReport()).interactions
    train, ev = temporal_split(data, SplitConfig("per_user", 0.2))
    users = np.array(data.user_ids, dtype=object)[data.user[train]]
    items = np.array(data.item_ids, dtype=object)[data.item[train]]
    times = data.timestamp[train]
    held = validation_split(users, items, times, sorted(set(items)),
                            ValidationConfig(max_users=300))
    when = dict(zip(zip(users, items), times))
    eval_only = set(zip(np.array(data.user_ids, dtype=object)[data.user[ev]],
                        np.array(data.item_ids, dtype=object)[data.item[ev]]))
    scored = np.flatnonzero(held.relevant_counts() > 0)
    # Every sampled user has >= 16 train ratings (20 in all), so each is scored.
    assert len(scored) == 300 and held.eval_cold_items.sum() == 0
    for r in scored:
        u = held.user_ids[r]
        target = [(u, held.item_ids[j]) for j in held.eval[r].indices]
        past = [(u, held.item_ids[j]) for j in held.train_history(r)]
        # Targets are train interactions, never eval ones, and none is older than
        # any of the history the query is given.
        assert all(p in when and p not in eval_only for p in target)
        assert min(when[p] for p in target) >= max(when[p] for p in past)
        assert len(target) >= int(0.2 * (len(target) + len(past)))


def _ranked_model(path, ranking, pad):
    """A SavedModel whose ``recommend_given_history`` returns ``ranking`` to everyone;
    ``pad`` floats of weights set its size."""
    module = tf.Module()
    module.pad = tf.Variable(tf.zeros([pad]))
    order = tf.constant(ranking)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string),
                                  tf.TensorSpec([None, None], tf.string),
                                  tf.TensorSpec([None, None], tf.string)])
    def recommend_given_history(user_id, history_item_ids, exclude_item_ids):
        n = tf.shape(user_id)[0]
        return {"item_ids": tf.tile(order[None], [n, 1]),
                "scores": tf.tile(-tf.range(len(ranking), dtype=tf.float32)[None], [n, 1])}

    tf.saved_model.save(module, str(path),
                        signatures={"recommend_given_history": recommend_given_history})
    return str(path)


def test_choice_follows_the_validation_slice_where_the_two_splits_disagree(tmp_path):
    # Six users with the same story: h0..h7 (t=1..8), then v0, v1 (t=9, 10) in train;
    # e0, e1 (t=11, 12) in eval. The slice's targets are v0, v1; the gate's e0, e1.
    users = [f"u{i}" for i in range(6)]
    train_items = [f"h{i}" for i in range(8)] + ["v0", "v1"]
    tu = _column(*[[u] * 10 for u in users])
    ti = _column(*[train_items for _ in users])
    tt = np.tile(np.arange(1, 11), len(users))
    eu, ei = _column(*[[u] * 2 for u in users]), _column(*[["e0", "e1"] for _ in users])
    fill = [f"f{i}" for i in range(8)]
    catalog = train_items + ["e0", "e1"] + fill
    split = build_split(tu, ti, eu, ei, catalog, tt)
    held = validation_split(tu, ti, tt, catalog, ValidationConfig(max_users=100))
    ks, k, tolerance = [2, 10], 2, 0.02
    original = measure(_ranked_model(tmp_path / "o", ["v0", "e0", "v1", "e1"] + fill[:6],
                                     3000), "original", split, held, ks)
    # "small" finds the eval items, "large" the slice's; by the gate's split alone
    # "small" would win.
    small = measure(_ranked_model(tmp_path / "s", ["e0", "e1"] + fill, 1), "small",
                    split, held, ks, original, k, tolerance)
    large = measure(_ranked_model(tmp_path / "l", ["v0", "v1"] + fill, 2000), "large",
                    split, held, ks, original, k, tolerance)
    assert small["size_bytes"] < large["size_bytes"] < original["size_bytes"]
    # The original finds 1 of 2 at K=2 on both (v0 first, e0 second): recall@2 = 0.5.
    # "large": 2 of 2 on the slice, drop (0.5 - 1) / 0.5 = -1; 0 of 2 on eval, drop 1.
    # At K=10 the original and "large" both find both slice targets (drop 0): the drop
    # is taken at the gate's K.
    assert original[f"{VALIDATION}_recall@2"] == original["recall@2"] == 0.5
    assert large[f"{VALIDATION}_recall@10"] == original[f"{VALIDATION}_recall@10"] == 1.0
    assert large[f"{VALIDATION}_recall_drop_relative"] == pytest.approx(-1.0)
    assert large["recall_drop_relative"] == pytest.approx(1.0)
    assert small[f"{VALIDATION}_recall_drop_relative"] == pytest.approx(1.0)
    assert small["recall_drop_relative"] == pytest.approx(-1.0)
    assert choose([small, large], EVAL) is small

    report = {"gate_k": k, "max_recall_drop": tolerance,
              **decide(original, [small, large], k, VALIDATION),
              VALIDATION: describe(held, ValidationConfig(max_users=100), 1.0)}
    write_report(str(tmp_path), report)
    with open(tmp_path / REPORT_FILE) as f:
        written = json.load(f)
    # Chosen on the slice; refused by the verdict on the gate's split.
    assert written["method"] == "large" and written["chosen_on"] == VALIDATION
    assert written["eval_split_would_choose"] == "small"
    assert [t["chosen"] for t in written["tried"]] == [False, False, True]
    assert written["blessed"] is False
    # Both splits' figures: the contract's keys on eval, the slice's beside them.
    assert written["recall_drop_relative"] == pytest.approx(1.0)
    assert written[f"{VALIDATION}_recall_drop_relative"] == pytest.approx(-1.0)
    assert (written["recall@2_original"], written["recall@2_compressed"]) == (0.5, 0.0)
    assert (written[f"{VALIDATION}_recall@2_original"],
            written[f"{VALIDATION}_recall@2_compressed"]) == (0.5, 1.0)
    assert written[VALIDATION]["users"] == 6 and written[VALIDATION]["targets"] == 12
    line = console_line(written)
    assert "validation slice (6 train users, 12 targets): recall@2 drop -100.00%" in line
    assert line.endswith("eval split: recall@2 drop 100.00% (tolerance 2.00%): NOT BLESSED")


def test_choose_on_the_validation_slice_takes_the_smallest_within_tolerance():
    def entry(name, size, drop):
        return {"method": name, "size_bytes": size, f"{VALIDATION}_recall_drop_relative": drop,
                f"{VALIDATION}_within_tolerance": drop <= 0.02}
    a, b, c = entry("a", 390, -0.01), entry("b", 280, 0.015), entry("c", 150, 0.09)
    assert choose([a, b, c], VALIDATION) is b
    assert choose([c, entry("d", 100, 0.05)], VALIDATION)["method"] == "d"
    with pytest.raises(ValueError, match="'test'"):
        choose([a], "test")


def _judged(name, size, validation_drop, eval_drop, tolerance=0.02):
    k = 2
    return {"method": name, "size_bytes": size, "gzip_bytes": size, "weight_bytes": size,
            "size_ratio": 1000 / size, "weight_size_ratio": 1000 / size,
            "latency_ms_per_batch": 1.0, f"recall@{k}": 0.5, "recall@10": 0.5,
            "recall_drop_relative": eval_drop, "within_tolerance": eval_drop <= tolerance,
            f"{VALIDATION}_recall_drop_relative": validation_drop,
            f"{VALIDATION}_within_tolerance": validation_drop <= tolerance,
            f"{VALIDATION}_recall@{k}": 0.5, f"{VALIDATION}_recall@10": 0.5}


def test_a_refused_first_choice_falls_back_to_the_next_the_slice_found_within():
    original = _judged("original", 1000, 0.0, 0.0)
    # The slice finds the student and the pruned teacher within 2%; the gate's split
    # refuses the student (2.09%, as on the timeline's step 1) and passes the teacher.
    student = _judged("student", 300, 0.015, 0.0209)
    pruned = _judged("pruned", 600, 0.005, 0.012)
    decision = decide(original, [pruned, student], 2, VALIDATION)
    assert decision["method"] == "pruned" and decision["blessed"] is True
    assert decision["fell_back_from"] == ["student"]
    assert [t["chosen"] for t in decision["tried"]] == [False, True, False]
    line = console_line({"gate_k": 2, "max_recall_drop": 0.02, **decision,
                         VALIDATION: {"users": 6, "targets": 12}})
    assert "falling back from student" in line and line.endswith("BLESSED")

    # A candidate the slice put past the tolerance is never taken on the eval split's
    # word, even though it would pass there: the first choice stays, refused.
    outside = _judged("outside", 200, 0.03, 0.0)
    decision = decide(original, [outside, student], 2, VALIDATION)
    assert decision["method"] == "student" and decision["blessed"] is False
    assert decision["fell_back_from"] == []
    # When every candidate the slice allowed is refused, the report names the first.
    decision = decide(original, [student, _judged("pruned", 600, 0.0, 0.03)], 2, VALIDATION)
    assert decision["method"] == "student" and decision["blessed"] is False
