"""How much of the brute-force answer the served (approximate) index returns.

The one measure of ``serving.savedmodel.export.recall_against_exact`` (which the
export records in ``assets.extra/candidate_index.json``), over any two callables: the
export passes its in-memory module's ``serve`` and ``recommend_exact``, the evaluator
the loaded SavedModel's ``serving_default`` and ``recommend_exact`` signatures. (The
export keeps its own copy: serving/savedmodel/ is not changed here.)
"""
from __future__ import annotations

from typing import Callable, Dict, Optional, Sequence

import numpy as np
import tensorflow as tf

SERVING_DEFAULT = "serving_default"
RECOMMEND_EXACT = "recommend_exact"

Recommend = Callable[[tf.Tensor], Dict[str, tf.Tensor]]


def recall_against_exact(serve: Recommend, exact: Recommend, user_ids: Sequence,
                         batch_size: int = 32) -> Dict[str, Optional[float]]:
    """Mean share of ``exact``'s items that ``serve`` also returns, over ``user_ids``
    (users for whom ``exact`` returns nothing are skipped); ``k``: its list length."""
    shares, k = [], None
    for lo in range(0, len(user_ids), batch_size):
        users = tf.constant([u if isinstance(u, (str, bytes)) else str(u)
                             for u in user_ids[lo:lo + batch_size]], tf.string)
        got, want = serve(users)["item_ids"].numpy(), exact(users)["item_ids"].numpy()
        k = int(want.shape[1])
        for g, w in zip(got, want):
            w = set(w) - {b""}
            if w:
                shares.append(len(w & set(g)) / len(w))
    return {"recall_vs_exact": float(np.mean(shares)) if shares else None,
            "recall_queries": len(shares), "k": k}


def signature_recall_against_exact(signatures, user_ids: Sequence,
                                   batch_size: int = 32) -> Optional[Dict]:
    """:func:`recall_against_exact` of a loaded SavedModel's ``serving_default``
    against its ``recommend_exact``; None if it has no ``recommend_exact``."""
    if RECOMMEND_EXACT not in signatures or SERVING_DEFAULT not in signatures:
        return None
    serve, exact = signatures[SERVING_DEFAULT], signatures[RECOMMEND_EXACT]
    return recall_against_exact(lambda u: serve(user_id=u), lambda u: exact(user_id=u),
                                user_ids, batch_size)
