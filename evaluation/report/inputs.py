"""What the report shows, as read from one run (see ``collect``)."""
from __future__ import annotations

import dataclasses
from typing import Dict, List, Mapping, Optional

import numpy as np


@dataclasses.dataclass
class PopularityBias:
    """Train interaction counts of catalog items and of recommended items.

    ``catalog_counts``: ``[num_catalog_items]``; ``recommended_counts``: one entry per
    recommendation slot (``[users * k]``), the train count of the recommended item.
    """

    catalog_counts: np.ndarray
    recommended_counts: np.ndarray
    users: int
    k: int
    distinct_recommended: int


@dataclasses.dataclass
class ReportInputs:
    pipeline_root: str
    evaluation: dict  # the evaluator's metrics.json
    history: Optional[dict] = None  # the Trainer's training_history.json
    compression: Optional[dict] = None  # the compressor's compression.json
    component_seconds: Mapping[str, float] = dataclasses.field(default_factory=dict)
    component_peak_mb: Mapping[str, float] = dataclasses.field(default_factory=dict)
    extra_baselines: Dict[str, dict] = dataclasses.field(default_factory=dict)
    bias: Optional[PopularityBias] = None
    run_summary: Optional[dict] = None
    notes: List[str] = dataclasses.field(default_factory=list)


def method_metrics(inputs: ReportInputs) -> Dict[str, dict]:
    """``{method: metrics}`` for every method with recall@K figures, model first."""
    methods = {k: v for k, v in inputs.evaluation["metrics"].items() if v}
    methods.update(inputs.extra_baselines)
    return methods
