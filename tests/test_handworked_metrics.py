"""recall@K, NDCG@K and coverage@K of evaluation/metrics.py, worked out by hand.

Definitions, as MetricAccumulator.add / result implement them (per user, then the mean
over users with at least one relevant item):

* recall@K   = hits in the top K / len(relevant)           (NOT / min(K, len(relevant)))
* ndcg@K     = sum over hit ranks r <= K of 1/log2(r + 1)
               / sum over r = 1 .. min(K, len(relevant)) of 1/log2(r + 1)
* coverage@K = |union of the top K of the evaluated users| / catalog_size
               (users without relevant items are skipped, also for coverage)

Constants used below: 1/log2(2) = 1, 1/log2(3) = 0.63093, 1/log2(4) = 0.5,
1/log2(5) = 0.43068.
"""
import math

import pytest

from evaluation.metrics import MetricAccumulator, evaluate_rankings

D2, D3, D4, D5 = 1.0, 1 / math.log2(3), 0.5, 1 / math.log2(5)  # discounts of ranks 1..4


def test_two_users_and_one_without_eval_items():
    # Catalog of 6 items (0..5), K in {2, 4}.
    # User A: ranked [0, 1, 2, 3], relevant {1, 3, 5}: hits at ranks 2 and 4.
    # User B: ranked [4, 0, 1, 2], relevant {4}:       hit at rank 1.
    # User C: ranked [5, 4, 3, 2], relevant {}:        skipped entirely.
    res = evaluate_rankings([[0, 1, 2, 3], [4, 0, 1, 2], [5, 4, 3, 2]],
                            [[1, 3, 5], [4], []], ks=(4, 2), catalog_size=6)
    assert res["users"] == 2  # C does not count

    # recall@2: A 1 hit / 3 relevant = 1/3 (dividing by min(2, 3) would give 1/2);
    #           B 1/1 = 1.           mean (1/3 + 1) / 2 = 2/3
    # recall@4: A 2/3, B 1.          mean (2/3 + 1) / 2 = 5/6
    assert res["recall@2"] == pytest.approx(2 / 3)
    assert res["recall@4"] == pytest.approx(5 / 6)

    # ndcg@2, A: DCG = 1/log2(3) = 0.63093 (hit at rank 2);
    #            ideal = min(2, 3) = 2 terms = 1 + 0.63093 = 1.63093 -> 0.38685
    #         B: DCG = 1, ideal = min(2, 1) = 1 term = 1 -> 1
    #         mean (0.38685 + 1) / 2 = 0.69343
    ndcg2_a = D3 / (D2 + D3)
    assert ndcg2_a == pytest.approx(0.38685, abs=1e-5)
    assert res["ndcg@2"] == pytest.approx((0.38685 + 1) / 2, abs=1e-5)
    # ndcg@4, A: DCG = 1/log2(3) + 1/log2(5) = 0.63093 + 0.43068 = 1.06161
    #            ideal = min(4, 3) = 3 terms = 1 + 0.63093 + 0.5 = 2.13093 -> 0.49819
    #         B: 1.       mean (0.49819 + 1) / 2 = 0.74910
    assert (D3 + D5) / (D2 + D3 + D4) == pytest.approx(0.49819, abs=1e-5)
    assert res["ndcg@4"] == pytest.approx(0.74910, abs=1e-5)

    # coverage@2: top 2 of A {0, 1}, of B {4, 0} -> {0, 1, 4} = 3 of 6 = 0.5
    #             (C's item 5 would make it 4/6 if skipped users counted)
    # coverage@4: {0, 1, 2, 3} | {4, 0, 1, 2} = {0, 1, 2, 3, 4} = 5/6
    assert res["coverage@2"] == pytest.approx(3 / 6)
    assert res["coverage@4"] == pytest.approx(5 / 6)


def test_recall_is_capped_below_one_when_relevant_exceeds_k_but_ndcg_is_not():
    # One user, K = 1, relevant {7, 8}, ranked [7, 9]: one hit at rank 1.
    # recall@1 = 1 hit / 2 relevant = 0.5 (a perfect list cannot reach 1 at K = 1)
    # ndcg@1 = DCG 1 / ideal over min(1, 2) = 1 term (= 1) = 1.0
    acc = MetricAccumulator([1], catalog_size=10)
    acc.add([7, 9], [7, 8])
    res = acc.result()
    assert res["recall@1"] == pytest.approx(0.5)
    assert res["ndcg@1"] == pytest.approx(1.0)
    assert res["coverage@1"] == pytest.approx(1 / 10)  # {7} of 10 items


def test_cold_entries_are_misses_that_raise_the_ideal_dcg():
    # relevant_lists() appends ("cold", j) for eval items outside the catalog; no
    # ranking can contain them. relevant {0, ("cold", 0)}, ranked [0, 1], K = 2:
    # recall@2 = 1/2; ndcg@2 = 1 / (1 + 1/log2(3)) = 1 / 1.63093 = 0.61315
    acc = MetricAccumulator([2], catalog_size=2)
    acc.add([0, 1], [0, ("cold", 0)])
    res = acc.result()
    assert res["recall@2"] == pytest.approx(0.5)
    assert res["ndcg@2"] == pytest.approx(0.61315, abs=1e-5)
    assert res["coverage@2"] == pytest.approx(1.0)  # {0, 1} of 2


def test_repeated_relevant_items_count_once():
    # relevant [3, 3, 4] is the set {3, 4}: ranked [3], K = 1 -> recall 1/2, not 2/3 or 1/3
    acc = MetricAccumulator([1], catalog_size=5)
    acc.add([3], [3, 3, 4])
    assert acc.result()["recall@1"] == pytest.approx(0.5)


def test_errors():
    with pytest.raises(ValueError, match="catalog_size must be positive"):
        MetricAccumulator([10], catalog_size=0)
    acc = MetricAccumulator([10], catalog_size=3)
    acc.add([0, 1, 2], [])  # no relevant item: not evaluated
    with pytest.raises(ValueError, match="no user with eval items"):
        acc.result()
