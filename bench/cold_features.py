"""New users described only by their features, as a client asks ``serve_tf_examples``.

Takes a ``bench/quality.py`` pipeline root and its held-out (cold) users. Each one is
sent as a tf.Example with a user ID the model never saw and only the user's age,
gender and occupation from the data set's user file. The answer is scored on the
user's test window (nothing excluded; the model knows none of the user's items),
against the popularity list, also with nothing excluded.

    .venv/bin/python bench/quality.py --data-dir ../shared/data/ml-100k --seed 42
    .venv/bin/python bench/cold_features.py --data-dir ../shared/data/ml-100k --seed 42
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import project_env  # noqa: F401,E402

import argparse  # noqa: E402
from typing import Callable  # noqa: E402

from bench import quality  # noqa: E402
from bench.common import table  # noqa: E402

SHOWN = ("recall@10", "recall@50", "ndcg@10", "coverage@10")


def features_only(signature, users: dict) -> Callable:
    """``serve_tf_examples`` behind the ``fn(user_id=...)`` call that the bench's
    scorer makes: each user becomes ``new-<id>`` plus the user's raw features."""
    import tensorflow as tf

    def example(uid: str) -> bytes:
        f = users.get(uid)
        feature = {"user_id": tf.train.Feature(
            bytes_list=tf.train.BytesList(value=[f"new-{uid}".encode()]))}
        if f is not None:
            feature["user_age"] = tf.train.Feature(int64_list=tf.train.Int64List(value=[f.age]))
            for name, value in (("user_gender", f.gender), ("user_occupation", f.occupation)):
                feature[name] = tf.train.Feature(
                    bytes_list=tf.train.BytesList(value=[value.encode()]))
        return tf.train.Example(
            features=tf.train.Features(feature=feature)).SerializeToString()

    return lambda user_id: signature(
        examples=tf.constant([example(u.decode()) for u in user_id]))


def main(argv=None) -> int:
    import scipy.sparse as sp
    import tensorflow as tf
    from evaluation import baselines
    from evaluation.holdout import (holdout_split, popularity_ranking, score_ranker,
                                    score_signature, to_split)
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", default="../shared/data/ml-100k")
    p.add_argument("--pipeline-root", default="pipeline_output/bench-quality")
    p.add_argument("--seed", type=int, default=42, help="the bench's seed-<N> run to score")
    a = p.parse_args(argv)
    opts = quality.options(quality.parse_args(["--data-dir", a.data_dir]))
    ds, source = quality.read_source(a.data_dir, a.pipeline_root)
    h = holdout_split(ds.interactions, opts.test_fraction, opts.cold_user_fraction,
                      opts.holdout_seed)
    warm = to_split(ds.interactions, h.given_rows, h.test_rows)
    cold = to_split(ds.interactions, h.cold_history_rows, h.cold_test_rows, warm.item_ids)
    pop = baselines.popularity_scores(warm.train)
    k = max(quality.KS)
    results = {"popularity (nothing excluded)": score_ranker(
        lambda x: popularity_ranking(pop, sp.csr_matrix(x.shape), k), cold, quality.KS)}
    serving = os.path.join(a.pipeline_root, f"seed-{a.seed}", "serving")
    versions = sorted(int(v) for v in os.listdir(serving) if v.isdigit())
    if not versions:
        raise SystemExit(f"error: no pushed version under {serving}; run bench/quality.py")
    model_dir = os.path.join(serving, str(versions[-1]))
    signature = tf.saved_model.load(model_dir).signatures["serve_tf_examples"]
    results["two-tower serve_tf_examples (features only)"] = score_signature(
        features_only(signature, ds.users), cold, quality.KS)
    print(f"{source}: {results['popularity (nothing excluded)']['users']} held-out users, "
          f"model {model_dir}")
    print(table([[name] + [r[m] for m in SHOWN] for name, r in results.items()],
                ["method", *SHOWN]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
