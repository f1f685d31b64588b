"""Splits a catalog into balanced lists for the partitioned index (``ivf.py``).

Built once, at export, in NumPy: spherical k-means on a sample (fixed seed), then
every item goes to its nearest list that still has room, so no list holds more than
``list_size`` items and the padded ``[lists, list_size]`` layout wastes little.

Flat k-means over thousands of lists costs ``items x lists`` dot products per pass,
minutes at 10M items on 2 cores (scikit-learn's ``KMeans``, in the environment through
TFX, took 126 s for 15 passes of 131K points into 4,096 clusters here), so beyond
``FLAT_MAX_LISTS`` lists it is two-level: ``sqrt(lists)`` coarse groups, then each
group's items are clustered into lists in proportion to the group's size. An item
then scores ``groups + lists / groups`` centroids instead of ``lists``. The query side
does not see the groups: it scores every list's centroid.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Tuple

import numpy as np

FLAT_MAX_LISTS = 256
CHOICES = 8  # nearest lists an item may spill to before any list with room
_CHUNK = 65_536


@dataclasses.dataclass
class Partition:
    """Item ``i`` sits in list ``position[i] // list_size`` at slot ``position[i] % list_size``.

    ``centroids``: ``[lists, d]`` unit vectors, the normalised mean of each list's items;
    ``items``: ``[lists, list_size]`` item indices, -1 after a list's last item.
    """

    centroids: np.ndarray
    items: np.ndarray
    position: np.ndarray

    @property
    def num_lists(self) -> int:
        return int(self.items.shape[0])

    @property
    def list_size(self) -> int:
        return int(self.items.shape[1])

    @property
    def padding(self) -> float:
        """Share of the padded layout that holds no item."""
        return 1.0 - len(self.position) / max(1, self.items.size)


def _normalise(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norm > 0, norm, 1.0)


def _nearest(x: np.ndarray, centroids: np.ndarray, n: int) -> Tuple[np.ndarray, np.ndarray]:
    """``([len(x), n] centroid indices, their scores)``, best first, by inner product."""
    n = min(n, len(centroids))
    idx = np.empty((len(x), n), np.int32)
    val = np.empty((len(x), n), np.float32)
    for lo in range(0, len(x), _CHUNK):
        s = x[lo:lo + _CHUNK] @ centroids.T
        if n == 1:
            top = s.argmax(axis=1)[:, None]
        else:
            top = np.argpartition(-s, n - 1, axis=1)[:, :n]
            top = np.take_along_axis(top, np.argsort(-np.take_along_axis(s, top, 1),
                                                     axis=1, kind="stable"), 1)
        idx[lo:lo + _CHUNK] = top
        val[lo:lo + _CHUNK] = np.take_along_axis(s, top, 1)
    return idx, val


def spherical_kmeans(x: np.ndarray, k: int, iterations: int,
                     rng: np.random.Generator) -> np.ndarray:
    """``[k, d]`` unit centroids of unit rows ``x [n, d]`` (``n >= k``), assigned by inner
    product, seeded with ``k`` distinct rows. A cluster left empty keeps its centroid."""
    if k < 1 or k > len(x):
        raise ValueError(f"need 1 <= k <= {len(x)} points, got k={k}")
    centroids = x[rng.choice(len(x), k, replace=False)].astype(np.float32)
    for _ in range(iterations):
        assign = _nearest(x, centroids, 1)[0][:, 0]
        order = np.argsort(assign, kind="stable")
        counts = np.bincount(assign, minlength=k)
        filled = np.flatnonzero(counts)
        starts = np.concatenate([[0], np.cumsum(counts)])[filled]
        sums = np.add.reduceat(x[order], starts, axis=0)
        centroids[filled] = _normalise(sums)
    return centroids


def balanced_assign(choices: np.ndarray, scores: np.ndarray, x: np.ndarray,
                    centroids: np.ndarray, capacity: int) -> np.ndarray:
    """List of each row of ``x``, at most ``capacity`` rows a list.

    Round ``r`` offers every unplaced row to its ``r``-th nearest list (``choices``,
    ``scores``: ``[n, c]`` best first); a list takes the rows nearest to it while it
    has room. Rows still unplaced after ``c`` rounds go to the nearest list with room.
    """
    n, lists = len(x), len(centroids)
    if capacity * lists < n:
        raise ValueError(f"{lists} lists of {capacity} cannot hold {n} items")
    out = np.full(n, -1, np.int64)
    room = np.full(lists, capacity, np.int64)
    for r in range(choices.shape[1]):
        rows = np.flatnonzero(out < 0)
        if not len(rows):
            break
        want = choices[rows, r].astype(np.int64)
        order = np.lexsort((-scores[rows, r], want))  # by list, nearest first
        want, rows = want[order], rows[order]
        first = np.searchsorted(want, want, side="left")
        take = np.arange(len(want)) - first < room[want]
        out[rows[take]] = want[take]
        room -= np.bincount(want[take], minlength=lists)
    for row in np.flatnonzero(out < 0):  # rare: all of a row's choices are full
        s = np.where(room > 0, centroids @ x[row], -np.inf)
        out[row] = int(np.argmax(s))
        room[out[row]] -= 1
    return out


def partition_catalog(embeddings: np.ndarray, num_lists: int, seed: int = 0,
                      slack: float = 0.05, sample_per_list: int = 64,
                      iterations: int = 10) -> Partition:
    """Balanced lists of ``embeddings [n, d]`` (unit rows, scored by inner product).

    ``list_size`` is ``ceil(n / num_lists * (1 + slack))``; two-level beyond
    ``FLAT_MAX_LISTS`` lists, where the count can exceed ``num_lists`` by up to one per
    group (each group gets at least the lists that hold it). ``sample_per_list`` rows
    per list train the centroids.
    """
    x = np.asarray(embeddings, np.float32)
    n = len(x)
    if not 1 <= num_lists <= n:
        raise ValueError(f"num_lists must be in [1, {n}] (the items), got {num_lists}")
    if slack < 0:
        raise ValueError(f"slack must be >= 0, got {slack}")
    rng = np.random.default_rng(seed)
    average = n / num_lists
    capacity = max(1, math.ceil(average * (1 + slack)))
    sample = np.sort(rng.choice(n, min(n, sample_per_list * num_lists), replace=False))
    groups = 1 if num_lists <= FLAT_MAX_LISTS else int(round(math.sqrt(num_lists)))
    if groups > 1:
        coarse = spherical_kmeans(x[sample], groups, iterations, rng)
        group_of = _nearest(x, coarse, 1)[0][:, 0]
    else:
        group_of = np.zeros(n, np.int32)
    sample_group = group_of[sample]
    list_of = np.empty(n, np.int64)
    centroids, offset = [], 0
    for g in range(groups):
        members = np.flatnonzero(group_of == g)
        if not len(members):
            continue
        lists = min(len(members), max(math.ceil(len(members) / capacity),
                                      int(round(num_lists * len(members) / n))))
        train = sample[sample_group == g]
        if len(train) < lists:
            train = members
        c = spherical_kmeans(x[train], lists, iterations, rng)
        xm = x[members]
        choices, scores = _nearest(xm, c, CHOICES)
        list_of[members] = balanced_assign(choices, scores, xm, c, capacity) + offset
        offset += lists
        centroids.append(c)
    centroids = np.concatenate(centroids)
    return _layout(x, list_of, centroids, capacity)


def _layout(x: np.ndarray, list_of: np.ndarray, centroids: np.ndarray,
            capacity: int) -> Partition:
    """Slots in item order within each list; centroids re-centred on each list's items."""
    lists = len(centroids)
    order = np.argsort(list_of, kind="stable")
    counts = np.bincount(list_of, minlength=lists)
    starts = np.concatenate([[0], np.cumsum(counts)])
    slot = np.arange(len(order)) - starts[list_of[order]]
    items = np.full((lists, capacity), -1, np.int32)
    items[list_of[order], slot] = order
    position = np.empty(len(order), np.int32 if lists * capacity < 2**31 else np.int64)
    position[order] = list_of[order] * capacity + slot
    filled = np.flatnonzero(counts)
    centroids = centroids.copy()
    centroids[filled] = _normalise(_list_sums(x, list_of, lists)[filled])
    return Partition(centroids.astype(np.float32), items, position)


def _list_sums(x: np.ndarray, list_of: np.ndarray, lists: int) -> np.ndarray:
    """``[lists, d]`` sum of each list's rows, a chunk at a time (no copy of ``x``)."""
    sums = np.zeros((lists, x.shape[1]), np.float64)
    for lo in range(0, len(x), 16 * _CHUNK):
        part = list_of[lo:lo + 16 * _CHUNK]
        order = np.argsort(part, kind="stable")
        present, starts = np.unique(part[order], return_index=True)
        sums[present] += np.add.reduceat(x[lo:lo + 16 * _CHUNK][order], starts, axis=0)
    return sums
