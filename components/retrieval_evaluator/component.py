"""RetrievalEvaluator: recall, NDCG and coverage at several K, and the blessing gate.

TFMA's Evaluator scores one prediction per example and has no catalog-level metric
such as coverage; a retrieval model is judged per user over a ranked catalog, with
the user's train items excluded. This component does that through the model's own
``recommend_given_history`` signature (the train items as the query's history, so no
eval item leaks into it; ``recommend_excluding`` for older models), in batches of
users, and emits a standard
``ModelBlessing`` (custom property ``blessed``) that the Pusher and
``LatestBlessedModelStrategy`` understand.

The regression baseline is the version served now (the newest under
``baseline_serving_dir``), or a ``baseline_model`` artifact if one is wired in; it is
scored by the same code on the same split as the candidate.

At scale, at most ``max_eval_users`` eval users are scored (0: all), a sample fixed
by ``eval_sample_seed`` (``evaluation.sampling``): the candidate, the popularity
baseline and the served model on the same users. ``evaluation.json``'s ``sample``
gives its size, the population's, and 95% intervals of recall at the gate's K (and of
the candidate's paired differences with the others). ``ann_recall`` compares the
served index (``serving_default``) with brute force (``recommend_exact``) on up to
``ANN_RECALL_USERS`` of them; the gate itself scores ``recommend_given_history``,
which goes through the served index.

Memory at a 1M-item catalog: one model is loaded at a time, and popularity is ranked
without a ``[users, items]`` array (``evaluation.baselines.rank_batches``);
``bench/evaluator_memory.py`` measures each step.
"""
from __future__ import annotations

import gc
import json
import os
from typing import Any, Dict, List, Optional

import tensorflow as tf
import tensorflow_transform as tft
from absl import logging
from tfx import types
from tfx.dsl.components.base import base_component, base_executor, executor_spec
from tfx.types import artifact_utils, standard_artifacts
from tfx.types.component_spec import ChannelParameter, ExecutionParameter

from components.retrieval_evaluator.gate import GateConfig, run_gate
from evaluation.baselines import accumulate_baseline
from evaluation.model_eval import accumulate_saved_model, ann_recall_against_exact
from evaluation.sampling import DEFAULT_MAX_USERS, DEFAULT_SEED, describe_sample, \
    sample_eval_users
import layout
from evaluation.split_data import load_split_from_examples
from serving.savedmodel.export import read_index_report
from serving.savedmodel.fingerprint import newest_version_dir
from transform import features as F

METRICS_FILE = layout.EVALUATION_METRICS_FILE
REPORT_FILE = "report.txt"
NO_FLOOR = -1.0  # parameter value meaning "use the data-scaled default floor"
ANN_RECALL_USERS = 256  # users on whom serving_default is compared with recommend_exact


def serving_dir(model: types.Artifact) -> str:
    return os.path.join(model.uri, "Format-Serving")


def write_blessing(blessing: types.Artifact, blessed: bool, model: types.Artifact) -> None:
    """Marks a ``ModelBlessing`` the way TFX's Evaluator does (file + custom properties)."""
    name = "BLESSED" if blessed else "NOT_BLESSED"
    with open(os.path.join(blessing.uri, name), "w"):
        pass
    blessing.set_int_custom_property("blessed", int(blessed))
    blessing.set_string_custom_property("current_model", model.uri)
    blessing.set_int_custom_property("current_model_id", model.id)


def ann_recall_key(k: int) -> str:
    return f"ann_recall@{k}_vs_exact"


def format_report(title: str, metrics: Dict[str, Dict[str, float]], checks, blessed: bool,
                  ks: List[int], sample: Optional[dict] = None,
                  ann: Optional[dict] = None) -> str:
    lines = [title, ""]
    cols = [f"{m}@{k}" for k in ks for m in ("recall", "ndcg", "coverage")]
    lines.append(f"{'':<16}" + "".join(f"{c:>14}" for c in cols))
    for name, m in metrics.items():
        if m is not None:
            lines.append(f"{name:<16}" + "".join(f"{m.get(c, float('nan')):>14.4f}"
                                                 for c in cols))
    if sample is not None:
        lines += ["", f"Users scored: {sample['users']:,} of {sample['population']:,} with "
                  f"eval items" + (f" (fixed-seed sample, seed {sample['seed']}, at most "
                                   f"{sample['max_users']:,})" if sample["sampled"]
                                   else " (all)")]
        # Everyone scored: the intervals are the figures themselves (metrics.json).
        for key in (k for k in sample if k.endswith("_ci95") and sample["sampled"]):
            metric = key.split("_")[0]
            paired = ", paired on the same users" if "_diff_" in key else ""
            for name, (lo, hi) in sample[key].items():
                lines.append(f"  {metric} {name.replace('-', ' - ')}: 95% interval "
                             f"[{lo:.4f}, {hi:.4f}]{paired}")
    if ann is not None:
        value = ann.get("recall_vs_exact")
        lines += ["", f"ANN recall@{ann.get('k')} vs exact: "
                  f"{'n/a' if value is None else f'{value:.4f}'} "
                  f"({ann.get('index') or 'unknown'} index, serving_default vs "
                  f"recommend_exact on {ann.get('recall_queries', 0)} users)"]
    lines += ["", "Gate: " + ("BLESSED" if blessed else "NOT BLESSED")]
    lines += [f"  [{'pass' if c.passed else 'FAIL'}] {c.name}: {c.message}" for c in checks]
    return "\n".join(lines) + "\n"


class RetrievalEvaluatorSpec(types.ComponentSpec):
    PARAMETERS = {
        "ks": ExecutionParameter(type=str),  # JSON list, e.g. "[10, 20, 50, 100]"
        "gate_k": ExecutionParameter(type=int),
        "min_recall": ExecutionParameter(type=float),
        "min_coverage": ExecutionParameter(type=float),
        "regression_tolerance": ExecutionParameter(type=float),
        "batch_size": ExecutionParameter(type=int),
        # Where no Resolver can run (Kubeflow's open-source backend), the newest pushed
        # version under this directory is the baseline instead.
        "baseline_serving_dir": ExecutionParameter(type=str, optional=True),
        # Eval users scored at most (0: all) and the seed of the sample
        # (evaluation.sampling); defaults when absent (specs compiled before them).
        "max_eval_users": ExecutionParameter(type=int, optional=True),
        "eval_sample_seed": ExecutionParameter(type=int, optional=True),
    }
    INPUTS = {
        "model": ChannelParameter(type=standard_artifacts.Model),
        "examples": ChannelParameter(type=standard_artifacts.Examples),
        "transform_graph": ChannelParameter(type=standard_artifacts.TransformGraph),
        "baseline_model": ChannelParameter(type=standard_artifacts.Model, optional=True),
    }
    OUTPUTS = {
        "evaluation": ChannelParameter(type=standard_artifacts.ModelEvaluation),
        "blessing": ChannelParameter(type=standard_artifacts.ModelBlessing),
    }


class Executor(base_executor.BaseExecutor):
    def Do(self, input_dict: Dict[str, List[types.Artifact]],
           output_dict: Dict[str, List[types.Artifact]], exec_properties: Dict[str, Any]) -> None:
        model = artifact_utils.get_single_instance(input_dict["model"])
        examples = artifact_utils.get_single_instance(input_dict["examples"])
        graph = artifact_utils.get_single_instance(input_dict["transform_graph"])
        baseline: Optional[types.Artifact] = (input_dict.get("baseline_model") or [None])[0]
        evaluation = artifact_utils.get_single_instance(output_dict["evaluation"])
        blessing = artifact_utils.get_single_instance(output_dict["blessing"])

        ks = sorted(json.loads(exec_properties["ks"]))
        gate = GateConfig(
            k=int(exec_properties["gate_k"]),
            min_recall=None if exec_properties["min_recall"] < 0
            else float(exec_properties["min_recall"]),
            min_coverage=None if exec_properties["min_coverage"] < 0
            else float(exec_properties["min_coverage"]),
            regression_tolerance=float(exec_properties["regression_tolerance"]))
        if gate.k not in ks:
            ks = sorted(set(ks) | {gate.k})
        batch = int(exec_properties["batch_size"])

        max_users, seed = (exec_properties.get(k) for k in ("max_eval_users",
                                                             "eval_sample_seed"))
        max_users = DEFAULT_MAX_USERS if max_users is None else int(max_users)
        seed = DEFAULT_SEED if seed is None else int(seed)

        catalog = tft.TFTransformOutput(graph.uri).vocabulary_by_name(F.ITEM_VOCAB)
        catalog = [x.decode() if isinstance(x, bytes) else x for x in catalog]
        split = load_split_from_examples(examples.uri, catalog)
        rows, population = sample_eval_users(split, max_users, seed)
        if len(rows) < population:
            logging.info("RetrievalEvaluator: scoring %d of %d eval users (seed %d)",
                         len(rows), population, seed)
        # One model in memory at a time: the candidate, then the served one.
        loaded = tf.saved_model.load(serving_dir(model))
        accs = {}
        accs["model"], latency = accumulate_saved_model(loaded, split, ks, batch, rows)
        ann = ann_recall_against_exact(loaded, split, rows, ANN_RECALL_USERS, seed)
        del loaded
        gc.collect()
        accs["popularity"] = accumulate_baseline(split, "popularity", ks, rows)
        metrics: Dict[str, Optional[Dict[str, float]]] = {
            "model": {**accs["model"].result(), "latency_ms_per_batch": latency},
            "popularity": accs["popularity"].result()}
        if ann is not None:
            index = read_index_report(serving_dir(model)) or {}
            ann.update(index=index.get("kind"), users_asked=min(len(rows), ANN_RECALL_USERS),
                       seed=seed, export_recall_vs_exact=index.get("recall_vs_exact"))
            if ann["recall_vs_exact"] is not None:
                metrics["model"][ann_recall_key(ann["k"])] = ann["recall_vs_exact"]
        base_metrics, baseline_path = None, None
        if baseline is not None and baseline.uri != model.uri:
            baseline_path = serving_dir(baseline)
        elif baseline is None:
            baseline_path = newest_version_dir(exec_properties.get("baseline_serving_dir") or "")
        if baseline_path:
            accs["served"], latency = accumulate_saved_model(baseline_path, split, ks, batch,
                                                             rows)
            base_metrics = {**accs["served"].result(), "latency_ms_per_batch": latency}
            gc.collect()
        metrics["served"] = base_metrics
        checks = run_gate(gate, metrics["model"], metrics["popularity"], base_metrics,
                          len(catalog))
        blessed = all(c.passed for c in checks)
        sample = describe_sample(rows, population, max_users, seed,
                                 {name: acc.user_recall(gate.k) for name, acc in accs.items()},
                                 gate.k)

        result = {
            "metrics": metrics, "gate_k": gate.k, "ks": ks, "blessed": blessed,
            "floors": gate.floors(len(catalog)),
            "checks": [c.__dict__ for c in checks],
            "catalog_size": len(catalog), "eval_users": metrics["model"]["users"],
            "eval_population": population, "sample": sample, "ann_recall": ann,
            "model": model.uri, "baseline_model": baseline_path,
        }
        with open(os.path.join(evaluation.uri, METRICS_FILE), "w") as f:
            json.dump(result, f, indent=2)
        report = format_report(f"Retrieval evaluation of {model.uri}", metrics, checks,
                               blessed, [k for k in ks if k in (10, gate.k)], sample, ann)
        with open(os.path.join(evaluation.uri, REPORT_FILE), "w") as f:
            f.write(report)
        write_blessing(blessing, blessed, model)
        failed = [c for c in checks if not c.passed]
        if failed:
            logging.warning("RetrievalEvaluator did NOT bless the model: %s",
                            "; ".join(f"{c.name}: {c.message}" for c in failed))
        logging.info("\n%s", report)


class RetrievalEvaluator(base_component.BaseComponent):
    """Gates a two-tower model on recall@K, coverage@K, popularity and the last blessed."""

    SPEC_CLASS = RetrievalEvaluatorSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)

    def __init__(self, model, examples, transform_graph, baseline_model=None,
                 ks=(10, 20, 50, 100), gate: GateConfig = GateConfig(),
                 batch_size: int = 256, baseline_serving_dir="",
                 max_eval_users: int = DEFAULT_MAX_USERS,
                 eval_sample_seed: int = DEFAULT_SEED):
        super().__init__(spec=RetrievalEvaluatorSpec(
            model=model, examples=examples, transform_graph=transform_graph,
            baseline_model=baseline_model, ks=json.dumps(sorted(ks)), gate_k=gate.k,
            min_recall=NO_FLOOR if gate.min_recall is None else gate.min_recall,
            min_coverage=NO_FLOOR if gate.min_coverage is None else gate.min_coverage,
            regression_tolerance=gate.regression_tolerance, batch_size=batch_size,
            baseline_serving_dir=baseline_serving_dir, max_eval_users=max_eval_users,
            eval_sample_seed=eval_sample_seed,
            evaluation=types.Channel(type=standard_artifacts.ModelEvaluation),
            blessing=types.Channel(type=standard_artifacts.ModelBlessing)))
