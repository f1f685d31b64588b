"""A served model over a synthetic catalog of N items, built by the real export code.

The candidate index (``export.build_index``: partitioned or brute force, int8 or
float), ``RetrievalModule`` (signatures, item-ID maps, history and exclusion tables,
popularity cold start) and ``save_serving_module`` (recall against brute force, the
index report, warm-up) are the pushed model's. Only the towers are stand-ins: the
query is the normalised mean of the user's stored history (what the trained mean
encoder does before its MLP), so the index sees queries shaped like real ones.

Item vectors (``kind``): 100 genres, ``N / 500`` topics around them, items around
their topic, and users whose 20-item histories come from a few topics. Trained item
embeddings are clustered (items that the same users take sit together), and an index
over lists only works because of that; how clustered they are decides its recall:

* ``clustered`` (default): items at cosine ~0.85 to their topic, one to three topics
  per user;
* ``weak``: items at cosine ~0.4 to their topic, one to eight topics per user,
  calibrated on the model trained on MovieLens 100K: an index of 12-item lists finds
  0.80 / 0.90 / 0.96 of a query's top 10 with 3 / 6 / 12.5% of the lists probed, as
  on that model's item vectors (0.77 / 0.92 / 0.98 with history-mean queries, 0.66 /
  0.83 / 0.93 with its served queries; ``clustered``: 0.99 / 1.0 / 1.0);
* ``uniform``: items uniform on the sphere and histories of random items: no
  structure at all, the worst case.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from typing import Dict, Tuple

import numpy as np
import tensorflow as tf

from transform.features import HISTORY

DIM = 64
HISTORY_LENGTH = 20
GENRES = 100
ITEMS_PER_TOPIC = 500
# kind -> (item noise around its topic, most topics per user)
KINDS = {"clustered": (0.6, 3), "weak": (2.3, 8), "uniform": (None, 1)}


class HistoryMean(tf.Module):
    """The history encoder's stand-in: ``[b, T, d]`` vectors, ``[b, T]`` mask ->
    ``[b, 1, d]``, the mean of the valid vectors (the module reads the last position)."""

    def __call__(self, vectors, mask, training=False):
        weight = tf.cast(mask, tf.float32)[..., tf.newaxis]
        total = tf.reduce_sum(vectors * weight, axis=1, keepdims=True)
        return total / tf.maximum(tf.reduce_sum(weight, axis=1, keepdims=True), 1.0)


class HistoryQuery(tf.Module):
    """The query tower's stand-in: the encoded history, normalised."""

    def __call__(self, features, training=False):
        return tf.math.l2_normalize(features[HISTORY], axis=1)


def _unit(x: np.ndarray) -> np.ndarray:
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def synthetic_items(n: int, kind: str, rng: np.random.Generator
                    ) -> Tuple[np.ndarray, np.ndarray]:
    """``([n, DIM] float32 unit rows, [n] topic of each item (-1 for uniform))``."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {sorted(KINDS)}, got {kind!r}")
    if kind == "uniform":
        x = np.empty((n, DIM), np.float32)
        for lo in range(0, n, 1 << 20):
            x[lo:lo + (1 << 20)] = _unit(rng.standard_normal(
                (min(1 << 20, n - lo), DIM), dtype=np.float32))
        return x, np.full(n, -1, np.int32)
    genres = _unit(rng.standard_normal((GENRES, DIM), dtype=np.float32))
    topics = max(1, n // ITEMS_PER_TOPIC)
    centres = _unit(genres[rng.integers(0, GENRES, topics)] +
                    rng.standard_normal((topics, DIM), dtype=np.float32) / np.sqrt(DIM))
    topic = rng.integers(0, topics, n).astype(np.int32)
    x = np.empty((n, DIM), np.float32)
    for lo in range(0, n, 1 << 20):
        t = topic[lo:lo + (1 << 20)]
        x[lo:lo + len(t)] = _unit(centres[t] + KINDS[kind][0] * rng.standard_normal(
            (len(t), DIM), dtype=np.float32) / np.sqrt(DIM))
    return x, topic


def synthetic_histories(topic: np.ndarray, users: int, rng: np.random.Generator,
                        tastes: int = 3):
    """``users`` rows ``(user ID, history, exclusions)`` of HISTORY_LENGTH distinct items
    from one to ``tastes`` topics (random items if there are no topics)."""
    n = len(topic)
    if topic[0] < 0:
        members, starts = np.arange(n), np.zeros(1, np.int64)
        sizes = np.array([n])
    else:
        members = np.argsort(topic, kind="stable")
        sizes = np.bincount(topic)
        starts = np.concatenate([[0], np.cumsum(sizes)])[:-1]
    for u in range(users):
        liked = rng.integers(0, len(sizes), rng.integers(1, tastes + 1))
        picks = [members[starts[t] + rng.integers(0, sizes[t])]
                 for t in liked[rng.integers(0, len(liked), 3 * HISTORY_LENGTH)]]
        items = list(dict.fromkeys(int(i) for i in picks))[:HISTORY_LENGTH]
        yield f"u{u}".encode(), items, items[::-1]


def build_synthetic(num_items: int, work_dir: str, index: str = "auto",
                    kind: str = "clustered", num_users: int = 10_000, seed: int = 0,
                    lists: int = 0, probes: int = 128, recall_users: int = 256,
                    target_recall: float = 0.0, max_probes: int = 1024) -> str:
    """Saves (once) the model as ``work_dir/1`` and returns that directory.

    ``index``: ``auto`` (the export's choice by size, int8, as pushed), ``int8`` or
    ``float`` (brute force, the compressor's and the Trainer's small-catalog index).
    ``target_recall`` > 0: the probe count is chosen as the export chooses it
    (``export.choose_probes``, on other users than the recall is measured on).
    """
    from serving.savedmodel.export import build_index, sample_users, save_serving_module
    from serving.savedmodel.history import build_user_history
    from serving.savedmodel.index import IndexConfig
    from serving.savedmodel.module import RetrievalModule

    path = os.path.join(work_dir, "1")
    if os.path.exists(os.path.join(path, "saved_model.pb")):
        return path
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    vectors, topic = synthetic_items(num_items, kind, rng)
    history = build_user_history(synthetic_histories(topic, num_users, rng, KINDS[kind][1]),
                                 HISTORY_LENGTH, num_items)
    del topic
    config = IndexConfig(lists=lists, probes=probes, seed=seed, recall_queries=recall_users,
                         **({} if index == "auto" else {"partitioned_min_items": 2**62}))
    built, report = build_index(vectors, index != "float", config)
    del vectors
    counts = np.minimum(rng.zipf(1.3, num_items), 10**9)[rng.permutation(num_items)]
    with tempfile.TemporaryDirectory(prefix="synthetic_catalog_") as tmp:
        items, users = os.path.join(tmp, "items.txt"), os.path.join(tmp, "user_id_vocab.txt")
        with open(items, "w") as f:
            f.writelines(f"item{i}\n" for i in range(num_items))
        with open(users, "w") as f:
            f.writelines(f"u{u}\n" for u in range(num_users))
        module = RetrievalModule(
            HistoryQuery(), HistoryMean(), built, items, users,
            np.zeros((num_users + 1, 3), np.int8), counts, history, lambda raw: {},
            {"user_id": tf.io.FixedLenFeature([], tf.string)}, top_k=100,
            max_history=HISTORY_LENGTH, asset_dir=tmp)
        users = sample_users(history, 2 * recall_users, seed)
        report = save_serving_module(module, path + ".tmp", report, users[1::2],
                                     ["u0", "u1"], ["item0", "item1"],
                                     choice_users=users[0::2], target_recall=target_recall,
                                     max_probes=max_probes)
    settings: Dict = {"num_items": num_items, "index": index, "embeddings": kind,
                      "target_recall": target_recall,
                      "num_users": num_users, "seed": seed, "dim": DIM,
                      "history_length": HISTORY_LENGTH,
                      "build_seconds": round(time.perf_counter() - start, 1)}
    with open(os.path.join(path + ".tmp", "assets.extra", "synthetic.json"), "w") as f:
        json.dump(settings, f, indent=2)
    os.rename(path + ".tmp", path)
    print(f"[bench] built a {num_items:,}-item {kind} catalog ({report['kind']} index) in "
          f"{settings['build_seconds']:.0f} s: {path}", flush=True)
    return path
