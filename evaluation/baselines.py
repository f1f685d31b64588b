"""Baselines computed on the same split as the model: popularity, ItemKNN and EASE.

Each returns, per user, catalog item indices ranked best first with the user's
train items excluded.
"""
from __future__ import annotations

from typing import Iterator, List, Tuple

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


def rank_batches(split: SplitMatrices, method: str, k: int, batch: int = 2048,
                 **kwargs) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
    """Yields ``(user rows, ranked item indices [rows, k])`` for users with eval items."""
    users = np.flatnonzero(split.relevant_counts() > 0)
    if method == "popularity":
        pop = popularity_scores(split.train)
        score = lambda x: np.tile(pop, (x.shape[0], 1))  # noqa: E731
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


def evaluate_baseline(split: SplitMatrices, method: str, ks=(10, 20, 50, 100), **kwargs):
    acc = MetricAccumulator(ks, len(split.item_ids))
    for rows, ranked in rank_batches(split, method, max(ks), **kwargs):
        for ranked_row, rel in zip(ranked.tolist(), relevant_lists(split, rows)):
            acc.add(ranked_row, rel)
    return acc.result()
