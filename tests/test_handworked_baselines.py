"""Popularity, ItemKNN and EASE (evaluation/baselines.py) on one 4 x 5 matrix, by hand.

        i0 i1 i2 i3 i4
    u0 [ 1, 1, 0, 0, 0 ]
    u1 [ 1, 1, 1, 0, 0 ]
    u2 [ 1, 0, 1, 0, 0 ]
    u3 [ 0, 0, 0, 1, 1 ]

Item counts (popularity) = [3, 2, 2, 1, 1]. Co-occurrences G = X^T X off the diagonal:
G01 = 2 (u0, u1), G02 = 2 (u1, u2), G12 = 1 (u1), G34 = 1 (u3), all others 0.
So G is block diagonal: items {0, 1, 2} and {3, 4}, which keeps EASE's inverse small.

Covered: popularity_scores, itemknn_weights (cosine, and neighbour pruning),
ease_weights (B = I - P / diag(P), P = (G + lambda I)^-1), top_k_excluding and
rank_batches (seen items masked, users without eval items skipped).
"""
import math

import numpy as np
import pytest
import scipy.sparse as sp

from evaluation.baselines import (ease_weights, itemknn_weights, popularity_scores,
                                  rank_batches, top_k_excluding)
from evaluation.split_data import SplitMatrices

X = sp.csr_matrix(np.array([[1, 1, 0, 0, 0],
                            [1, 1, 1, 0, 0],
                            [1, 0, 1, 0, 0],
                            [0, 0, 0, 1, 1]], np.float32))
C = 2 / math.sqrt(6)  # cos(i0, i1) = cos(i0, i2) = 2 / (sqrt(3) sqrt(2)) = 0.81650


def _user(*items):
    x = np.zeros((1, 5), np.float32)
    x[0, list(items)] = 1
    return sp.csr_matrix(x)


def test_popularity_scores():
    # column sums: i0 = u0 + u1 + u2 = 3, i1 = u0 + u1 = 2, i2 = u1 + u2 = 2, i3 = i4 = 1
    np.testing.assert_array_equal(popularity_scores(X), [3, 2, 2, 1, 1])


def test_itemknn_cosine_by_hand():
    # cos(i, j) = G_ij / (sqrt(count_i) sqrt(count_j)), diagonal zeroed:
    #   (0,1) = (0,2) = 2 / (sqrt3 sqrt2) = 0.81650; (1,2) = 1 / (sqrt2 sqrt2) = 0.5;
    #   (3,4) = 1 / (1 * 1) = 1; items in different blocks never co-occur -> 0
    expected = np.array([[0, C, C, 0, 0],
                         [C, 0, .5, 0, 0],
                         [C, .5, 0, 0, 0],
                         [0, 0, 0, 0, 1],
                         [0, 0, 0, 1, 0]])
    np.testing.assert_allclose(itemknn_weights(X), expected, atol=1e-6)
    assert C == pytest.approx(0.81650, abs=1e-5)


def test_itemknn_keeps_each_columns_top_neighbours_with_ties():
    # neighbours = 1: each column j keeps only its largest value(s).
    #   column 0: rows 1 and 2 both 0.8165 -> the tie keeps both
    #   column 1: 0.8165 (row 0) > 0.5 (row 2) -> row 2 dropped
    #   column 2: 0.8165 (row 0) > 0.5 (row 1) -> row 1 dropped
    #   columns 3, 4: the single 1
    w = itemknn_weights(X, neighbours=1)
    assert w[1, 2] == 0 and w[2, 1] == 0
    np.testing.assert_allclose(w[:, 0], [0, C, C, 0, 0], atol=1e-6)
    # so a user who has only i2 scores i0 at 0.8165 and i1 at 0 (it was 0.5 unpruned)
    np.testing.assert_allclose(np.asarray(_user(2) @ w)[0, :2], [C, 0], atol=1e-6)


def test_ease_by_hand_with_lambda_2():
    # Block {0,1,2}: M = G + 2I = [[5,2,2],[2,4,1],[2,1,4]]. Cofactors:
    #   C00 = 4*4 - 1*1 = 15, C11 = 5*4 - 2*2 = 16, C22 = 5*4 - 2*2 = 16,
    #   C01 = -(2*4 - 1*2) = -6, C02 = 2*1 - 4*2 = -6, C12 = -(5*1 - 2*2) = -1.
    #   det = 5*15 + 2*(-6) + 2*(-6) = 51; P = C / 51 (check row 0 of C times M:
    #   [15,-6,-6].[5,2,2] = 75-12-12 = 51, .[2,4,1] = 30-24-6 = 0, .[2,1,4] = 0).
    # B_ij = -P_ij / P_jj = -C_ij / C_jj (det cancels; divide by the COLUMN's P_jj):
    #   B01 = 6/16 = 3/8, B02 = 6/16 = 3/8, B10 = 6/15 = 2/5, B20 = 6/15 = 2/5,
    #   B12 = B21 = 1/16.
    # Block {3,4}: M = [[3,1],[1,3]], C33 = C44 = 3, C34 = -1 -> B34 = B43 = 1/3.
    expected = np.array([[0, 3 / 8, 3 / 8, 0, 0],
                         [2 / 5, 0, 1 / 16, 0, 0],
                         [2 / 5, 1 / 16, 0, 0, 0],
                         [0, 0, 0, 0, 1 / 3],
                         [0, 0, 0, 1 / 3, 0]])
    b = ease_weights(X, l2=2.0)
    np.testing.assert_allclose(b, expected, atol=1e-12)
    # Properties: zero diagonal; B_ij P_jj = -P_ij is symmetric, so
    # B01 / B10 = P00 / P11 = 15/16: (3/8) / (2/5) = 15/16.
    assert (np.diag(b) == 0).all()
    assert b[0, 1] / b[1, 0] == pytest.approx(15 / 16)
    # i1 and i2 co-occur once (u1): cosine 0.5, but EASE gives only 1/16 because
    # i0 already explains u1's items.


def test_rankings_for_users_outside_the_matrix():
    pop = popularity_scores(X)
    knn, ease = itemknn_weights(X), ease_weights(X, l2=2.0)

    # A user who has i3 only.
    x = _user(3)
    # popularity: [3, 2, 2, -, 1] -> i0 first
    assert top_k_excluding(pop[None, :], x, 1).tolist() == [[0]]
    # ItemKNN row 3 = [0,0,0,0,1], EASE row 3 = [0,0,0,0,1/3] -> i4 first
    assert top_k_excluding(np.asarray(x @ knn), x, 1).tolist() == [[4]]
    assert top_k_excluding(np.asarray(x @ ease), x, 1).tolist() == [[4]]

    # A user who has i1 and i2: ItemKNN i0 = 0.8165 + 0.8165 = 1.633,
    # EASE i0 = B10 + B20 = 2/5 + 2/5 = 0.8; everything else unseen scores 0.
    x = _user(1, 2)
    np.testing.assert_allclose(np.asarray(x @ knn)[0, 0], 2 * C)
    np.testing.assert_allclose(np.asarray(x @ ease)[0, 0], 0.8)
    assert top_k_excluding(np.asarray(x @ ease), x, 1).tolist() == [[0]]

    # A user who has i1: popularity [3, -, 2, 1, 1] -> [0, 2]; ItemKNN row 1
    # [0.8165, 0, 0.5, 0, 0] -> [0, 2]; EASE row 1 [2/5, 0, 1/16, 0, 0] -> [0, 2].
    x = _user(1)
    for scores in (pop[None, :], np.asarray(x @ knn), np.asarray(x @ ease)):
        assert top_k_excluding(scores, x, 2).tolist() == [[0, 2]]


def test_seen_items_come_last_when_k_exceeds_the_unseen_items():
    # u3 has i3, i4: popularity masked = [3, 2, 2, -inf, -inf]; k = 5 returns all
    # five items, the seen ones in the last two places (1 and 2 tie, in either order).
    [ranked] = top_k_excluding(popularity_scores(X)[None, :], X[3], 5).tolist()
    assert ranked[0] == 0
    assert set(ranked[1:3]) == {1, 2} and set(ranked[3:]) == {3, 4}


def test_top_k_excluding_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="got scores of shape"):
        top_k_excluding(np.zeros((1, 4)), _user(0), 1)


@pytest.mark.parametrize("method, kwargs", [("popularity", {}), ("itemknn", {}),
                                            ("ease", {"l2": 2.0})])
def test_rank_batches_on_the_matrix(method, kwargs):
    # Eval items only for u0 (i2) and u2 (i1): u1 and u3 are skipped.
    # u0 has {0,1}: popularity 2 > 1 = 1; ItemKNN i2 = 0.8165 + 0.5 = 1.3165 > 0;
    #   EASE i2 = B02 + B12 = 3/8 + 1/16 = 7/16 > 0 -> i2.
    # u2 has {0,2}: popularity i1 = 2; ItemKNN i1 = 0.8165 + 0.5; EASE i1 =
    #   B01 + B21 = 3/8 + 1/16 = 7/16 -> i1.
    ev = sp.csr_matrix(([1.0, 1.0], ([0, 2], [2, 1])), shape=(4, 5))
    split = SplitMatrices([f"u{i}" for i in range(4)], [f"i{j}" for j in range(5)],
                          X, ev, np.zeros(4, np.int64))
    [(rows, ranked)] = list(rank_batches(split, method, k=1, **kwargs))
    assert rows.tolist() == [0, 2]
    assert ranked.tolist() == [[2], [1]]
