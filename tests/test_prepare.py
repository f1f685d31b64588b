"""Prepared spans: layout, column types, reuse of unchanged data, new spans for new data."""
import json
import os

import pyarrow.parquet as pq
import pytest

from ingest import prepare
from ingest.report import InputDataError
from ingest.split import SplitConfig
from tests.conftest import write

HEADER = "user_id,item_id,rating,timestamp\n"


def _interactions(n_users=20, per_user=10):
    return HEADER + "".join(f"u{u},i{(u + k) % 15},{k % 5},{1000 * u + k}\n"
                            for u in range(n_users) for k in range(per_user))


def test_layout_columns_and_report(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    write(raw / "interactions.csv", _interactions())
    write(raw / "items.csv", "item_id,genres,year\ni1,Drama|Comedy,1999\n")
    [span] = prepare.prepare(str(raw), str(out), SplitConfig("per_user", 0.2), log=lambda m: None)
    assert span.span == 1 and not span.reused
    train = pq.read_table(out / "span-1" / "train")
    ev = pq.read_table(out / "span-1" / "eval")
    assert train.schema.equals(prepare.SCHEMA) and ev.schema.equals(prepare.SCHEMA)
    assert train.num_rows == 160 and ev.num_rows == 40  # last 2 of every user's 10
    row = next(r for r in train.to_pylist() if r["item_id"] == "i1")
    assert row["item_genres"] == ["Drama", "Comedy"] and row["item_year"] == 1999
    assert row["user_age"] == -1 and row["user_gender"] == "unknown"
    assert 0.0 in train["rating"].to_pylist()  # zeros survive
    report = json.loads((out / "span-1" / "ingest_report.json").read_text())
    assert report["format"] == "generic" and report["split"]["eval_users"] == 20
    assert report["missing_item_features"] == 14  # only i1 is in items.csv


def test_unchanged_source_reuses_span_and_changed_source_adds_one(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    write(raw / "interactions.csv", _interactions())
    first = prepare.prepare(str(raw), str(out), log=lambda m: None)[0]
    mtime = os.path.getmtime(out / "span-1" / "train" / "part-00000.parquet")
    again = prepare.prepare(str(raw), str(out), log=lambda m: None)[0]
    assert again.reused and again.span == 1
    assert os.path.getmtime(out / "span-1" / "train" / "part-00000.parquet") == mtime
    write(raw / "interactions.csv", _interactions(n_users=25))
    newer = prepare.prepare(str(raw), str(out), log=lambda m: None)[0]
    assert (newer.span, newer.reused) == (2, False)
    assert first.report["users"] == 20 and newer.report["users"] == 25
    assert sorted(os.listdir(out)) == ["span-1", "span-2"]


def test_span_folders_in_the_source_map_to_the_same_spans(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    write(raw / "span-3" / "interactions.csv", _interactions(n_users=5))
    write(raw / "span-7" / "interactions.csv", _interactions(n_users=6))
    spans = prepare.prepare(str(raw), str(out), log=lambda m: None)
    assert [s.span for s in spans] == [3, 7]
    assert sorted(os.listdir(out)) == ["span-3", "span-7"]


def test_failed_read_leaves_no_partial_span(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    write(raw / "interactions.csv", "user_id,item_id,rating\nu1,i1,5\n")
    with pytest.raises(InputDataError, match="lacks required column"):
        prepare.prepare(str(raw), str(out), log=lambda m: None)
    assert not out.exists() or os.listdir(out) == []
