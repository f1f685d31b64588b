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


def _rows(n_users, per_user, t0):
    return HEADER + "".join(f"u{u},i{(u + k) % 15},{k % 5},{t0 + 10 * u + k}\n"
                            for u in range(n_users) for k in range(per_user))


def test_span_folders_are_increments_split_by_global_time(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    # Span 1: u0..u3 at times 1000..1034; span 2 (new rows only): u2..u5 from 2000 on.
    write(raw / "span-1" / "interactions.csv", _rows(4, 5, 1000))
    [first] = prepare.prepare(str(raw), str(out), log=lambda m: None)
    write(raw / "span-2" / "interactions.csv", _rows(6, 5, 2000))
    [second] = prepare.prepare(str(raw), str(out), log=lambda m: None)
    assert (first.span, second.span) == (1, 2) and sorted(os.listdir(out)) == ["span-1",
                                                                               "span-2"]
    train = pq.read_table(out / "span-2" / "train").to_pylist()
    ev = pq.read_table(out / "span-2" / "eval").to_pylist()
    rows = train + ev
    # 20 + 30 rows of both increments, each tagged with the span it arrived in.
    assert len(rows) == 50
    assert sorted({(r["span"], r["timestamp"] >= 2000) for r in rows}) == [(1, False),
                                                                           (2, True)]
    # Global time: eval is the newest 20% of all rows (10 rows, all from span 2), and
    # nothing in train is newer than anything in eval.
    assert len(ev) == 10 and {r["span"] for r in ev} == {2}
    assert max(r["timestamp"] for r in train) < min(r["timestamp"] for r in ev)
    assert second.report["spans"] == [1, 2] and second.report["changed_spans"] == []
    # Unchanged increments: the prepared span is reused.
    assert prepare.prepare(str(raw), str(out), log=lambda m: None)[0].reused


def test_an_edited_old_increment_is_reported(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    write(raw / "span-1" / "interactions.csv", _rows(4, 5, 1000))
    write(raw / "span-2" / "interactions.csv", _rows(4, 5, 2000))
    prepare.prepare(str(raw), str(out), log=lambda m: None)
    write(raw / "span-1" / "interactions.csv", _rows(3, 5, 1000))  # a user's rows removed
    write(raw / "span-3" / "interactions.csv", _rows(4, 5, 3000))
    lines = []
    [third] = prepare.prepare(str(raw), str(out), log=lines.append)
    assert third.report["changed_spans"] == [1]
    assert any("span(s) 1 changed" in line for line in lines)


def test_failed_read_leaves_no_partial_span(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    write(raw / "interactions.csv", "user_id,item_id,rating\nu1,i1,5\n")
    with pytest.raises(InputDataError, match="lacks required column"):
        prepare.prepare(str(raw), str(out), log=lambda m: None)
    assert not out.exists() or os.listdir(out) == []
