"""Where a run puts things: names and paths under the pipeline root and in artifacts.

Standard library only, so that any layer (the runner, the components, the report)
can learn a file name without importing the code that writes the file; the writers
take their names from here too.
How to read ML Metadata's records of a run is in ``layout.mlmd``.
"""
from __future__ import annotations

import glob
import hashlib
import os
from typing import List

PIPELINE_NAME = "twotower-recommender"  # also the prefix of ML Metadata's node contexts

# Directly under <pipeline-root>.
METADATA_FILE = "metadata.sqlite"
RUN_SUMMARY_FILE = "run_summary.json"
REPORT_FILE = "report.html"
PREPARED_DIR = "prepared"  # <pipeline-root>/prepared/<source>-<hash>/span-N/{train,eval}

# Inside a component's output artifact.
EVALUATION_METRICS_FILE = "metrics.json"  # RetrievalEvaluator: evaluation
COMPRESSION_REPORT_FILE = "compression.json"  # ModelCompressor: report
TRAINING_HISTORY_FILE = "training_history.json"  # Trainer: model_run
SERVING_MODEL_DIR = "Format-Serving"  # Trainer: model (TFX's name for the SavedModel)
# Inside a serving SavedModel: which candidate index it holds and its measured recall
# (TensorFlow Serving ignores assets.extra/).
INDEX_REPORT_FILE = os.path.join("assets.extra", "candidate_index.json")


def metadata_path(pipeline_root: str) -> str:
    """The SQLite ML Metadata store of the local runs under ``pipeline_root``."""
    return os.path.join(pipeline_root, METADATA_FILE)


def prepared_root(pipeline_root: str, data_dir: str) -> str:
    """One prepared-data folder per source directory, so spans of different sources never mix."""
    data_dir = os.path.abspath(data_dir)
    slug = hashlib.sha256(data_dir.encode()).hexdigest()[:8]
    return os.path.join(pipeline_root, PREPARED_DIR, f"{os.path.basename(data_dir)}-{slug}")


def prepared_span_dirs(pipeline_root: str, span: int) -> List[str]:
    """Every prepared ``span-<span>`` folder under ``pipeline_root``, of any source."""
    return sorted(glob.glob(os.path.join(pipeline_root, PREPARED_DIR, "*", f"span-{span}")))
