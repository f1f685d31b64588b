"""The serving module's history, exclusion and cold-start logic on a hand-built catalog.

The query tower here is the identity on the encoded history (the mean of the history's
item vectors), so every expected ranking can be worked out by hand from ``VECTORS``.
"""
import numpy as np
import pytest
import tensorflow as tf

from serving.savedmodel.history import build_user_history
from serving.savedmodel.index import FloatIndex, Int8Index
from serving.savedmodel.ivf import PartitionedIndex
from serving.savedmodel.partition import partition_catalog
from serving.savedmodel.module import RetrievalModule, newest
from trainer.data import HISTORY
from transform import features as F
from trainer.model import MeanEncoder

ITEMS = [b"a", b"b", b"c", b"d", b"e"]
VECTORS = np.array([[1, 0, 0], [0.8, 0.6, 0], [0, 1, 0], [0, 0.8, 0.6], [0, 0, 1]],
                   np.float32)
COUNTS = np.array([5, 1, 3, 2, 4])  # popularity order: a e c d b


class HistoryOnly(tf.Module):
    def __call__(self, features, training=False):
        return tf.math.l2_normalize(features[HISTORY], axis=1)


def _lines(path, values):
    path.write_bytes(b"".join(v + b"\n" for v in values))
    return str(path)


def _index(kind: str):
    if kind == "partitioned":
        # Two lists, one probed: never 5 items, so every answer is the brute-force
        # fallback's, over the int8 rows by list.
        return PartitionedIndex(VECTORS, partition_catalog(VECTORS, 2), probes=1)
    return FloatIndex(VECTORS) if kind == "float" else Int8Index(VECTORS)


@pytest.fixture(scope="module", params=["float", "int8", "partitioned"])
def module(request, tmp_path_factory):
    d = tmp_path_factory.mktemp("vocab")
    # u1 (in the user vocabulary) saw a; u2 (eval only, not in it) saw e; u3 saw
    # c, d, then c again: history c d c (an override row), exclusions c d.
    history = build_user_history([(b"u1", [0], [0]), (b"u2", [4], [4]),
                                  (b"u3", [2, 3, 2], [2, 3])], max_history=3, num_items=5)
    index = _index(request.param)
    return RetrievalModule(
        HistoryOnly(), MeanEncoder(), index, _lines(d / "items", ITEMS), _lines(d / "users", [b"u1"]),
        np.zeros((2, 3), np.int64), COUNTS, history, lambda raw: {},
        {"user_id": tf.io.FixedLenFeature([], tf.string)}, top_k=100, max_history=3)


def _ids(out):
    """Returned items, best first; "" (no item left) dropped after checking its score."""
    scores = out["scores"].numpy()
    rows = [[x.decode() for x in row] for row in out["item_ids"].numpy()]
    for row, s in zip(rows, scores):
        assert all((x == "") == np.isneginf(v) for x, v in zip(row, s))
    return [[x for x in row if x] for row in rows]


def test_newest_right_aligns_the_last_valid_items():
    items = tf.constant([[-1, 3, -1, 5, 6], [-1, -1, -1, -1, -1]], tf.int64)
    assert newest(items, 2).numpy().tolist() == [[5, 6], [-1, -1]]
    assert newest(items, 4).numpy().tolist() == [[-1, 3, 5, 6], [-1, -1, -1, -1]]


def test_serving_default_uses_and_excludes_the_stored_history(module):
    out = _ids(module.serve(tf.constant(["u1", "u2", "nobody"])))
    # u1's history is a: b (cos 0.8) first, a itself never returned.
    assert out[0][0] == "b" and "a" not in out[0]
    # u2 is in no vocabulary but has stored history e: d (cos 0.6, others 0) first.
    assert out[1][0] == "d" and "e" not in out[1]
    # Nobody: no ID, no history -> popularity, nothing excluded.
    assert out[2] == ["a", "e", "c", "d", "b"]
    assert len(out[0]) == 4 and len(out[2]) == 5


def test_user_history_stores_one_list_plus_overrides_for_repeats():
    h = build_user_history([(b"u1", [0, 1], [1, 0]), (b"u2", [2, 3, 2], [2, 3]),
                            (b"u3", [4, 0, 1], [1, 0, 4])], max_history=2, num_items=5)
    # recent: distinct items by last interaction, oldest first.
    assert h.recent.tolist() == [0, 1, 3, 2, 4, 0, 1]
    assert h.recent_indptr.tolist() == [0, 2, 4, 7]
    # u2's newest two (3, 2) equal its recent tail (3, 2): no override. u1 and u3 match
    # too; a user whose newest items repeat does not (see the module fixture's u3).
    assert h.override.tolist() == [] and h.override_indptr.tolist() == [0, 0, 0, 0]
    assert h.recent.dtype == np.int16
    rep = build_user_history([(b"u", [2, 3, 2], [2, 3])], max_history=3, num_items=40_000)
    assert rep.override.tolist() == [2, 3, 2] and rep.recent.dtype == np.int32


def test_a_repeated_item_counts_twice_in_the_query_and_is_excluded_once(module):
    out = _ids(module.serve(tf.constant(["u3"])))
    # History c d c: mean (2c + d) / 3 = (0, 2.8, 0.6) / 3, unit (0, 0.978, 0.210).
    # Cosines: c 0.98, d 0.91 (both excluded), b 0.59, e 0.21, a 0.
    assert out[0] == ["b", "e", "a"]


def test_request_history_is_appended_and_excluded(module):
    out = _ids(module.recommend_from_history(
        user_id=tf.constant(["u1", "nobody", "nobody"]),
        history_item_ids=tf.constant([["c", ""], ["c", "zzz"], ["", ""]])))
    # u1: stored a + request c -> query (a + c) / 2: b (cos 0.99) first; a, c left out.
    assert out[0][0] == "b" and not {"a", "c"} & set(out[0])
    # A new user's request (c) is the whole history: d (cos 0.8) first; zzz is ignored.
    assert out[1][0] == "d" and "c" not in out[1]
    # No history at all: popularity.
    assert out[2] == ["a", "e", "c", "d", "b"]


def test_given_history_replaces_the_stored_one(module):
    out = _ids(module.recommend_given_history(
        user_id=tf.constant(["u1"]), history_item_ids=tf.constant([["c"]]),
        exclude_item_ids=tf.constant([["d"]]), days_since_history=tf.constant([0.0])))
    # Only c is the query (stored a is ignored) and only d is left out: c itself
    # ranks first, then b (cos 0.6); a is allowed.
    assert out[0][:2] == ["c", "b"] and "d" not in out[0] and "a" in out[0]


def test_recommend_excluding_adds_to_the_stored_exclusions(module):
    out = _ids(module.recommend_excluding(user_id=tf.constant(["u1"]),
                                          exclude_item_ids=tf.constant([["b", ""]])))
    assert not {"a", "b"} & set(out[0])


def test_saved_and_reloaded_answers_match(module, tmp_path):
    tf.saved_model.save(module, str(tmp_path / "m"), signatures=module.signatures())
    loaded = tf.saved_model.load(str(tmp_path / "m"))
    sig = loaded.signatures["recommend_from_history"]
    out = sig(user_id=tf.constant(["nobody"]), history_item_ids=tf.constant([["c"]]))
    assert [x.decode() for x in out["item_ids"].numpy()[0]][0] == "d"
    scores = out["scores"].numpy()[0]
    assert (np.diff(scores) <= 1e-6).all()


class GapTower(tf.Module):
    """The encoded history plus the gap input times e: the longer the gap, the more
    the query turns to e."""
    input_names = (F.QUERY_GAP,)

    def __call__(self, features, training=False):
        e = tf.constant([[0.0, 0.0, 1.0]])
        return tf.math.l2_normalize(features[HISTORY] + features[F.QUERY_GAP] * e, axis=1)


def test_the_gap_input_counts_from_the_stored_time_and_is_zero_for_request_items(tmp_path):
    now, day = 1_000_000_000, 86400
    far = int((np.e ** 2 - 1) * day)  # log(1 + days) = 2
    # Both saw a only; "old" last did so `far` seconds before "fresh", the newest.
    history = build_user_history([(b"old", [0], [0], now - far), (b"fresh", [0], [0], now)],
                                 max_history=3, num_items=5)
    module = RetrievalModule(
        GapTower(), MeanEncoder(), FloatIndex(VECTORS), _lines(tmp_path / "items", ITEMS),
        _lines(tmp_path / "users", [b"old", b"fresh"]), np.zeros((3, 3), np.int64), COUNTS,
        history, lambda raw: {}, {"user_id": tf.io.FixedLenFeature([], tf.string)},
        top_k=100, max_history=3)
    # Query a + 2e for "old": e (2/sqrt 5) beats b (0.8/sqrt 5); "fresh" (gap 0): b.
    assert [r[0] for r in _ids(module.serve(tf.constant(["old", "fresh"])))] == ["e", "b"]
    # Items in the request are fresh: gap 0, query a + c, so b (0.7) leads, not e.
    out = _ids(module.recommend_from_history(tf.constant(["old"]), tf.constant([["c"]])))
    assert out[0][0] == "b"
    # The evaluator says how long ago the given history was.
    out = _ids(module.recommend_given_history(
        tf.constant(["fresh", "fresh"]), tf.constant([["a"], ["a"]]),
        tf.constant([["a"], ["a"]]), tf.constant([far / day, 0.0], tf.float32)))
    assert [r[0] for r in out] == ["e", "b"]
