"""The Resolver strategy that hands the Trainer its warm-start ``base_model``."""
from __future__ import annotations

from typing import Dict, List, Optional

from tfx import types
from tfx.dsl.input_resolution.strategies.latest_artifact_strategy import LatestArtifactStrategy


class LatestOrNoneStrategy(LatestArtifactStrategy):
    """TFX's ``LatestArtifactStrategy``, except that no artifact yet is an empty result
    rather than an input-resolution error with a traceback on the console: the first
    run has nothing to warm-start from, and the Trainer says so itself."""

    def resolve_artifacts(self, store, input_dict: Dict[str, List[types.Artifact]]
                          ) -> Optional[Dict[str, List[types.Artifact]]]:
        return self._resolve(input_dict)
