"""Pipeline benchmark: wall time and peak memory of every step, and training throughput.

Runs the whole local pipeline once with caching off and prints, per step (synthetic
data, prepare, then every TFX component): wall time and the sampled peak resident
memory of the run's process plus its children (Beam's worker processes, sampled
every 0.5 s); then the Trainer's examples per second. Writes JSON.

    .venv/bin/python bench/components.py --data-dir ../shared/data/ml-100k
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import project_env  # noqa: F401,E402

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

from bench.common import machine, self_max_rss_mb, write_json  # noqa: E402
from bench.quality import component_table  # noqa: E402


def main(argv=None) -> int:
    from ingest import synthetic
    from runner import local
    from trainer.config import TrainerConfig
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", help="default: built-in synthetic data")
    p.add_argument("--synthetic-interactions", type=int,
                   default=synthetic.SyntheticConfig.num_interactions)
    p.add_argument("--pipeline-root", default="pipeline_output/bench-components")
    p.add_argument("--epochs", type=int, default=TrainerConfig.epochs)
    p.add_argument("--json-out", help="default: <pipeline-root>/bench_components.json")
    a = p.parse_args(argv)
    root = os.path.abspath(a.pipeline_root)
    before = machine()
    start = time.time()
    run = local.run(local.LocalRunOptions(
        pipeline_root=root, data_dir=a.data_dir, enable_cache=False,
        synthetic=synthetic.SyntheticConfig(num_interactions=a.synthetic_interactions),
        trainer=TrainerConfig(epochs=a.epochs)))
    seconds = time.time() - start
    with open(os.path.join(local.component_record(root, "Trainer").uris()["model_run"],
                           "training_history.json")) as f:
        history = json.load(f)
    split = run["ingest_report"]["split"]
    print(f"\n{a.data_dir or 'built-in synthetic'}: {split['train_rows']:,} train + "
          f"{split['eval_rows']:,} eval rows; whole run {seconds:.1f}s "
          f"(load {before['load_average_1_5_15'][0]:.2f} at start)")
    print(component_table(run, history))
    out = a.json_out or os.path.join(root, "bench_components.json")
    write_json(out, {
        "data_dir": a.data_dir, "rows": split["train_rows"] + split["eval_rows"],
        "seconds": round(seconds, 1), "timings": run["run_summary"].get("timings"),
        "training": {k: history.get(k) for k in ("train_seconds", "trained_examples",
                                                 "examples_per_second", "train_examples",
                                                 "catalog_seconds", "batch_size")},
        "process_max_rss_mb": self_max_rss_mb(), "machine_start": before,
        "machine_end": machine()})
    print(f"JSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
