"""Top-K retrieval metrics over users, with items seen in training excluded upstream.

Definitions (per user, then averaged over users with at least one eval item):

* ``recall@K`` = hits in the top K / number of the user's eval items
* ``ndcg@K`` = DCG of the hits / DCG of a perfect top K (binary relevance)
* ``coverage@K`` = distinct items in anyone's top K / catalog size
"""
from __future__ import annotations

from array import array
from typing import Dict, Iterable, List, Sequence, Set

import numpy as np

DEFAULT_KS = (10, 20, 50, 100)


class MetricAccumulator:
    """Streams ranked lists in, so evaluation never holds all users at once."""

    def __init__(self, ks: Sequence[int], catalog_size: int) -> None:
        if catalog_size <= 0:
            raise ValueError(f"catalog_size must be positive, got {catalog_size}")
        self.ks = sorted(ks)
        self.catalog_size = catalog_size
        self.users = 0
        self.recall = {k: 0.0 for k in self.ks}
        self.ndcg = {k: 0.0 for k in self.ks}
        self.recommended: Dict[int, Set] = {k: set() for k in self.ks}
        # Each user's recall@k in the order added (8 bytes a user), for intervals.
        self._user_recall = {k: array("d") for k in self.ks}
        self._discount = 1.0 / np.log2(np.arange(2, max(self.ks) + 2))

    def add(self, ranked: Sequence, relevant: Iterable) -> None:
        """``ranked``: items, best first (at least max K if the catalog allows)."""
        relevant = set(relevant)
        if not relevant:
            return
        self.users += 1
        hit = np.array([item in relevant for item in ranked[:max(self.ks)]], dtype=bool)
        for k in self.ks:
            h = hit[:k]
            recall = h.sum() / len(relevant)
            self.recall[k] += recall
            self._user_recall[k].append(float(recall))
            ideal = self._discount[:min(k, len(relevant))].sum()
            self.ndcg[k] += (self._discount[:len(h)][h]).sum() / ideal
            self.recommended[k].update(ranked[:k])

    def user_recall(self, k: int) -> np.ndarray:
        """``[users]`` recall@k of each user, in the order they were added."""
        return np.frombuffer(self._user_recall[k], np.float64).copy()

    def result(self) -> Dict[str, float]:
        if not self.users:
            raise ValueError("no user with eval items was evaluated")
        out: Dict[str, float] = {}
        for k in self.ks:
            out[f"recall@{k}"] = float(self.recall[k] / self.users)
            out[f"ndcg@{k}"] = float(self.ndcg[k] / self.users)
            out[f"coverage@{k}"] = float(len(self.recommended[k]) / self.catalog_size)
        out["users"] = self.users
        return out


def evaluate_rankings(rankings: Iterable[List], relevant: Iterable[Iterable], ks: Sequence[int],
                      catalog_size: int) -> Dict[str, float]:
    acc = MetricAccumulator(ks, catalog_size)
    for ranked, rel in zip(rankings, relevant):
        acc.add(ranked, rel)
    return acc.result()
