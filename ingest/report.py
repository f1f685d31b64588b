"""Counting and reporting of input rows that were dropped, and fatal input errors."""
from __future__ import annotations

import collections
import dataclasses
import json
from typing import Dict, List


class InputDataError(ValueError):
    """The input cannot be read safely; the message names the file and line."""


@dataclasses.dataclass
class DropReport:
    """Rows read and rows dropped, by reason, with the first few examples of each.

    A row is dropped only for a reason that cannot change the meaning of the rest of
    the data (a duplicate, a non-numeric rating); structural problems raise instead.
    """

    max_bad_fraction: float = 0.01
    max_examples: int = 5
    rows_read: int = 0
    dropped: Dict[str, int] = dataclasses.field(default_factory=collections.Counter)
    examples: Dict[str, List[str]] = dataclasses.field(default_factory=dict)
    notes: List[str] = dataclasses.field(default_factory=list)

    def drop(self, reason: str, where: str, detail: str = "") -> None:
        self.dropped[reason] += 1
        ex = self.examples.setdefault(reason, [])
        if len(ex) < self.max_examples:
            ex.append(f"{where}: {detail}" if detail else where)

    @property
    def rows_dropped(self) -> int:
        return sum(self.dropped.values())

    def check_bad_fraction(self, path: str) -> None:
        """Raises when so many rows are malformed that the file is probably misread.

        Duplicates and blank lines do not count: they are well-formed, or carry nothing.
        """
        bad = self.rows_dropped - self.dropped.get("duplicate", 0) \
            - self.dropped.get("blank line", 0)
        if self.rows_read and bad > self.max_bad_fraction * self.rows_read:
            lines = "\n  ".join(e for ex in self.examples.values() for e in ex)
            raise InputDataError(
                f"{path}: {bad} of {self.rows_read} rows are malformed "
                f"(more than {self.max_bad_fraction:.0%}); first problems:\n  {lines}")

    def to_dict(self) -> dict:
        return {
            "rows_read": self.rows_read,
            "rows_dropped": self.rows_dropped,
            "dropped_by_reason": dict(self.dropped),
            "examples": self.examples,
            "notes": self.notes,
        }

    def summary(self) -> str:
        parts = [f"read {self.rows_read} rows"]
        if self.rows_dropped:
            reasons = ", ".join(f"{n} {r}" for r, n in sorted(self.dropped.items()))
            parts.append(f"dropped {self.rows_dropped} ({reasons})")
        else:
            parts.append("dropped none")
        return "; ".join(parts)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)
