"""ingest/split.py temporal_split, both strategies, on rows small enough to check by hand.

per_user: a user with n rows gets floor(n * fraction) eval rows (none when
n < 1 / fraction); the cut is the timestamp of the first of those rows and every row
at or after it (ties included) is eval, unless that would take all of the user's rows.
global_time: cut = the "higher" (1 - fraction) quantile of all timestamps; eval is
t >= cut for every user, so users first seen after the cut appear only in eval.
Both return row indices sorted by (user, timestamp, row).
"""
import numpy as np

from ingest.split import SplitConfig, temporal_split
from ingest.tables import Interactions


def _data(rows):
    """``rows``: (user code, timestamp) per row; item i = row i."""
    users = np.array([u for u, _ in rows], np.int32)
    n = len(rows)
    return Interactions(users, np.arange(n, dtype=np.int32), np.ones(n, np.float32),
                        np.array([t for _, t in rows], np.int64),
                        [f"u{i}" for i in range(users.max() + 1)],
                        [f"i{i}" for i in range(n)])


def test_per_user_counts_ties_and_too_few_rows():
    data = _data([
        # u0, rows 0-7, 8 rows out of time order: floor(8 * 0.25) = 2 eval rows; sorted
        # times 10..80, the 2 latest are t = 70 (row 1) and t = 80 (row 4).
        (0, 30), (0, 70), (0, 10), (0, 50), (0, 80), (0, 20), (0, 60), (0, 40),
        # u1, rows 8-10: 3 < 1 / 0.25 = 4 rows -> floor(0.75) = 0 eval rows, all train.
        (1, 5), (1, 6), (1, 7),
        # u2, rows 11-18: t = 1 2 3 4 5 6 6 6; 2 eval rows -> the first is the 7th
        # sorted row, t = 6 -> cut 6 takes all three t = 6 rows (16, 17, 18).
        (2, 1), (2, 2), (2, 3), (2, 4), (2, 5), (2, 6), (2, 6), (2, 6),
        # u3, rows 19-22: t = 1 5 5 5; floor(4 * 0.25) = 1 eval row at t = 5 -> the
        # cut 5 takes rows 20, 21, 22: 3 of 4 rows are eval.
        (3, 1), (3, 5), (3, 5), (3, 5),
        # u4, rows 23-26: all at t = 9; the cut 9 would take all 4 rows -> all train.
        (4, 9), (4, 9), (4, 9), (4, 9),
    ])
    train, ev = temporal_split(data, SplitConfig("per_user", 0.25))
    # sorted by (user, time, row)
    assert ev.tolist() == [1, 4, 16, 17, 18, 20, 21, 22]
    assert train.tolist() == [2, 5, 0, 7, 3, 6,  # u0: t = 10 20 30 40 50 60
                              8, 9, 10,  # u1
                              11, 12, 13, 14, 15,  # u2: t = 1..5
                              19,  # u3: t = 1
                              23, 24, 25, 26]  # u4


def test_per_user_fraction_rounding():
    # 100 rows at t = 0..99 with fraction 0.29: 100 * 0.29 = 28.999999999999996 in
    # floating point; the +1e-9 in the code makes floor() give the intended 29, so
    # eval is t = 71..99 (100 - 29 = 71).
    data = _data([(0, t) for t in range(100)])
    train, ev = temporal_split(data, SplitConfig("per_user", 0.29))
    assert ev.tolist() == list(range(71, 100))
    assert train.tolist() == list(range(71))


def test_global_time_ties_at_the_cut_and_a_cold_user():
    data = _data([(0, 1), (0, 7), (0, 3),  # rows 0-2
                  (1, 2), (1, 7), (1, 4),  # rows 3-5
                  (2, 8), (2, 9),  # rows 6-7: u2 starts after the cut
                  (0, 5)])  # row 8
    # sorted times: [1, 2, 3, 4, 5, 7, 7, 8, 9]; the 0.75 quantile sits at position
    # (9 - 1) * 0.75 = 6 -> t = 7. Eval is t >= 7: both t = 7 rows (1, 4), even
    # though one of them sits at position 5, below the quantile, plus rows 6, 7.
    train, ev = temporal_split(data, SplitConfig("global_time", 0.25))
    assert ev.tolist() == [1, 4, 6, 7]  # (u0, 7), (u1, 7), (u2, 8), (u2, 9)
    assert train.tolist() == [0, 2, 8, 3, 5]  # u0: 1 3 5, u1: 2 4
    # u2 is cold: in eval, never in train; train is strictly before the cut
    assert 2 not in data.user[train] and 2 in data.user[ev]
    assert data.timestamp[train].max() == 5 < 7 == data.timestamp[ev].min()


def test_global_time_ignores_the_per_user_minimum():
    # u1 has a single row, after the cut: it goes to eval (there is no 1/fraction rule).
    # times [1, 2, 3, 4, 10]: position (5 - 1) * 0.75 = 3 -> cut t = 4 -> eval rows 3, 4
    data = _data([(0, 1), (0, 2), (0, 3), (0, 4), (1, 10)])
    train, ev = temporal_split(data, SplitConfig("global_time", 0.25))
    assert ev.tolist() == [3, 4] and train.tolist() == [0, 1, 2]


def test_global_time_all_equal_timestamps_stay_in_train():
    data = _data([(0, 5), (1, 5), (1, 5)])
    train, ev = temporal_split(data, SplitConfig("global_time", 0.25))
    assert ev.tolist() == [] and train.tolist() == [0, 1, 2]


def test_global_time_cut_on_the_earliest_timestamp_still_has_an_eval_split():
    # times [1, 1, 1, 1, 2]: position (5 - 1) * 0.75 = 3 -> cut t = 1 -> t >= 1 is every
    # row, and the fallback meant for "every timestamp equal" empties eval. A cut at the
    # next time, 2, would keep train strictly before eval: eval = row 4.
    data = _data([(0, 1), (0, 1), (1, 1), (1, 1), (1, 2)])
    train, ev = temporal_split(data, SplitConfig("global_time", 0.25))
    assert ev.tolist() == [4]
    assert train.tolist() == [0, 1, 2, 3]
