"""Quality benchmark: the pipeline's two-tower model against popularity, ItemKNN and EASE.

Runs the local pipeline (ingest -> Transform -> Trainer) on a data set, then scores
the exported model through its ``recommend_excluding`` signature and the baselines
on the same leakage-free temporal split, with each user's train items excluded
from every ranking. Prints a table and writes JSON.

    .venv/bin/python bench/quality.py --data-dir ../shared/data/ml-100k
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import project_env  # noqa: F401,E402

import argparse  # noqa: E402
import glob  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

from evaluation.baselines import evaluate_baseline  # noqa: E402
from evaluation.model_eval import evaluate_saved_model  # noqa: E402
from evaluation.split_data import load_split  # noqa: E402

KS = (10, 20, 50, 100)
SHOWN = ("recall@10", "recall@50", "ndcg@10", "coverage@10")


def main(argv=None) -> int:
    from ingest import synthetic
    from ingest.split import SplitConfig
    from runner import local
    from trainer.config import TrainerConfig
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", help="default: built-in synthetic data")
    p.add_argument("--pipeline-root", default="pipeline_output/bench-quality")
    p.add_argument("--split", default="per_user", choices=["per_user", "global_time"])
    p.add_argument("--trainer-config", default="{}",
                   help="JSON overrides of TrainerConfig, e.g. '{\"epochs\": 8}'")
    p.add_argument("--ease-l2", type=float, default=300.0)
    p.add_argument("--json-out", help="default: <pipeline-root>/bench_quality.json")
    a = p.parse_args(argv)

    root = os.path.abspath(a.pipeline_root)
    trainer_cfg = TrainerConfig(**json.loads(a.trainer_config))
    start = time.time()
    run = local.run(local.LocalRunOptions(
        pipeline_root=root, data_dir=a.data_dir, split=SplitConfig(a.split),
        synthetic=synthetic.SyntheticConfig(), trainer=trainer_cfg))
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
    for name, kwargs in (("popularity", {}), ("itemknn", {}), ("ease", {"l2": a.ease_l2})):
        t = time.time()
        results[name] = evaluate_baseline(split, name, KS, **kwargs)
        results[name]["seconds"] = round(time.time() - t, 2)

    print(f"\nData: {a.data_dir or 'built-in synthetic'}; split {a.split}; "
          f"{split.train.nnz} train / {int(split.eval.nnz + split.eval_cold_items.sum())} eval "
          f"interactions; {results['two-tower']['users']} eval users; "
          f"{len(split.item_ids)} catalog items")
    print(f"{'method':<12}" + "".join(f"{m:>13}" for m in SHOWN))
    for name, r in results.items():
        print(f"{name:<12}" + "".join(f"{r[m]:>13.4f}" for m in SHOWN))
    print(f"two-tower training: {history['train_seconds']:.1f}s for "
          f"{len(history['loss'])} epochs ({history['examples_per_second']:.0f} examples/s); "
          f"whole pipeline run {pipeline_seconds:.1f}s; components "
          + ", ".join(f"{k} {v}s" for k, v in run["component_seconds"].items()))
    out = a.json_out or os.path.join(root, "bench_quality.json")
    with open(out, "w") as f:
        json.dump({"data_dir": a.data_dir, "split": a.split, "results": results,
                   "training": history, "pipeline_seconds": round(pipeline_seconds, 1),
                   "component_seconds": run["component_seconds"]}, f, indent=2)
    print(f"JSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
