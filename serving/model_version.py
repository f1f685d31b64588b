"""One loaded SavedModel version: its signatures, Predict and the warm-up replay.

Requests are checked the way TensorFlow Serving checks them
(``tensorflow_serving/servables/tensorflow/predict_util.cc``): an unknown signature
is ``FAILED_PRECONDITION``; missing or extra inputs, a wrong dtype or shape and an
unknown ``output_filter`` alias are ``INVALID_ARGUMENT``.
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Dict, List, Mapping, Optional, Sequence

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

from serving.batching import BatchScheduler
from serving.errors import RequestError, failed_precondition, invalid
from serving.tensors import to_ndarray, to_tensor_proto

DEFAULT_SIGNATURE = "serving_default"
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
# TensorFlow Serving reads at most this many warm-up records (saved_model_warmup_util.cc).
MAX_WARMUP_RECORDS = 1000


def _dtype_name(enum_value: int) -> str:
    return types_pb2.DataType.Name(enum_value)


def _shape_of(info: meta_graph_pb2.TensorInfo):
    """Dims of a signature tensor (-1 unknown), or None when its rank is unknown."""
    if info.tensor_shape.unknown_rank:
        return None
    return [d.size for d in info.tensor_shape.dim]


def read_signature_defs(export_dir: str) -> Dict[str, meta_graph_pb2.SignatureDef]:
    """The ``serve`` MetaGraph's SignatureDefs, as stored in ``saved_model.pb``."""
    saved_model = saved_model_pb2.SavedModel()
    with open(os.path.join(export_dir, "saved_model.pb"), "rb") as f:
        saved_model.ParseFromString(f.read())
    for meta_graph in saved_model.meta_graphs:
        if "serve" in meta_graph.meta_info_def.tags:
            return dict(meta_graph.signature_def)
    raise ValueError(f"{export_dir}: no MetaGraph tagged 'serve'")


@dataclasses.dataclass(frozen=True)
class LoadedVersion:
    """A SavedModel loaded with ``tf.saved_model.load``, ready to answer Predict."""

    version: int
    path: str
    model: object  # keeps the loaded object (and its variables) alive
    functions: Mapping[str, object]  # signature name -> concrete function
    signature_defs: Mapping[str, meta_graph_pb2.SignatureDef]

    @classmethod
    def load(cls, version: int, path: str) -> "LoadedVersion":
        model = tf.saved_model.load(path, tags=["serve"])
        return cls(version=version, path=path, model=model,
                   functions=dict(model.signatures),
                   signature_defs=read_signature_defs(path))

    def predict(self, request: predict_pb2.PredictRequest, model_name: str,
                batcher: Optional[BatchScheduler] = None,
                deadline: Optional[float] = None) -> predict_pb2.PredictResponse:
        """Checks and answers ``request``; with ``batcher``, in a batch with the
        concurrent requests for the same signature and outputs of this version."""
        name = request.model_spec.signature_name or DEFAULT_SIGNATURE
        signature = self.signature_defs.get(name)
        if signature is None or name not in self.functions:
            raise failed_precondition(f'Serving signature key "{name}" not found.')
        inputs = self._inputs(name, signature, request)
        aliases = tuple(self._output_aliases(signature, request))

        def run(arrays: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
            return self._run(name, signature, aliases, arrays)

        if batcher is None:
            outputs = run(inputs)
        else:
            outputs = batcher.run(self, (name, aliases), run, inputs, deadline)
        response = predict_pb2.PredictResponse()
        response.model_spec.name = model_name
        response.model_spec.signature_name = name
        response.model_spec.version.value = self.version
        for alias in aliases:
            response.outputs[alias].CopyFrom(to_tensor_proto(outputs[alias]))
        return response

    def _run(self, name: str, signature: meta_graph_pb2.SignatureDef, aliases: Sequence[str],
             arrays: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """The signature's ``aliases`` outputs for ``arrays`` (NumPy in, NumPy out)."""
        tensors = {key: tf.constant(value, dtype=tf.as_dtype(signature.inputs[key].dtype))
                   for key, value in arrays.items()}
        try:
            outputs = self.functions[name](**tensors)
        except tf.errors.OpError as e:
            # e.g. a malformed tf.Example in serve_tf_examples: TF's own status code.
            raise RequestError(_grpc_code(e), f"{type(e).__name__}: {e.message}") from e
        return {alias: outputs[alias].numpy() for alias in aliases}

    @staticmethod
    def _inputs(name: str, signature: meta_graph_pb2.SignatureDef,
                request: predict_pb2.PredictRequest) -> Dict[str, np.ndarray]:
        sent, expected = set(request.inputs), set(signature.inputs)
        if sent != expected:
            raise invalid(
                f"input size does not match signature '{name}': sent "
                f"{{{','.join(sorted(sent))}}}, expected {{{','.join(sorted(expected))}}}. "
                f"Sent extra: {{{','.join(sorted(sent - expected))}}}. "
                f"Missing but required: {{{','.join(sorted(expected - sent))}}}.")
        tensors = {}
        for key, info in signature.inputs.items():
            proto = request.inputs[key]
            if proto.dtype != info.dtype:
                raise invalid(f"input '{key}' of signature '{name}' must be "
                              f"{_dtype_name(info.dtype)}, got {_dtype_name(proto.dtype)}")
            try:
                array = to_ndarray(proto)
            except (ValueError, TypeError, IndexError) as e:
                raise invalid(f"input '{key}': malformed TensorProto: {e}") from e
            expected_shape = _shape_of(info)
            if expected_shape is not None and (
                    len(expected_shape) != array.ndim or
                    any(want not in (-1, got) for want, got in zip(expected_shape, array.shape))):
                shown = ["None" if d == -1 else str(d) for d in expected_shape]
                raise invalid(f"input '{key}' of signature '{name}' must have shape "
                              f"[{', '.join(shown)}], got {list(array.shape)}")
            tensors[key] = array
        return tensors

    @staticmethod
    def _output_aliases(signature: meta_graph_pb2.SignatureDef,
                        request: predict_pb2.PredictRequest) -> List[str]:
        if not request.output_filter:
            return sorted(signature.outputs)
        seen: List[str] = []
        for alias in request.output_filter:
            if alias not in signature.outputs:
                raise invalid(f"output tensor alias not found in signature: {alias} "
                              f"Outputs expected to be in the set "
                              f"{{{','.join(sorted(signature.outputs))}}}.")
            if alias in seen:
                raise invalid(f"duplicate output tensor alias: {alias}")
            seen.append(alias)
        return seen

    def warm_up(self, model_name: str) -> int:
        """Replays ``assets.extra/tf_serving_warmup_requests``; returns how many ran.

        Like TensorFlow Serving, a failing warm-up request fails the load.
        """
        path = os.path.join(self.path, WARMUP_FILE)
        if not os.path.exists(path):
            return 0
        count = 0
        for record in tf.data.TFRecordDataset(path).take(MAX_WARMUP_RECORDS):
            log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
            if log.WhichOneof("log_type") != "predict_log":
                continue  # only Predict is served here
            try:
                self.predict(log.predict_log.request, model_name)
            except RequestError as e:
                raise ValueError(f"warm-up request {count + 1} failed: {e.message}") from e
            count += 1
        return count


def _grpc_code(error: tf.errors.OpError) -> grpc.StatusCode:
    # TensorFlow's error codes are gRPC's numbering (tensorflow/core/protobuf/error_codes.proto).
    for code in grpc.StatusCode:
        if code.value[0] == error.error_code:
            return code
    return grpc.StatusCode.INTERNAL


def timed_load(version: int, path: str, model_name: str) -> tuple:
    """``(LoadedVersion, warm-up request count, seconds)``."""
    start = time.perf_counter()
    loaded = LoadedVersion.load(version, path)
    warmed = loaded.warm_up(model_name)
    return loaded, warmed, time.perf_counter() - start
