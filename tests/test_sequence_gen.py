"""SequenceGen's Beam logic on a few hand-built interactions."""
import os

import apache_beam as beam
import pytest
import tensorflow as tf
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to

from components.sequence_gen import sequences as S
from transform import features as F


def test_windows_cover_every_item_once_newest_first():
    # [PAD, 1..7] cut from the end into windows of 4 sharing one item: targets are
    # 5 6 7 | 2 3 4 | 1 (the first item, predicted from the empty history).
    assert list(S.windows(list(range(1, 8)), 4)) == [
        [4, 5, 6, 7], [1, 2, 3, 4], [-1, -1, -1, 1]]
    assert list(S.windows([9], 3)) == [[-1, -1, 9]]
    assert list(S.windows([], 3)) == []
    with pytest.raises(ValueError, match="at least 2 items, got length 1"):
        list(S.windows([1], 1))


def test_history_row_keeps_newest_and_distinct_exclusions():
    events = [(1, 0, 7), (2, 0, 8), (3, 1, 7), (4, 1, 9)]
    history, exclude = S.history_row(events, max_history=3, exclusion_cap=10)
    assert history == [8, 7, 9]  # the newest 3, oldest first
    assert exclude == [9, 7, 8]  # distinct, newest first
    assert S.history_row(events, 2, 2) == ([7, 9], [9, 7])  # capped


def _example(user, item, ts, span=None):
    feature = {
        "user_id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[user])),
        "item_id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[item])),
        "timestamp": tf.train.Feature(int64_list=tf.train.Int64List(value=[ts])),
    }
    if span is not None:
        feature["span"] = tf.train.Feature(int64_list=tf.train.Int64List(value=[span]))
        feature["rating"] = tf.train.Feature(float_list=tf.train.FloatList(value=[4.0]))
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def _write(path, records):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path, options="GZIP") as w:
        for r in records:
            w.write(r)


def _lines(path, values):
    with open(path, "wb") as f:
        f.write(b"".join(v + b"\n" for v in values))
    return str(path)


def test_user_sequences_split_windows_eval_and_history(tmp_path):
    # u1: train a@1 b@2 c@3 (x is not in the vocabulary), eval d@4; u2: eval only.
    train = [_example(b"u1", b"b", 2), _example(b"u1", b"a", 1), _example(b"u1", b"x", 2),
             _example(b"u1", b"c", 3)]
    evals = [_example(b"u1", b"d", 4), _example(b"u2", b"a", 9)]
    _write(str(tmp_path / "train" / "t.gz"), train)
    _write(str(tmp_path / "eval" / "e.gz"), evals)
    items = _lines(tmp_path / "items.txt", [b"a", b"b", b"c", b"d"])
    users = _lines(tmp_path / "users.txt", [b"u1"])
    with test_pipeline.TestPipeline() as p:
        out = p | S.BuildUserSequences(str(tmp_path / "train" / "*"), str(tmp_path / "eval" / "*"),
                                       items, users, max_history=2, exclusion_cap=10)
        windows = out["train"] | "W" >> beam.Map(lambda r: (r[F.WINDOW_USER][0],
                                                             tuple(r[F.WINDOW_ITEMS])))
        # Train only (d is eval), x dropped: a b c in windows of 3 -> [a b c], [PAD PAD a].
        assert_that(windows, equal_to([(0, (0, 1, 2)), (0, (-1, -1, 0))]), label="train")
        evals_ = out["eval"] | "E" >> beam.Map(lambda r: (
            r[F.WINDOW_USER][0], tuple(r[F.WINDOW_ITEMS]), tuple(r[F.WINDOW_TIMES])))
        # Newest 3 known of both splits and their times; u2 is not in the user
        # vocabulary (-1).
        assert_that(evals_, equal_to([(0, (1, 2, 3), (2, 3, 4)), (-1, (-1, -1, 0), (0, 0, 9))]),
                    label="eval")
        history = out["history"] | "H" >> beam.Map(
            lambda r: (r[F.HISTORY_USER][0], tuple(r[F.HISTORY_ITEMS]),
                       tuple(r[F.HISTORY_EXCLUDE]), r[F.HISTORY_LAST_TIME][0]))
        # Item indices; x (outside the vocabulary) dropped; the newest known one's time.
        assert_that(history, equal_to([
            (b"u1", (2, 3), (3, 2, 1, 0), 4), (b"u2", (0,), (0,), 9)]), label="history")


def test_windows_carry_their_times_newest_span_and_time_and_spans_are_digested(tmp_path):
    # u1 in span 1 at t 1..3, span 2 at t 4..5 (eval at t 5); u2 in span 2 only.
    rows = [(b"u1", b"a", 1, 1), (b"u1", b"b", 2, 1), (b"u1", b"c", 3, 1),
            (b"u1", b"a", 4, 2), (b"u2", b"b", 6, 2)]
    evals = [(b"u1", b"d", 5, 2)]
    _write(str(tmp_path / "train" / "t.gz"), [_example(*r) for r in rows])
    _write(str(tmp_path / "eval" / "e.gz"), [_example(*r) for r in evals])
    items = _lines(tmp_path / "items.txt", [b"a", b"b", b"c", b"d"])
    users = _lines(tmp_path / "users.txt", [b"u1", b"u2"])
    with test_pipeline.TestPipeline() as p:
        out = p | S.BuildUserSequences(str(tmp_path / "train" / "*"), str(tmp_path / "eval" / "*"),
                                       items, users, max_history=2, exclusion_cap=10)
        windows = out["train"] | "W" >> beam.Map(lambda r: (
            r[F.WINDOW_USER][0], tuple(r[F.WINDOW_ITEMS]), tuple(r[F.WINDOW_TIMES]),
            r[F.WINDOW_SPAN][0], r[F.WINDOW_TIME][0], r[F.WINDOW_TARGETS][0]))
        # u1's train items a b c a, windows of 3 from the newest: [b c a] (targets c@3
        # span 1, a@4 span 2), [PAD a b] (targets a@1, b@2, span 1); u2: [PAD PAD b].
        assert_that(windows, equal_to([(0, (1, 2, 0), (2, 3, 4), 2, 4, 2),
                                       (0, (-1, 0, 1), (0, 1, 2), 1, 2, 2),
                                       (1, (-1, -1, 1), (0, 0, 6), 2, 6, 1)]), label="train")
        # An order-free digest: the sum of the rows' hashes, train and eval alike.
        digest = {s: sum(S.row_digest(u, i, t, 4.0) for u, i, t, span in rows + evals
                         if span == s) % (1 << 64) for s in (1, 2)}
        assert_that(out["spans"], equal_to([{
            "spans": {"1": {"rows": 3, "digest": f"{digest[1]:016x}",
                            "first_time": 1, "last_time": 3},
                      "2": {"rows": 3, "digest": f"{digest[2]:016x}", "first_time": 4,
                            "last_time": 6}},
            "newest_span": 2, "train_last_time": 6}]), label="spans")


def test_entity_table_counts_rows_and_keeps_features(tmp_path):
    def ex(item, genres, year):
        return tf.train.Example(features=tf.train.Features(feature={
            "item_id_xf": tf.train.Feature(int64_list=tf.train.Int64List(value=[item])),
            "item_genres_xf": tf.train.Feature(float_list=tf.train.FloatList(value=genres)),
            "item_year_xf": tf.train.Feature(int64_list=tf.train.Int64List(value=[year])),
        })).SerializeToString()
    _write(str(tmp_path / "x" / "t.gz"), [ex(0, [1, 0], 3), ex(1, [0, 1], 2), ex(0, [1, 0], 3)])
    with test_pipeline.TestPipeline() as p:
        rows = p | S.EntityTable(str(tmp_path / "x" / "*"), "item_id_xf",
                                 ("item_genres_xf", "item_year_xf"))
        flat = rows | beam.Map(lambda r: (r["item_id_xf"][0], r[F.ENTITY_COUNT][0],
                                          tuple(r["item_genres_xf"]), r["item_year_xf"][0]))
        assert_that(flat, equal_to([(0, 2, (1.0, 0.0), 3), (1, 1, (0.0, 1.0), 2)]))


def test_encoded_rows_round_trip_as_tf_examples():
    [record] = S.encode_rows([{F.WINDOW_USER: [3], F.WINDOW_ITEMS: [-1, 4, 5],
                               F.WINDOW_TIMES: [0, 7, 9]}], S.WINDOW_TYPES)
    feats = tf.train.Example.FromString(record).features.feature
    assert list(feats[F.WINDOW_ITEMS].int64_list.value) == [-1, 4, 5]
    assert S.decode_columns([record], (F.WINDOW_USER,)) == {F.WINDOW_USER: [[3]]}
    with pytest.raises(ValueError, match="lack feature 'nope'"):
        S.decode_columns([record], ("nope",))
