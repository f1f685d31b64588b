"""Command line of ``pipeline.py`` (see CONTRACTS.md)."""
from __future__ import annotations

import argparse
import os
import shlex
import sys
from typing import List, Optional

from ingest import synthetic
from ingest.report import InputDataError
from ingest.split import STRATEGIES, SplitConfig
from components.retrieval_evaluator.gate import GateConfig
from trainer.config import TrainerConfig

DEFAULT_PIPELINE_ROOT = "pipeline_output"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pipeline.py", description="Two-tower recommender TFX "
                                "pipeline.")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the pipeline locally (LocalDagRunner)")
    run.add_argument("--data-dir", help="raw data: MovieLens 100K/1M/latest or a folder with "
                     "interactions.csv (default: built-in synthetic data)")
    run.add_argument("--pipeline-root", default=DEFAULT_PIPELINE_ROOT,
                     help="artifacts, prepared data and ML Metadata (default: %(default)s)")
    run.add_argument("--serving-dir", help="TensorFlow Serving base directory for the Pusher "
                     "(default: <pipeline-root>/serving)")
    run.add_argument("--min-recall", type=float, help="evaluator's absolute recall@50 floor (default: twice a random ranking's)")
    run.add_argument("--min-coverage", type=float, help="evaluator's coverage@50 floor (default: twice a single shared list's)")
    run.add_argument("--beam-pipeline-args", default=None,
                     help="Beam options as one string, e.g. \"--runner=FlinkRunner "
                     "--flink_master=host:8081\" (default: DirectRunner, multi-processing)")
    run.add_argument("--split", choices=STRATEGIES, default=None,
                     help="temporal split strategy (default: newest_span when DIR holds "
                     "span-N increments, else per_user)")
    run.add_argument("--eval-fraction", type=float, default=0.2)
    run.add_argument("--max-bad-fraction", type=float, default=0.01,
                     help="stop if more than this share of input rows is malformed")
    run.add_argument("--synthetic-interactions", type=int,
                     default=synthetic.SyntheticConfig.num_interactions)
    run.add_argument("--synthetic-users", type=int,
                     default=synthetic.SyntheticConfig.num_users,
                     help="users of the built-in synthetic data (default: 0, one per 50 "
                     "interactions)")
    run.add_argument("--synthetic-items", type=int,
                     default=synthetic.SyntheticConfig.num_items,
                     help="items of the built-in synthetic data (default: 0, about 6 "
                     "sqrt(interactions))")
    run.add_argument("--seed", type=int, default=synthetic.SyntheticConfig.seed)
    run.add_argument("--epochs", type=int, default=TrainerConfig.epochs,
                     help="training epochs (default: %(default)s)")
    run.add_argument("--full-retrain", action="store_true",
                     help="train from scratch instead of warm-starting from the previous "
                     "run's model")
    run.add_argument("--no-cache", action="store_true", help="re-run every component")

    comp = sub.add_parser("compile", help="write the Kubeflow Pipelines v2 spec")
    _compile_options(comp)
    up = sub.add_parser("upload", help="compile, then upload as a pipeline or a new version "
                        "of it (KFP API; token from $KF_PIPELINES_TOKEN or cookie from "
                        "$KF_PIPELINES_COOKIE)")
    _compile_options(up)
    _api_options(up)
    up.add_argument("--version-name", help="name of the new version (default: the image tag)")
    sch = sub.add_parser("schedule", help="create a recurring run of the uploaded pipeline")
    _api_options(sch)
    sch.add_argument("--cron", required=True, help="cron expression, 5 fields or KFP's 6 "
                     "(seconds first), e.g. \"0 3 * * *\" for 03:00 daily")
    sch.add_argument("--experiment", default="twotower-recommender",
                     help="experiment name, created if missing (default: %(default)s)")
    sch.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                     help="pipeline parameter, repeatable: data_root, min_recall, "
                     "min_coverage, max_compression_recall_drop, push_destination")
    sch.add_argument("--pipeline-root", help="artifact root of these runs (default: the "
                     "spec's defaultPipelineRoot)")
    sch.add_argument("--job-name", help="recurring run name (default: from the cron)")
    tag = sub.add_parser("image-tag", help="print the image tag <registry>/"
                         "twotower-recommender:<version>-<git sha>")
    tag.add_argument("--registry", default="", help="e.g. ghcr.io/acme")
    return p


def _compile_options(p: argparse.ArgumentParser) -> None:
    from runner import kubeflow as kf
    p.add_argument("--output", help="spec file, .json or .yaml (default: %s; upload: a "
                   "temporary file)" % kf.DEFAULT_OUTPUT)
    p.add_argument("--image", help="pipeline image (default: the image-tag of this "
                   "commit, without a registry)")
    p.add_argument("--pipeline-root", dest="kfp_pipeline_root",
                   default=kf.DEFAULT_PIPELINE_ROOT,
                   help="default artifact root (default: %(default)s)")
    p.add_argument("--data-root", default=kf.DEFAULT_DATA_ROOT,
                   help="default of the data_root parameter: prepared data, "
                   "span-N/{train,eval}/*.parquet (default: %(default)s)")
    p.add_argument("--serving-dir", default=kf.DEFAULT_SERVING_DIR,
                   help="default Pusher base directory (default: %(default)s)")
    p.add_argument("--model-pvc", default="twotower-models",
                   help="claim mounted at /models in the Pusher step; \"\" for none "
                   "(YAML output only)")
    p.add_argument("--data-pvc", default="twotower-data",
                   help="claim mounted at /data in the ExampleGen step; \"\" for none "
                   "(YAML output only)")
    p.add_argument("--warm-start-dir", default=kf.DEFAULT_WARM_START_DIR,
                   help="where the Trainer keeps its towers for the next run's warm start, "
                   "on the model volume; with --tfjob-workers, storage the workers reach "
                   "(e.g. gs://bucket/warm-start); \"\" trains from scratch every run "
                   "(default: %(default)s)")
    p.add_argument("--beam-runner", choices=sorted(kf.BEAM_RUNNERS), default="direct",
                   help="Beam runner of ExampleGen, StatisticsGen and Transform "
                   "(default: %(default)s)")
    p.add_argument("--beam-pipeline-args", default="",
                   help="extra Beam options as one string; write it with '=', e.g. "
                   "--beam-pipeline-args=\"--job_endpoint=flink-jobserver:8099\"")
    p.add_argument("--trainer-cpu", type=float, default=pipeline_resources().cpu)
    p.add_argument("--trainer-memory-gib", type=float,
                   default=pipeline_resources().memory_gib)
    p.add_argument("--trainer-gpus", type=int, default=pipeline_resources().gpu_count)
    p.add_argument("--epochs", type=int, default=TrainerConfig.epochs)
    p.add_argument("--tfjob-workers", type=int, default=0,
                   help="train on a TFJob with this many workers (0: in the Trainer step)")
    p.add_argument("--tfjob-gpus-per-worker", type=int, default=1)
    p.add_argument("--tfjob-namespace", default="kubeflow-user-example-com")
    p.add_argument("--tfjob-staging-dir", default="",
                   help="storage both the Trainer step and the workers reach, e.g. "
                   "gs://bucket/tfjob-staging")


def _api_options(p: argparse.ArgumentParser) -> None:
    from runner import kfp_api
    p.add_argument("--host", required=True, help="KFP API endpoint, e.g. "
                   "http://localhost:8080 or https://kubeflow.example.com/pipeline")
    p.add_argument("--pipeline-name", default="twotower-recommender")
    p.add_argument("--namespace", help="Kubeflow profile namespace (multi-user)")
    p.add_argument("--api-timeout", type=float, default=kfp_api.DEFAULT_TIMEOUT_SECONDS,
                   metavar="SECONDS",
                   help="give up on a KFP API request after this long without an answer "
                   "(default: %(default)s)")


def pipeline_resources():
    import pipeline as pipeline_def
    return pipeline_def.TRAINER_RESOURCES


def kubeflow_options(a: argparse.Namespace):
    import pipeline as pipeline_def
    from runner import kubeflow as kf
    image = a.image or kf.image_tag()
    tfjob = None
    if a.tfjob_workers:
        tfjob = {"workers": a.tfjob_workers, "gpus_per_worker": a.tfjob_gpus_per_worker,
                 "namespace": a.tfjob_namespace, "staging_dir": a.tfjob_staging_dir}
    return kf.KubeflowOptions(
        image=image, pipeline_root=a.kfp_pipeline_root, data_root=a.data_root,
        serving_dir=a.serving_dir, beam_runner=a.beam_runner,
        beam_pipeline_args=tuple(shlex.split(a.beam_pipeline_args)),
        trainer_resources=pipeline_def.Resources(cpu=a.trainer_cpu,
                                                 memory_gib=a.trainer_memory_gib,
                                                 gpu_count=a.trainer_gpus),
        trainer=TrainerConfig(epochs=a.epochs),
        model_volume=kf.VolumeMount(a.model_pvc, "/models") if a.model_pvc else None,
        data_volume=kf.VolumeMount(a.data_pvc, "/data") if a.data_pvc else None,
        tfjob=tfjob, warm_start_dir=a.warm_start_dir)


def _compile(a: argparse.Namespace, output: str) -> str:
    from runner import kubeflow as kf
    opts = kubeflow_options(a)
    spec, platform = kf.compile_spec(opts)
    path = kf.write(spec, platform, output)
    print(f"[compile] {path}: {len(spec['root']['dag']['tasks'])} steps, image {opts.image}, "
          f"root {spec.get('defaultPipelineRoot')}", file=sys.stderr)
    return path


def _upload(a: argparse.Namespace) -> int:
    import tempfile
    from runner import kfp_api
    with tempfile.TemporaryDirectory() as tmp:
        path = _compile(a, a.output or os.path.join(tmp, "twotower-recommender.yaml"))
        kfp = kfp_api.client(a.host, a.namespace, timeout=a.api_timeout)
        version = a.version_name or (a.image or "").rsplit(":", 1)[-1] or os.path.basename(path)
        result = kfp_api.upload(kfp, path, a.pipeline_name, version)
    what = "pipeline" if result.new_pipeline else "version"
    print(f"[upload] new {what}: pipeline {a.pipeline_name} ({result.pipeline_id}), version "
          f"{result.version_name} ({result.version_id})")
    return 0


def _schedule(a: argparse.Namespace) -> int:
    from runner import kfp_api
    from runner import kubeflow as kf
    kfp = kfp_api.client(a.host, a.namespace, timeout=a.api_timeout)
    params = kfp_api.parse_params(a.param, kf.PARAMETER_TYPES)
    run = kfp_api.schedule(kfp, a.pipeline_name, a.cron, a.experiment, params,
                           job_name=a.job_name or "", pipeline_root=a.pipeline_root or "",
                           namespace=a.namespace)
    print(f"[schedule] recurring run {run.display_name} ({run.recurring_run_id}): cron "
          f"{kfp_api.kfp_cron(a.cron)!r}, experiment {a.experiment}")
    return 0


def _run(a: argparse.Namespace) -> int:
    from runner import local
    import pipeline as pipeline_def
    beam_args = (shlex.split(a.beam_pipeline_args) if a.beam_pipeline_args is not None
                 else pipeline_def.LOCAL_BEAM_ARGS)
    opts = local.LocalRunOptions(
        pipeline_root=a.pipeline_root, data_dir=a.data_dir,
        synthetic=synthetic.SyntheticConfig(num_interactions=a.synthetic_interactions,
                                            num_users=a.synthetic_users,
                                            num_items=a.synthetic_items, seed=a.seed),
        split=SplitConfig(a.split, a.eval_fraction) if a.split else None,
        eval_fraction=a.eval_fraction, beam_pipeline_args=tuple(beam_args),
        max_bad_fraction=a.max_bad_fraction, enable_cache=not a.no_cache,
        trainer=TrainerConfig(epochs=a.epochs, full_retrain=a.full_retrain),
        serving_dir=a.serving_dir,
        gate=GateConfig(min_recall=a.min_recall, min_coverage=a.min_coverage))
    local.run(opts)
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    a = _parser().parse_args(argv)
    try:
        if a.command == "run":
            return _run(a)
        if a.command == "compile":
            from runner import kubeflow as kf
            _compile(a, a.output or kf.DEFAULT_OUTPUT)
            return 0
        if a.command == "upload":
            return _upload(a)
        if a.command == "schedule":
            return _schedule(a)
        if a.command == "image-tag":
            from runner import kubeflow as kf
            print(kf.image_tag(a.registry))
            return 0
    except InputDataError as e:  # the user's input only; an internal missing file is a bug
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ConnectionError as e:  # kfp_api.KFPUnreachable: no answer from the KFP API
        print(f"error: {e}", file=sys.stderr)
        return 3
    except ValueError as e:  # bad Kubeflow options, parameters or API answers
        if a.command == "run":
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    raise AssertionError(a.command)
