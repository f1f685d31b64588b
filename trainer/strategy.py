"""Picks the distribution strategy from the hardware and ``TF_CONFIG``."""
from __future__ import annotations

import json
import os
from typing import Optional, Tuple

import tensorflow as tf


def cluster_spec(tf_config: Optional[str] = None) -> Tuple[int, str, int]:
    """``(number of workers incl. chief, task type, task index)`` from ``TF_CONFIG``."""
    cfg = json.loads(tf_config if tf_config is not None else os.environ.get("TF_CONFIG", "{}")
                     or "{}")
    cluster = cfg.get("cluster", {})
    workers = len(cluster.get("chief", [])) + len(cluster.get("worker", []))
    task = cfg.get("task", {})
    return workers, task.get("type", "chief"), int(task.get("index", 0))


def is_chief(tf_config: Optional[str] = None) -> bool:
    """Only the chief writes the model; a lone process is its own chief."""
    workers, task_type, index = cluster_spec(tf_config)
    if workers <= 1:
        return True
    has_chief_entry = "chief" in json.loads(
        tf_config or os.environ.get("TF_CONFIG", "{}") or "{}").get("cluster", {})
    return task_type == "chief" or (not has_chief_entry and task_type == "worker"
                                    and index == 0)


def choose_strategy() -> tf.distribute.Strategy:
    """MultiWorkerMirrored when TF_CONFIG names several workers, Mirrored on several
    GPUs, OneDevice otherwise; mixed precision whenever a GPU is used."""
    workers, _, _ = cluster_spec()
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        tf.keras.mixed_precision.set_global_policy("mixed_float16")
    if workers > 1:
        return tf.distribute.MultiWorkerMirroredStrategy()
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.OneDeviceStrategy("/gpu:0" if gpus else "/cpu:0")


def strategy_name(strategy: tf.distribute.Strategy) -> str:
    """Public name (MultiWorkerMirroredStrategy's class is CollectiveAllReduceStrategy)."""
    for name in ("MultiWorkerMirroredStrategy", "MirroredStrategy", "OneDeviceStrategy"):
        if isinstance(strategy, getattr(tf.distribute, name)):
            return name
    return type(strategy).__name__
