"""Quality benchmark: the pipeline's two-tower model against popularity, ItemKNN and EASE.

For each data set, runs the local pipeline (ingest -> Transform -> Trainer -> ...),
then scores the Trainer's exported model through its ``recommend_excluding``
signature and the baselines on the same leakage-free temporal split, with each
user's train items excluded from every ranking. Prints a table per data set and
writes one JSON file for all of them.

    .venv/bin/python bench/quality.py --data-dir ../shared/data/ml-100k --data-dir synthetic
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import project_env  # noqa: F401,E402

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from typing import Optional  # noqa: E402

from bench.common import machine, table, write_json  # noqa: E402

KS = (10, 20, 50, 100)
SHOWN = ("recall@10", "recall@50", "ndcg@10", "coverage@10")
SYNTHETIC = "synthetic"  # --data-dir value for the built-in synthetic data


def component_table(run: dict, history: dict) -> str:
    """Wall time and peak memory per step, from ``local.run``'s result."""
    timings = run["run_summary"].get("timings", {})
    seconds, peak = timings.get("component_seconds", {}), timings.get("peak_memory_mb", {})
    rows = [[name, f"{s:.1f}", f"{peak[name]:,.0f}" if name in peak else ""]
            for name, s in seconds.items()]
    text = table(rows, ["step", "seconds", "peak MB"])
    return (text + f"\ntraining: {history['train_seconds']:.1f}s for "
            f"{history.get('trained_examples', 0):,} examples "
            f"({history['examples_per_second']:,.0f} examples/s)")


def evaluate_one(data_dir: Optional[str], root: str, split_strategy: str, trainer_overrides: dict,
                 ease_l2: float, enable_cache: bool) -> dict:
    from evaluation.baselines import evaluate_baseline
    from evaluation.model_eval import evaluate_saved_model
    from evaluation.split_data import load_split
    from ingest import synthetic
    from ingest.split import SplitConfig
    from runner import local
    from trainer.config import TrainerConfig
    start = time.time()
    load_before = os.getloadavg()[0]
    run = local.run(local.LocalRunOptions(
        pipeline_root=root, data_dir=data_dir, split=SplitConfig(split_strategy),
        synthetic=synthetic.SyntheticConfig(), trainer=TrainerConfig(**trainer_overrides),
        enable_cache=enable_cache))
    pipeline_seconds = time.time() - start
    outputs = local.component_record(root, "Trainer").uris()
    with open(os.path.join(outputs["model_run"], "training_history.json")) as f:
        history = json.load(f)
    split = load_split(os.path.join(run["data_root"], f"span-{run['span']}"))

    results = {}
    t = time.time()
    results["two-tower"] = evaluate_saved_model(
        os.path.join(outputs["model"], "Format-Serving"), split, KS)
    results["two-tower"]["seconds"] = round(time.time() - t, 2)
    for name, kwargs in (("popularity", {}), ("itemknn", {}), ("ease", {"l2": ease_l2})):
        t = time.time()
        results[name] = evaluate_baseline(split, name, KS, **kwargs)
        results[name]["seconds"] = round(time.time() - t, 2)

    name = data_dir or "built-in synthetic"
    print(f"\nData: {name}; split {split_strategy}; {split.train.nnz} train / "
          f"{int(split.eval.nnz + split.eval_cold_items.sum())} eval interactions; "
          f"{results['two-tower']['users']} eval users; {len(split.item_ids)} catalog items")
    print(table([[m] + [r[s] for s in SHOWN] for m, r in results.items()],
                ["method", *SHOWN]))
    print(component_table(run, history))
    print(f"whole pipeline run {pipeline_seconds:.1f}s (load {load_before:.2f} at start); "
          f"report: {run.get('report')}")
    return {"data_dir": data_dir, "split": split_strategy, "pipeline_root": root,
            "catalog_items": len(split.item_ids), "eval_users": results["two-tower"]["users"],
            "train_interactions": int(split.train.nnz), "results": results,
            "training": history, "pipeline_seconds": round(pipeline_seconds, 1),
            "component_seconds": run["component_seconds"],
            "timings": run["run_summary"].get("timings"), "load_at_start": load_before,
            "report": run.get("report")}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", action="append",
                   help=f"a data directory, or '{SYNTHETIC}' for the built-in data; repeat "
                        f"for several (default: {SYNTHETIC})")
    p.add_argument("--pipeline-root", default="pipeline_output/bench-quality",
                   help="one sub-folder per data set when there are several")
    p.add_argument("--split", default="per_user", choices=["per_user", "global_time"])
    p.add_argument("--trainer-config", default="{}",
                   help="JSON overrides of TrainerConfig, e.g. '{\"epochs\": 8}'")
    p.add_argument("--ease-l2", type=float, default=300.0)
    p.add_argument("--cache", action="store_true",
                   help="reuse cached components (default: run everything, for timings)")
    p.add_argument("--json-out", help="default: <pipeline-root>/bench_quality.json")
    a = p.parse_args(argv)

    data_dirs = a.data_dir or [SYNTHETIC]
    base = os.path.abspath(a.pipeline_root)
    runs = []
    for d in data_dirs:
        data_dir = None if d == SYNTHETIC else os.path.abspath(d)
        root = base if len(data_dirs) == 1 else os.path.join(
            base, SYNTHETIC if data_dir is None else os.path.basename(data_dir.rstrip("/")))
        runs.append(evaluate_one(data_dir, root, a.split, json.loads(a.trainer_config),
                                 a.ease_l2, a.cache))
    out = a.json_out or os.path.join(base, "bench_quality.json")
    # One data set keeps the earlier flat layout; several go under "runs".
    payload = dict(runs[0]) if len(runs) == 1 else {"runs": runs}
    payload["machine"] = machine()
    print(f"JSON: {write_json(out, payload)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
