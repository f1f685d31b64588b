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

Settings: the Trainer's ``custom_config["tfjob"]`` (see :class:`TFJobSettings`).
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
import uuid
from typing import Any, Callable, Dict, List, Optional

from absl import logging
from tfx.components.trainer import executor as trainer_executor

CUSTOM_CONFIG_KEY = "tfjob"
API_GROUP, API_VERSION, PLURAL = "kubeflow.org", "v1", "tfjobs"
CONTAINER_NAME = "tensorflow"  # the Training Operator requires this name
ENTRY = ("python", "-m", "trainer.tfjob_entry")
# Talk to this API server without credentials (``kubectl proxy``, tests).
API_HOST_ENV = "TWOTOWER_K8S_API_HOST"


class TFJobFailed(RuntimeError):
    """The TFJob ended in the Failed state or did not finish in time."""


@dataclasses.dataclass(frozen=True)
class TFJobSettings:
    image: str
    namespace: str = "kubeflow-user-example-com"
    workers: int = 2
    gpus_per_worker: int = 1
    gpu_resource: str = "nvidia.com/gpu"
    cpu: float = 8
    memory_gib: float = 32
    service_account: str = ""
    staging_dir: str = ""
    # A ReadWriteMany claim mounted at staging_mount in every worker ("" = none).
    staging_claim: str = ""
    staging_mount: str = "/staging"
    timeout_seconds: int = 6 * 3600
    poll_seconds: float = 30.0

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError(f"TFJob workers must be >= 1, got {self.workers}")
        if self.gpus_per_worker < 0:
            raise ValueError(f"gpus_per_worker must be >= 0, got {self.gpus_per_worker}")
        if not self.image:
            raise ValueError("TFJob image is empty")

    @classmethod
    def from_custom_config(cls, custom_config: Optional[Dict[str, Any]]) -> "TFJobSettings":
        values = dict((custom_config or {}).get(CUSTOM_CONFIG_KEY) or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown custom_config['{CUSTOM_CONFIG_KEY}'] keys {unknown}; "
                             f"known: {sorted(known)}")
        return cls(**values)


def tfjob_manifest(name: str, settings: TFJobSettings, args: List[str]) -> Dict[str, Any]:
    """A ``kubeflow.org/v1`` TFJob with ``settings.workers`` identical workers.

    No Chief replica: ``trainer/strategy.py`` treats worker 0 as the chief.
    """
    resources = {"cpu": str(settings.cpu), "memory": f"{settings.memory_gib:g}Gi"}
    limits = dict(resources)
    if settings.gpus_per_worker:
        limits[settings.gpu_resource] = str(settings.gpus_per_worker)
    container: Dict[str, Any] = {
        "name": CONTAINER_NAME, "image": settings.image, "command": list(ENTRY),
        "args": list(args), "resources": {"requests": resources, "limits": limits},
    }
    pod: Dict[str, Any] = {"containers": [container]}
    if settings.service_account:
        pod["serviceAccountName"] = settings.service_account
    if settings.staging_claim:
        container["volumeMounts"] = [{"name": "staging", "mountPath": settings.staging_mount}]
        pod["volumes"] = [{"name": "staging", "persistentVolumeClaim": {
            "claimName": settings.staging_claim}}]
    return {
        "apiVersion": f"{API_GROUP}/{API_VERSION}", "kind": "TFJob",
        "metadata": {"name": name, "namespace": settings.namespace,
                     "labels": {"app.kubernetes.io/name": "twotower-trainer",
                                "app.kubernetes.io/part-of": "twotower-recommender"}},
        "spec": {
            "runPolicy": {"cleanPodPolicy": "None", "backoffLimit": 3},
            "tfReplicaSpecs": {"Worker": {
                "replicas": settings.workers, "restartPolicy": "OnFailure",
                "template": {"metadata": {"annotations": {
                    "sidecar.istio.io/inject": "false"}}, "spec": pod}}},
        },
    }


def job_state(job: Dict[str, Any]) -> str:
    """``Succeeded``, ``Failed`` or ``Running`` from the TFJob's status conditions."""
    for condition in reversed((job.get("status") or {}).get("conditions") or []):
        if condition.get("status") == "True" and condition.get("type") in ("Succeeded",
                                                                          "Failed"):
            return condition["type"]
    return "Running"


def _failure_message(job: Dict[str, Any]) -> str:
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Failed":
            return condition.get("message", "")
    return ""


def custom_objects_api():
    """A ``CustomObjectsApi``: in-cluster config, else kubeconfig, or ``API_HOST_ENV``."""
    from kubernetes import client, config
    host = os.environ.get(API_HOST_ENV)
    if host:
        configuration = client.Configuration()
        configuration.host = host
        return client.CustomObjectsApi(client.ApiClient(configuration))
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.CustomObjectsApi()


def run_tfjob(api, manifest: Dict[str, Any], timeout_seconds: float, poll_seconds: float,
              sleep: Callable[[float], None] = time.sleep) -> Dict[str, Any]:
    """Creates the TFJob and polls it until it succeeds; raises :class:`TFJobFailed`."""
    ns, name = manifest["metadata"]["namespace"], manifest["metadata"]["name"]
    api.create_namespaced_custom_object(API_GROUP, API_VERSION, ns, PLURAL, manifest,
                                        _request_timeout=60)
    logging.info("submitted TFJob %s/%s (%d workers)", ns, name,
                 manifest["spec"]["tfReplicaSpecs"]["Worker"]["replicas"])
    deadline = time.monotonic() + timeout_seconds
    while True:
        job = api.get_namespaced_custom_object(API_GROUP, API_VERSION, ns, PLURAL, name,
                                               _request_timeout=60)
        state = job_state(job)
        if state == "Succeeded":
            return job
        if state == "Failed":
            raise TFJobFailed(f"TFJob {ns}/{name} failed: {_failure_message(job)}")
        if time.monotonic() > deadline:
            raise TFJobFailed(f"TFJob {ns}/{name} did not finish in {timeout_seconds}s")
        sleep(poll_seconds)


def copy_tree(src: str, dst: str) -> None:
    """Copies a folder with ``tf.io.gfile`` (local paths, gs://, ...)."""
    import tensorflow as tf
    for folder, _, files in tf.io.gfile.walk(src):
        target = os.path.join(dst, os.path.relpath(folder, src))
        tf.io.gfile.makedirs(target)
        for f in files:
            tf.io.gfile.copy(os.path.join(folder, f), os.path.join(target, f), overwrite=True)


def _rebase(pattern: str, old: str, new: str) -> str:
    return new + pattern[len(old):] if pattern.startswith(old) else pattern


class TFJobTrainerExecutor(trainer_executor.GenericExecutor):
    """TFX Trainer executor that trains on a TFJob instead of in its own process."""

    api_factory: Callable[[], Any] = staticmethod(custom_objects_api)

    def Do(self, input_dict, output_dict, exec_properties) -> None:
        fn_args = self._GetFnArgs(input_dict, output_dict, exec_properties)
        settings = TFJobSettings.from_custom_config(fn_args.custom_config)
        name = f"twotower-train-{uuid.uuid4().hex[:8]}"
        examples_uri = input_dict["examples"][0].uri
        graph, train, evals = fn_args.transform_graph_path, fn_args.train_files, \
            fn_args.eval_files
        model_uri = os.path.dirname(fn_args.serving_model_dir.rstrip("/"))
        out_model, out_run = model_uri, fn_args.model_run_dir
        if settings.staging_dir:
            stage = os.path.join(settings.staging_dir, name)
            logging.info("staging the Trainer inputs in %s", stage)
            copy_tree(examples_uri, os.path.join(stage, "examples"))
            copy_tree(graph, os.path.join(stage, "transform_graph"))
            train = [_rebase(p, examples_uri, os.path.join(stage, "examples")) for p in train]
            evals = [_rebase(p, examples_uri, os.path.join(stage, "examples")) for p in evals]
            graph = os.path.join(stage, "transform_graph")
            out_model, out_run = os.path.join(stage, "model"), os.path.join(stage, "model_run")
        custom_config = {k: v for k, v in fn_args.custom_config.items()
                         if k != CUSTOM_CONFIG_KEY}
        args = [a for p in train for a in ("--train-files", p)]
        args += [a for p in evals for a in ("--eval-files", p)]
        args += ["--transform-graph", graph,
                 "--serving-model-dir", os.path.join(out_model, "Format-Serving"),
                 "--model-run-dir", out_run, "--custom-config", json.dumps(custom_config)]
        if fn_args.train_steps:
            args += ["--train-steps", str(int(fn_args.train_steps))]
        run_tfjob(self.api_factory(), tfjob_manifest(name, settings, args),
                  settings.timeout_seconds, settings.poll_seconds)
        if settings.staging_dir:
            copy_tree(out_model, model_uri)
            copy_tree(out_run, fn_args.model_run_dir)
        import tensorflow as tf
        if not tf.io.gfile.exists(fn_args.serving_model_dir):
            raise TFJobFailed(f"TFJob {name} succeeded but wrote no model at "
                              f"{fn_args.serving_model_dir}")
