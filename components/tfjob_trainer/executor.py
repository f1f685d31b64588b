"""Trainer executor for large runs: submits a Kubeflow ``TFJob`` and waits for it.

The pipeline's Trainer step stays small; the training itself runs on ``workers``
pods with ``gpus_per_worker`` GPUs each, under ``MultiWorkerMirroredStrategy``
(``trainer/strategy.py`` reads the ``TF_CONFIG`` that the Training Operator sets).
Every worker runs ``python -m trainer.tfjob_entry`` with the ``FnArgs`` that TFX's
own Trainer would pass to ``run_fn``.

The workers cannot see the step's local artifact folders (``runner/kfp_entrypoint``
stages artifacts locally, as the KFP launcher does), so with ``staging_dir`` set the
executor copies the transformed examples and the transform graph there, the chief
writes the model there, and the executor copies the model back into its output
artifact, which the launcher then uploads. ``staging_dir`` must be reachable by
TensorFlow from the step and the workers: ``gs://...``, or a ReadWriteMany volume
mounted at the same path in both. Without ``staging_dir`` the artifact URIs are used
as they are (shared storage).

The job is named after the Trainer's output model URI, which the KFP driver fixes for
the execution (run, task and, in newer KFP, a per-execution salt): a retried launcher
pod adopts the job its earlier attempt submitted, and reuses its staging folder.

Settings: the Trainer's ``custom_config["tfjob"]`` (see :class:`TFJobSettings`).
"""
from __future__ import annotations

import json
import os
from typing import Callable, Dict, List

from absl import logging
from tfx.components.trainer import executor as trainer_executor

from components.tfjob_trainer.tfjob import (CUSTOM_CONFIG_KEY, TFJobClient, TFJobFailed,
                                            TFJobSettings, custom_objects_api, job_name,
                                            tfjob_manifest)


def copy_tree(src: str, dst: str) -> None:
    """Copies a folder with ``tf.io.gfile`` (local paths, gs://, ...)."""
    import tensorflow as tf
    if not tf.io.gfile.isdir(src):
        raise FileNotFoundError(f"cannot copy {src}: no such folder")
    for folder, _, files in tf.io.gfile.walk(src):
        target = os.path.join(dst, os.path.relpath(folder, src))
        tf.io.gfile.makedirs(target)
        for f in files:
            tf.io.gfile.copy(os.path.join(folder, f), os.path.join(target, f), overwrite=True)


def _remove_tree(path: str) -> None:
    import tensorflow as tf
    if tf.io.gfile.exists(path):
        tf.io.gfile.rmtree(path)


def rebase(pattern: str, old: str, new: str) -> str:
    """``pattern`` with its leading folder ``old`` replaced by ``new``.

    Raises ``ValueError`` for a pattern outside ``old``: the workers could not read it.
    """
    old = old.rstrip("/")
    if pattern != old and not pattern.startswith(old + "/"):
        raise ValueError(f"file pattern {pattern!r} is not under the staged folder {old!r}")
    return new.rstrip("/") + pattern[len(old):]


class TFJobTrainerExecutor(trainer_executor.GenericExecutor):
    """TFX Trainer executor that trains on a TFJob instead of in its own process."""

    api_factory: Callable[[], object] = staticmethod(custom_objects_api)
    client_factory: Callable[..., TFJobClient] = TFJobClient

    def Do(self, input_dict, output_dict, exec_properties) -> None:
        fn_args = self._GetFnArgs(input_dict, output_dict, exec_properties)
        settings = TFJobSettings.from_custom_config(fn_args.custom_config)
        model_uri = os.path.dirname(fn_args.serving_model_dir.rstrip("/"))
        name = job_name(model_uri)
        examples_uri = input_dict["examples"][0].uri
        graph, train, evals = (fn_args.transform_graph_path, list(fn_args.train_files),
                               list(fn_args.eval_files))
        out_model, out_run = model_uri, fn_args.model_run_dir
        stage = os.path.join(settings.staging_dir, name) if settings.staging_dir else ""
        if stage:
            staged_examples = os.path.join(stage, "examples")
            train = [rebase(p, examples_uri, staged_examples) for p in train]
            evals = [rebase(p, examples_uri, staged_examples) for p in evals]
            graph = os.path.join(stage, "transform_graph")
            out_model, out_run = os.path.join(stage, "model"), os.path.join(stage, "model_run")

        def stage_inputs() -> None:
            if not stage:
                return
            logging.info("staging the Trainer inputs in %s", stage)
            _remove_tree(stage)  # an earlier attempt may have left a partial copy
            copy_tree(examples_uri, staged_examples)
            copy_tree(fn_args.transform_graph_path, graph)

        custom_config = {k: v for k, v in fn_args.custom_config.items()
                         if k != CUSTOM_CONFIG_KEY}
        args = worker_args(train, evals, graph, os.path.join(out_model, "Format-Serving"),
                           out_run, custom_config, fn_args.train_steps)
        client = self.client_factory(self.api_factory(), settings)
        import tensorflow as tf
        try:
            client.run(tfjob_manifest(name, settings, args, execution=model_uri),
                       before_create=stage_inputs)
            written = os.path.join(out_model, "Format-Serving")
            if not tf.io.gfile.exists(written):
                raise TFJobFailed(f"TFJob {settings.namespace}/{name} succeeded but wrote "
                                  f"no model at {written}")
            if stage:
                copy_tree(out_model, model_uri)
                if tf.io.gfile.exists(out_run):
                    copy_tree(out_run, fn_args.model_run_dir)
        finally:
            if stage:  # the inputs are copies, the model is collected or was never made
                _remove_tree(stage)


def worker_args(train: List[str], evals: List[str], graph: str, serving_model_dir: str,
                model_run_dir: str, custom_config: Dict, train_steps) -> List[str]:
    """The arguments of ``python -m trainer.tfjob_entry`` on every worker."""
    args = [a for p in train for a in ("--train-files", p)]
    args += [a for p in evals for a in ("--eval-files", p)]
    args += ["--transform-graph", graph, "--serving-model-dir", serving_model_dir,
             "--model-run-dir", model_run_dir, "--custom-config", json.dumps(custom_config)]
    if train_steps:
        args += ["--train-steps", str(int(train_steps))]
    return args
