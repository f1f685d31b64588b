"""Local entry point: prepares the data, then runs the pipeline with LocalDagRunner.

ML Metadata is a SQLite file under the pipeline root, so a second run with unchanged
inputs finds every component's previous result there and reuses it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from typing import Dict, Optional, Sequence

from tfx import v1 as tfx

import pipeline as pipeline_def
from ingest import prepare as prep
from ingest import synthetic
from ingest.split import SplitConfig
from trainer.config import TrainerConfig
from components.retrieval_evaluator.gate import GateConfig
from runner import mlmd_summary, progress, run_summary
# Pipeline-root layout, kept below the report so the report never imports the runner;
# callers keep using local.metadata_path and local.prepared_root.
from layout import REPORT_FILE, metadata_path, prepared_root  # noqa: F401


@dataclasses.dataclass(frozen=True)
class LocalRunOptions:
    pipeline_root: str
    data_dir: Optional[str] = None  # None: built-in synthetic data
    synthetic: synthetic.SyntheticConfig = synthetic.SyntheticConfig()
    split: Optional[SplitConfig] = None  # None: ingest.prepare.default_split
    eval_fraction: float = 0.2  # of the default split
    beam_pipeline_args: Sequence[str] = pipeline_def.LOCAL_BEAM_ARGS
    max_bad_fraction: float = 0.01
    enable_cache: bool = True
    trainer: TrainerConfig = TrainerConfig()
    gate: GateConfig = GateConfig()
    serving_dir: Optional[str] = None  # default <pipeline_root>/serving
    max_compression_recall_drop: float = 0.02
    write_report: bool = True  # <pipeline_root>/report.html after the run


def ensure_synthetic_data(raw_root: str, cfg: synthetic.SyntheticConfig, log=print) -> str:
    """Generates the synthetic data set once per config; later runs reuse the files."""
    key = hashlib.sha256(json.dumps(dataclasses.asdict(cfg), sort_keys=True).encode())
    directory = os.path.join(raw_root, f"synthetic-{key.hexdigest()[:12]}")
    done = os.path.join(directory, "_GENERATED.json")
    if not os.path.isfile(done):
        log(f"[data] generating synthetic data ({cfg.num_interactions} interactions, "
            f"seed {cfg.seed}) -> {directory}")
        tmp = directory + ".tmp"
        summary = synthetic.generate(tmp, cfg, log=log)
        with open(os.path.join(tmp, "_GENERATED.json"), "w") as f:
            json.dump({"config": dataclasses.asdict(cfg), "summary": summary}, f, indent=2)
        os.replace(tmp, directory)
    return directory


def component_record(pipeline_root: str, component: str) -> mlmd_summary.ComponentRecord:
    """What the newest run under ``pipeline_root`` recorded for ``component``."""
    connection = tfx.orchestration.metadata.sqlite_metadata_connection_config(
        metadata_path(pipeline_root))
    return mlmd_summary.component_record(connection, pipeline_def.PIPELINE_NAME, component)


def run(opts: LocalRunOptions, log=print) -> dict:
    """Runs the whole local pipeline; returns a summary dict."""
    start = time.time()
    root = os.path.abspath(opts.pipeline_root)
    os.makedirs(root, exist_ok=True)
    monitor = progress.StageMonitor(log=log).start()
    try:
        return _run(opts, root, start, monitor, log)
    finally:
        monitor.stop()


def _run(opts: LocalRunOptions, root: str, start: float, monitor: progress.StageMonitor,
         log) -> dict:
    stage_seconds: Dict[str, float] = {}
    t = time.time()
    if not opts.data_dir:
        monitor.begin_stage("synthetic data")
        data_dir = ensure_synthetic_data(os.path.join(root, "raw"), opts.synthetic, log)
        monitor.end_stage()
        stage_seconds["synthetic data"] = round(time.time() - t, 1)
    else:
        data_dir = opts.data_dir
    data_root = prepared_root(root, data_dir)
    t = time.time()
    monitor.begin_stage("prepare")
    split = opts.split or prep.default_split(data_dir, None, opts.eval_fraction)
    spans = prep.prepare(data_dir, data_root, split, opts.max_bad_fraction, log)
    monitor.end_stage()
    stage_seconds["prepare"] = round(time.time() - t, 1)
    cfg = pipeline_def.PipelineConfig(pipeline_root=root, data_root=data_root,
                                      beam_pipeline_args=tuple(opts.beam_pipeline_args),
                                      enable_cache=opts.enable_cache, trainer=opts.trainer,
                                      gate=opts.gate, max_compression_recall_drop=(
                                          opts.max_compression_recall_drop),
                                      serving_dir=os.path.abspath(opts.serving_dir)
                                      if opts.serving_dir else "")
    connection = tfx.orchestration.metadata.sqlite_metadata_connection_config(
        metadata_path(root))
    log(f"[pipeline] running {cfg.pipeline_name} with LocalDagRunner; "
        f"root {root}; Beam args {' '.join(cfg.beam_pipeline_args)}")
    split = spans[-1].report["split"]
    rows = split["train_rows"] + split["eval_rows"]
    timings = progress.install(monitor, rows={"FileBasedExampleGen": rows,
                                              "StatisticsGen": rows, "Transform": rows})
    try:
        tfx.orchestration.LocalDagRunner().run(pipeline_def.create_pipeline(cfg, connection))
    finally:
        progress.uninstall(timings)
    records = mlmd_summary.last_run_records(connection, cfg.pipeline_name)
    seconds = round(time.time() - start, 1)
    log(f"[pipeline] finished in {seconds}s; ML Metadata: {metadata_path(root)}")
    log(mlmd_summary.format_records(records, root))
    summary = run_summary.build(records)
    summary["timings"] = run_summary.timings(stage_seconds, timings.seconds, {
        **{k: v for k, v in monitor.peak_mb.items() if k in stage_seconds}, **timings.peak_mb})
    span_dir = os.path.join(data_root, f"span-{spans[-1].span}")
    summary["prepared_span_dir"] = span_dir
    log(f"[pipeline] run summary: {run_summary.write(root, summary)}")
    log(run_summary.format_summary(summary))
    report = write_run_report(root, records, span_dir, summary, log) if opts.write_report \
        else None
    return {"run_summary": summary, "seconds": seconds, "pipeline_root": root,
            "data_root": data_root, "span": spans[-1].span, "ingest_report": spans[-1].report,
            "components": {r.component: r.state for r in records},
            "component_seconds": dict(timings.seconds), "component_peak_mb": timings.peak_mb,
            "stage_seconds": stage_seconds, "report": report}


def write_run_report(root: str, records, span_dir: str, summary: dict, log=print
                     ) -> Optional[str]:
    """Writes ``<root>/report.html``; a failure is logged, never raised (the run is done)."""
    t = time.time()
    try:
        from evaluation import report
        inputs = report.collect(root, {r.component: r.uris() for r in records}, span_dir,
                                summary["timings"]["component_seconds"],
                                summary["timings"]["peak_memory_mb"], summary)
        path = report.write_report(inputs)
    except Exception as e:  # noqa: BLE001  (the report is optional; the run succeeded)
        log(f"[report] WARNING: could not write the report: {type(e).__name__}: {e}")
        stale = os.path.join(root, REPORT_FILE)
        if os.path.isfile(stale):
            log(f"[report] WARNING: {stale} is from an earlier run")
        return None
    log(f"[report] {path} ({time.time() - t:.1f}s)")
    return path
