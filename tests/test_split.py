"""Temporal splits: hand-worked cases, and no leakage on MovieLens 100K."""
import os

import numpy as np
import pytest

from ingest.readers import read_dataset
from ingest.report import DropReport
from ingest.split import SplitConfig, temporal_split
from ingest.tables import Interactions
from tests.conftest import ML100K_DIR


def _data(users, timestamps):
    n = len(users)
    return Interactions(np.array(users, np.int32), np.arange(n, dtype=np.int32),
                        np.ones(n, np.float32), np.array(timestamps, np.int64),
                        [f"u{i}" for i in range(max(users) + 1)], [f"i{i}" for i in range(n)])


def test_per_user_takes_each_users_latest_fraction():
    # user 0: 10 rows at t=0..9 -> last 2 (t=8, 9) are eval (rows 8, 9)
    # user 1: 3 rows -> floor(0.6) = 0 eval rows, all train
    # user 2: 5 rows, listed out of time order -> the one at t=50 (row 15) is eval
    data = _data([0] * 10 + [1] * 3 + [2] * 5,
                 list(range(10)) + [5, 6, 7] + [10, 50, 20, 40, 30])
    train, ev = temporal_split(data, SplitConfig("per_user", 0.2))
    assert sorted(ev.tolist()) == [8, 9, 14]
    assert sorted(np.concatenate([train, ev]).tolist()) == list(range(18))


def test_newest_span_evaluates_on_the_newest_increment():
    # 10 rows at t=0..9; span 1 = t 0..6, span 2 = t 7..9 (30%): eval is span 2, not the
    # newest 20% (t 8, 9). With one span it is the global-time cut.
    data = _data([0] * 5 + [1] * 5, list(range(10)))
    spans = np.array([1] * 7 + [2] * 3)
    _, ev = temporal_split(data, SplitConfig("newest_span", 0.4), spans)
    assert sorted(ev.tolist()) == [7, 8, 9]
    _, ev = temporal_split(data, SplitConfig("newest_span", 0.2), np.ones(10, np.int64))
    assert sorted(ev.tolist()) == [8, 9]
    # A back-dated newest span (t 0..2) never takes more than eval_fraction to eval.
    _, ev = temporal_split(data, SplitConfig("newest_span", 0.2), np.array([2] * 3 + [1] * 7))
    assert sorted(ev.tolist()) == [8, 9]


def test_per_user_boundary_ties_go_to_eval_unless_that_empties_train():
    # user 0: t = 1, 2, 3, 3, 3 ; last 20% is 1 row at t=3 -> every t=3 row goes to eval.
    # user 1: all five rows at t=7 -> ties would take everything, so all stay in train.
    data = _data([0] * 5 + [1] * 5, [1, 2, 3, 3, 3] + [7] * 5)
    train, ev = temporal_split(data, SplitConfig("per_user", 0.2))
    assert sorted(ev.tolist()) == [2, 3, 4]
    assert sorted(train.tolist()) == [0, 1, 5, 6, 7, 8, 9]


def test_global_time_cut():
    data = _data([0, 0, 1, 1, 2], [1, 9, 2, 8, 10])
    train, ev = temporal_split(data, SplitConfig("global_time", 0.4))
    # 60% quantile ("higher") of [1, 2, 8, 9, 10] is 9: eval is t >= 9.
    assert sorted(ev.tolist()) == [1, 4]
    assert data.timestamp[train].max() < data.timestamp[ev].min()


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="strategy must be one of"):
        SplitConfig("random", 0.2)
    with pytest.raises(ValueError, match=r"eval_fraction must be in \(0, 1\), got 1.5"):
        SplitConfig("per_user", 1.5)


@pytest.mark.skipif(not os.path.isdir(ML100K_DIR), reason="shared MovieLens 100K missing")
@pytest.mark.parametrize("strategy", ["per_user", "global_time"])
def test_no_leakage_on_movielens(strategy):
    data = read_dataset(ML100K_DIR, DropReport()).interactions
    train, ev = temporal_split(data, SplitConfig(strategy, 0.2))
    assert len(train) + len(ev) == 100_000
    assert len(np.intersect1d(train, ev)) == 0
    assert 0.15 < len(ev) / 100_000 < 0.3
    if strategy == "global_time":
        assert data.timestamp[train].max() < data.timestamp[ev].min()
    else:  # per user: every eval interaction is at or after all of that user's train ones
        last_train = np.full(len(data.user_ids), -1, np.int64)
        np.maximum.at(last_train, data.user[train], data.timestamp[train])
        assert (data.timestamp[ev] >= last_train[data.user[ev]]).all()
        assert len(np.unique(data.user[ev])) == 943  # every user has >= 20 ratings
