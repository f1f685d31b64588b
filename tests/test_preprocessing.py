"""preprocessing_fn: analyze and transform a few in-memory rows, compare by hand."""
import tempfile

import numpy as np
import pytest
import tensorflow_transform.beam as tft_beam
from google.protobuf import text_format
from tensorflow_metadata.proto.v0 import schema_pb2
from tensorflow_transform.tf_metadata import dataset_metadata

import pipeline
from transform import features as F
from transform.config import TransformConfig
from transform.preprocessing import preprocessing_fn

DAY, HOUR = 86_400, 3_600


def _row(user, item, rating, ts, age, gender, occupation, genres, year):
    return {F.USER_ID: [user], F.ITEM_ID: [item], F.RATING: [rating], F.TIMESTAMP: [ts],
            F.USER_AGE: [age], F.USER_GENDER: [gender], F.USER_OCCUPATION: [occupation],
            F.ITEM_GENRES: genres, F.ITEM_YEAR: [year], F.SPAN: [1]}


TRAIN = [
    # 1970-01-01 was a Thursday (day_of_week 3, Monday = 0).
    _row("u1", "a", 4.0, 0, 30, "F", "writer", ["Drama", "Comedy"], 1990),
    _row("u1", "b", 0.0, 4 * DAY + 13 * HOUR, 30, "F", "writer", ["Drama"], -1),  # Mon 13h
    _row("u2", "a", 5.0, 2 * DAY + 23 * HOUR, -1, "unknown", "unknown", [], 1990),  # Sat 23h
    _row("u3", "c", 3.0, 6 * DAY + 60, 17, "M", "writer", ["Comedy", "Horror"], 2000),  # Wed
]


def _metadata():
    schema = text_format.Parse(open(pipeline.SCHEMA_FILE).read(), schema_pb2.Schema())
    return dataset_metadata.DatasetMetadata(schema)


def _analyze_and_transform(train, cfg, more=()):
    fn = lambda inputs: preprocessing_fn(inputs, cfg.to_custom_config())  # noqa: E731
    with tft_beam.Context(temp_dir=tempfile.mkdtemp()):
        (out, _), transform_fn = ((train, _metadata())
                                  | tft_beam.AnalyzeAndTransformDataset(fn))
        extra = []
        if more:
            extra, _ = (((list(more), _metadata()), transform_fn)
                        | tft_beam.TransformDataset())
    return out, extra


@pytest.fixture(scope="module")
def transformed():
    return _analyze_and_transform(
        TRAIN, TransformConfig(genre_buckets=4, year_buckets=2),
        more=[_row("u9", "zz", 1.0, 0, 99, "X", "pilot", ["Western"], 1990)])


def _col(rows, key):
    return [np.asarray(r[key]).tolist() for r in rows]


def test_id_vocabularies_by_frequency(transformed):
    train, _ = transformed
    # users: u1 x2 first; ties (u2, u3) sort by descending token, so u3=1, u2=2.
    assert _col(train, "user_id_xf") == [0, 0, 2, 1]
    # items: a x2 first, then c=1, b=2.
    assert _col(train, "item_id_xf") == [0, 2, 0, 1]


def test_multi_hot_genres(transformed):
    train, _ = transformed
    # Drama=0, Comedy=1 (tie, descending token), Horror=2, slot 3 = OOV.
    assert _col(train, "item_genres_xf") == [[1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0],
                                             [0, 1, 1, 0]]


def test_bucketized_demographics(transformed):
    train, _ = transformed
    # Boundaries 0, 18, 25, 35, 45, 50, 56: 30 -> 3, unknown (-1) -> 0, 17 -> 1.
    assert _col(train, "user_age_xf") == [3, 3, 0, 1]
    # F x2 first; tie "unknown" > "M" in descending token order.
    assert _col(train, "user_gender_xf") == [0, 0, 1, 2]
    assert _col(train, "user_occupation_xf") == [0, 0, 1, 0]


def test_time_features(transformed):
    train, _ = transformed
    assert _col(train, F.HOUR_OF_DAY) == [0, 13, 23, 0]
    assert _col(train, F.DAY_OF_WEEK) == [3, 0, 5, 2]
    scaled = _col(train, F.TIME_SCALED)
    assert scaled[0] == pytest.approx(0.0) and scaled[3] == pytest.approx(1.0)
    assert scaled[2] == pytest.approx((2 * DAY + 23 * HOUR) / (6 * DAY + 60), abs=1e-6)


def test_year_buckets_and_rating(transformed):
    train, _ = transformed
    years = _col(train, "item_year_xf")
    assert years[1] == 0  # unknown year
    assert 1 <= years[0] <= years[3]  # known years start at 1 and keep their order
    assert _col(train, "rating_xf") == [4.0, 0.0, 5.0, 3.0]  # zero rating kept


def test_unseen_values_map_to_oov_buckets(transformed):
    _, [unseen] = transformed
    assert np.asarray(unseen["user_id_xf"]).tolist() == 3  # 3 users in vocab + OOV
    assert np.asarray(unseen["item_id_xf"]).tolist() == 3
    assert np.asarray(unseen["item_genres_xf"]).tolist() == [0, 0, 0, 1]  # Western: OOV
    assert np.asarray(unseen["user_gender_xf"]).tolist() == 3
    assert np.asarray(unseen["user_age_xf"]).tolist() == 7  # 99 >= 56, last bucket


def test_frequency_threshold_sends_rare_items_to_oov():
    train, _ = _analyze_and_transform(TRAIN, TransformConfig(item_frequency_threshold=2))
    # Only "a" is seen twice; b and c share the OOV bucket 1.
    assert _col(train, "item_id_xf") == [0, 1, 0, 1]


def test_config_round_trip_and_validation():
    cfg = TransformConfig(genre_buckets=8)
    assert TransformConfig.from_custom_config(cfg.to_custom_config()) == cfg
    assert TransformConfig.from_custom_config(None) == TransformConfig()
    with pytest.raises(ValueError, match=r"unknown transform settings: \['bogus'\]"):
        TransformConfig.from_custom_config({"transform": {"bogus": 1}})
    with pytest.raises(ValueError, match="num_oov_buckets must be >= 1, got 0"):
        TransformConfig(num_oov_buckets=0)
