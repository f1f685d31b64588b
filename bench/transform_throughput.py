"""Transform throughput on Beam's DirectRunner with 1 and 2 worker processes.

For each size of the built-in synthetic data and each worker count, runs the
pipeline's ExampleGen, ImportSchemaGen and Transform (caching off) in a fresh
process and times Transform (analyze on train, transform train and eval). Rows/s is
all rows over Transform's wall time. Most of a small run is fixed cost (starting the
workers, tracing the preprocessing graph), so the marginal rate between two sizes,
``(rows_b - rows_a) / (seconds_b - seconds_a)``, is printed too.

    .venv/bin/python bench/transform_throughput.py --sizes 100000,1000000 --workers 1,2
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import project_env  # noqa: F401,E402

import argparse  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402

from bench.common import machine, table, write_json  # noqa: E402


def beam_args(workers: int):
    return ["--direct_running_mode=multi_processing", f"--direct_num_workers={workers}"]


def run_one(size: int, workers: int, out: str) -> dict:
    """ExampleGen + Transform on ``size`` interactions; data generated once per size."""
    from tfx import v1 as tfx
    from bench.scale import ingest_transform_pipeline
    from ingest import prepare as prep
    from ingest import synthetic
    from runner import local, progress
    data_root_base = os.path.abspath(os.path.join(out, f"data-n{size}"))
    data_dir = local.ensure_synthetic_data(os.path.join(data_root_base, "raw"),
                                           synthetic.SyntheticConfig(num_interactions=size))
    data_root = local.prepared_root(data_root_base, data_dir)
    split = prep.prepare(data_dir, data_root)[-1].report["split"]
    rows = split["train_rows"] + split["eval_rows"]
    root = os.path.abspath(os.path.join(out, f"n{size}-w{workers}"))
    pipe, _ = ingest_transform_pipeline(root, data_root, beam_args(workers),
                                        ("FileBasedExampleGen", "ImportSchemaGen", "Transform"))
    monitor = progress.StageMonitor().start()
    f = progress.install(monitor, rows={"FileBasedExampleGen": rows, "Transform": rows})
    load = os.getloadavg()[0]
    try:
        tfx.orchestration.LocalDagRunner().run(pipe)
    finally:
        progress.uninstall(f)
        monitor.stop()
    result = {"interactions": size, "rows": rows, "workers": workers, "load_before": load,
              "transform_seconds": f.seconds["Transform"],
              "examplegen_seconds": f.seconds["FileBasedExampleGen"],
              "transform_peak_mb": f.peak_mb.get("Transform"),
              "rows_per_second": round(rows / f.seconds["Transform"], 1),
              "machine_end": machine()}
    write_json(os.path.join(root, "transform_throughput.json"), result)
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="100000,1000000")
    p.add_argument("--workers", default="1,2")
    p.add_argument("--out", default="pipeline_output/bench-transform")
    p.add_argument("--one", nargs=2, type=int, help=argparse.SUPPRESS)
    p.add_argument("--json-out", help="default: <out>/bench_transform.json")
    a = p.parse_args(argv)
    if a.one:
        run_one(a.one[0], a.one[1], a.out)
        return 0
    sizes = [int(s) for s in a.sizes.split(",")]
    workers = [int(w) for w in a.workers.split(",")]
    results = []
    out = a.json_out or os.path.join(a.out, "bench_transform.json")
    for w in workers:
        for size in sizes:  # a fresh process per measurement
            code = subprocess.call([sys.executable, os.path.abspath(__file__), "--one",
                                    str(size), str(w), "--out", a.out])
            path = os.path.join(a.out, f"n{size}-w{w}", "transform_throughput.json")
            if code == 0 and os.path.isfile(path):
                with open(path) as f:
                    results.append(json.load(f))
            else:
                results.append({"interactions": size, "workers": w, "error": f"exit {code}"})
            write_json(out, {"results": results, "machine": machine()})
    ok = [r for r in results if "error" not in r]
    rows = []
    for r in ok:
        smaller = [s for s in ok if s["workers"] == r["workers"] and s["rows"] < r["rows"]]
        marginal = None
        if smaller:
            s = max(smaller, key=lambda x: x["rows"])
            dt = r["transform_seconds"] - s["transform_seconds"]
            marginal = round((r["rows"] - s["rows"]) / dt, 1) if dt > 0 else None
            r["marginal_rows_per_second"] = marginal
        rows.append([r["workers"], r["rows"], r["transform_seconds"], r["rows_per_second"],
                     marginal, r["transform_peak_mb"], r["load_before"]])
    write_json(out, {"results": results, "machine": machine()})
    print(table(rows, ["workers", "rows", "Transform s", "rows/s", "marginal rows/s",
                       "peak MB", "load"]))
    print(f"JSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
