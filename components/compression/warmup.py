"""Warm-up requests that TensorFlow Serving replays before it serves a new version."""
from __future__ import annotations

import os
from typing import Sequence

import tensorflow as tf
from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
COLD_START_USER = "__warmup_unknown_user__"


def warmup_requests(model_name: str, user_ids: Sequence) -> list:
    """One ``serving_default`` Predict per batch size 1 and len(user_ids)+1, cold start included."""
    ids = [u.decode() if isinstance(u, bytes) else str(u) for u in user_ids] + [COLD_START_USER]
    logs = []
    for batch in (ids[:1], ids):
        request = predict_pb2.PredictRequest(
            model_spec=model_pb2.ModelSpec(name=model_name, signature_name="serving_default"))
        request.inputs["user_id"].CopyFrom(tf.make_tensor_proto(batch, dtype=tf.string))
        logs.append(prediction_log_pb2.PredictionLog(
            predict_log=prediction_log_pb2.PredictLog(request=request)))
    return logs


def write_warmup_requests(export_dir: str, model_name: str, user_ids: Sequence) -> str:
    path = os.path.join(export_dir, WARMUP_FILE)
    tf.io.gfile.makedirs(os.path.dirname(path))
    with tf.io.TFRecordWriter(path) as writer:
        for log in warmup_requests(model_name, user_ids):
            writer.write(log.SerializeToString())
    return path
