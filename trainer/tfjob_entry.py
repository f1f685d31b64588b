"""Entry of each TFJob worker: runs ``trainer.task.run_fn`` outside the pipeline.

The Training Operator sets ``TF_CONFIG`` in every worker; ``trainer/strategy.py``
reads it and picks ``MultiWorkerMirroredStrategy``, and only the chief (worker 0)
keeps the SavedModel. The same command runs a standalone TFJob
(``manifests/training/tfjob.yaml``) and the TFJobs that the pipeline's Trainer
submits (``components/tfjob_trainer/``).

    python -m trainer.tfjob_entry --transformed-examples URI --transform-graph URI \\
        --output-dir URI [--custom-config JSON] [--train-steps N]
"""
from __future__ import annotations

import project_env  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow loads)

import argparse
import json
import os
import sys
from typing import List, Optional

RUN_FN = "trainer.task.run_fn"
SERVING_SUBDIR = "Format-Serving"  # TFX's layout of a Model artifact


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="trainer.tfjob_entry", description=__doc__.split(
        "\n\n")[0])
    p.add_argument("--transformed-examples", help="Transform's transformed_examples URI "
                   "(reads Split-train/* and Split-eval/*)")
    p.add_argument("--train-files", action="append", default=[], help="file pattern")
    p.add_argument("--eval-files", action="append", default=[], help="file pattern")
    p.add_argument("--transform-graph", required=True, help="Transform's transform_graph URI")
    p.add_argument("--output-dir", help="model folder: SavedModel in Format-Serving/, "
                   "training history in model_run/")
    p.add_argument("--serving-model-dir", help="SavedModel folder (overrides --output-dir)")
    p.add_argument("--model-run-dir", help="history folder (overrides --output-dir)")
    p.add_argument("--custom-config", default="{}", help="the Trainer's custom_config JSON")
    p.add_argument("--train-steps", type=int, default=0, help="0: the configured epochs")
    p.add_argument("--run-fn", default=RUN_FN)
    return p


def fn_args_from(a: argparse.Namespace):
    """The ``FnArgs`` that TFX's Trainer would pass to ``run_fn``."""
    from tfx.components.trainer.fn_args_utils import FnArgs
    train = list(a.train_files)
    evals = list(a.eval_files)
    if a.transformed_examples:
        train.append(os.path.join(a.transformed_examples, "Split-train", "*"))
        evals.append(os.path.join(a.transformed_examples, "Split-eval", "*"))
    if not train or not evals:
        raise ValueError("give --transformed-examples or both --train-files and --eval-files")
    serving = a.serving_model_dir or (a.output_dir and os.path.join(a.output_dir, SERVING_SUBDIR))
    run_dir = a.model_run_dir or (a.output_dir and os.path.join(a.output_dir, "model_run"))
    if not serving or not run_dir:
        raise ValueError("give --output-dir, or --serving-model-dir and --model-run-dir")
    return FnArgs(train_files=train, eval_files=evals, transform_output=a.transform_graph,
                  transform_graph_path=a.transform_graph, serving_model_dir=serving,
                  model_run_dir=run_dir, custom_config=json.loads(a.custom_config),
                  train_steps=a.train_steps or None)


def main(argv: Optional[List[str]] = None) -> int:
    from tfx.utils import import_utils
    a = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    fn_args = fn_args_from(a)
    run_fn = import_utils.import_func_from_module(*a.run_fn.rsplit(".", 1))
    run_fn(fn_args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
