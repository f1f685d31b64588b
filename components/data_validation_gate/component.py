"""Stops the pipeline when ExampleValidator found anomalies.

ExampleValidator records anomalies but lets the run go on; training on data that
broke the schema is exactly what it exists to prevent. This component fails the run
with a message that names each split, feature and problem.
"""
import os
from typing import List

from tensorflow_metadata.proto.v0 import anomalies_pb2
from tfx.dsl.component.experimental.annotations import InputArtifact
from tfx.dsl.component.experimental.decorators import component
from tfx.types import artifact_utils, standard_artifacts

SCHEMA_DIFF_FILE = "SchemaDiff.pb"


class DataAnomaliesError(RuntimeError):
    """The input data does not match the schema."""


def describe_anomalies(anomalies_uri: str, split_names: List[str]) -> List[str]:
    """One readable line per anomaly, e.g. ``split 'eval', feature 'rating': ...``."""
    problems = []
    for split in split_names:
        path = os.path.join(anomalies_uri, f"Split-{split}", SCHEMA_DIFF_FILE)
        anomalies = anomalies_pb2.Anomalies()
        with open(path, "rb") as f:
            anomalies.ParseFromString(f.read())
        for feature, info in sorted(anomalies.anomaly_info.items()):
            reasons = "; ".join(r.description or r.short_description for r in info.reason)
            problems.append(f"split '{split}', feature '{feature}': "
                            f"{reasons or info.description}")
        if anomalies.HasField("dataset_anomaly_info"):
            reasons = "; ".join(r.description or r.short_description
                                for r in anomalies.dataset_anomaly_info.reason)
            problems.append(f"split '{split}', whole data set: {reasons}")
    return problems


@component
def DataValidationGate(anomalies: InputArtifact[standard_artifacts.ExampleAnomalies]) -> None:
    """Raises :class:`DataAnomaliesError` if any split has an anomaly."""
    splits = artifact_utils.decode_split_names(anomalies.split_names)
    problems = describe_anomalies(anomalies.uri, splits)
    if problems:
        raise DataAnomaliesError(
            "Data validation failed; the run stops before Transform:\n  "
            + "\n  ".join(problems)
            + f"\n(anomalies: {anomalies.uri}; schema: ingest/schema.pbtxt)")
