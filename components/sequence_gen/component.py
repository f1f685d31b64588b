"""SequenceGen: per-user ordered histories for the history-aware model, on Beam.

Inputs: ExampleGen's raw ``examples`` (train and eval), Transform's
``transformed_examples`` and ``transform_graph``. Output: one ``Examples`` artifact,
``sequences``, whose splits are the Trainer's whole input:

======== ================================================================
split    one tf.Example per
======== ================================================================
train    training window: ``user_xf`` [1], ``items`` [N + 1] (``-1`` pads),
         their ``times`` [N + 1] (``0`` pads), its targets' ``newest_span``,
         ``newest_time`` and number ``targets``
eval     user with eval interactions: the newest N + 1 items of both splits
items    catalog item: ``item_id_xf``, genres, year bucket, ``count``
users    train user: ``user_id_xf``, demographic indices, ``count``
history  user (raw ID): ``history`` (newest N, both splits), ``exclude``,
         ``last_time``
======== ================================================================

``spans.json`` at the top of the artifact holds every span's row count and digest
(``sequences.spans_summary``). ``history`` covers every interaction ingested, so the served model knows the newest
behaviour even though the Trainer never trains on the eval split. Logic and formats:
``components/sequence_gen/sequences.py``.
"""
from __future__ import annotations

import os
from typing import Any, Dict, List

import apache_beam as beam
import pyarrow as pa
import tensorflow_transform as tft
from tfx import types
from tfx.dsl.components.base import base_beam_component, base_beam_executor, executor_spec
from tfx.components.util import examples_utils
from tfx.proto import example_gen_pb2
from tfx.types import artifact_utils, standard_artifacts
from tfx.types.component_spec import ChannelParameter, ExecutionParameter

from components.sequence_gen import sequences as S
from transform import features as F

TRAIN, EVAL, ITEMS, USERS, HISTORY = "train", "eval", "items", "users", "history"
SPLITS = (TRAIN, EVAL, ITEMS, USERS, HISTORY)
ITEM_FEATURES = tuple(F.transformed_name(f) for f in (F.ITEM_GENRES, F.ITEM_YEAR))
USER_FEATURES = tuple(F.transformed_name(f) for f in F.USER_FEATURES)


def split_pattern(uri: str, split: str) -> str:
    return os.path.join(uri, f"Split-{split}", "*")


class SequenceGenSpec(types.ComponentSpec):
    PARAMETERS = {
        "max_history": ExecutionParameter(type=int),
        "exclusion_cap": ExecutionParameter(type=int),
    }
    INPUTS = {
        "examples": ChannelParameter(type=standard_artifacts.Examples),
        "transformed_examples": ChannelParameter(type=standard_artifacts.Examples),
        "transform_graph": ChannelParameter(type=standard_artifacts.TransformGraph),
    }
    OUTPUTS = {"sequences": ChannelParameter(type=standard_artifacts.Examples)}


class Executor(base_beam_executor.BaseBeamExecutor):
    def Do(self, input_dict: Dict[str, List[types.Artifact]],
           output_dict: Dict[str, List[types.Artifact]], exec_properties: Dict[str, Any]) -> None:
        get = lambda d, k: artifact_utils.get_single_instance(d[k])  # noqa: E731
        raw, transformed = get(input_dict, "examples"), get(input_dict, "transformed_examples")
        graph = tft.TFTransformOutput(get(input_dict, "transform_graph").uri)
        out = get(output_dict, "sequences")
        n, cap = int(exec_properties["max_history"]), int(exec_properties["exclusion_cap"])
        if n < 1 or cap < 1:
            raise ValueError(f"max_history and exclusion_cap must be >= 1, got {n} and {cap}")
        out.split_names = artifact_utils.encode_split_names(list(SPLITS))
        examples_utils.set_payload_format(out, example_gen_pb2.PayloadFormat.FORMAT_TF_EXAMPLE)
        prefix = lambda split: os.path.join(out.uri, f"Split-{split}", "data")  # noqa: E731
        with self._make_beam_pipeline() as p:
            seqs = p | "UserSequences" >> S.BuildUserSequences(
                split_pattern(raw.uri, TRAIN), split_pattern(raw.uri, EVAL),
                graph.vocabulary_file_by_name(F.ITEM_VOCAB),
                graph.vocabulary_file_by_name(F.USER_VOCAB), n, cap)
            _ = seqs[TRAIN] | "Write[train]" >> S.WriteExamples(prefix(TRAIN),
                                                                S.TRAIN_WINDOW_TYPES)
            _ = seqs[EVAL] | "Write[eval]" >> S.WriteExamples(prefix(EVAL), S.WINDOW_TYPES)
            _ = seqs["spans"] | "Write[spans]" >> beam.Map(
                S.write_json, os.path.join(out.uri, S.SPANS_FILE))
            _ = seqs[HISTORY] | "Write[history]" >> S.WriteExamples(prefix(HISTORY),
                                                                    S.HISTORY_TYPES)
            pattern = split_pattern(transformed.uri, TRAIN)
            item_key, user_key = F.transformed_name(F.ITEM_ID), F.transformed_name(F.USER_ID)
            _ = (p | "Items" >> S.EntityTable(pattern, item_key, ITEM_FEATURES)
                 | "Write[items]" >> S.WriteExamples(prefix(ITEMS), {
                     item_key: pa.int64(), S.COUNT: pa.int64(),
                     ITEM_FEATURES[0]: pa.float32(), ITEM_FEATURES[1]: pa.int64()}))
            _ = (p | "Users" >> S.EntityTable(pattern, user_key, USER_FEATURES)
                 | "Write[users]" >> S.WriteExamples(prefix(USERS), {
                     user_key: pa.int64(), S.COUNT: pa.int64(),
                     **{f: pa.int64() for f in USER_FEATURES}}))


class SequenceGen(base_beam_component.BaseBeamComponent):
    """Builds training windows, catalog tables and the serving history table."""

    SPEC_CLASS = SequenceGenSpec
    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(Executor)

    def __init__(self, examples, transformed_examples, transform_graph,
                 max_history: int = 50, exclusion_cap: int = 1000):
        super().__init__(spec=SequenceGenSpec(
            examples=examples, transformed_examples=transformed_examples,
            transform_graph=transform_graph, max_history=max_history,
            exclusion_cap=exclusion_cap,
            sequences=types.Channel(type=standard_artifacts.Examples)))
