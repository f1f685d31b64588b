"""Leakage-free temporal train/eval splits.

Three strategies:

``per_user`` (default)
    For each user, the interactions at or after the time of the user's last
    ``eval_fraction`` of interactions (by timestamp) go to eval, the rest to train.
    Interactions that share the boundary timestamp all go to eval, so no eval
    interaction is older than any of that user's train interactions. Users with
    fewer than ``1 / eval_fraction`` interactions stay wholly in train. This keeps
    every active user in eval, which suits data sets like MovieLens whose users rate
    once and leave.
``global_time``
    One cut at the ``1 - eval_fraction`` quantile of all timestamps: train is
    strictly before the cut, eval at or after it. Nothing in train happened after
    anything in eval, for any user, which is the stricter guarantee; users first seen
    after the cut are cold-start users in eval.
``newest_span`` (default for continuous training)
    Global time, with the cut at the earliest interaction of the newest increment
    (span), so eval is the newest span and the next run trains on it: the pushed
    model lags the data by one span, not by ``eval_fraction`` of everything. The cut
    is never earlier than ``global_time``'s, so a large or back-dated span still
    leaves at most ``eval_fraction`` in eval. With a single span it is ``global_time``.

Vocabularies are later built on the train split only (Transform ``analyze``), so eval
items unseen in train are out-of-vocabulary, as they would be in production.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Tuple

import numpy as np

from ingest.tables import Interactions

STRATEGIES = ("per_user", "global_time", "newest_span")


@dataclasses.dataclass(frozen=True)
class SplitConfig:
    strategy: str = "per_user"
    eval_fraction: float = 0.2

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"split strategy must be one of {STRATEGIES}, "
                             f"got {self.strategy!r}")
        if not 0.0 < self.eval_fraction < 1.0:
            raise ValueError(f"eval_fraction must be in (0, 1), got {self.eval_fraction}")


def temporal_split(data: Interactions, cfg: SplitConfig,
                   row_span: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Returns ``(train_rows, eval_rows)``: row indices, each sorted by (user, time).

    ``row_span`` (the increment each row arrived in) is used by ``newest_span`` only.
    """
    order = np.lexsort((np.arange(len(data)), data.timestamp, data.user))
    if cfg.strategy in ("global_time", "newest_span"):
        cut = np.quantile(data.timestamp, 1.0 - cfg.eval_fraction, method="higher")
        if (cfg.strategy == "newest_span" and row_span is not None and len(row_span)
                and row_span.min() < row_span.max()):
            cut = max(cut, data.timestamp[row_span == row_span.max()].min())
        ts = data.timestamp[order]
        is_eval = ts >= cut
        if is_eval.all():  # the cut fell on the earliest time: cut at the next one instead
            later = ts[ts > cut]
            is_eval = ts >= later.min() if len(later) else np.zeros_like(is_eval)
    else:
        is_eval = _per_user_eval_mask(data.user[order], data.timestamp[order],
                                      cfg.eval_fraction)
    return order[~is_eval], order[is_eval]


def _per_user_eval_mask(user: np.ndarray, ts: np.ndarray, fraction: float) -> np.ndarray:
    """``user``/``ts`` sorted by (user, ts); marks each user's last ``fraction``."""
    n = len(user)
    starts = np.flatnonzero(np.r_[True, user[1:] != user[:-1]])
    counts = np.diff(np.r_[starts, n])
    n_eval = np.floor(counts * fraction + 1e-9).astype(np.int64)
    boundary = starts + counts - n_eval  # first eval row per user (== end when none)
    has_eval = n_eval > 0
    cut_ts = np.full(len(starts), np.iinfo(np.int64).max)
    cut_ts[has_eval] = ts[boundary[has_eval]]
    owner = np.repeat(np.arange(len(starts)), counts)
    is_eval = ts >= cut_ts[owner]
    # If ties at the boundary would take all of a user's rows, keep them in train.
    all_eval = np.add.reduceat(is_eval.astype(np.int64), starts) == counts
    is_eval[all_eval[owner]] = False
    return is_eval
