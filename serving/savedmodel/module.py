"""The self-contained serving SavedModel (signature contract in CONTRACTS.md).

Signatures, all returning ``item_ids`` (``[batch, K]`` raw IDs) and ``scores``
(``[batch, K]`` float32, highest first), none of them ever returning an item it was
told to leave out:

* ``serving_default(user_id)``: the query encodes the user's stored history (the
  newest ``max_history`` items of every interaction ingested) and the answer leaves
  out the user's stored items (up to ``exclusion_cap``).
* ``recommend_from_history(user_id, history_item_ids [batch, M])``: the request's
  items (oldest first, "" pads, unknown IDs ignored) are appended to the stored
  history, which an unknown user does not have; stored and request items are left out.
* ``recommend_excluding(user_id, exclude_item_ids [batch, M])``: ``serving_default``
  that also leaves out the listed items.
* ``recommend_given_history(user_id, history_item_ids, exclude_item_ids,
  days_since_history [batch])``: the query sees only the given history, as of the
  given days after its newest item, and only the given items are left out, so the
  evaluator can score on a held-out split without its items leaking into the query.
* ``serve_tf_examples(examples [batch] string)``: serialized tf.Examples with raw user
  features go through the Transform graph; history and exclusions as ``serving_default``.
  A new user whose example carries an age, gender or occupation is answered from
  those through the query tower (trained for it by ``feature_dropout`` and
  ``history_dropout``).
* ``recommend_exact(user_id)``: ``serving_default`` ranked by brute force over the same
  stored rows, so that what a partitioned index (``ivf.py``) misses can be measured.
  With a brute-force index both give the same answer.

The query is asked as of now: the time inputs the tower was trained with
(``trainer.config``: ``query_age``, ``query_gap``) are age 0 and, for the gap, the days
from the user's newest stored interaction to the newest interaction the model knows
(0 when the request carries history items: they are the user's freshest).

A user with neither a known ID, nor any history, nor (``serve_tf_examples``) any user
feature gets the most popular items, scored by their share of train interactions
(from a list of the most popular ``k + longest exclusion list + POPULAR_HEADROOM``
items, the whole catalog only if a row leaves out more). If fewer than K items are
left once a user's items are left out, the remaining slots hold "" with score -inf.
Everything is core TensorFlow (hash tables, gathers, scatters, matmul, top_k), so
``tensorflow_model_server`` and a process importing only ``tensorflow`` can run it.
"""
from __future__ import annotations

import os
import tempfile
from typing import Dict, Optional, Tuple

import numpy as np
import tensorflow as tf

from serving.savedmodel.features import described, raw_serving_spec, vocab_table
from serving.savedmodel.index import NEG_INF, FloatIndex, exclude, is_listed
from serving.savedmodel.item_ids import ItemIds, read_lines
from serving.savedmodel.history import UserHistory, csr_bounds, rows_of, tail
from transform.features import HISTORY, MODEL_USER_ID as USER_ID, QUERY_FEATURES
from transform import features as F
from transform.time_features import DAY, log_days

SERVING_DEFAULT = "serving_default"
RECOMMEND_FROM_HISTORY = "recommend_from_history"
RECOMMEND_EXCLUDING = "recommend_excluding"
RECOMMEND_GIVEN_HISTORY = "recommend_given_history"
SERVE_TF_EXAMPLES = "serve_tf_examples"
RECOMMEND_EXACT = "recommend_exact"
# Request items a cold user may leave out before the popular list runs short and the
# whole catalog's popularity is ranked instead.
POPULAR_HEADROOM = 1024


def _smallest_int(values: np.ndarray):
    """Narrowest integer dtype that holds ``values`` (bucket indices are small)."""
    for dtype in (np.int8, np.int16, np.int32):
        if values.size == 0 or (values.min() >= np.iinfo(dtype).min
                                and values.max() <= np.iinfo(dtype).max):
            return dtype
    return np.int64


def _write_lines(values, name: str, directory: Optional[str]) -> str:
    """A vocabulary-style asset file (one raw ID per line) for a text-file table, in
    ``directory`` (the exporter's temporary folder; saving copies it into assets/)."""
    path = os.path.join(directory or tempfile.mkdtemp(prefix="savedmodel_assets_"), name)
    with open(path, "wb") as f:
        for v in values:
            f.write((v if isinstance(v, bytes) else str(v).encode()) + b"\n")
    return path


def _table(values: np.ndarray) -> tf.Variable:
    """A CSR value array as a variable, with one spare entry so that gathers at a clamped
    index stay inside it even when no row has entries."""
    return tf.Variable(np.append(values, np.zeros(1, values.dtype)), trainable=False)


def newest(items: tf.Tensor, n: int) -> tf.Tensor:
    """``[batch, L]`` indices (-1 = none) -> ``[batch, n]``: each row's newest ``n`` valid
    items in their order, right-aligned, -1 in front."""
    valid = items >= 0
    rank = tf.cumsum(tf.cast(valid, tf.int64), axis=1, reverse=True)  # 1 = newest
    keep = tf.logical_and(valid, rank <= n)
    where = tf.where(keep)
    column = n - tf.gather_nd(rank, where)
    batch = tf.shape(items, out_type=tf.int64)[0]
    return tf.scatter_nd(tf.stack([where[:, 0], column], axis=1),
                         tf.gather_nd(items, where) + 1, [batch, n]) - 1


class RetrievalModule(tf.Module):
    """Holds the query side, the candidate index and the lookup and history tables.

    Args:
      query_tower: query-feature dict (with the encoded ``history``) -> ``[batch, d]``
        unit vectors (``ServingTower``, float32 or int8).
      encoder: the history encoder, ``(vectors [b, T, d], mask [b, T]) -> [b, T, e]``.
      index: ``FloatIndex``, ``Int8Index``, ``ivf.PartitionedIndex`` or a float
        ``[num_items, d]`` matrix; row ``i`` is line ``i`` of ``item_vocab_file``.
      user_features: ``[num_users + 1, 3]``, the last row the unknown user's.
      history: the per-user history and exclusion lists (item indices).
      example_features: parsed raw features -> query-tower inputs.
    """

    def __init__(self, query_tower, encoder, index, item_vocab_file: str,
                 user_vocab_file: str, user_features: np.ndarray, item_counts: np.ndarray,
                 history: UserHistory, example_features, raw_feature_spec: dict,
                 top_k: int, max_history: int, asset_dir: Optional[str] = None) -> None:
        super().__init__(name="retrieval")
        self.index = index if hasattr(index, "search") else FloatIndex(index)
        self.query_tower, self.encoder = query_tower, encoder
        inputs = getattr(query_tower, "input_names", ())
        self._asks_age, self._asks_gap = F.QUERY_AGE in inputs, F.QUERY_GAP in inputs
        self.example_features = example_features
        self.k = min(top_k, self.index.num_items)
        self.max_history = int(max_history)
        self.num_users = int(user_features.shape[0]) - 1
        self.user_table = vocab_table(user_vocab_file)
        # Raw item ID <-> index in variables, not two hash tables (item_ids.py).
        self.item_ids = ItemIds(read_lines(item_vocab_file))
        if self.item_ids.num_items != self.index.num_items:
            raise ValueError(f"got {self.item_ids.num_items} item IDs and "
                             f"{self.index.num_items} index rows")
        self.user_features = tf.Variable(user_features.astype(_smallest_int(user_features)),
                                         trainable=False)
        share = (item_counts / max(1, item_counts.sum())).astype(np.float32)
        self.popularity = tf.Variable(share, trainable=False)
        longest = int(np.diff(history.recent_indptr).max(initial=0))
        popular = np.argsort(-share, kind="stable")[:self.k + longest + POPULAR_HEADROOM]
        self.popular_items = tf.Variable(popular.astype(np.int64), trainable=False)
        self.popular_share = tf.Variable(share[popular], trainable=False)
        # Raw user ID -> row of the history tables (every user ingested, eval-only too).
        self.history_rows = vocab_table(_write_lines(history.user_ids, "history_users.txt",
                                                       asset_dir))
        self.recent_indptr = tf.Variable(history.recent_indptr, trainable=False)
        self.recent = _table(history.recent)
        self.override_indptr = tf.Variable(history.override_indptr, trainable=False)
        self.override = _table(history.override)
        # Each user's newest interaction, and the newest of all: "now" for the gap.
        self.last_time = _table(history.last_time.astype(np.int64))
        self.now = tf.constant(int(history.last_time.max(initial=0)), tf.int64)
        self.history_users = len(history.user_ids)
        self._raw_spec = raw_serving_spec(raw_feature_spec)

    # -- pieces -------------------------------------------------------------------
    def _stored(self, rows: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """``(history [batch, max_history] right-aligned, exclusions [batch, longest],
        days since the newest [batch])`` of history-table ``rows``; item indices -1
        padded (serving.savedmodel.history), days 0 for a user without a stored time."""
        start, end = csr_bounds(self.recent_indptr, rows)
        o_start, o_end = csr_bounds(self.override_indptr, rows)
        history = tf.where((o_end > o_start)[:, tf.newaxis],
                           tail(self.override, o_start, o_end, self.max_history),
                           tail(self.recent, start, end, self.max_history))
        last = tf.where(rows >= 0, tf.gather(self.last_time, tf.maximum(rows, 0)), 0)
        days = tf.where(last > 0, tf.cast(self.now - last, tf.float32) / DAY, 0.0)
        return history, rows_of(self.recent, start, end), days

    def _user_inputs(self, user_id: tf.Tensor, given: Optional[Dict] = None):
        """``({query feature: [batch] int64}, [batch] in the user vocabulary)``: the
        stored features of the user's row, replaced by ``given`` ones (from a request)."""
        idx = self.user_table.lookup(user_id)
        known = idx >= 0
        row = tf.where(known, idx, self.num_users)  # OOV users: the first OOV bucket
        feats = tf.cast(tf.gather(self.user_features, row), tf.int64)
        inputs = {name: feats[:, i] for i, name in enumerate(QUERY_FEATURES[1:])}
        inputs[USER_ID] = row
        for name, value in (given or {}).items():
            if name in inputs:
                inputs[name] = tf.cast(tf.reshape(value, [-1]), tf.int64)
        # The tower reads the inputs it was built with (the user ID only if it has it).
        return inputs, known

    def _encode(self, history: tf.Tensor) -> tf.Tensor:
        """``[batch, T]`` item indices (-1 pads) -> ``[batch, e]`` encoded history."""
        mask = history >= 0
        vectors = self.index.rows(tf.maximum(history, 0)) * \
            tf.cast(mask, tf.float32)[..., tf.newaxis]
        return self.encoder(vectors, mask, training=False)[:, -1, :]

    def _popular(self, exclusions: tf.Tensor, needed: tf.Tensor):
        """``(scores, item indices)`` ``[batch, k]``: the most popular items not in
        ``exclusions``; rows of ``needed`` that leave out too much of the popular list
        get the whole catalog ranked."""
        batch = tf.shape(exclusions)[0]
        popular = tf.convert_to_tensor(self.popular_items)  # one read, gathered as a tensor
        candidates = tf.broadcast_to(popular[tf.newaxis], tf.stack([batch, tf.size(popular)]))
        scores = tf.where(is_listed(candidates, exclusions), NEG_INF,
                          self.popular_share[tf.newaxis, :])
        top = tf.math.top_k(scores, k=self.k, sorted=True)
        values, items = top.values, tf.gather(popular, top.indices)
        if int(self.popular_items.shape[0]) == self.index.num_items:
            return values, items
        short = tf.logical_and(tf.reduce_any(tf.math.is_inf(values), axis=1), needed)

        def whole_catalog():
            full = tf.math.top_k(exclude(tf.broadcast_to(
                self.popularity[tf.newaxis], tf.stack([batch, self.index.num_items])),
                exclusions), k=self.k, sorted=True)
            return (tf.where(short[:, tf.newaxis], full.values, values),
                    tf.where(short[:, tf.newaxis], tf.cast(full.indices, tf.int64), items))
        return tf.cond(tf.reduce_any(short), whole_catalog, lambda: (values, items))

    def _query(self, inputs, history, days_since_history) -> tf.Tensor:
        """``[batch, d]`` query vectors of the tower inputs, history and gap."""
        inputs = dict(inputs)
        inputs[HISTORY] = self._encode(history)
        if self._asks_age:
            # Asked as of now: the age of the newest interactions the model trained on.
            inputs[F.QUERY_AGE] = tf.zeros([tf.shape(history)[0], 1])
        if self._asks_gap:
            has_history = tf.reduce_any(history >= 0, axis=1)
            inputs[F.QUERY_GAP] = log_days(tf.where(has_history, days_since_history, 0.0))
        return self.query_tower(inputs, training=False)

    def _ranked(self, inputs, known, history, exclusions, days_since_history, exact: bool):
        """Top K of ``[batch]`` query-tower inputs and ``[batch, T]`` history item
        indices ``[batch]`` days after the newest of them, leaving out ``[batch, L]``
        item indices (-1 pads both), by the index's ``search`` (or ``exact``);
        popularity for a user with neither a known ID nor any history."""
        query = self._query(inputs, history, days_since_history)
        personal = tf.logical_or(known, tf.reduce_any(history >= 0, axis=1))
        if exact:
            values, items = self.index.exact(query, exclusions, self.k)
        else:
            values, items = self.index.search(query, exclusions, self.k, personal)
        cold_values, cold_items = self._popular(exclusions, tf.logical_not(personal))
        values = tf.where(personal[:, tf.newaxis], values, cold_values)
        items = tf.where(personal[:, tf.newaxis], items, cold_items)
        # Past the last item a user may get (all others left out), slots are "" / -inf.
        allowed = values > NEG_INF
        return {"item_ids": tf.where(allowed, self.item_ids.ids(items), tf.constant("")),
                "scores": values}

    # The one ranking graph, stored once and called by every signature (and its brute
    # force twin, called by recommend_exact).
    _RANK_SIGNATURE = [{name: tf.TensorSpec([None], tf.int64) for name in QUERY_FEATURES},
                       tf.TensorSpec([None], tf.bool), tf.TensorSpec([None, None], tf.int64),
                       tf.TensorSpec([None, None], tf.int64), tf.TensorSpec([None], tf.float32)]

    @tf.function(autograph=False, input_signature=_RANK_SIGNATURE)
    def _rank(self, inputs, known, history, exclusions, days_since_history):
        return self._ranked(inputs, known, history, exclusions, days_since_history,
                            exact=False)

    @tf.function(autograph=False, input_signature=_RANK_SIGNATURE)
    def _rank_exact(self, inputs, known, history, exclusions, days_since_history):
        return self._ranked(inputs, known, history, exclusions, days_since_history,
                            exact=True)

    def _asked(self, user_id, extra_history, extra_exclude):
        """``_rank``'s arguments for users with ``extra_history`` added to their stored
        history, and stored, extra and ``extra_exclude`` items left out."""
        stored, seen, days = self._stored(self.history_rows.lookup(user_id))
        history = newest(tf.concat([stored, extra_history], axis=1), self.max_history)
        inputs, known = self._user_inputs(user_id)
        # Items in the request are the user's freshest: no gap since them.
        days = tf.where(tf.reduce_any(extra_history >= 0, axis=1), 0.0, days)
        return inputs, known, history, tf.concat([seen, extra_history, extra_exclude],
                                                 axis=1), days

    def _recommend(self, user_id, extra_history, extra_exclude, exact: bool = False):
        rank = self._rank_exact if exact else self._rank
        return rank(*self._asked(user_id, extra_history, extra_exclude))

    def stored_queries(self, user_id: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
        """``(query [batch, d], exclusions [batch, L])`` that ``serving_default`` asks
        the index for these users, run eagerly: the export tries the index's settings
        on them before anything is traced."""
        inputs, _, history, exclusions, days = self._asked(
            user_id, self._none(user_id), self._none(user_id))
        return self._query(inputs, history, days), exclusions

    def _item_index(self, item_ids: tf.Tensor) -> tf.Tensor:
        return self.item_ids.index(item_ids)  # "" and unknown IDs -> -1

    def _none(self, user_id: tf.Tensor) -> tf.Tensor:
        return tf.fill(tf.stack([tf.shape(user_id)[0], 0]), tf.constant(-1, tf.int64))

    # -- signatures ---------------------------------------------------------------
    @tf.function(autograph=False, input_signature=[tf.TensorSpec([None], tf.string, name="user_id")])
    def serve(self, user_id):
        return self._recommend(user_id, self._none(user_id), self._none(user_id))

    @tf.function(autograph=False, input_signature=[tf.TensorSpec([None], tf.string, name="user_id")])
    def recommend_exact(self, user_id):
        return self._recommend(user_id, self._none(user_id), self._none(user_id), exact=True)

    @tf.function(autograph=False, input_signature=[tf.TensorSpec([None], tf.string, name="user_id"),
                                  tf.TensorSpec([None, None], tf.string,
                                                name="history_item_ids")])
    def recommend_from_history(self, user_id, history_item_ids):
        return self._recommend(user_id, self._item_index(history_item_ids),
                               self._none(user_id))

    @tf.function(autograph=False, input_signature=[tf.TensorSpec([None], tf.string, name="user_id"),
                                  tf.TensorSpec([None, None], tf.string,
                                                name="exclude_item_ids")])
    def recommend_excluding(self, user_id, exclude_item_ids):
        return self._recommend(user_id, self._none(user_id),
                               self._item_index(exclude_item_ids))

    @tf.function(autograph=False, input_signature=[tf.TensorSpec([None], tf.string, name="user_id"),
                                  tf.TensorSpec([None, None], tf.string,
                                                name="history_item_ids"),
                                  tf.TensorSpec([None, None], tf.string,
                                                name="exclude_item_ids"),
                                  tf.TensorSpec([None], tf.float32,
                                                name="days_since_history")])
    def recommend_given_history(self, user_id, history_item_ids, exclude_item_ids,
                                days_since_history):
        history = newest(self._item_index(history_item_ids), self.max_history)
        inputs, known = self._user_inputs(user_id)
        return self._rank(inputs, known, history, self._item_index(exclude_item_ids),
                          days_since_history)

    @tf.function(autograph=False, input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def serve_tf_examples(self, examples):
        raw = tf.io.parse_example(examples, self._raw_spec)
        user_id = tf.reshape(raw[F.USER_ID], [-1])
        history, seen, days = self._stored(self.history_rows.lookup(user_id))
        inputs, known = self._user_inputs(user_id, self.example_features(raw))
        personal = tf.logical_or(known, described(raw, F.USER_FEATURES,
                                                  tf.shape(user_id)[0]))
        return self._rank(inputs, personal, history, seen, days)

    def signatures(self) -> dict:
        # tf.functions, not concrete functions: traced once, inside the save, instead of
        # once here and again by tf.saved_model.save (which doubled the graph).
        return {SERVING_DEFAULT: self.serve, RECOMMEND_FROM_HISTORY: self.recommend_from_history,
                RECOMMEND_EXCLUDING: self.recommend_excluding,
                RECOMMEND_GIVEN_HISTORY: self.recommend_given_history,
                SERVE_TF_EXAMPLES: self.serve_tf_examples, RECOMMEND_EXACT: self.recommend_exact}
