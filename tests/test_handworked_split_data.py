"""evaluation/split_data.py build_split, and what the baselines make of it, by hand.

Covered: the catalog is the sorted set of train items; an eval item the user already
had in train drops out; eval items outside the catalog are counted per user in
eval_cold_items, appear in relevant_lists as ("cold", j) entries and count as misses;
users seen only in eval get a zero train row; train_order keeps repeats in time order.
"""
import math

import numpy as np
import pytest

from evaluation.baselines import evaluate_baseline, relevant_lists
from evaluation.split_data import build_split, only_users

A = lambda *xs: np.array(xs, dtype=object)  # noqa: E731

# train: u0 {a, b}, u1 {b, c}, u3 {a, b}
# eval:  u0 {b (had it in train), c, z (cold)}, u1 {a, a (repeat)}, u2 {a, y (cold)}
TRAIN = (A("u0", "u0", "u1", "u1", "u3", "u3"), A("a", "b", "b", "c", "a", "b"))
EVAL = (A("u0", "u0", "u0", "u1", "u1", "u2", "u2"), A("b", "c", "z", "a", "a", "a", "y"))


def _split():
    return build_split(*TRAIN, *EVAL)


def test_matrices_cold_counts_and_relevant_lists():
    s = _split()
    # catalog = sorted train items = [a, b, c]; users = sorted(u0, u1, u2, u3)
    assert s.item_ids == ["a", "b", "c"]
    assert s.user_ids == ["u0", "u1", "u2", "u3"]
    np.testing.assert_array_equal(s.train.toarray(), [[1, 1, 0],    # u0: a b
                                                      [0, 1, 1],    # u1: b c
                                                      [0, 0, 0],    # u2: eval only
                                                      [1, 1, 0]])   # u3: a b
    # u0's eval b is dropped (in train), c stays; u1's a twice counts once
    np.testing.assert_array_equal(s.eval.toarray(), [[0, 0, 1],
                                                     [1, 0, 0],
                                                     [1, 0, 0],
                                                     [0, 0, 0]])
    # z (u0) and y (u2) are outside the catalog
    assert s.eval_cold_items.tolist() == [1, 0, 1, 0]
    # relevant = in-catalog eval items + cold ones: u0 1 + 1, u1 1, u2 1 + 1, u3 0
    assert s.relevant_counts().tolist() == [2, 1, 2, 0]
    assert relevant_lists(s, np.array([0, 1, 2])) == [[2, ("cold", 0)], [0],
                                                      [0, ("cold", 0)]]


def test_popularity_baseline_counts_cold_items_as_misses():
    # popularity = train column sums: a = u0 + u3 = 2, b = u0 + u1 + u3 = 3, c = u1 = 1
    # Evaluated users (relevant > 0): u0, u1, u2 (u3 has no eval items).
    #   u0 has a, b -> ranks c first;  relevant {c, cold}: hit@1;  recall 1/2 at K 1, 2
    #   u1 has b, c -> ranks a first;  relevant {a}:       hit@1;  recall 1 at K 1, 2
    #   u2 has none -> ranks b, a, c;  relevant {a, cold}: hit@2;  recall 0 at 1, 1/2 at 2
    # recall@1 = (1/2 + 1 + 0) / 3 = 1/2;  recall@2 = (1/2 + 1 + 1/2) / 3 = 2/3
    # ndcg@1: u0 1/1, u1 1/1, u2 0 -> 2/3
    # ndcg@2: u0 1 / (1 + 1/log2 3) = 0.61315; u1 1; u2 (1/log2 3) / (1 + 1/log2 3)
    #   = 0.38685; the u0 and u2 terms add up to exactly 1 -> (1 + 1) / 3 = 2/3
    # coverage@1: top 1 {c} | {a} | {b} = 3 of 3 items = 1
    res = evaluate_baseline(_split(), "popularity", ks=(1, 2))
    assert res["users"] == 3
    assert res["recall@1"] == pytest.approx(1 / 2)
    assert res["recall@2"] == pytest.approx(2 / 3)
    assert res["ndcg@1"] == pytest.approx(2 / 3)
    assert 1 / (1 + 1 / math.log2(3)) == pytest.approx(0.61315, abs=1e-5)
    assert res["ndcg@2"] == pytest.approx(2 / 3)
    assert res["coverage@1"] == pytest.approx(1.0)


def test_explicit_catalog_makes_other_train_items_cold_in_eval():
    # catalog [c, a] (order kept): train b of u0 is outside it and not in the matrix;
    # eval: u0 {a (had it), b (outside the catalog -> cold), c (new)}
    s = build_split(A("u0", "u0"), A("a", "b"), A("u0", "u0", "u0"), A("a", "b", "c"),
                    catalog=["c", "a"])
    np.testing.assert_array_equal(s.train.toarray(), [[0, 1]])  # [c, a]: a only
    np.testing.assert_array_equal(s.eval.toarray(), [[1, 0]])   # c new, a dropped
    assert s.eval_cold_items.tolist() == [1]                    # b


def test_train_history_in_time_order_with_repeats():
    # u0: b at t=5, a at t=1, b at t=3 -> oldest first: a(0) b(1) b(1); u1: none
    s = build_split(A("u0", "u0", "u0"), A("b", "a", "b"), A("u1"), A("a"),
                    train_times=np.array([5, 1, 3]))
    assert s.train_history(0).tolist() == [0, 1, 1]
    assert s.train_history(1).tolist() == []
    assert s.train[0].toarray().tolist() == [[1, 1]]  # repeats count once in the matrix


def test_days_since_history_run_from_the_newest_train_to_the_first_eval_interaction():
    day = 86400
    # u0: train at days 1 and 4, eval at days 10 and 6 -> 6 - 4 = 2 days; u1: train
    # only; u2: eval only -> both 0 (nothing to count from or to).
    s = build_split(A("u0", "u0", "u1"), A("a", "b", "a"), A("u0", "u0", "u2"), A("c", "a", "b"),
                    train_times=np.array([1, 4, 2]) * day,
                    eval_times=np.array([10, 6, 3]) * day)
    assert s.days_since_history(np.array([0, 1, 2])).tolist() == [2.0, 0.0, 0.0]
    without = build_split(A("u0"), A("a"), A("u0"), A("b"), train_times=np.array([1]))
    with pytest.raises(ValueError, match="without timestamps"):
        without.days_since_history(np.array([0]))


def test_repeated_cold_item_counts_once_like_a_repeated_catalog_item():
    # u0 trains on a only, so the catalog is [a]; eval b, z, z, b are 2 distinct items
    # outside it, each seen twice. In-catalog repeats count once, so this should be 2,
    # not 4 (recall would otherwise divide the user's hits by 4 instead of 2).
    s = build_split(A("u0"), A("a"), A("u0", "u0", "u0", "u0"), A("b", "z", "z", "b"))
    assert s.eval_cold_items.tolist() == [2]


def test_only_users_keeps_the_chosen_users_eval_rows_and_nothing_else():
    # u0 trains on a, u1 on b; eval: u0 -> b and cold z, u1 -> a. Keeping u1 only leaves
    # u1's eval row, drops u0's eval item and cold count, and keeps both train rows.
    s = build_split(A("u0", "u1"), A("a", "b"), A("u0", "u0", "u1"), A("b", "z", "a"))
    kept = only_users(s, np.array([False, True]))
    assert kept.eval.toarray().tolist() == [[0, 0], [1, 0]]
    assert kept.eval_cold_items.tolist() == [0, 0]
    assert (kept.train != s.train).nnz == 0
    assert s.eval.toarray().tolist() == [[0, 1], [1, 0]] and s.eval_cold_items.tolist() == [1, 0]

