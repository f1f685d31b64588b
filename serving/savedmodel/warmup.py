"""Warm-up requests that TensorFlow Serving replays before it serves a new version.

TensorFlow Serving runs them against the version being loaded (the model name in
the request is not checked), so the signatures' graphs and the int8 index's float
cache are ready before the first user request.
"""
from __future__ import annotations

import os
from typing import Sequence

import tensorflow as tf
from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
COLD_START_USER = "__warmup_unknown_user__"
MODEL_NAME = "recommender"


def _text(values: Sequence) -> list:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


def _log(model_name: str, signature: str, **inputs) -> prediction_log_pb2.PredictionLog:
    request = predict_pb2.PredictRequest(
        model_spec=model_pb2.ModelSpec(name=model_name, signature_name=signature))
    for name, value in inputs.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(value, dtype=tf.string))
    return prediction_log_pb2.PredictionLog(
        predict_log=prediction_log_pb2.PredictLog(request=request))


def warmup_requests(model_name: str, user_ids: Sequence,
                    item_ids: Sequence = (), exact: bool = False) -> list:
    """``serving_default`` at batch sizes 1 and ``len(user_ids) + 1`` (cold start
    included); with ``item_ids``, ``recommend_from_history`` for a known and a new
    user; with ``exact``, ``recommend_exact`` for one user."""
    ids = _text(user_ids) + [COLD_START_USER]
    logs = [_log(model_name, "serving_default", user_id=batch) for batch in (ids[:1], ids)]
    if exact:
        logs.append(_log(model_name, "recommend_exact", user_id=ids[:1]))
    items = _text(item_ids)
    if items:
        logs.append(_log(model_name, "recommend_from_history", user_id=[ids[0], ids[-1]],
                         history_item_ids=[[""] + items, [""] + items]))
    return logs


def write_warmup_requests(export_dir: str, model_name: str, user_ids: Sequence,
                          item_ids: Sequence = (), exact: bool = False) -> str:
    path = os.path.join(export_dir, WARMUP_FILE)
    tf.io.gfile.makedirs(os.path.dirname(path))
    with tf.io.TFRecordWriter(path) as writer:
        for log in warmup_requests(model_name, user_ids, item_ids, exact):
            writer.write(log.SerializeToString())
    return path
