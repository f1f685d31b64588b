"""The gate's eval split of a pipeline root, by user segment: where the model wins or loses.

Scores the root's newest Trainer model (``recommend_given_history``, the evaluator's
protocol), popularity and EASE on the newest ExampleGen span, for cold users (no train
history), users with 1-19 and with >= 20 train interactions; then, for the >= 20
segment, the same model asked with only the last 0, 5 or 20 of their train items as
the query's history (the exclusions stay), which shows what the history adds.

    .venv/bin/python bench/gate_segments.py pipeline_output/bench-timeline/full/root
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import project_env  # noqa: F401,E402

import argparse  # noqa: E402
import copy  # noqa: E402

import numpy as np  # noqa: E402


def last_history(split, last: int):
    """``split`` whose per-user train history (the query) is cut to the last ``last`` items."""
    s = copy.copy(split)
    ptr = split.train_order_indptr
    keep = [np.arange(max(ptr[r], ptr[r + 1] - last), ptr[r + 1]) for r in range(len(ptr) - 1)]
    s.train_order = split.train_order[np.concatenate(keep)] if keep else split.train_order
    s.train_order_indptr = np.concatenate([[0], np.cumsum([len(k) for k in keep])])
    return s


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("pipeline_root")
    p.add_argument("--k", type=int, default=50)
    a = p.parse_args(argv)
    import tensorflow_transform as tft
    from evaluation.baselines import evaluate_baseline
    from evaluation.model_eval import evaluate_saved_model
    from evaluation.split_data import load_split_from_examples, only_users
    from runner import local
    from transform import features as F
    graph = local.component_record(a.pipeline_root, "Transform").uris()["transform_graph"]
    examples = local.component_record(a.pipeline_root, "FileBasedExampleGen").uris()["examples"]
    model = os.path.join(local.component_record(a.pipeline_root, "Trainer").uris()["model"],
                         "Format-Serving")
    catalog = [x.decode() if isinstance(x, bytes) else x
               for x in tft.TFTransformOutput(graph).vocabulary_by_name(F.ITEM_VOCAB)]
    split = load_split_from_examples(examples, catalog)
    n_train = np.diff(split.train.indptr)
    key = f"recall@{a.k}"
    print(f"{model}\nsegment                         users  eval items   model  popularity    EASE")
    for name, keep in (("all", np.ones(len(n_train), bool)), ("cold (no train history)", n_train == 0),
                       ("1-19 train interactions", (n_train > 0) & (n_train < 20)),
                       (">= 20 train interactions", n_train >= 20)):
        s = only_users(split, keep)
        users = int((s.relevant_counts() > 0).sum())
        if not users:
            continue
        m = evaluate_saved_model(model, s, [a.k])[key]
        pop = evaluate_baseline(s, "popularity", [a.k])[key]
        ease = evaluate_baseline(s, "ease", [a.k])[key]
        print(f"{name:30s} {users:6d} {s.eval.nnz:11d} {m:7.4f} {pop:11.4f} {ease:7.4f}")
    heavy = only_users(split, n_train >= 20)
    for last in (0, 5, 20):
        m = evaluate_saved_model(model, last_history(heavy, last), [a.k])[key]
        print(f">= 20 segment, query history = last {last:2d} train items: model {key} {m:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
