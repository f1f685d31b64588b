"""Writes the serving SavedModel: the one export path of the Trainer and the compressor.

Both hand over the trained Keras towers and history encoder; ``int8`` picks the
storage of the tower weights and the candidate index. Everything else (signatures,
lookup and history tables, the Transform graph for tf.Example requests, warm-up
requests) is the same code.
"""
from __future__ import annotations

import os
import tempfile
from typing import Dict, Sequence

import numpy as np
import tensorflow as tf

from serving.savedmodel.features import TransformQueryFeatures
from serving.savedmodel.history import UserHistory
from serving.savedmodel.index import FloatIndex, Int8Index
from serving.savedmodel.module import RetrievalModule
from serving.savedmodel.tower import ServingTower
from serving.savedmodel.warmup import MODEL_NAME, write_warmup_requests
from transform.features import CANDIDATE_FEATURES
from transform import features as F

WARMUP_USERS = 8
# Variables of the per-user state (history, exclusions, demographics) and the
# popularity fallback: data, the same in the float and the int8 model.
USER_STATE_VARIABLES = ("recent", "recent_indptr", "override", "override_indptr",
                        "user_features", "popularity")


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


def export_serving_model(export_dir: str, query_tower, candidate_tower, encoder, tft_output,
                         item_features: Dict[str, np.ndarray], user_features: np.ndarray,
                         item_counts: np.ndarray, history: UserHistory, top_k: int,
                         max_history: int, int8: bool = False,
                         model_name: str = MODEL_NAME) -> None:
    """Saves the SavedModel of CONTRACTS.md "Served model" and its warm-up requests.

    ``item_features``: candidate-tower inputs of every catalog item, in vocabulary
    order; ``user_features``: ``[num_users + 1, 3]`` demographic indices, the last row
    the unknown user's; ``item_counts``: train interactions per item (cold start).
    """
    embeddings = embed_catalog(candidate_tower, item_features)
    # The history table's asset file lives until the save has copied it into assets/.
    with tempfile.TemporaryDirectory(prefix="savedmodel_assets_") as assets:
        module = RetrievalModule(
            ServingTower(query_tower, int8=int8), ServingEncoder(encoder),
            Int8Index(embeddings) if int8 else FloatIndex(embeddings),
            tft_output.vocabulary_file_by_name(F.ITEM_VOCAB),
            tft_output.vocabulary_file_by_name(F.USER_VOCAB), user_features, item_counts,
            history, TransformQueryFeatures(tft_output.transform_features_layer()),
            tft_output.raw_feature_spec(), top_k, max_history, asset_dir=assets)
        tf.saved_model.save(module, export_dir, signatures=module.signatures())
    popular = np.argsort(-np.asarray(item_counts), kind="stable")[:3]
    items: Sequence[bytes] = tft_output.vocabulary_by_name(F.ITEM_VOCAB)
    write_warmup_requests(export_dir, model_name,
                          tft_output.vocabulary_by_name(F.USER_VOCAB)[:WARMUP_USERS],
                          [items[i] for i in popular])


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
