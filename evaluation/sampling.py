"""A fixed-seed sample of the eval users, and how far its recall can be from everyone's.

At a few hundred thousand eval users, scoring all of them through the model is
minutes per model (the evaluator scores two, the compressor three or more), while
recall@K over a sample of 20,000 is within about +-0.005 of everyone's. The sample is
the users whose salted hash ranks lowest: it depends on the user IDs and the seed
only, so the candidate, the served model and the popularity baseline are scored on
the same users, and a rerun on the same data on the same ones.

The interval is the normal approximation to the mean of per-user values with the
finite-population correction: it shrinks to the point itself when every user is
scored, and covers the whole population's mean about 95% of the time otherwise.
"""
from __future__ import annotations

import hashlib
import math
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from evaluation.split_data import SplitMatrices

# Eval users scored at most: ML-100K (943) and the built-in synthetic data (2,000 at
# 100K interactions) are scored in full.
DEFAULT_MAX_USERS = 20_000
DEFAULT_SEED = 0
Z_95 = 1.959963984540054


def hash_order(user_ids: Sequence[str], seed: int) -> np.ndarray:
    """Positions of ``user_ids`` ordered by a salted 64-bit hash of each ID (stable)."""
    keys = np.array([hashlib.blake2b(f"{seed}:{u}".encode(), digest_size=8).digest()
                     for u in user_ids], dtype="S8")
    return np.argsort(keys, kind="stable")


def sample_eval_users(split: SplitMatrices, max_users: int = DEFAULT_MAX_USERS,
                      seed: int = DEFAULT_SEED) -> Tuple[np.ndarray, int]:
    """``(rows, population)``: the split's rows of users with eval items (all of them
    if ``max_users`` is 0 or at least their number, else the ``max_users`` whose hash
    ranks lowest), ascending; and how many users have eval items."""
    if max_users < 0:
        raise ValueError(f"max_users must be >= 0, got {max_users}")
    users = np.flatnonzero(split.relevant_counts() > 0)
    if not max_users or len(users) <= max_users:
        return users, len(users)
    order = hash_order([split.user_ids[r] for r in users], seed)
    return np.sort(users[order[:max_users]]), len(users)


def mean_interval(values: np.ndarray, population: Optional[int] = None,
                  z: float = Z_95) -> Tuple[float, float]:
    """``(low, high)`` of the mean of ``values`` (one per sampled user) with the
    finite-population correction for a sample of ``population`` (default: the sample
    is everyone); ``(mean, mean)`` for everyone or fewer than two values."""
    values = np.asarray(values, np.float64)
    n = len(values)
    if n == 0:
        return float("nan"), float("nan")
    mean = float(values.mean())
    population = n if population is None else population
    if n < 2 or population <= n:
        return mean, mean
    fpc = math.sqrt((population - n) / (population - 1))
    half = z * float(values.std(ddof=1)) / math.sqrt(n) * fpc
    return mean - half, mean + half


def describe_sample(rows: np.ndarray, population: int, max_users: int, seed: int,
                    per_user: Dict[str, Optional[np.ndarray]], k: int,
                    against: str = "model") -> dict:
    """What ``evaluation.json`` says of the sample: its size, the population's, and
    95% intervals of recall@``k`` for every entry of ``per_user`` (per-user recall in
    ``rows`` order; None entries are skipped), and of each entry's difference with
    ``against`` on the same users (paired)."""
    out = {"users": int(len(rows)), "population": int(population),
           "max_users": int(max_users), "seed": int(seed),
           "sampled": bool(len(rows) < population), "confidence": 0.95,
           "method": "normal approximation of per-user recall, finite-population "
                     "correction", f"recall@{k}_ci95": {}, f"recall@{k}_diff_ci95": {}}
    base = per_user.get(against)
    for name, values in per_user.items():
        if values is None:
            continue
        out[f"recall@{k}_ci95"][name] = list(mean_interval(values, population))
        if base is not None and name != against and len(values) == len(base):
            out[f"recall@{k}_diff_ci95"][f"{against}-{name}"] = list(
                mean_interval(np.asarray(base) - np.asarray(values), population))
    return out
