"""Writes the serving SavedModel: the one export path of the Trainer and the compressor.

Both hand over the trained Keras towers and history encoder; ``int8`` picks the
storage of the tower weights and the candidate index, and ``IndexConfig`` whether the
index is scored in full or partitioned (by catalog size). Everything else (signatures,
lookup and history tables, the Transform graph for tf.Example requests, warm-up
requests, the index report) is the same code.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from typing import Dict, Optional, Sequence

import numpy as np
import tensorflow as tf

from serving.savedmodel import ann_recall
from serving.savedmodel.ann_recall import shares
from serving.savedmodel.features import TransformQueryFeatures
from serving.savedmodel.history import UserHistory
from serving.savedmodel.index import FloatIndex, IndexConfig, Int8Index
from serving.savedmodel.ivf import PartitionedIndex
from serving.savedmodel.module import RetrievalModule
from serving.savedmodel.partition import partition_catalog
from serving.savedmodel.tower import ServingTower
from serving.savedmodel.warmup import MODEL_NAME, write_warmup_requests
from transform.features import CANDIDATE_FEATURES
from transform import features as F

WARMUP_USERS = 8
# Variables of the per-user state (history, exclusions, demographics) and the
# popularity fallback: data, the same in the float and the int8 model.
USER_STATE_VARIABLES = ("recent", "recent_indptr", "override", "override_indptr",
                        "user_features", "popularity", "popular_items", "popular_share",
                        "item_ids")
from layout import INDEX_REPORT_FILE  # noqa: E402  (the index's settings and recall)


class ServingEncoder(tf.Module):
    """The trained history encoder, its variables tracked without its Keras object (a
    saved Keras layer is traced call by call, which is slow and bloats the graph)."""

    def __init__(self, encoder) -> None:
        super().__init__(name="history_encoder")
        self.weights = list(encoder.weights)
        self._call = encoder.call  # a bound method: not tracked, its variables are

    def __call__(self, vectors: tf.Tensor, mask: tf.Tensor, training: bool = False):
        return self._call(vectors, mask, training=False)


def embed_catalog(candidate_tower, item_features: Dict[str, np.ndarray],
                  batch_size: int = 8192) -> np.ndarray:
    """``[num_items, d]`` candidate embeddings of every catalog item."""
    n = len(item_features[CANDIDATE_FEATURES[0]])
    out = []
    for lo in range(0, n, batch_size):
        batch = {k: v[lo:lo + batch_size] for k, v in item_features.items()}
        out.append(candidate_tower(batch, training=False).numpy())
    return np.concatenate(out) if out else np.zeros((0, 1), np.float32)


def build_index(embeddings: np.ndarray, int8: bool, config: IndexConfig = IndexConfig()):
    """``(index, report)``: the candidate index ``config`` calls for (partitioned from
    ``partitioned_min_items`` items on, else scored in full) and what it is."""
    n, start = len(embeddings), time.perf_counter()
    report = {"num_items": n, "storage": "int8" if int8 else "float32",
              "partitioned_min_items": config.partitioned_min_items}
    if n < config.partitioned_min_items:
        index = Int8Index(embeddings) if int8 else FloatIndex(embeddings)
        return index, {"kind": "brute_force", **report}
    partition = partition_catalog(embeddings, config.num_lists(n), seed=config.seed,
                                  slack=config.list_slack)
    index = PartitionedIndex(embeddings, partition, config.probes, int8=int8)
    return index, {"kind": "partitioned", **report, "lists": index.num_lists,
                   "lists_asked": config.num_lists(n), "list_size": index.list_size,
                   "probes": index.probes, "padding": round(partition.padding, 4),
                   "list_slack": config.list_slack, "seed": config.seed,
                   "build_seconds": round(time.perf_counter() - start, 1)}


def recall_against_exact(module: RetrievalModule, user_ids: Sequence,
                         batch_size: int = 32) -> Dict[str, float]:
    """Mean share of ``recommend_exact``'s items that ``serving_default`` also returns,
    over ``user_ids`` (each user's own exclusions apply to both)."""
    return ann_recall.recall_against_exact(module.serve, module.recommend_exact, user_ids,
                                           batch_size)


PROBE_START = 8  # the fewest lists the export tries; then twice as many each time


def choose_probes(module: RetrievalModule, user_ids: Sequence, target_recall: float,
                  max_probes: int, batch_size: int = 64) -> dict:
    """Sets ``module.index.probes`` to the fewest of 8, 16, 32, ... (at most
    ``max_probes`` and the number of lists) whose recall@k against the index's brute
    force reaches ``target_recall`` on ``user_ids`` (stored users, asked as
    ``serving_default`` asks). How far apart a query's true neighbours lie depends on
    the trained towers, not on the catalog size alone, so no fixed count fits every
    model: clustered synthetic vectors reach 0.99 at 128 probes of 4,096 lists, vectors
    shaped like a MovieLens model's 0.48. Must run before anything traces ``module``'s
    signatures (the probe count is read when they are traced)."""
    index, k = module.index, module.k
    start = time.perf_counter()
    asked = [module.stored_queries(tf.constant(list(user_ids[lo:lo + batch_size]), tf.string))
             for lo in range(0, len(user_ids), batch_size)]
    exact = [index.exact(q, e, k)[1].numpy() for q, e in asked]
    cap = max(1, min(max_probes, index.num_lists))
    probes, ladder = min(PROBE_START, cap), []
    while True:
        index.probes = probes
        search = tf.function(lambda q, e: index.search(q, e, k)[1], input_signature=[
            tf.TensorSpec([None, index.dim], tf.float32),
            tf.TensorSpec([None, None], tf.int64)])  # traced anew for each probe count
        found = [s for (q, e), want in zip(asked, exact)
                 for s in shares(search(q, e).numpy(), want)]
        recall = float(np.mean(found)) if found else 1.0
        ladder.append({"probes": probes, "recall": round(recall, 4)})
        if recall >= target_recall or probes >= cap:
            break
        probes = min(2 * probes, cap)
    if ladder[-1]["recall"] < target_recall:
        print(f"[export] WARNING: the partitioned index reaches recall@{k} "
              f"{ladder[-1]['recall']:.4f} at {probes} probes (ann_max_probes), below the "
              f"target {target_recall}; raise ann_max_probes or ann_lists", flush=True)
    return {"probes": index.probes, "target_recall": target_recall,
            "max_probes": max_probes, "probe_ladder": ladder,
            "probe_choice_queries": len(found),
            "reached_target_recall": ladder[-1]["recall"] >= target_recall,
            "probe_choice_seconds": round(time.perf_counter() - start, 1)}


def sample_users(history: UserHistory, count: int, seed: int) -> list:
    """Up to ``count`` stored users that have a history, in a fixed random order."""
    sizes = np.diff(history.recent_indptr)
    rows = np.flatnonzero(sizes > 0)
    rows = np.random.default_rng(seed).permutation(rows)[:count]
    return [history.user_ids[r] for r in np.sort(rows)]


def save_serving_module(module: RetrievalModule, export_dir: str, index_report: dict,
                        recall_users: Sequence, warmup_users: Sequence,
                        warmup_items: Sequence, model_name: str = MODEL_NAME,
                        choice_users: Sequence = (), target_recall: float = 0.0,
                        max_probes: int = 0) -> dict:
    """Saves ``module`` with its warm-up requests and ``INDEX_REPORT_FILE``. A
    partitioned index first gets its probe count (``choose_probes`` on
    ``choice_users``, when ``target_recall`` > 0), then is measured against brute
    force on ``recall_users``, other users than those it was chosen on (in memory,
    before the save: no second copy of the index is loaded)."""
    report = dict(index_report)
    if report["kind"] == "partitioned":
        if target_recall > 0 and len(choice_users):
            report.update(choose_probes(module, choice_users, target_recall, max_probes))
        start = time.perf_counter()
        report.update(recall_against_exact(module, recall_users))
        report["recall_seconds"] = round(time.perf_counter() - start, 1)
        report["recall_query_source"] = "serving_default vs recommend_exact, stored users"
        recall = report["recall_vs_exact"]
        print(f"[export] partitioned index: {report['lists']:,} lists of "
              f"{report['list_size']}, {report['probes']} probed; recall@{report['k']} "
              f"against brute force {'n/a' if recall is None else f'{recall:.4f}'} on "
              f"{report['recall_queries']} stored users", flush=True)
    tf.saved_model.save(module, export_dir, signatures=module.signatures())
    write_warmup_requests(export_dir, model_name, warmup_users, warmup_items, exact=True)
    path = os.path.join(export_dir, INDEX_REPORT_FILE)
    tf.io.gfile.makedirs(os.path.dirname(path))
    with tf.io.gfile.GFile(path, "w") as f:
        json.dump(report, f, indent=2, sort_keys=True)
    return report


def read_index_report(version_dir: str) -> Optional[dict]:
    """``INDEX_REPORT_FILE`` of a SavedModel (None for models from before it): the
    hook for run_summary.json and the report."""
    path = os.path.join(version_dir, INDEX_REPORT_FILE)
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)


def export_serving_model(export_dir: str, query_tower, candidate_tower, encoder, tft_output,
                         item_features: Dict[str, np.ndarray], user_features: np.ndarray,
                         item_counts: np.ndarray, history: UserHistory, top_k: int,
                         max_history: int, int8: bool = False,
                         model_name: str = MODEL_NAME,
                         index_config: IndexConfig = IndexConfig()) -> dict:
    """Saves the SavedModel of CONTRACTS.md "Served model" and its warm-up requests;
    returns the index report (``INDEX_REPORT_FILE``).

    ``item_features``: candidate-tower inputs of every catalog item, in vocabulary
    order; ``user_features``: ``[num_users + 1, 3]`` demographic indices, the last row
    the unknown user's; ``item_counts``: train interactions per item (cold start).
    """
    index, report = build_index(embed_catalog(candidate_tower, item_features), int8,
                                index_config)
    popular = np.argsort(-np.asarray(item_counts), kind="stable")[:3]
    items: Sequence[bytes] = tft_output.vocabulary_by_name(F.ITEM_VOCAB)
    # The history table's asset file lives until the save has copied it into assets/.
    with tempfile.TemporaryDirectory(prefix="savedmodel_assets_") as assets:
        module = RetrievalModule(
            ServingTower(query_tower, int8=int8), ServingEncoder(encoder), index,
            tft_output.vocabulary_file_by_name(F.ITEM_VOCAB),
            tft_output.vocabulary_file_by_name(F.USER_VOCAB), user_features, item_counts,
            history, TransformQueryFeatures(tft_output.transform_features_layer()),
            tft_output.raw_feature_spec(), top_k, max_history, asset_dir=assets)
        # Half the sampled users choose the probe count, the other half measure it.
        users = sample_users(history, 2 * index_config.recall_queries, index_config.seed)
        return save_serving_module(
            module, export_dir, report, users[1::2],
            tft_output.vocabulary_by_name(F.USER_VOCAB)[:WARMUP_USERS],
            [items[i] for i in popular], model_name, choice_users=users[0::2],
            target_recall=index_config.target_recall, max_probes=index_config.max_probes)


def weight_bytes(export_dir: str) -> int:
    """Bytes of the model's learned weights (towers, encoder, candidate index) as
    stored, leaving out ``USER_STATE_VARIABLES``."""
    reader = tf.train.load_checkpoint(os.path.join(export_dir, "variables", "variables"))
    shapes, dtypes = reader.get_variable_to_shape_map(), reader.get_variable_to_dtype_map()
    total = 0
    for name, shape in shapes.items():
        top = name.split("/")[0]
        if top in USER_STATE_VARIABLES or name == "_CHECKPOINTABLE_OBJECT_GRAPH":
            continue
        total += int(np.prod(shape, dtype=np.int64)) * dtypes[name].size
    return total
