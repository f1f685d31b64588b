"""Peak memory and seconds of the RetrievalEvaluator's steps at a given catalog and user count.

    nice -n 19 prlimit --as=12000000000 python bench/evaluator_memory.py \
        --items 1000000 --users 200000 --interactions 4000000 \
        --output bench/results/evaluator_memory_1m.json

What the evaluator does, step by step, in one process as its executor runs them:

1. ``split``: the train/eval split read from gzip tf.Example files (``Split-train``,
   ``Split-eval``, as ExampleGen writes them) over the catalog (``load_split_from_examples``);
2. ``model``: the candidate model scored through ``recommend_given_history``;
3. ``popularity``: the popularity baseline on the same users;
4. ``served``: the served model (here the same SavedModel again) on the same users;
5. ``ann_recall``: ``serving_default`` against ``recommend_exact`` (when the code has it).

The model is a served model over ``--items`` synthetic items built by the export's
own code (``bench/synthetic_catalog.py``: the partitioned index from 250,000 items on,
the brute-force one below), with ``--users`` stored users ``u0``... The interactions
(``--interactions``, users and items drawn with Zipf-like popularity, the newest 20%
of each user's as the eval split) are written once under ``--work-dir``.

Each step's peak is the kernel's resident high-water mark (``VmHWM``), reset before the
step through ``/proc/self/clear_refs``; ``rss_after_mb`` is ``VmRSS`` once it is done.
tracemalloc does not see TensorFlow's or NumPy's C allocations, so it is not used.
"""
from __future__ import annotations

import project_env  # noqa: F401  (before TensorFlow)

import argparse
import gc
import inspect
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from bench.common import machine, process_memory_mb, write_json  # noqa: E402
from bench.synthetic_catalog import build_synthetic  # noqa: E402

KS = [10, 20, 50, 100]


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _example(user: bytes, item: bytes, time_s: int) -> bytes:
    f = tf.train.Feature
    return tf.train.Example(features=tf.train.Features(feature={
        "user_id": f(bytes_list=tf.train.BytesList(value=[user])),
        "item_id": f(bytes_list=tf.train.BytesList(value=[item])),
        "timestamp": f(int64_list=tf.train.Int64List(value=[time_s]))})).SerializeToString()


def write_examples(directory: str, items: int, users: int, interactions: int,
                   seed: int = 0, eval_fraction: float = 0.2, shards: int = 4) -> str:
    """``directory/Split-{train,eval}/*.gz`` (once): Zipf-like users and items, the
    newest ``eval_fraction`` of each user's interactions (two or more) in eval."""
    done = os.path.join(directory, "DONE")
    if os.path.exists(done):
        return directory
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    item_weight = 1.0 / np.arange(1, items + 1) ** 0.9
    item = rng.choice(items, interactions, p=item_weight / item_weight.sum())
    item = rng.permutation(items)[item]  # popular items spread over the IDs
    user_weight = 1.0 / np.arange(1, users + 1) ** 0.5
    user = rng.choice(users, interactions, p=user_weight / user_weight.sum())
    when = 1_600_000_000 + rng.integers(0, 365 * 86400, interactions)
    order = np.lexsort((when, user))
    user, item, when = user[order], item[order], when[order]
    counts = np.bincount(user, minlength=users)
    starts = np.concatenate([[0], np.cumsum(counts)])[:-1]
    position = np.arange(interactions) - starts[user]
    n_eval = np.where(counts >= 2, np.ceil(counts * eval_fraction), 0).astype(np.int64)
    is_eval = position >= counts[user] - n_eval[user]
    for name, mask in (("Split-train", ~is_eval), ("Split-eval", is_eval)):
        os.makedirs(os.path.join(directory, name), exist_ok=True)
        rows = np.flatnonzero(mask)
        for s in range(shards):
            path = os.path.join(directory, name, f"data_tfrecord-{s:05d}-of-{shards:05d}.gz")
            with tf.io.TFRecordWriter(path, options="GZIP") as w:
                for r in rows[s::shards]:
                    w.write(_example(f"u{user[r]}".encode(), f"item{item[r]}".encode(),
                                     int(when[r])))
    with open(done, "w") as f:
        json.dump({"items": items, "users": users, "interactions": interactions,
                   "eval_rows": int(is_eval.sum()), "seed": seed,
                   "seconds": round(time.perf_counter() - start, 1)}, f)
    print(f"[bench] wrote {interactions:,} interactions in "
          f"{time.perf_counter() - start:.0f} s: {directory}", flush=True)
    return directory


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--items", type=int, default=1_000_000)
    p.add_argument("--users", type=int, default=200_000)
    p.add_argument("--interactions", type=int, default=4_000_000)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--max-eval-users", type=int, default=None,
                   help="the evaluator's cap on users scored (default: the evaluator's)")
    p.add_argument("--steps", default="model,popularity,served,ann_recall")
    p.add_argument("--work-dir", default=os.path.join(tempfile.gettempdir(),
                                                      "evaluator_bench"))
    p.add_argument("--output", help="write the figures as JSON here")
    a = p.parse_args(argv)

    name = f"{a.items}-{a.users}-{a.interactions}"
    model_dir = build_synthetic(a.items, os.path.join(a.work_dir, f"model-{a.items}-{a.users}"),
                                num_users=a.users)
    examples = write_examples(os.path.join(a.work_dir, f"examples-{name}"), a.items, a.users,
                              a.interactions)
    gc.collect()

    from evaluation import model_eval, baselines
    from evaluation.split_data import load_split_from_examples

    results = {"items": a.items, "users": a.users, "interactions": a.interactions,
               "batch_size": a.batch_size, "machine": machine(), "steps": {},
               "peak_reset": _reset_peak(), "start": process_memory_mb(os.getpid())}
    print(f"[bench] start: {results['start']}", flush=True)
    sampled = "users" in inspect.signature(model_eval.evaluate_saved_model).parameters
    state: dict = {}

    def step(label, fn):
        gc.collect()
        _reset_peak()
        start = time.perf_counter()
        out = fn()
        seconds = time.perf_counter() - start
        mem = process_memory_mb(os.getpid())
        results["steps"][label] = {"seconds": round(seconds, 1),
                                   "peak_rss_mb": mem["peak_rss_mb"],
                                   "rss_after_mb": mem["rss_mb"]}
        print(f"[bench] {label}: {seconds:.1f} s, peak RSS {mem['peak_rss_mb']:,.0f} MB, "
              f"RSS after {mem['rss_mb']:,.0f} MB", flush=True)
        return out

    catalog = [f"item{i}" for i in range(a.items)]
    split = step("split", lambda: load_split_from_examples(examples, catalog))
    kwargs = {}
    if sampled:
        from evaluation.sampling import DEFAULT_MAX_USERS, sample_eval_users
        cap = DEFAULT_MAX_USERS if a.max_eval_users is None else a.max_eval_users
        users, population = sample_eval_users(split, cap, 0)
        kwargs["users"] = users
        results.update(max_eval_users=cap, scored_users=len(users),
                       population=population)
    steps = a.steps.split(",")
    if "model" in steps:
        state["model"] = step("model", lambda: model_eval.evaluate_saved_model(
            model_dir, split, KS, a.batch_size, **kwargs))
    if "popularity" in steps:
        state["popularity"] = step("popularity", lambda: baselines.evaluate_baseline(
            split, "popularity", KS, **kwargs))
    if "served" in steps:
        state["served"] = step("served", lambda: model_eval.evaluate_saved_model(
            model_dir, split, KS, a.batch_size, **kwargs))
    if "ann_recall" in steps and hasattr(model_eval, "ann_recall_against_exact"):
        state["ann_recall"] = step("ann_recall", lambda: model_eval.ann_recall_against_exact(
            model_dir, split))
    results["metrics"] = {k: v for k, v in state.items()}
    results["end"] = process_memory_mb(os.getpid())
    print(json.dumps({k: results[k] for k in ("steps", "metrics")}, indent=1), flush=True)
    if a.output:
        write_json(a.output, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
