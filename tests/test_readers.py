"""Readers: every supported layout, and what happens to bad input."""
import os

import numpy as np
import pytest

from ingest.readers import detect_format, read_dataset
from ingest.report import DropReport, InputDataError
from tests.conftest import ML100K_DIR, write


def _rows(ds):
    d = ds.interactions
    return [(d.user_ids[u], d.item_ids[i], float(r), int(t))
            for u, i, r, t in zip(d.user, d.item, d.rating, d.timestamp)]


@pytest.mark.skipif(not os.path.isdir(ML100K_DIR), reason="shared MovieLens 100K missing")
def test_ml100k_reads_all_ratings_and_features():
    report = DropReport()
    ds = read_dataset(ML100K_DIR, report)
    assert ds.name == "ml-100k"
    assert len(ds.interactions) == 100_000 and report.rows_dropped == 0
    assert len(ds.interactions.user_ids) == 943 and len(ds.interactions.item_ids) == 1682
    # First line of u.data: 196 242 3 881250949
    assert _rows(ds)[0] == ("196", "242", 3.0, 881250949)
    assert ds.users["1"].age == 24 and ds.users["1"].gender == "M"
    assert ds.users["1"].occupation == "technician"
    # u.item line 1: Toy Story, 01-Jan-1995, Animation|Children's|Comedy
    assert ds.items["1"].year == 1995
    assert ds.items["1"].genres == ("Animation", "Children's", "Comedy")


def test_ml1m_layout(tmp_path):
    write(tmp_path / "ratings.dat", "1::1193::5::978300760\n1::661::3::978302109\n"
          "2::1193::4::978298413\n")
    write(tmp_path / "users.dat", "1::F::1::10::48067\n2::M::56::16::70072\n")
    write(tmp_path / "movies.dat", "1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n"
          "661::James and the Giant Peach (1996)::Animation|Children's|Musical\n")
    report = DropReport()
    ds = read_dataset(str(tmp_path), report)
    assert detect_format(str(tmp_path)) == "ml-1m"
    assert _rows(ds) == [("1", "1193", 5.0, 978300760), ("1", "661", 3.0, 978302109),
                         ("2", "1193", 4.0, 978298413)]
    assert ds.users["1"].occupation == "K-12 student"  # code 10
    assert ds.users["2"].age == 56 and ds.users["2"].occupation == "self-employed"
    assert ds.items["661"].genres == ("Animation", "Children's", "Musical")
    assert ds.items["1193"].year == 1975


def test_ml_latest_layout(tmp_path):
    write(tmp_path / "ratings.csv", "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n"
          "1,3,4.5,964981247\n")
    write(tmp_path / "movies.csv", 'movieId,title,genres\n1,Toy Story (1995),Adventure|Comedy\n'
          '3,"Grumpier Old Men, The (1995)",(no genres listed)\n')
    ds = read_dataset(str(tmp_path), DropReport())
    assert ds.name == "ml-latest"
    assert _rows(ds) == [("1", "1", 4.0, 964982703), ("1", "3", 4.5, 964981247)]
    assert ds.items["3"].genres == () and ds.items["3"].year == 1995
    assert ds.users == {}  # no demographics in this format
    assert ds.user_feature_rows()[0].age == -1


def test_generic_layout_with_side_files_and_implicit_rating(tmp_path):
    write(tmp_path / "interactions.csv", "timestamp,item_id,user_id\n10,a,u1\n20,b,u1\n")
    write(tmp_path / "users.csv", "user_id,gender\nu1,F\n")
    write(tmp_path / "items.csv", "item_id,genres,year\na,x|y,2001\nb,,\n")
    ds = read_dataset(str(tmp_path), DropReport())
    assert _rows(ds) == [("u1", "a", 1.0, 10), ("u1", "b", 1.0, 20)]  # no rating: 1.0
    assert ds.users["u1"].gender == "F" and ds.users["u1"].age == -1
    assert ds.items["a"].genres == ("x", "y") and ds.items["b"].year == -1


def test_bad_rows_are_dropped_counted_and_located(tmp_path):
    good = "".join(f"u{i},i{i % 7},4,{1000 + i}\n" for i in range(400))
    write(tmp_path / "interactions.csv", "user_id,item_id,rating,timestamp\n" + good
          + "u1,i1,four,1001\n"  # line 402: non-numeric rating
          + "u2,i2,3,yesterday\n"  # line 403: non-numeric timestamp
          + "u3,i3,3\n"  # line 404: missing field
          + "u0,i0,4,1000\n"  # line 405: duplicate of line 2
          + "\n")  # line 406: blank
    report = DropReport()
    ds = read_dataset(str(tmp_path), report)
    assert len(ds.interactions) == 400
    assert report.dropped == {"non-numeric rating": 1, "non-numeric timestamp": 1,
                              "wrong field count": 1, "duplicate": 1, "blank line": 1}
    path = str(tmp_path / "interactions.csv")
    assert report.examples["non-numeric rating"] == [f"{path} line 402: 'four'"]
    assert report.examples["non-numeric timestamp"] == [f"{path} line 403: 'yesterday'"]
    assert report.examples["wrong field count"] == [
        f"{path} line 404: 3 fields, expected 4"]
    assert "user u0 item i0 at timestamp 1000 repeated" in report.examples["duplicate"][0]


def test_too_many_bad_rows_raise_with_examples(tmp_path):
    write(tmp_path / "interactions.csv", "user_id,item_id,rating,timestamp\n"
          + "".join(f"u{i},i{i},x,{i}\n" for i in range(5)) + "u9,i9,1,9\n")
    with pytest.raises(InputDataError, match=r"(?s)5 of 6 rows are malformed.*line 2: 'x'"):
        read_dataset(str(tmp_path), DropReport())


@pytest.mark.parametrize("content,message", [
    ("", "file is empty"),
    ("user_id,item_id,rating,timestamp\n", "no data rows after the header"),
    ("user_id,item_id,rating\nu1,i1,5\n", "line 1: header lacks required column.s. timestamp"),
    ("user_id;item_id;rating;timestamp\nu1;i1;5;10\n",
     "line 1: expected comma-separated fields .* the line looks ';'-separated"),
])
def test_structural_problems_raise_naming_the_file(tmp_path, content, message):
    write(tmp_path / "interactions.csv", content)
    with pytest.raises(InputDataError, match=message) as e:
        read_dataset(str(tmp_path), DropReport())
    assert str(tmp_path / "interactions.csv") in str(e.value)


def test_wrong_delimiter_in_movielens_100k_layout(tmp_path):
    write(tmp_path / "u.data", "196,242,3,881250949\n186,302,3,891717742\n")
    with pytest.raises(InputDataError, match=r"u.data line 1: expected TAB-separated fields "
                       r"\(user_id, item_id, rating, timestamp\), found 1; the line looks "
                       r"comma-separated"):
        read_dataset(str(tmp_path), DropReport())


def test_unknown_layout_lists_what_is_supported(tmp_path):
    write(tmp_path / "data.txt", "1 2 3\n")
    with pytest.raises(InputDataError, match="u.data .ml-100k.*interactions.csv .generic."):
        detect_format(str(tmp_path))


def test_bad_feature_rows_fall_back_to_unknown(tmp_path):
    write(tmp_path / "u.data", "1\t10\t5\t100\n2\t10\t4\t200\n")
    write(tmp_path / "u.user", "1|24|M|writer|000\n2|old|F|artist|000\n")
    report = DropReport()
    ds = read_dataset(str(tmp_path), report)
    assert report.dropped == {"u.user: bad value": 1}
    assert "age 'old' is not an integer" in report.examples["u.user: bad value"][0]
    ages = [u.age for u in ds.user_feature_rows()]
    assert ages == [24, -1]
    assert np.array_equal(ds.interactions.rating, [5.0, 4.0])


def _read_both(path, monkeypatch):
    """The vectorized reader's result and the row-by-row reader's, on the same file."""
    from ingest import readers
    fast_report = DropReport()
    fast = read_dataset(path, fast_report).interactions
    monkeypatch.setattr(readers, "_read_clean_interactions", lambda *args: None)
    slow_report = DropReport()
    slow = read_dataset(path, slow_report).interactions
    return fast, fast_report, slow, slow_report


@pytest.mark.parametrize("rating", [True, False])
def test_vectorized_reader_matches_the_row_reader_on_clean_files(tmp_path, monkeypatch,
                                                                 rating):
    rows = ["u2,i9,4,1000", "u1,i9,3.5,999", "u2,i1,5,1001", "u3,i7,1,5", "u2,i9,4,1000"]
    header = "user_id,item_id,rating,timestamp" if rating else "user_id,item_id,timestamp"
    if not rating:
        rows = [",".join(r.split(",")[:2] + r.split(",")[3:]) for r in rows]
    write(tmp_path / "interactions.csv", "\n".join([header] + rows) + "\n")
    fast, fast_report, slow, slow_report = _read_both(str(tmp_path), monkeypatch)
    for column in ("user", "item", "rating", "timestamp"):
        np.testing.assert_array_equal(getattr(fast, column), getattr(slow, column))
        assert getattr(fast, column).dtype == getattr(slow, column).dtype
    assert fast.user_ids == slow.user_ids == ["u2", "u1", "u3"]  # first appearance
    assert fast.item_ids == slow.item_ids
    assert fast_report.to_dict() == slow_report.to_dict()  # the duplicate, counted once


@pytest.mark.parametrize("bad_row", ["u1,i1,x,5", "u1,i1,4", "u1, i1,4,5", ",i1,4,5",
                                     "u1,i1,4,5.5", "u1,i1,nan,5", ""])
def test_vectorized_reader_leaves_dirty_files_to_the_row_reader(tmp_path, bad_row):
    from ingest import readers
    lines = ["user_id,item_id,rating,timestamp"] + [f"u{i},i{i},4,{i}" for i in range(300)]
    write(tmp_path / "interactions.csv", "\n".join(lines[:100] + [bad_row] + lines[100:])
          + "\n")
    columns = {"user_id": 0, "item_id": 1, "rating": 2, "timestamp": 3}
    assert readers._read_clean_interactions(str(tmp_path / "interactions.csv"), ",",
                                            columns, 4, "utf-8", True) is None
