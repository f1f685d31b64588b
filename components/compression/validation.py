"""The validation slice the compressor chooses on, apart from the gate's eval split.

Choosing among candidates on the split that also gives the verdict lets the choice
fit that split's noise (over seeds, the drop on MovieLens 100K spread 0.5–2.2%,
as wide as the 2% tolerance), so the verdict is optimistic. The slice is cut from
the *train* split only: a fixed-seed sample of train users, each user's newest
``target_fraction`` of train interactions as targets and the older ones as the
query's history, by the same per-user rule as the eval split (``ingest.split``,
``per_user``). It is scored by the gate's own code (``recommend_given_history``).

No eval-split interaction is read. The slice is not unseen by the models: the
Trainer fits every train interaction, and every candidate starts from its towers.
Its recall is therefore higher than on the eval split and says how much of the
teacher's fit a candidate keeps; it is used only to choose, never for the verdict.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Any, Mapping, Optional, Sequence

import numpy as np
from absl import logging

from evaluation.split_data import SplitMatrices, build_split, read_examples
from ingest.split import SplitConfig, temporal_split
from ingest.tables import Interactions


@dataclasses.dataclass(frozen=True)
class ValidationConfig:
    """``max_users``: train users sampled (0: choose on the eval split, as before);
    ``target_fraction``: each user's newest share of train interactions held out as
    targets; ``seed``: which users are sampled."""

    max_users: int = 2000
    target_fraction: float = 0.2
    seed: int = 0

    @classmethod
    def from_properties(cls, props: Mapping[str, Any]) -> "ValidationConfig":
        """From the component's ``validation_*`` execution properties; defaults for
        those absent (a pipeline spec compiled before they existed)."""
        default = cls()
        return cls(max_users=int(props.get("validation_max_users", default.max_users)),
                   target_fraction=float(props.get("validation_target_fraction",
                                                   default.target_fraction)),
                   seed=int(props.get("validation_seed", default.seed)))

    def __post_init__(self) -> None:
        if self.max_users < 0:
            raise ValueError(f"max_users must be >= 0, got {self.max_users}")
        if not 0.0 < self.target_fraction < 1.0:
            raise ValueError(f"target_fraction must be in (0, 1), got {self.target_fraction}")


def sample_users(user_ids: Sequence[str], n: int, seed: int) -> np.ndarray:
    """Boolean mask of the ``n`` users whose salted hash ranks lowest.

    A user's rank depends on its ID and ``seed`` only, so the sample is the same
    whatever the order of the rows, and mostly the same as new users arrive.
    """
    keys = np.array([hashlib.blake2b(f"{seed}:{u}".encode(), digest_size=8).digest()
                     for u in user_ids], dtype="S8")
    keep = np.zeros(len(user_ids), bool)
    keep[np.argsort(keys, kind="stable")[:n]] = True
    return keep


def validation_split(users: np.ndarray, items: np.ndarray, times: np.ndarray,
                     catalog: Sequence[str], cfg: ValidationConfig) -> SplitMatrices:
    """The slice as a :class:`SplitMatrices` (``train``: history, ``eval``: targets).

    ``users``, ``items``, ``times``: ``[num_rows]`` raw train-split interactions.
    Users with fewer than ``1 / target_fraction`` interactions have no targets and
    are not scored, as in the eval split.
    """
    user_ids, user_code = np.unique(np.asarray(users, dtype=object), return_inverse=True)
    keep = sample_users(list(user_ids), cfg.max_users, cfg.seed)[user_code]
    users, items, times = np.asarray(users, object)[keep], np.asarray(items, object)[keep], \
        np.asarray(times, np.int64)[keep]
    item_ids, item_code = np.unique(items, return_inverse=True)
    user_ids, user_code = np.unique(users, return_inverse=True)
    table = Interactions(user_code.astype(np.int32), item_code.astype(np.int32),
                         np.zeros(len(users), np.float32), times, list(user_ids),
                         list(item_ids))
    history, targets = (temporal_split(table, SplitConfig("per_user", cfg.target_fraction))
                        if len(table) else (np.zeros(0, np.int64),) * 2)
    return build_split(users[history], items[history], users[targets], items[targets],
                       catalog, times[history], times[targets])


def load_validation_split(examples_uri: str, catalog: Sequence[str],
                          cfg: ValidationConfig) -> Optional[SplitMatrices]:
    """The slice from an ExampleGen ``Examples`` artifact's ``Split-train`` only; None
    if it has no targets (``max_users`` 0, or no user with enough interactions)."""
    users, items, times = read_examples(os.path.join(examples_uri, "Split-train", "*"))
    decode = lambda a: np.array([x.decode() for x in a], dtype=object)  # noqa: E731
    split = validation_split(decode(users), decode(items), times, catalog, cfg)
    if not (split.relevant_counts() > 0).any():
        logging.warning("ModelCompressor: the validation slice is empty (%s); choosing on "
                        "the eval split", cfg)
        return None
    return split


def describe(split: SplitMatrices, cfg: ValidationConfig, seconds: float) -> dict:
    """What ``compression.json`` says of the slice."""
    scored = split.relevant_counts() > 0
    return {"split": "train", "users": int(scored.sum()),
            "targets": int(split.relevant_counts().sum()),
            "max_users": cfg.max_users, "target_fraction": cfg.target_fraction,
            "seed": cfg.seed, "seconds": round(seconds, 1)}
