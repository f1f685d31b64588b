"""Baselines computed on the same split as the model: popularity, ItemKNN and EASE.

Each returns, per user, catalog item indices ranked best first with the user's
train items excluded.
"""
from __future__ import annotations

from typing import Iterator, List, Optional, Tuple

import numpy as np
import scipy.sparse as sp

from evaluation.metrics import MetricAccumulator
from evaluation.split_data import SplitMatrices


def _ranked(scores: np.ndarray, seen: sp.csr_matrix, k: int) -> np.ndarray:
    """Top-k item indices per row of ``scores`` after masking ``seen`` items."""
    scores = scores.copy()
    rows, cols = seen.nonzero()
    scores[rows, cols] = -np.inf
    k = min(k, scores.shape[1])
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
    return np.take_along_axis(top, order, axis=1)


def top_k_excluding(scores: np.ndarray, seen: sp.csr_matrix, k: int) -> np.ndarray:
    """Public name of :func:`_ranked` for scoring users outside the fitted matrix.

    ``scores``: ``[users, items]``; ``seen``: the same shape, nonzero = never ranked.
    Returns ``[users, min(k, items)]`` item indices, best first.
    """
    if scores.shape != seen.shape:
        raise ValueError(f"got scores of shape {scores.shape} and seen of shape {seen.shape}")
    return _ranked(scores, seen, k)


def popularity_scores(train: sp.csr_matrix) -> np.ndarray:
    return np.asarray(train.sum(axis=0)).ravel().astype(np.float64)


def ease_weights(train: sp.csr_matrix, l2: float = 500.0) -> np.ndarray:
    """EASE (Steck, 2019): closed-form item-item weights with a zero diagonal."""
    g = (train.T @ train).toarray().astype(np.float64)
    g[np.diag_indices_from(g)] += l2
    p = np.linalg.inv(g)
    b = p / (-np.diag(p))
    b[np.diag_indices_from(b)] = 0.0
    return b


def itemknn_weights(train: sp.csr_matrix, neighbours: int = 100) -> np.ndarray:
    """Cosine item-item similarity, keeping each item's top ``neighbours``."""
    counts = np.asarray(train.sum(axis=0)).ravel()
    norms = np.sqrt(np.maximum(counts, 1e-12))
    sim = (train.T @ train).toarray() / norms[:, None] / norms[None, :]
    np.fill_diagonal(sim, 0.0)
    if neighbours < sim.shape[0]:
        cut = np.partition(sim, -neighbours, axis=0)[-neighbours]
        sim[sim < cut[None, :]] = 0.0
    return sim


# Popularity is ranked per row (a [rows, items] array) up to this many items, and
# from one list for everyone above; DENSE_CELLS bounds the per-row arrays' cells.
DENSE_POPULARITY_MAX_ITEMS = 1 << 17
DENSE_CELLS = 1 << 24


def popularity_order(train: sp.csr_matrix) -> np.ndarray:
    """Catalog indices by train popularity, most popular first (ties: lower index)."""
    return np.argsort(-popularity_scores(train), kind="stable")


def _popular_unseen(order: np.ndarray, rank: np.ndarray, seen: sp.csr_matrix, k: int,
                    budget: int = 1 << 25) -> np.ndarray:
    """``[rows, min(k, items)]``: each row's first ``k`` items of ``order`` that it has
    not ``seen`` (then seen ones, if fewer are left), without a ``[rows, items]`` array:
    only the first ``k`` + most-seen items of ``order`` can be in a row's answer.
    ``rank``: each item's position in ``order``; ``budget``: cells at a time."""
    lengths = np.diff(seen.indptr)
    width = min(len(order), k + int(lengths.max(initial=0)))
    k = min(k, len(order))
    if seen.shape[0] > 1 and seen.shape[0] * width > budget:
        half = seen.shape[0] // 2
        return np.concatenate([_popular_unseen(order, rank, seen[:half], k, budget),
                               _popular_unseen(order, rank, seen[half:], k, budget)])
    blocked = np.zeros((seen.shape[0], width), bool)
    at = rank[seen.indices]
    row = np.repeat(np.arange(seen.shape[0]), lengths)
    inside = at < width
    blocked[row[inside], at[inside]] = True
    first = np.argsort(blocked, axis=1, kind="stable")[:, :k]  # unblocked first, in order
    return order[:width][first]


def rank_batches(split: SplitMatrices, method: str, k: int, batch: int = 2048,
                 users: Optional[np.ndarray] = None,
                 **kwargs) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
    """Yields ``(user rows, ranked item indices [rows, k])`` for ``users`` (default:
    every user with eval items).

    Popularity over more than ``DENSE_POPULARITY_MAX_ITEMS`` items walks one list
    ranked for everyone (``_popular_unseen``): a ``[rows, items]`` score array at 1M
    items and 2,048 users was 16 GB, the evaluator's out-of-memory at catalog scale.
    Ties in popularity go to the lower index there; below that size the scores are
    ranked per row as before (``DENSE_CELLS`` cells at a time), where ties fall as
    ``np.argpartition`` leaves them, so small data sets keep their figures. EASE and
    ItemKNN score ``[rows, items]`` (their ``[items, items]`` weights are bigger)."""
    if users is None:
        users = np.flatnonzero(split.relevant_counts() > 0)
    if method == "popularity" and len(split.item_ids) > DENSE_POPULARITY_MAX_ITEMS:
        order = popularity_order(split.train)
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))
        for lo in range(0, len(users), batch):
            rows = users[lo:lo + batch]
            yield rows, _popular_unseen(order, rank, split.train[rows], k)
        return
    if method == "popularity":
        pop = popularity_scores(split.train)
        score = lambda x: np.tile(pop, (x.shape[0], 1))  # noqa: E731
        batch = max(1, min(batch, DENSE_CELLS // max(1, len(pop))))
    elif method in ("ease", "itemknn"):
        w = ease_weights(split.train, **kwargs) if method == "ease" else \
            itemknn_weights(split.train, **kwargs)
        score = lambda x: np.asarray(x @ w)  # noqa: E731
    else:
        raise ValueError(f"unknown baseline {method!r}")
    for lo in range(0, len(users), batch):
        rows = users[lo:lo + batch]
        x = split.train[rows]
        yield rows, _ranked(score(x), x, k)


def relevant_lists(split: SplitMatrices, rows: np.ndarray) -> List[list]:
    """Eval items per user; items outside the catalog count as unreachable entries."""
    out = []
    for r in rows:
        items = split.eval.indices[split.eval.indptr[r]:split.eval.indptr[r + 1]].tolist()
        out.append(items + [("cold", j) for j in range(int(split.eval_cold_items[r]))])
    return out


def accumulate_baseline(split: SplitMatrices, method: str, ks=(10, 20, 50, 100),
                        users: Optional[np.ndarray] = None, **kwargs) -> MetricAccumulator:
    """The metrics of ``method`` over ``users`` (default: all with eval items), with
    each user's values kept (``MetricAccumulator.user_recall``)."""
    acc = MetricAccumulator(ks, len(split.item_ids))
    for rows, ranked in rank_batches(split, method, max(ks), users=users, **kwargs):
        for ranked_row, rel in zip(ranked.tolist(), relevant_lists(split, rows)):
            acc.add(ranked_row, rel)
    return acc


def evaluate_baseline(split: SplitMatrices, method: str, ks=(10, 20, 50, 100),
                      users: Optional[np.ndarray] = None, **kwargs):
    return accumulate_baseline(split, method, ks, users, **kwargs).result()
