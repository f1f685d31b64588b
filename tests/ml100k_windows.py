"""A global batch of MovieLens 100K windows, its two halves and a tiny model: the
same-model-on-N-replicas checks of tests/test_distribution.py and
tests/test_multiworker.py."""
import dataclasses
import os

import numpy as np

from tests.conftest import ML100K_DIR
from trainer.config import TrainerConfig
from trainer.data import CANDIDATE_FEATURES, QUERY_FEATURES, USER_FEATURES
from trainer.model import SequenceRetrievalModel, build_towers
from transform import features as F

MAX_HISTORY = 8
USERS = 12


def ml100k_windows():
    """Windows of users 1..12: each user's newest ``2 + user % 7`` ratings, front-padded
    to ``MAX_HISTORY + 1``, so the two halves of the batch hold 33 and 27 targets (every
    item is a target, the oldest one with an empty history).
    Items are indexed among the ones these windows hold."""
    ratings = np.loadtxt(os.path.join(ML100K_DIR, "u.data"), dtype=np.int64)
    raw, times = [], []
    for user in range(1, USERS + 1):
        mine = ratings[ratings[:, 0] == user]
        newest = mine[np.argsort(mine[:, 3], kind="stable")][-(2 + user % 7):]
        pad = (MAX_HISTORY + 1 - len(newest), 0)
        raw.append(np.pad(newest[:, 1], pad, constant_values=-1))
        times.append(np.pad(newest[:, 3], pad, constant_values=0))
    raw = np.array(raw)
    vocab = np.unique(raw[raw > 0])
    windows = {F.WINDOW_ITEMS: np.where(raw > 0, np.searchsorted(vocab, raw), -1),
               F.WINDOW_TIMES: np.array(times),  # the gap input sees real gaps
               F.WINDOW_USER: np.arange(USERS, dtype=np.int64)[:, None]}
    with open(os.path.join(ML100K_DIR, "u.item"), encoding="latin-1") as f:
        genres = {int(r[0]): [float(g) for g in r[-19:]]
                  for r in (line.rstrip("\n").split("|") for line in f)}
    catalog = {CANDIDATE_FEATURES[0]: np.arange(len(vocab)),
               CANDIDATE_FEATURES[1]: np.array([genres[i] for i in vocab], np.float32),
               CANDIDATE_FEATURES[2]: np.zeros(len(vocab), np.int64)}
    with open(os.path.join(ML100K_DIR, "u.user")) as f:
        people = [line.strip().split("|") for line in f][:USERS]
    jobs = sorted({p[3] for p in people})
    users = np.array([[min(int(p[1]) // 10, 7), p[2] == "F", jobs.index(p[3])] for p in people]
                     + [[0, 2, len(jobs)]], np.int64)  # the last row: the unknown user
    counts = np.array([(ratings[:, 1] == i).sum() for i in vocab] + [1], np.float64)
    sizes = {QUERY_FEATURES[0]: USERS + 1, USER_FEATURES[0]: 8, USER_FEATURES[1]: 3,
             USER_FEATURES[2]: len(jobs) + 1, CANDIDATE_FEATURES[0]: len(vocab) + 1,
             CANDIDATE_FEATURES[2]: 1}
    return windows, catalog, users, (counts / counts.sum()).astype(np.float32), sizes


WINDOWS, CATALOG, USER_TABLE, PROB, SIZES = ml100k_windows()
HALVES = [{k: v[:USERS // 2] for k, v in WINDOWS.items()},
          {k: v[USERS // 2:] for k, v in WINDOWS.items()}]
CFG = TrainerConfig(id_embedding_dim=8, feature_embedding_dim=4, tower_layers=(16,),
                    output_dim=8, dropout=0.0, feature_dropout=0.0, history_dropout=0.0,
                    temperature=0.1,
                    max_history=MAX_HISTORY, l2=0.01)
FULL = CFG
# Sampled: 24 negatives drawn from the 60 targets of the global batch.
SAMPLED = dataclasses.replace(CFG, full_softmax_max_items=0, num_negatives=24)


def build_model(cfg: TrainerConfig) -> SequenceRetrievalModel:
    """The model of ``cfg`` on this data, its variables created."""
    query, candidate, encoder = build_towers(SIZES, cfg, MAX_HISTORY)
    model = SequenceRetrievalModel(query, candidate, encoder, cfg, PROB, CATALOG, USER_TABLE)
    model.compute_loss(WINDOWS)  # creates the variables
    return model


