"""TensorFlow Serving's ``BatchingParameters``: the file ``--batching_parameters_file`` reads.

No PyPI package ships the message (``tensorflow-serving-api`` and
``tensorflow-protobuf`` lack ``session_bundle_config.proto``), so its descriptor is
built here field for field from TF Serving 2.16.1's
``tensorflow_serving/servables/tensorflow/session_bundle_config.proto``.
``text_format`` then rejects any field name or type the real server would reject,
and the local server reads the very file the manifests give the real one.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Optional, Tuple

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format
from google.protobuf import wrappers_pb2

_T = descriptor_pb2.FieldDescriptorProto
# name, number, label, type, message type (message BatchingParameters, TF Serving 2.16.1)
BATCHING_PARAMETERS_FIELDS = [
    ("max_batch_size", 1, _T.LABEL_OPTIONAL, _T.TYPE_MESSAGE, ".google.protobuf.Int64Value"),
    ("batch_timeout_micros", 2, _T.LABEL_OPTIONAL, _T.TYPE_MESSAGE, ".google.protobuf.Int64Value"),
    ("max_enqueued_batches", 3, _T.LABEL_OPTIONAL, _T.TYPE_MESSAGE, ".google.protobuf.Int64Value"),
    ("num_batch_threads", 4, _T.LABEL_OPTIONAL, _T.TYPE_MESSAGE, ".google.protobuf.Int64Value"),
    ("thread_pool_name", 5, _T.LABEL_OPTIONAL, _T.TYPE_MESSAGE, ".google.protobuf.StringValue"),
    ("allowed_batch_sizes", 6, _T.LABEL_REPEATED, _T.TYPE_INT64, None),
    ("pad_variable_length_inputs", 7, _T.LABEL_OPTIONAL, _T.TYPE_BOOL, None),
    ("enable_large_batch_splitting", 8, _T.LABEL_OPTIONAL, _T.TYPE_MESSAGE,
     ".google.protobuf.BoolValue"),
    ("max_execution_batch_size", 9, _T.LABEL_OPTIONAL, _T.TYPE_MESSAGE,
     ".google.protobuf.Int64Value"),
]


def mirrored_message_classes(messages) -> dict:
    """``{name: message class}`` for ``[(name, fields), ...]`` in package
    ``tensorflow.serving``, fields as in ``BATCHING_PARAMETERS_FIELDS``."""
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    file = descriptor_pb2.FileDescriptorProto(
        name="tensorflow_serving_mirror.proto", package="tensorflow.serving", syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"])
    for name, fields in messages:
        message = file.message_type.add(name=name)
        for field, number, label, kind, type_name in fields:
            message.field.add(name=field, number=number, label=label, type=kind,
                              **({"type_name": type_name} if type_name else {}))
    pool.Add(file)
    return {name: message_factory.GetMessageClass(
        pool.FindMessageTypeByName(f"tensorflow.serving.{name}")) for name, _ in messages}


BatchingParameters = mirrored_message_classes(
    [("BatchingParameters", BATCHING_PARAMETERS_FIELDS)])["BatchingParameters"]


@dataclasses.dataclass(frozen=True)
class BatchingOptions:
    """What the batching queues obey. Defaults are TF Serving's for an unset field
    (``SharedBatchScheduler::QueueOptions`` and ``Options``; ``num_batch_threads``:
    ``port::MaxParallelism()``, the number of cores)."""

    max_batch_size: int = 1000
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 10
    num_batch_threads: int = dataclasses.field(default_factory=lambda: os.cpu_count() or 1)
    allowed_batch_sizes: Tuple[int, ...] = ()
    pad_variable_length_inputs: bool = False

    def __post_init__(self) -> None:
        # TF Serving's start-up checks (bundle_factory_util.cc, batching_session.cc,
        # shared_batch_scheduler.h), with its messages where it has one.
        for name in ("max_batch_size", "max_enqueued_batches", "num_batch_threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.batch_timeout_micros < 0:
            raise ValueError(f"batch_timeout_micros must be >= 0, got "
                             f"{self.batch_timeout_micros}")
        sizes = list(self.allowed_batch_sizes)
        if any(b <= a for a, b in zip(sizes, sizes[1:])):
            raise ValueError("allowed_batch_sizes entries must be monotonically increasing")
        if sizes and sizes[-1] != self.max_batch_size:
            raise ValueError(f"Last entry in allowed_batch_sizes must match max_batch_size; "
                             f"last entry was {sizes[-1]}; expected {self.max_batch_size}")

    @property
    def batch_timeout_seconds(self) -> float:
        return self.batch_timeout_micros / 1e6

    def padded_size(self, size: int) -> int:
        """The smallest allowed batch size >= ``size`` (``size`` if none is set), as
        ``RoundToLowestAllowedBatchSize``."""
        return next((s for s in self.allowed_batch_sizes if s >= size), size)


def parse_batching_parameters(text: str) -> BatchingOptions:
    """``BatchingOptions`` from a text-format ``BatchingParameters``.

    Raises ``text_format.ParseError`` for a field or type the message lacks and
    ``ValueError`` for values TF Serving refuses, or that this stand-in does not
    implement (``enable_large_batch_splitting``).
    """
    p = text_format.Parse(text, BatchingParameters())
    if p.enable_large_batch_splitting.value:
        raise ValueError("enable_large_batch_splitting is not implemented by the local "
                         "server (requests larger than max_batch_size are refused, as "
                         "TF Serving does without it)")
    set_fields = {}
    for name in ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches",
                 "num_batch_threads"):
        if p.HasField(name):
            set_fields[name] = getattr(p, name).value
    return BatchingOptions(allowed_batch_sizes=tuple(p.allowed_batch_sizes),
                           pad_variable_length_inputs=p.pad_variable_length_inputs,
                           **set_fields)


def read_batching_parameters(path: Optional[str]) -> BatchingOptions:
    """The file's options; TF Serving's defaults when ``path`` is None (``--enable_batching``
    without ``--batching_parameters_file``)."""
    if path is None:
        return BatchingOptions()
    with open(path) as f:
        return parse_batching_parameters(f.read())
