"""Reading SequenceGen's output: training windows and the per-entity catalog tables."""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import tensorflow as tf

from transform import features as F

USER_ID, ITEM_ID, USER_FEATURES = F.MODEL_USER_ID, F.MODEL_ITEM_ID, F.MODEL_USER_FEATURES
QUERY_FEATURES, CANDIDATE_FEATURES, HISTORY = F.QUERY_FEATURES, F.CANDIDATE_FEATURES, F.HISTORY
ITEMS_SPLIT, USERS_SPLIT, HISTORY_SPLIT = "items", "users", "history"


def list_files(patterns: Sequence[str]) -> List[str]:
    files = sorted(f for p in patterns for f in tf.io.gfile.glob(p))
    if not files:
        raise FileNotFoundError(f"no SequenceGen examples match {list(patterns)}")
    return files


def sibling_split(pattern: str, split: str) -> str:
    """``.../Split-train/*`` -> ``.../Split-<split>/*``. The Trainer receives the
    train and eval patterns only; SequenceGen's other splits sit beside them."""
    split_dir = pattern.rstrip("*").rstrip("/")
    return os.path.join(os.path.dirname(split_dir), f"Split-{split}", "*")


def artifact_root(pattern: str) -> str:
    """``<uri>/Split-train/*`` -> ``<uri>``."""
    return os.path.dirname(os.path.dirname(pattern.rstrip("*").rstrip("/") + "/"))


def window_spec(max_history: int) -> Dict[str, tf.io.FixedLenFeature]:
    """Training and eval windows; eval windows (and older ones) lack the span, time
    and target count of the training windows, which then read as 0 (as do the times
    of windows from before them)."""
    zero = tf.io.FixedLenFeature([1], tf.int64, default_value=[0])
    return {F.WINDOW_USER: tf.io.FixedLenFeature([1], tf.int64),
            F.WINDOW_ITEMS: tf.io.FixedLenFeature([max_history + 1], tf.int64),
            F.WINDOW_TIMES: tf.io.FixedLenFeature([max_history + 1], tf.int64,
                                                  default_value=[0] * (max_history + 1)),
            F.WINDOW_SPAN: zero, F.WINDOW_TIME: zero, F.WINDOW_TARGETS: zero}


def check_window_length(patterns: Sequence[str], max_history: int) -> None:
    """Fails early, naming both numbers, if SequenceGen cut windows of another length."""
    record = next(iter(tf.data.TFRecordDataset(list_files(patterns)[:1],
                                               compression_type="GZIP").take(1)), None)
    if record is None:
        return
    length = len(tf.train.Example.FromString(record.numpy())
                 .features.feature[F.WINDOW_ITEMS].int64_list.value)
    if length != max_history + 1:
        raise ValueError(f"SequenceGen windows hold {length} items but TrainerConfig."
                         f"max_history is {max_history} (windows need max_history + 1)")


def _records(patterns: Sequence[str]) -> tf.data.Dataset:
    files = list_files(patterns)
    # Blocks of 256 records from up to 4 files at a time, in one thread: a parallel
    # record-by-record interleave spent more on hand-offs than on reading.
    return tf.data.Dataset.from_tensor_slices(files).interleave(
        lambda f: tf.data.TFRecordDataset(f, compression_type="GZIP"),
        cycle_length=min(4, len(files)), block_length=256)


def make_dataset(patterns: Sequence[str], feature_spec: dict, batch_size: int,
                 shuffle_buffer: int = 0, seed: int = 0,
                 keep: Optional[Callable[[Dict[str, tf.Tensor]], tf.Tensor]] = None
                 ) -> tf.data.Dataset:
    """Batches of parsed features, ``{name: [batch, ...]}``; shuffled when training.

    ``keep``: parsed batch -> ``[batch]`` bool; only the rows it keeps are batched.
    """
    ds = _records(patterns)
    if shuffle_buffer:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size, drop_remainder=bool(shuffle_buffer) and keep is None)
    ds = ds.map(lambda x: tf.io.parse_example(x, feature_spec),
                num_parallel_calls=tf.data.AUTOTUNE)
    if keep is not None:
        def select(features):
            mask = keep(features)  # once: keep may draw random numbers
            return {k: tf.boolean_mask(v, mask) for k, v in features.items()}
        ds = ds.map(select)
        ds = ds.unbatch().batch(batch_size, drop_remainder=bool(shuffle_buffer))
    return ds.prefetch(tf.data.AUTOTUNE)


def count_windows(patterns: Sequence[str], feature_spec: dict,
                  is_new: Callable[[Dict[str, tf.Tensor]], tf.Tensor]) -> Dict[str, int]:
    """Windows and targets, split by ``is_new``: ``{new,old}_{windows,targets}``."""
    out = {"new_windows": 0, "old_windows": 0, "new_targets": 0, "old_targets": 0}
    for batch in make_dataset(patterns, feature_spec, 4096):
        new = is_new(batch).numpy()
        targets = batch[F.WINDOW_TARGETS].numpy().reshape(-1)
        out["new_windows"] += int(new.sum())
        out["old_windows"] += int((~new).sum())
        out["new_targets"] += int(targets[new].sum())
        out["old_targets"] += int(targets[~new].sum())
    return out


def count_records(patterns: Sequence[str]) -> int:
    return int(_records(patterns).reduce(np.int64(0), lambda n, _: n + 1).numpy())


@dataclasses.dataclass
class Catalog:
    """What the model knows about every user and item in the vocabularies.

    Items are the Transform vocabulary of the train split: the whole catalog the model
    is trained on. Shapes: ``item_*`` ``[num_items, ...]``, ``user_*`` ``[num_users]``.
    ``unknown_user`` is the feature row of a user the model has never seen: every
    feature in its out-of-vocabulary bucket.
    """

    item_counts: np.ndarray
    item_genres: np.ndarray
    item_year: np.ndarray
    user_counts: np.ndarray
    user_age: np.ndarray
    user_gender: np.ndarray
    user_occupation: np.ndarray
    num_examples: int
    unknown_user: np.ndarray = dataclasses.field(
        default_factory=lambda: np.zeros(3, np.int64))
    # The newest train interaction's timestamp (SequenceGen's spans.json), the "now" of
    # the query's age input; None for sequences from before it.
    reference_time: Optional[int] = None

    @property
    def num_items(self) -> int:
        return len(self.item_counts)

    @property
    def num_users(self) -> int:
        return len(self.user_counts)

    def item_features(self) -> Dict[str, np.ndarray]:
        return {ITEM_ID: np.arange(self.num_items, dtype=np.int64),
                CANDIDATE_FEATURES[1]: self.item_genres, CANDIDATE_FEATURES[2]: self.item_year}

    def user_features(self) -> np.ndarray:
        """``[num_users + 1, 3]`` int64 (age bucket, gender, occupation); the last row
        is the unknown user."""
        known = np.stack([self.user_age, self.user_gender, self.user_occupation], axis=1)
        return np.concatenate([known, self.unknown_user[np.newaxis, :]]).astype(np.int64)


def unknown_user_row(sizes: Dict[str, int]) -> np.ndarray:
    """Age bucket 0 means unknown; gender and occupation have one OOV bucket, last."""
    return np.array([0, sizes[USER_FEATURES[1]] - 1, sizes[USER_FEATURES[2]] - 1], np.int64)


def _parse_all(pattern: str, spec: dict):
    ds = tf.data.TFRecordDataset(tf.io.gfile.glob(pattern), compression_type="GZIP")
    for batch in ds.batch(65536).map(lambda x: tf.io.parse_example(x, spec)) \
            .as_numpy_iterator():
        yield batch


def build_catalog(train_pattern: str, num_users: int, num_items: int, genre_width: int,
                  unknown_user: np.ndarray) -> Catalog:
    """Reads SequenceGen's ``items`` and ``users`` splits (beside ``train_pattern``)."""
    cat = Catalog(np.zeros(num_items, np.int64), np.zeros((num_items, genre_width), np.float32),
                  np.zeros(num_items, np.int64), np.zeros(num_users, np.int64),
                  np.zeros(num_users, np.int64), np.zeros(num_users, np.int64),
                  np.zeros(num_users, np.int64), 0, np.asarray(unknown_user, np.int64))
    spans = os.path.join(artifact_root(train_pattern), F.SPANS_FILE)
    if tf.io.gfile.exists(spans):
        with tf.io.gfile.GFile(spans) as f:
            cat.reference_time = json.load(f).get("train_last_time")
    count = tf.io.FixedLenFeature([1], tf.int64)
    item_spec = {ITEM_ID: tf.io.FixedLenFeature([1], tf.int64), F.ENTITY_COUNT: count,
                 CANDIDATE_FEATURES[1]: tf.io.FixedLenFeature([genre_width], tf.float32),
                 CANDIDATE_FEATURES[2]: tf.io.FixedLenFeature([1], tf.int64)}
    for b in _parse_all(sibling_split(train_pattern, ITEMS_SPLIT), item_spec):
        idx, n = b[ITEM_ID][:, 0], b[F.ENTITY_COUNT][:, 0]
        cat.num_examples += int(n.sum())  # rows of out-of-vocabulary items included
        known = idx < num_items
        cat.item_counts[idx[known]] = n[known]
        cat.item_genres[idx[known]] = b[CANDIDATE_FEATURES[1]][known]
        cat.item_year[idx[known]] = b[CANDIDATE_FEATURES[2]][known, 0]
    user_spec = {USER_ID: tf.io.FixedLenFeature([1], tf.int64), F.ENTITY_COUNT: count,
                 **{f: tf.io.FixedLenFeature([1], tf.int64) for f in USER_FEATURES}}
    for b in _parse_all(sibling_split(train_pattern, USERS_SPLIT), user_spec):
        idx = b[USER_ID][:, 0]
        known = idx < num_users
        cat.user_counts[idx[known]] = b[F.ENTITY_COUNT][known, 0]
        for name, table in zip(USER_FEATURES, (cat.user_age, cat.user_gender,
                                               cat.user_occupation)):
            table[idx[known]] = b[name][known, 0]
    return cat
