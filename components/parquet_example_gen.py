"""ExampleGen executor for the prepared Parquet files.

TFX's stock ``parquet_executor`` converts rows in Python with ``dict_to_example``,
which turns every falsy value (a rating of 0, an hour of 0) into an empty feature.
This executor reads record batches and encodes them with tfx_bsl's C++
``RecordBatchToExamples``, which keeps zeros and is several times faster. That encoder
takes only list columns of int64, float32 or binary values, so scalar columns are
wrapped into one-element lists first (a null stays a missing feature).

It also writes each split without the ``Reshuffle`` that TFX's ``WriteSplit`` puts
before the write: the prepared rows are already in a fixed random order
(``ingest/prepare.py``), and on the DirectRunner that shuffle holds the whole split
in memory (about 1.3 GB per million rows, measured by ``bench/scale.py``).
"""
import os
from typing import Any, Dict, List

import apache_beam as beam
import numpy as np
import pyarrow as pa
from tfx import types
from tfx.components.example_gen import utils, write_split
from tfx.components.example_gen.base_example_gen_executor import BaseExampleGenExecutor
from tfx.components.util import examples_utils
from tfx.proto import example_gen_pb2
from tfx.types import artifact_utils, standard_component_specs
from tfx.utils import proto_utils
from tfx_bsl.coders import example_coder


def _value_type(t: pa.DataType) -> pa.DataType:
    if pa.types.is_integer(t) or pa.types.is_boolean(t):
        return pa.int64()
    if pa.types.is_floating(t):
        return pa.float32()
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t):
        return pa.binary()
    raise TypeError(f"unsupported Parquet column type {t}")


def to_list_columns(batch: pa.RecordBatch) -> pa.RecordBatch:
    """Casts every column to ``list<int64|float32|binary>``, the encoder's input."""
    columns = []
    for col in batch.columns:
        if pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
            columns.append(col.cast(pa.list_(_value_type(col.type.value_type))))
            continue
        valid = np.asarray(col.is_valid(), dtype=bool)
        offsets = np.concatenate([[0], np.cumsum(valid)]).astype(np.int32)
        mask = np.concatenate([~valid, [False]])
        columns.append(pa.ListArray.from_arrays(
            pa.array(offsets, mask=mask), col.drop_null().cast(_value_type(col.type))))
    return pa.RecordBatch.from_arrays(columns, batch.schema.names)


def _encode_table(table: pa.Table) -> List[bytes]:
    """``ReadFromParquetBatched`` yields Tables; the encoder takes RecordBatches."""
    return [example for batch in table.to_batches()
            for example in example_coder.RecordBatchToExamples(to_list_columns(batch))]


@beam.ptransform_fn
@beam.typehints.with_input_types(beam.Pipeline)
@beam.typehints.with_output_types(bytes)
def _ParquetToSerializedExamples(pipeline: beam.Pipeline, exec_properties: Dict[str, Any],
                                 split_pattern: str) -> beam.pvalue.PCollection:
    pattern = os.path.join(exec_properties[standard_component_specs.INPUT_BASE_KEY],
                           split_pattern)
    return (pipeline
            | "ReadParquetBatches" >> beam.io.ReadFromParquetBatched(pattern)
            | "EncodeExamples" >> beam.FlatMap(_encode_table))


class Executor(BaseExampleGenExecutor):
    """Reads ``input_base/<split pattern>`` Parquet files into serialized tf.Examples."""

    def GetInputSourceToExamplePTransform(self) -> beam.PTransform:
        return _ParquetToSerializedExamples

    def Do(self, input_dict: Dict[str, List[types.Artifact]],
           output_dict: Dict[str, List[types.Artifact]], exec_properties: Dict[str, Any]) -> None:
        """``BaseExampleGenExecutor.Do`` with an unshuffled write (gzip TFRecord of
        serialized tf.Examples, the same files and artifact properties)."""
        keys = standard_component_specs
        input_config = proto_utils.json_to_proto(exec_properties[keys.INPUT_CONFIG_KEY],
                                                 example_gen_pb2.Input())
        output_config = proto_utils.json_to_proto(exec_properties[keys.OUTPUT_CONFIG_KEY],
                                                   example_gen_pb2.Output())
        artifacts = output_dict[keys.EXAMPLES_KEY]
        examples = artifact_utils.get_single_instance(artifacts)
        examples.split_names = artifact_utils.encode_split_names(
            utils.generate_output_split_names(input_config, output_config))
        with self._make_beam_pipeline() as pipeline:
            for split, records in self.GenerateExamplesByBeam(pipeline, exec_properties).items():
                path = os.path.join(artifact_utils.get_split_uri(artifacts, split),
                                    write_split.DEFAULT_FILE_NAME)
                _ = records | f"WriteSplit[{split}]" >> beam.io.WriteToTFRecord(
                    path, file_name_suffix=".gz")
        payload = exec_properties.get(keys.OUTPUT_DATA_FORMAT_KEY)
        if payload:
            examples_utils.set_payload_format(examples, payload)
        file_format = exec_properties.get(keys.OUTPUT_FILE_FORMAT_KEY)
        if file_format:
            examples_utils.set_file_format(examples,
                                           write_split.to_file_format_str(file_format))
