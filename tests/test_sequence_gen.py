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


def _example(user, item, ts):
    return tf.train.Example(features=tf.train.Features(feature={
        "user_id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[user])),
        "item_id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[item])),
        "timestamp": tf.train.Feature(int64_list=tf.train.Int64List(value=[ts])),
    })).SerializeToString()


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
        evals_ = out["eval"] | "E" >> beam.Map(lambda r: (r[F.WINDOW_USER][0],
                                                          tuple(r[F.WINDOW_ITEMS])))
        # Newest 3 known of both splits; u2 is not in the user vocabulary (-1).
        assert_that(evals_, equal_to([(0, (1, 2, 3)), (-1, (-1, -1, 0))]), label="eval")
        history = out["history"] | "H" >> beam.Map(
            lambda r: (r[F.HISTORY_USER][0], tuple(r[F.HISTORY_ITEMS]),
                       tuple(r[F.HISTORY_EXCLUDE])))
        # Item indices; x (outside the vocabulary) dropped.
        assert_that(history, equal_to([
            (b"u1", (2, 3), (3, 2, 1, 0)), (b"u2", (0,), (0,))]), label="history")


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
    [record] = S.encode_rows([{F.WINDOW_USER: [3], F.WINDOW_ITEMS: [-1, 4, 5]}],
                             S.WINDOW_TYPES)
    feats = tf.train.Example.FromString(record).features.feature
    assert list(feats[F.WINDOW_ITEMS].int64_list.value) == [-1, 4, 5]
    assert S.decode_columns([record], (F.WINDOW_USER,)) == {F.WINDOW_USER: [[3]]}
    with pytest.raises(ValueError, match="lack feature 'nope'"):
        S.decode_columns([record], ("nope",))
