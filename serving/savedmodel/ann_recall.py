"""How much of the brute-force answer the served (approximate) index returns.

One measure over any two callables: the export passes its in-memory module's
``serve`` and ``recommend_exact`` (and records the figure in
``assets.extra/candidate_index.json``), the evaluator the loaded SavedModel's
``serving_default`` and ``recommend_exact`` signatures, and the export's probe choice
the index's own search and brute force (``shares``).
"""
from __future__ import annotations

from typing import Callable, Dict, Optional, Sequence

import numpy as np
import tensorflow as tf

SERVING_DEFAULT = "serving_default"
RECOMMEND_EXACT = "recommend_exact"

Recommend = Callable[[tf.Tensor], Dict[str, tf.Tensor]]


def shares(got: np.ndarray, want: np.ndarray) -> list:
    """Per row, the share of ``want``'s items that ``got`` holds (-1 and b"" pad
    either; a row whose ``want`` is empty is skipped)."""
    out = []
    for g, w in zip(got, want):
        w = set(w.tolist()) - {-1, b""}
        if w:
            out.append(len(w & set(g.tolist())) / len(w))
    return out


def recall_against_exact(serve: Recommend, exact: Recommend, user_ids: Sequence,
                         batch_size: int = 32) -> Dict[str, Optional[float]]:
    """Mean share of ``exact``'s items that ``serve`` also returns, over ``user_ids``
    (users for whom ``exact`` returns nothing are skipped); ``k``: its list length."""
    found, k = [], None
    for lo in range(0, len(user_ids), batch_size):
        users = tf.constant([u if isinstance(u, (str, bytes)) else str(u)
                             for u in user_ids[lo:lo + batch_size]], tf.string)
        got, want = serve(users)["item_ids"].numpy(), exact(users)["item_ids"].numpy()
        k = int(want.shape[1])
        found += shares(got, want)
    return {"recall_vs_exact": float(np.mean(found)) if found else None,
            "recall_queries": len(found), "k": k}


def signature_recall_against_exact(signatures, user_ids: Sequence,
                                   batch_size: int = 32) -> Optional[Dict]:
    """:func:`recall_against_exact` of a loaded SavedModel's ``serving_default``
    against its ``recommend_exact``; None if it has no ``recommend_exact``."""
    if RECOMMEND_EXACT not in signatures or SERVING_DEFAULT not in signatures:
        return None
    serve, exact = signatures[SERVING_DEFAULT], signatures[RECOMMEND_EXACT]
    return recall_against_exact(lambda u: serve(user_id=u), lambda u: exact(user_id=u),
                                user_ids, batch_size)
