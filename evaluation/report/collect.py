"""Reads what the report shows from one run: artifacts, run_summary.json, timings."""
from __future__ import annotations

import json
import os
from typing import Mapping, Optional

import layout
from evaluation.report.baselines import item_baselines
from evaluation.report.bias import popularity_bias
from evaluation.report.inputs import ReportInputs


def _read_json(path: str) -> Optional[dict]:
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def collect(pipeline_root: str, uris: Mapping[str, Mapping[str, str]], span_dir: Optional[str],
            component_seconds: Mapping[str, float],
            component_peak_mb: Optional[Mapping[str, float]] = None,
            run_summary: Optional[dict] = None,
            with_item_baselines: bool = True) -> ReportInputs:
    """Reads what the report shows; ``uris`` is ``{component: {output key: uri}}``.

    A part that cannot be read is left out with a note, so one missing artifact does
    not cost the whole report.
    """
    if "RetrievalEvaluator" not in uris:
        raise FileNotFoundError("the run has no RetrievalEvaluator record")
    evaluation = _read_json(os.path.join(uris["RetrievalEvaluator"]["evaluation"],
                                         layout.EVALUATION_METRICS_FILE))
    if evaluation is None:
        raise FileNotFoundError(f"the evaluator's {layout.EVALUATION_METRICS_FILE} is missing")
    inputs = ReportInputs(pipeline_root, evaluation, component_seconds=dict(component_seconds),
                          component_peak_mb=dict(component_peak_mb or {}),
                          run_summary=run_summary)
    trainer = uris.get("Trainer", {})
    if "model_run" in trainer:
        inputs.history = _read_json(os.path.join(trainer["model_run"],
                                                 layout.TRAINING_HISTORY_FILE))
    if "report" in uris.get("ModelCompressor", {}):
        inputs.compression = _read_json(os.path.join(uris["ModelCompressor"]["report"],
                                                     layout.COMPRESSION_REPORT_FILE))
    if not span_dir:
        inputs.notes.append("popularity bias and ItemKNN/EASE need the prepared split, "
                            "which this run did not record")
    elif "model" in trainer:
        try:
            inputs.bias = popularity_bias(os.path.join(trainer["model"],
                                                       layout.SERVING_MODEL_DIR), span_dir)
        except (OSError, ValueError) as e:
            inputs.notes.append(f"popularity bias not computed: {e}")
        if with_item_baselines:
            try:
                inputs.extra_baselines, notes = item_baselines(span_dir, evaluation["ks"])
                inputs.notes.extend(notes)
            except (OSError, ValueError, MemoryError) as e:
                inputs.notes.append(f"ItemKNN/EASE not computed: {e}")
    return inputs


def from_pipeline_root(pipeline_root: str, pipeline_name: str = layout.PIPELINE_NAME,
                       with_item_baselines: bool = True) -> ReportInputs:
    """``collect`` for the newest run under ``pipeline_root``, from its ML Metadata store
    and ``run_summary.json``: what ``python -m evaluation.report`` rebuilds."""
    from layout import mlmd
    root = os.path.abspath(pipeline_root)
    records = mlmd.last_run_records(mlmd.sqlite_connection(layout.metadata_path(root)),
                                    pipeline_name)
    summary = _read_json(os.path.join(root, layout.RUN_SUMMARY_FILE)) or {}
    timings = summary.get("timings", {})
    span_dir = summary.get("prepared_span_dir")
    if not span_dir:  # runs before the summary recorded it: the only prepared span
        example_gen = next((r for r in records if r.component == "FileBasedExampleGen"), None)
        if example_gen is not None:
            found = layout.prepared_span_dirs(root, example_gen.output("examples").span)
            span_dir = found[0] if len(found) == 1 else None
    return collect(root, {r.component: r.uris() for r in records}, span_dir,
                   timings.get("component_seconds", {}), timings.get("peak_memory_mb", {}),
                   summary or None, with_item_baselines)
