"""Command line of ``pipeline.py`` (see CONTRACTS.md)."""
from __future__ import annotations

import argparse
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
    run.add_argument("--split", choices=STRATEGIES, default="per_user",
                     help="temporal split strategy (default: %(default)s)")
    run.add_argument("--eval-fraction", type=float, default=0.2)
    run.add_argument("--max-bad-fraction", type=float, default=0.01,
                     help="stop if more than this share of input rows is malformed")
    run.add_argument("--synthetic-interactions", type=int,
                     default=synthetic.SyntheticConfig.num_interactions)
    run.add_argument("--seed", type=int, default=synthetic.SyntheticConfig.seed)
    run.add_argument("--epochs", type=int, default=TrainerConfig.epochs,
                     help="training epochs (default: %(default)s)")
    run.add_argument("--no-cache", action="store_true", help="re-run every component")
    return p


def _run(a: argparse.Namespace) -> int:
    from runner import local
    import pipeline as pipeline_def
    beam_args = (shlex.split(a.beam_pipeline_args) if a.beam_pipeline_args is not None
                 else pipeline_def.LOCAL_BEAM_ARGS)
    opts = local.LocalRunOptions(
        pipeline_root=a.pipeline_root, data_dir=a.data_dir,
        synthetic=synthetic.SyntheticConfig(num_interactions=a.synthetic_interactions,
                                            seed=a.seed),
        split=SplitConfig(a.split, a.eval_fraction), beam_pipeline_args=tuple(beam_args),
        max_bad_fraction=a.max_bad_fraction, enable_cache=not a.no_cache,
        trainer=TrainerConfig(epochs=a.epochs), serving_dir=a.serving_dir,
        gate=GateConfig(min_recall=a.min_recall, min_coverage=a.min_coverage))
    local.run(opts)
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    a = _parser().parse_args(argv)
    try:
        if a.command == "run":
            return _run(a)
    except (InputDataError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    raise AssertionError(a.command)
