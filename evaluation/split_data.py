"""The prepared train/eval split as sparse user-item matrices over one item index."""
from __future__ import annotations

import dataclasses
import glob
import os
from typing import Dict, List

import numpy as np
import pyarrow.parquet as pq
import scipy.sparse as sp


@dataclasses.dataclass
class SplitMatrices:
    """``train``/``eval``: ``[num_users, num_items]`` binary CSR; IDs are raw strings.

    Items are those seen in train (the catalog); eval interactions with items never
    seen in train stay in ``eval_cold_items`` per user so recall counts them as misses.
    """

    user_ids: List[str]
    item_ids: List[str]
    train: sp.csr_matrix
    eval: sp.csr_matrix
    eval_cold_items: np.ndarray  # [num_users] count of eval items outside the catalog

    def relevant_counts(self) -> np.ndarray:
        return np.asarray(self.eval.sum(axis=1)).ravel() + self.eval_cold_items


def _read(directory: str):
    files = sorted(glob.glob(os.path.join(directory, "*.parquet")))
    if not files:
        raise FileNotFoundError(f"no Parquet files in {directory}")
    table = pq.read_table(files, columns=["user_id", "item_id"])
    return (np.asarray(table["user_id"].to_pylist(), dtype=object),
            np.asarray(table["item_id"].to_pylist(), dtype=object))


def load_split(span_dir: str) -> SplitMatrices:
    """Reads ``span_dir/{train,eval}/*.parquet`` written by ``ingest.prepare``."""
    tu, ti = _read(os.path.join(span_dir, "train"))
    eu, ei = _read(os.path.join(span_dir, "eval"))
    item_ids, item_idx = np.unique(ti, return_inverse=True)
    user_ids = np.unique(np.concatenate([tu, eu]))
    user_index: Dict[str, int] = {u: i for i, u in enumerate(user_ids)}
    item_index: Dict[str, int] = {it: i for i, it in enumerate(item_ids)}
    n_u, n_i = len(user_ids), len(item_ids)
    rows = np.fromiter((user_index[u] for u in tu), np.int64, len(tu))
    train = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, item_idx)), shape=(n_u, n_i))
    train.data[:] = 1.0  # repeats count once
    e_rows = np.fromiter((user_index[u] for u in eu), np.int64, len(eu))
    e_items = np.fromiter((item_index.get(i, -1) for i in ei), np.int64, len(ei))
    known = e_items >= 0
    ev = sp.csr_matrix((np.ones(known.sum(), np.float32), (e_rows[known], e_items[known])),
                       shape=(n_u, n_i))
    ev.data[:] = 1.0
    ev = ev - ev.multiply(train)  # an eval item the user already had in train is not new
    ev.eliminate_zeros()
    cold = np.bincount(e_rows[~known], minlength=n_u)
    return SplitMatrices(list(user_ids), list(item_ids), train.tocsr(), ev.tocsr(), cold)
