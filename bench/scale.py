"""Scale curve: synthetic data at growing sizes through ingestion, Transform and training.

For each size (interactions), in a fresh process so peak memory is per size:

1. ``generate``: the built-in synthetic generator writes ``interactions.csv`` & co.
2. ``prepare``: reading, temporal split and Parquet spans (``ingest/prepare.py``).
3. ``FileBasedExampleGen``, ``StatisticsGen`` (with the schema import, ExampleValidator
   and the validation gate), ``Transform`` and ``SequenceGen`` (per-user histories):
   the pipeline's own components (taken from ``pipeline.create_pipeline``), run with
   LocalDagRunner on the DirectRunner.
4. ``train``: ``trainer.task.train_and_export`` for a fixed number of steps (the
   Trainer's default batch of windows), including its read of the catalog and history
   tables and the SavedModel export.

Time is wall time. Peak memory is a sampled high-water mark (every 0.5 s) of the
resident memory (RSS) of the benchmark process plus all its children (Beam workers).

    .venv/bin/python bench/scale.py --sizes 100000,1000000,10000000 --out /tmp/scale
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import project_env  # noqa: F401,E402

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from typing import List, Optional, Sequence  # noqa: E402

from bench.common import (StageResult, StageTimer, machine, self_max_rss_mb,  # noqa: E402
                          table, write_json)

# Ingestion as the pipeline runs it: ExampleGen, statistics, validation and its gate.
PIPELINE_STAGES = ("FileBasedExampleGen", "ImportSchemaGen", "StatisticsGen",
                   "ExampleValidator", "DataValidationGate", "Transform", "SequenceGen")
STAGES = ("generate", "prepare", "FileBasedExampleGen", "StatisticsGen", "Transform",
          "SequenceGen", "train")


def ingest_transform_pipeline(root: str, data_root: str, beam_args: Sequence[str],
                              stages: Sequence[str] = PIPELINE_STAGES):
    """The pipeline's ingestion, validation, Transform and SequenceGen components, and
    nothing else (``pipeline.create_sub_pipeline``)."""
    from tfx import v1 as tfx
    import pipeline as pipeline_def
    from runner import local
    cfg = pipeline_def.PipelineConfig(pipeline_root=root, data_root=data_root,
                                      beam_pipeline_args=tuple(beam_args), enable_cache=False,
                                      pipeline_name="scale-bench")
    connection = tfx.orchestration.metadata.sqlite_metadata_connection_config(
        local.metadata_path(root))
    return pipeline_def.create_sub_pipeline(cfg, stages, connection), connection


class Watchdog:
    """Ends the run past a memory or wall-time limit, keeping what was measured.

    Every 2 s it reads the process tree's RSS; over ``max_mb``, or after ``max_seconds``,
    it calls ``on_abort(reason)`` (which writes the partial JSON), kills the Beam worker
    processes and exits with code 3. On a shared machine this keeps a run that would
    not fit from pushing other processes into the out-of-memory killer.
    """

    def __init__(self, max_mb: float, max_seconds: float, on_abort) -> None:
        self.max_mb, self.deadline, self.on_abort = max_mb, time.time() + max_seconds, on_abort
        threading.Thread(target=self._run, name="watchdog", daemon=True).start()

    def _run(self) -> None:
        import psutil
        from runner import progress
        while True:
            time.sleep(2)
            rss = progress.tree_rss_bytes() / progress.MB
            reason = (f"memory {rss:,.0f} MB above the {self.max_mb:,.0f} MB limit"
                      if rss > self.max_mb else
                      "wall-time limit reached" if time.time() > self.deadline else None)
            if reason:
                print(f"[bench] ABORT: {reason}", flush=True)
                try:
                    self.on_abort(reason)
                finally:
                    for child in psutil.Process().children(recursive=True):
                        child.kill()
                    os._exit(3)


def run_one(size: int, out_dir: str, steps: int, beam_args: Sequence[str],
            seed: int = 42, max_mb: float = 12_000, max_seconds: float = 6 * 3600,
            until: str = "train") -> dict:
    """All stages for one size; returns the figures (also written as JSON after each stage)."""
    from tfx import v1 as tfx
    from ingest import prepare as prep
    from ingest import synthetic
    from runner import local, mlmd_summary, progress
    root = os.path.abspath(os.path.join(out_dir, f"n{size}"))
    for stale in ("raw", "prepared", "pipeline", "model", "scale.json"):  # all from scratch
        path = os.path.join(root, stale)
        shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) else \
            os.path.exists(path) and os.remove(path)
    os.makedirs(root, exist_ok=True)
    result = {"interactions": size, "steps": steps, "beam_args": list(beam_args),
              "until": until,
              "machine_start": machine(),
              # Memory of this process before any stage: Python, TensorFlow and TFX imported.
              "baseline_mb": round(progress.tree_rss_bytes() / progress.MB, 1)}
    timer = StageTimer()
    out = os.path.join(root, "scale.json")
    pipeline_progress: list = []

    def save(**extra) -> None:
        stages = timer.as_dict()
        for f in pipeline_progress:  # components finished so far
            stages.update({n: {"seconds": s, "peak_mb": f.peak_mb.get(n)}
                           for n, s in f.seconds.items()})
        write_json(out, {**result, "stages": stages, "machine_end": machine(), **extra})

    def abort(reason: str) -> None:
        current = timer.monitor.current
        save(aborted={"reason": reason, "stage": current and current[0],
                      "stage_seconds": current and round(current[1], 1),
                      "stage_peak_mb": current and timer.monitor.peak_mb.get(current[0])})

    Watchdog(max_mb, max_seconds, abort)
    cfg = synthetic.SyntheticConfig(num_interactions=size, seed=seed)
    with timer.stage("generate") as extra:
        data_dir = local.ensure_synthetic_data(os.path.join(root, "raw"), cfg)
        with open(os.path.join(data_dir, "_GENERATED.json")) as f:
            extra.update(json.load(f)["summary"])
    with timer.stage("prepare") as extra:
        data_root = local.prepared_root(root, data_dir)
        [span] = prep.prepare(data_dir, data_root)[-1:]
        split = span.report["split"]
        extra.update(rows=split["train_rows"] + split["eval_rows"],
                     train_rows=split["train_rows"], reused=span.reused)
    save()
    rows = split["train_rows"] + split["eval_rows"]
    stages = {"FileBasedExampleGen": ("FileBasedExampleGen",),
              "Transform": PIPELINE_STAGES[:-1]}.get(until, PIPELINE_STAGES)
    pipe, connection = ingest_transform_pipeline(os.path.join(root, "pipeline"), data_root,
                                                 beam_args, stages)
    f = progress.install(timer.monitor, rows={"FileBasedExampleGen": rows, "StatisticsGen": rows,
                                              "Transform": rows, "SequenceGen": rows})
    pipeline_progress.append(f)
    try:
        tfx.orchestration.LocalDagRunner().run(pipe)
    finally:
        progress.uninstall(f)
    pipeline_progress.clear()
    for name in stages:
        timer.results.append(StageResult(name, f.seconds.get(name, 0.0),
                                         f.peak_mb.get(name, 0.0), None, {"rows": rows}))
    save()
    if until == "train":
        uris = {c: mlmd_summary.component_record(connection, "scale-bench", c).uris()
                for c in ("Transform", "SequenceGen")}
        with timer.stage("train") as extra:
            extra.update(_train(uris, os.path.join(root, "model"), steps))
    result["stages"] = timer.as_dict()
    timer.close()
    result["process_max_rss_mb"] = self_max_rss_mb()
    result["machine_end"] = machine()
    write_json(os.path.join(root, "scale.json"), result)
    return result


def _train(uris: dict, model_dir: str, steps: int) -> dict:
    import tensorflow_transform as tft
    from trainer.config import TrainerConfig
    from trainer.task import train_and_export
    from transform.config import TransformConfig
    sequences = uris["SequenceGen"]["sequences"]
    summary = train_and_export(
        [os.path.join(sequences, "Split-train", "*")],
        [os.path.join(sequences, "Split-eval", "*")],
        tft.TFTransformOutput(uris["Transform"]["transform_graph"]), TrainerConfig(),
        TransformConfig(),
        os.path.join(model_dir, "Format-Serving"), os.path.join(model_dir, "run"),
        max_steps=steps)
    return {k: summary[k] for k in ("train_seconds", "catalog_seconds", "trained_examples",
                                    "examples_per_second", "train_examples", "num_items",
                                    "num_users", "batch_size")}


def print_table(results: List[dict]) -> None:
    rows = []
    for r in results:
        st = r.get("stages", {})
        row: List[Optional[object]] = [r["interactions"], r.get("baseline_mb")]
        for name in STAGES:
            s = st.get(name)
            row += [s["seconds"], s["peak_mb"]] if s else [None, None]
        tr = st.get("train", {})
        row += [tr.get("catalog_seconds"), tr.get("train_seconds"),
                tr.get("examples_per_second")]
        rows.append(row)
    header = ["interactions", "baseline MB"] + [f"{n} {u}" for n in STAGES for u in ("s", "MB")] + [
        "catalog pass s", "fit s", "fit examples/s"]
    print(table(rows, header))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="100000,1000000",
                   help="comma-separated interaction counts (default: %(default)s)")
    p.add_argument("--out", default="pipeline_output/bench-scale")
    p.add_argument("--steps", type=int, default=300, help="training steps")
    p.add_argument("--beam-pipeline-args", default="",
                   help="Beam options as one string (default: the pipeline's LOCAL_BEAM_ARGS)")
    p.add_argument("--max-memory-gb", type=float, default=12.0,
                   help="stop a size whose process tree exceeds this RSS (default: %(default)s)")
    p.add_argument("--max-minutes", type=float, default=360.0,
                   help="stop a size after this wall time (default: %(default)s)")
    p.add_argument("--until", choices=["FileBasedExampleGen", "Transform", "SequenceGen",
                                       "train"],
                   default="train", help="last stage to run (default: %(default)s)")
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--json-out", help="default: <out>/bench_scale.json")
    a = p.parse_args(argv)
    sizes = [int(s) for s in a.sizes.split(",") if s]
    beam_args = a.beam_pipeline_args.split()
    if a.one:
        if not beam_args:
            import pipeline as pipeline_def
            beam_args = list(pipeline_def.LOCAL_BEAM_ARGS)
        [size] = sizes
        run_one(size, a.out, a.steps, beam_args, max_mb=a.max_memory_gb * 1024,
                max_seconds=a.max_minutes * 60, until=a.until)
        return 0
    results = []
    out = a.json_out or os.path.join(a.out, "bench_scale.json")
    for size in sizes:  # one process per size: peak memory must not carry over
        start = time.time()
        cmd = [sys.executable, os.path.abspath(__file__), "--one", "--sizes", str(size),
               "--out", a.out, "--steps", str(a.steps), "--beam-pipeline-args",
               a.beam_pipeline_args, "--max-memory-gb", str(a.max_memory_gb),
               "--max-minutes", str(a.max_minutes), "--until", a.until]
        code = subprocess.call(cmd)
        path = os.path.join(a.out, f"n{size}", "scale.json")
        if not os.path.isfile(path):
            results.append({"interactions": size, "error": f"exit code {code}",
                            "seconds": round(time.time() - start, 1)})
        else:  # a stopped size keeps the stages it finished, and says why it stopped
            with open(path) as f:
                results.append({**json.load(f), **({"exit_code": code} if code else {})})
        write_json(out, {"steps": a.steps, "results": results})
    print_table([r for r in results if "stages" in r])
    for r in results:
        if r.get("aborted"):
            print(f"{r['interactions']:,}: stopped in {r['aborted']['stage']} after "
                  f"{r['aborted']['stage_seconds']}s: {r['aborted']['reason']}")
    print(f"JSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
