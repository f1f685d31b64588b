"""In-memory columnar form of a data set, shared by every reader.

Interactions are stored as integer codes into ``user_ids`` / ``item_ids`` so that a
10-million-row data set costs about 20 bytes a row instead of Python objects.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

UNKNOWN = "unknown"  # value of a categorical feature the source does not have
UNKNOWN_INT = -1  # value of an integer feature (age, year) the source does not have


@dataclasses.dataclass
class UserFeatures:
    age: int = UNKNOWN_INT
    gender: str = UNKNOWN
    occupation: str = UNKNOWN


@dataclasses.dataclass
class ItemFeatures:
    genres: Tuple[str, ...] = ()
    year: int = UNKNOWN_INT


class IdCodes:
    """Maps raw string IDs to dense integer codes in order of first appearance."""

    def __init__(self) -> None:
        self.index: Dict[str, int] = {}
        self.ids: List[str] = []

    def code(self, raw_id: str) -> int:
        c = self.index.get(raw_id)
        if c is None:
            c = len(self.ids)
            self.index[raw_id] = c
            self.ids.append(raw_id)
        return c

    def __len__(self) -> int:
        return len(self.ids)


@dataclasses.dataclass
class Interactions:
    """Columnar interactions: ``user[i]`` is a code into ``user_ids``, and so on.

    Shapes: ``user``, ``item``, ``rating``, ``timestamp`` are all ``[num_rows]``.
    """

    user: np.ndarray  # int32
    item: np.ndarray  # int32
    rating: np.ndarray  # float32
    timestamp: np.ndarray  # int64, unix seconds
    user_ids: List[str]
    item_ids: List[str]

    def __post_init__(self) -> None:
        n = len(self.user)
        for name in ("item", "rating", "timestamp"):
            if len(getattr(self, name)) != n:
                raise ValueError(
                    f"got {n} user rows and {len(getattr(self, name))} {name} rows")

    def __len__(self) -> int:
        return len(self.user)

    def take(self, index: np.ndarray) -> "Interactions":
        return Interactions(self.user[index], self.item[index], self.rating[index],
                            self.timestamp[index], self.user_ids, self.item_ids)


class ColumnBuffer:
    """Appends parsed rows in chunks, so memory stays at the final numpy size."""

    _CHUNK = 65536

    def __init__(self) -> None:
        self._chunks: Dict[str, List[np.ndarray]] = {k: [] for k in _DTYPES}
        self._rows: Dict[str, list] = {k: [] for k in _DTYPES}

    def append(self, user: int, item: int, rating: float, timestamp: int) -> None:
        rows = self._rows
        rows["user"].append(user)
        rows["item"].append(item)
        rows["rating"].append(rating)
        rows["timestamp"].append(timestamp)
        if len(rows["user"]) >= self._CHUNK:
            self._flush()

    def _flush(self) -> None:
        for k, dtype in _DTYPES.items():
            if self._rows[k]:
                self._chunks[k].append(np.asarray(self._rows[k], dtype=dtype))
                self._rows[k] = []

    def finish(self, users: IdCodes, items: IdCodes) -> Interactions:
        self._flush()
        cols = {k: (np.concatenate(v) if v else np.zeros(0, _DTYPES[k]))
                for k, v in self._chunks.items()}
        return Interactions(cols["user"], cols["item"], cols["rating"], cols["timestamp"],
                            users.ids, items.ids)


_DTYPES = {"user": np.int32, "item": np.int32, "rating": np.float32, "timestamp": np.int64}


@dataclasses.dataclass
class Dataset:
    """A data set as read from its original layout."""

    name: str
    interactions: Interactions
    users: Dict[str, UserFeatures]
    items: Dict[str, ItemFeatures]

    def user_feature_rows(self) -> Sequence[UserFeatures]:
        """User features in code order; users missing from the feature file get defaults."""
        default = UserFeatures()
        return [self.users.get(u, default) for u in self.interactions.user_ids]

    def item_feature_rows(self) -> Sequence[ItemFeatures]:
        default = ItemFeatures()
        return [self.items.get(i, default) for i in self.interactions.item_ids]


def missing_feature_count(ids: Sequence[str], table: Dict[str, object]) -> Optional[int]:
    """How many IDs have no feature row, or None when the format has no feature file."""
    if not table:
        return None
    return sum(1 for i in ids if i not in table)
