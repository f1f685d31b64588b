"""The blessing gate of CONTRACTS.md, as plain functions over metric dicts."""
from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional


@dataclasses.dataclass(frozen=True)
class GateConfig:
    """Thresholds at ``k``.

    ``min_recall`` / ``min_coverage`` of ``None`` mean "twice what a content-free
    ranking reaches": a random ranking's expected recall@k is k / catalog, and one
    list shown to every user covers k / catalog of the catalog. Both scale to any
    data set, and a working model clears them by a wide margin.
    """

    k: int = 50
    min_recall: Optional[float] = None
    min_coverage: Optional[float] = None
    regression_tolerance: float = 0.05  # relative recall drop allowed vs the served model

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"gate k must be >= 1, got {self.k}")
        if not 0.0 <= self.regression_tolerance < 1.0:
            raise ValueError(f"regression_tolerance must be in [0, 1), got "
                             f"{self.regression_tolerance}")

    def floors(self, catalog_size: int) -> Dict[str, float]:
        content_free = min(1.0, 2.0 * self.k / max(1, catalog_size))
        return {"min_recall": content_free if self.min_recall is None else self.min_recall,
                "min_coverage": content_free if self.min_coverage is None
                else self.min_coverage}


@dataclasses.dataclass
class Check:
    name: str
    passed: bool
    value: float
    threshold: float
    message: str


def run_gate(cfg: GateConfig, model: Dict[str, float], popularity: Dict[str, float],
             baseline: Optional[Dict[str, float]], catalog_size: int) -> List[Check]:
    """Every condition, passed or not, with a sentence that says by how much."""
    k = cfg.k
    recall, coverage = model[f"recall@{k}"], model[f"coverage@{k}"]
    floors = cfg.floors(catalog_size)
    checks = [
        Check("recall_floor", recall >= floors["min_recall"], recall, floors["min_recall"],
              f"recall@{k} {recall:.4f} vs floor {floors['min_recall']:.4f} "
              f"({recall - floors['min_recall']:+.4f})"),
        Check("coverage_floor", coverage >= floors["min_coverage"], coverage,
              floors["min_coverage"],
              f"coverage@{k} {coverage:.4f} vs floor {floors['min_coverage']:.4f} "
              f"({coverage - floors['min_coverage']:+.4f})"),
    ]
    pop = popularity[f"recall@{k}"]
    checks.append(Check("beats_popularity", recall > pop, recall, pop,
                        f"recall@{k} {recall:.4f} vs popularity {pop:.4f} "
                        f"({recall - pop:+.4f})"))
    if baseline is None:
        checks.append(Check("no_regression", True, recall, 0.0,
                            "no model served yet: nothing to regress against"))
    else:
        base = baseline[f"recall@{k}"]
        need = base * (1.0 - cfg.regression_tolerance)
        drop = (base - recall) / base if base else 0.0
        checks.append(Check("no_regression", recall >= need, recall, need,
                            f"recall@{k} {recall:.4f} vs served {base:.4f} "
                            f"(relative change {-drop:+.2%}, tolerance "
                            f"-{cfg.regression_tolerance:.0%})"))
    return checks
