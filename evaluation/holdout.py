"""A client's-eye evaluation protocol: data the pipeline never sees, scored as served.

The pipeline's own evaluator measures the model on the pipeline's internal split,
through a signature that is told which items to leave out. A client gets neither:
it asks ``serving_default`` for a user and takes what comes back. So the protocol
holds data back *before* the pipeline runs:

* **cold users**: a fixed-seed share of users, removed entirely; later their first
  interactions are sent as a request's history and their last ones are the target;
* **test window**: of every other user, the last ``test_fraction`` of interactions
  by time (ties at the boundary go to the window, as in ``ingest.split`` per_user);
* **given data**: everything else, which is all the pipeline (and every baseline)
  may learn from.

Pure numpy/scipy: a signature is any callable returning ``{"item_ids": ...}``, so the
scoring runs against a loaded SavedModel or a plain function alike.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import scipy.sparse as sp

from evaluation.baselines import relevant_lists, top_k_excluding
from evaluation.metrics import MetricAccumulator
from evaluation.split_data import SplitMatrices, build_split
from ingest.split import SplitConfig, temporal_split
from ingest.tables import Interactions

SEEN_KS = (10, 100)
Signature = Callable[..., Mapping[str, object]]


@dataclasses.dataclass
class Holdout:
    """Row indices into one :class:`Interactions` table; each array sorted by (user, time).

    ``given_rows`` + ``test_rows`` cover the warm users, ``cold_history_rows`` +
    ``cold_test_rows`` the cold ones (``cold_users``: user codes); together they
    partition the table.
    """

    given_rows: np.ndarray
    test_rows: np.ndarray
    cold_history_rows: np.ndarray
    cold_test_rows: np.ndarray
    cold_users: np.ndarray

    def sizes(self, data: Interactions) -> Dict[str, int]:
        """The protocol's head counts, for the report: who and how much was held out."""
        count = lambda rows: int(len(np.unique(data.user[rows])))  # noqa: E731
        return {
            "users": int(len(np.unique(data.user))),
            "warm_users": count(self.given_rows),
            "test_users": count(self.test_rows),
            "cold_users": int(len(self.cold_users)),
            "cold_users_with_test": count(self.cold_test_rows),
            "interactions": int(len(data)),
            "interactions_given": int(len(self.given_rows)),
            "interactions_test": int(len(self.test_rows)),
            "interactions_cold_history": int(len(self.cold_history_rows)),
            "interactions_cold_test": int(len(self.cold_test_rows)),
            "interactions_held_out": int(len(self.test_rows) + len(self.cold_history_rows)
                                         + len(self.cold_test_rows)),
        }


def _check_fraction(name: str, value: float, allow_zero: bool) -> None:
    low_ok = value >= 0.0 if allow_zero else value > 0.0
    if not (low_ok and value < 1.0):
        interval = "[0, 1)" if allow_zero else "(0, 1)"
        raise ValueError(f"{name} must be in {interval}, got {value}")


def pick_cold_users(users: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """``round(fraction * len(users))`` of ``users``, drawn without replacement, sorted.

    Seeded on its own so every trainer seed of a benchmark sees the same held-out users.
    """
    _check_fraction("cold_user_fraction", fraction, allow_zero=True)
    users = np.unique(users)
    n = int(round(fraction * len(users)))
    if n >= len(users) > 0:
        raise ValueError(f"cold_user_fraction {fraction} of {len(users)} users leaves no "
                         f"warm user")
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(users, size=n, replace=False)) if n else users[:0]


def time_window(data: Interactions, rows: np.ndarray, fraction: float
                ) -> Tuple[np.ndarray, np.ndarray]:
    """``(before, window)``: ``rows`` split per user by ``ingest.split``'s per_user rule.

    The window is each user's last ``fraction`` of interactions by time, ties at the
    boundary included; users with fewer than ``1 / fraction`` rows keep all in ``before``.
    """
    if len(rows) == 0:
        return rows[:0], rows[:0]
    before, window = temporal_split(data.take(rows), SplitConfig("per_user", fraction))
    return rows[before], rows[window]


def holdout_split(data: Interactions, test_fraction: float = 0.2,
                  cold_user_fraction: float = 0.1, seed: int = 0) -> Holdout:
    """Cold users (entirely held out), then each warm user's last ``test_fraction``."""
    _check_fraction("test_fraction", test_fraction, allow_zero=False)
    cold = pick_cold_users(data.user, cold_user_fraction, seed)
    is_cold = np.isin(data.user, cold)
    given, test = time_window(data, np.flatnonzero(~is_cold), test_fraction)
    history, cold_test = time_window(data, np.flatnonzero(is_cold), test_fraction)
    return Holdout(given, test, history, cold_test, cold)


def to_split(data: Interactions, known_rows: np.ndarray, target_rows: np.ndarray,
             catalog: Optional[Sequence[str]] = None) -> SplitMatrices:
    """``known_rows`` as ``train`` and ``target_rows`` as ``eval`` matrices over ``catalog``.

    Default catalog: the items of ``known_rows``. Target items the user already had in
    the known rows are not new and drop out; items outside the catalog stay in
    ``eval_cold_items`` and count as misses (no method can return them).
    """
    uid = np.asarray(data.user_ids, dtype=object)
    iid = np.asarray(data.item_ids, dtype=object)
    return build_split(uid[data.user[known_rows]], iid[data.item[known_rows]],
                       uid[data.user[target_rows]], iid[data.item[target_rows]], catalog)


def histories(data: Interactions, rows: np.ndarray) -> Dict[str, List[str]]:
    """``{raw user ID: raw item IDs oldest first}`` of ``rows``, as a client would send them."""
    order = rows[np.lexsort((rows, data.timestamp[rows], data.user[rows]))]
    out: Dict[str, List[str]] = {}
    for u, i in zip(data.user[order], data.item[order]):
        out.setdefault(data.user_ids[u], []).append(data.item_ids[i])
    return out


def history_batch(item_lists: Sequence[Sequence[str]]) -> np.ndarray:
    """``[batch, M]`` bytes, each row oldest first and padded with ``b""`` to the longest."""
    width = max([1] + [len(items) for items in item_lists])
    out = np.full((len(item_lists), width), b"", dtype=object)
    for r, items in enumerate(item_lists):
        out[r, :len(items)] = [str(x).encode() for x in items]
    return out.astype(bytes)


class SeenAccumulator:
    """Share of returned top-K items the user already had: what exclusion should make 0."""

    def __init__(self, ks: Sequence[int] = SEEN_KS) -> None:
        if not ks or min(ks) <= 0:
            raise ValueError(f"seen ks must be positive, got {list(ks)}")
        self.ks = sorted(ks)
        self.users = 0
        self.total = {k: 0.0 for k in self.ks}

    def add(self, ranked: Sequence, seen: Iterable) -> None:
        seen = set(seen)
        self.users += 1
        for k in self.ks:
            top = ranked[:k]
            if len(top):
                self.total[k] += sum(item in seen for item in top) / len(top)

    def result(self) -> Dict[str, float]:
        return {f"seen_fraction@{k}": float(self.total[k] / self.users) if self.users else 0.0
                for k in self.ks}


def seen_fraction(ranked: Sequence[Sequence], seen: Sequence[Iterable], k: int) -> float:
    """Mean over users of |top-k ∩ seen| / |top-k|; lists and seen sets are row-aligned."""
    if len(ranked) != len(seen):
        raise ValueError(f"got {len(ranked)} ranked lists and {len(seen)} seen sets")
    acc = SeenAccumulator((k,))
    for r, s in zip(ranked, seen):
        acc.add(r, s)
    return acc.result()[f"seen_fraction@{k}"]


def _row_items(m: sp.csr_matrix, r: int) -> np.ndarray:
    return m.indices[m.indptr[r]:m.indptr[r + 1]]


def score_rankings(batches: Iterable[Tuple[np.ndarray, Sequence[Sequence]]],
                   split: SplitMatrices, ks: Sequence[int],
                   seen_ks: Sequence[int] = SEEN_KS) -> Dict[str, float]:
    """Metrics of ``(user rows, ranked catalog indices)`` batches against ``split.eval``.

    Catalog = ``split.item_ids``; "seen" = the user's ``split.train`` items.
    """
    acc, seen = MetricAccumulator(ks, len(split.item_ids)), SeenAccumulator(seen_ks)
    for rows, ranked in batches:
        for r, ranked_row, rel in zip(rows, ranked, relevant_lists(split, rows)):
            acc.add(list(ranked_row), rel)
            seen.add(list(ranked_row), _row_items(split.train, r).tolist())
    return {**acc.result(), **seen.result()}


def scored_users(split: SplitMatrices) -> np.ndarray:
    """Rows of the users with at least one target item (in the catalog or not)."""
    return np.flatnonzero(split.relevant_counts() > 0)


def _batches(rows: np.ndarray, size: int) -> Iterator[np.ndarray]:
    if size <= 0:
        raise ValueError(f"batch size must be positive, got {size}")
    for lo in range(0, len(rows), size):
        yield rows[lo:lo + size]


def _numpy(value: object) -> np.ndarray:
    return np.asarray(value.numpy() if hasattr(value, "numpy") else value)


def signature_batches(fn: Signature, split: SplitMatrices,
                      history: Optional[Mapping[str, Sequence[str]]] = None,
                      batch_size: int = 256, timings: Optional[List[float]] = None
                      ) -> Iterator[Tuple[np.ndarray, List[list]]]:
    """Calls ``fn`` like a client, per batch of scored users; yields catalog indices.

    Without ``history``: ``fn(user_id=[batch] bytes)`` (``serving_default``). With it:
    ``fn(user_id=..., history_item_ids=[batch, M] bytes)`` (``recommend_from_history``).
    Returned IDs outside the catalog become ``("unknown", id)``, a guaranteed miss.
    """
    index = {item: i for i, item in enumerate(split.item_ids)}
    for rows in _batches(scored_users(split), batch_size):
        users = [split.user_ids[r] for r in rows]
        inputs = {"user_id": np.array([u.encode() for u in users], dtype=bytes)}
        if history is not None:
            inputs["history_item_ids"] = history_batch([history.get(u, []) for u in users])
        start = time.perf_counter()
        out = fn(**inputs)
        if timings is not None:
            timings.append(time.perf_counter() - start)
        ids = _numpy(out["item_ids"])
        if ids.ndim != 2 or ids.shape[0] != len(rows):
            raise ValueError(f"item_ids of shape {ids.shape} for a batch of {len(rows)} users")
        yield rows, [[index.get(_text(x), ("unknown", x)) for x in row] for row in ids]


def _text(x: object) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


def score_signature(fn: Signature, split: SplitMatrices, ks: Sequence[int],
                    history: Optional[Mapping[str, Sequence[str]]] = None,
                    batch_size: int = 256, seen_ks: Sequence[int] = SEEN_KS
                    ) -> Dict[str, float]:
    """recall/NDCG/coverage@ks and seen_fraction of ``fn`` on every scored user of ``split``.

    Nothing is excluded on the client side: this is what the served model returns.
    Also ``latency_ms_per_batch`` (mean over batches after the first, which warms up).
    """
    seconds: List[float] = []
    result = score_rankings(signature_batches(fn, split, history, batch_size, seconds),
                            split, ks, seen_ks)
    result["latency_ms_per_batch"] = 1000.0 * float(np.mean(seconds[1:] or seconds))
    return result


def fold_in_ranking(weights: np.ndarray, history: sp.csr_matrix, k: int) -> np.ndarray:
    """``[users, k]`` item indices by ``history @ weights``, history items excluded.

    ``weights``: ``[items, items]`` item-item weights (EASE, ItemKNN) fitted on the given
    data; ``history``: ``[users, items]`` rows of users who need not be in that data.
    """
    if weights.shape != (history.shape[1], history.shape[1]):
        raise ValueError(f"got weights of shape {weights.shape} for {history.shape[1]} items")
    return top_k_excluding(np.asarray(history @ weights), history, k)


def ease_fold_in(weights: np.ndarray, history: sp.csr_matrix, k: int) -> np.ndarray:
    """EASE for a user it was not fitted on: the history vector times B (Steck, 2019)."""
    return fold_in_ranking(weights, history, k)


def popularity_ranking(popularity: np.ndarray, history: sp.csr_matrix, k: int) -> np.ndarray:
    """``[users, k]`` most popular item indices, each user's history items excluded."""
    if popularity.shape != (history.shape[1],):
        raise ValueError(f"got popularity of shape {popularity.shape} for "
                         f"{history.shape[1]} items")
    return top_k_excluding(np.tile(popularity, (history.shape[0], 1)), history, k)


def score_ranker(rank: Callable[[sp.csr_matrix], np.ndarray], split: SplitMatrices,
                 ks: Sequence[int], batch_size: int = 2048,
                 seen_ks: Sequence[int] = SEEN_KS) -> Dict[str, float]:
    """Metrics of ``rank(split.train[rows]) -> [rows, max k]`` over the scored users."""
    batches = ((rows, rank(split.train[rows])) for rows in
               _batches(scored_users(split), batch_size))
    return score_rankings(batches, split, ks, seen_ks)


def aggregate(runs: Sequence[Mapping[str, float]]) -> Dict[str, Dict[str, float]]:
    """``{metric: {"mean", "min", "max"}}`` over runs, for the numeric keys all runs share."""
    if not runs:
        raise ValueError("no runs to aggregate")
    keys = [k for k, v in runs[0].items() if isinstance(v, (int, float))
            and not isinstance(v, bool) and all(k in r for r in runs[1:])]
    out = {}
    for k in keys:
        values = np.array([float(r[k]) for r in runs])
        out[k] = {"mean": float(values.mean()), "min": float(values.min()),
                  "max": float(values.max())}
    return out
