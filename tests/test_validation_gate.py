"""The validation gate turns TFDV anomalies into a readable failure."""
import os

import pandas as pd
import tensorflow_data_validation as tfdv
from google.protobuf import text_format
from tensorflow_metadata.proto.v0 import schema_pb2

import pipeline
from components.data_validation_gate.component import SCHEMA_DIFF_FILE, describe_anomalies


def _schema():
    return text_format.Parse(open(pipeline.SCHEMA_FILE).read(), schema_pb2.Schema())


def _write_anomalies(root, split, frame):
    stats = tfdv.generate_statistics_from_dataframe(frame)
    anomalies = tfdv.validate_statistics(stats, _schema())
    os.makedirs(os.path.join(root, f"Split-{split}"))
    with open(os.path.join(root, f"Split-{split}", SCHEMA_DIFF_FILE), "wb") as f:
        f.write(anomalies.SerializeToString())


def _frame(**overrides):
    row = {"user_id": "u1", "item_id": "i1", "rating": 4.0, "timestamp": 100, "user_age": 30,
           "user_gender": "F", "user_occupation": "writer", "item_year": 1999, "span": 1}
    row.update(overrides)
    frame = pd.DataFrame([row, {**row, "user_id": "u2"}])
    frame["item_genres"] = [["Drama"], ["Comedy"]]
    return frame


def test_clean_data_has_no_problems(tmp_path):
    _write_anomalies(str(tmp_path), "train", _frame())
    assert describe_anomalies(str(tmp_path), ["train"]) == []


def test_out_of_domain_age_and_wrong_type_are_named(tmp_path):
    _write_anomalies(str(tmp_path), "train", _frame())
    _write_anomalies(str(tmp_path), "eval", _frame(user_age=200, rating="high"))
    problems = describe_anomalies(str(tmp_path), ["train", "eval"])
    assert len(problems) == 2, problems
    age = next(p for p in problems if "'user_age'" in p)
    rating = next(p for p in problems if "'rating'" in p)
    assert age.startswith("split 'eval', feature 'user_age': ") and "200" in age
    assert rating.startswith("split 'eval', feature 'rating': ") and "FLOAT" in rating
