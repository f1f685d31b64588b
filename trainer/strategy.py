"""Picks the distribution strategy from the hardware and ``TF_CONFIG``."""
from __future__ import annotations

import contextlib
import json
import os
from typing import Iterator, Optional, Sequence, Tuple

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


def choose_strategy(gpus: Optional[Sequence] = None) -> tf.distribute.Strategy:
    """MultiWorkerMirrored when TF_CONFIG names several workers, Mirrored on several
    GPUs, OneDevice otherwise. ``gpus``: the visible GPUs (default: TensorFlow's list)."""
    workers, _, _ = cluster_spec()
    gpus = tf.config.list_physical_devices("GPU") if gpus is None else list(gpus)
    if workers > 1:
        return tf.distribute.MultiWorkerMirroredStrategy()
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.OneDeviceStrategy("/gpu:0" if gpus else "/cpu:0")


@contextlib.contextmanager
def training_strategy(gpus: Optional[Sequence] = None) -> Iterator[tf.distribute.Strategy]:
    """:func:`choose_strategy`, with ``mixed_float16`` as Keras's global policy while
    the block runs when a GPU is visible.

    The policy is process-wide: the earlier policy comes back when the block ends,
    error or not, so work after the Trainer in the same process (the compressor in a
    local run) does not build its layers in float16.
    """
    gpus = tf.config.list_physical_devices("GPU") if gpus is None else list(gpus)
    previous = tf.keras.mixed_precision.global_policy()
    try:
        if gpus:
            tf.keras.mixed_precision.set_global_policy("mixed_float16")
        yield choose_strategy(gpus)
    finally:
        tf.keras.mixed_precision.set_global_policy(previous)


def check_batch_size(batch_size: int, strategy: tf.distribute.Strategy) -> None:
    """A global batch must split evenly between the replicas: tf.distribute would
    otherwise hand them batches of different sizes."""
    replicas = strategy.num_replicas_in_sync
    if batch_size % replicas:
        raise ValueError(f"batch_size {batch_size} does not divide by the {replicas} "
                         f"replicas of {strategy_name(strategy)}")


def strategy_name(strategy: tf.distribute.Strategy) -> str:
    """Public name (MultiWorkerMirroredStrategy's class is CollectiveAllReduceStrategy)."""
    for name in ("MultiWorkerMirroredStrategy", "MirroredStrategy", "OneDeviceStrategy"):
        if isinstance(strategy, getattr(tf.distribute, name)):
            return name
    return type(strategy).__name__
