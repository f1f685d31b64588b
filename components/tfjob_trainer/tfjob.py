"""The Kubernetes side of the TFJob Trainer: the job's manifest, and submitting,
adopting, watching and deleting it through the API server.

Every API call has a timeout, and transient failures (connection errors, 408, 429,
5xx) are retried with exponential backoff for ``api_patience_seconds``; any other
API error fails at once. A job that fails or outlives ``timeout_seconds`` is deleted,
so no GPU workers are left running behind a failed step. The operator also enforces
the deadline itself (``activeDeadlineSeconds``) and deletes finished jobs after
``ttl_seconds_after_finished``, for when the step dies without cleaning up.

A job's name is derived from its execution (:func:`job_name`), so a retried step
finds the job that an earlier attempt submitted and waits for it (it "adopts" it)
instead of training a second copy.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from typing import Any, Callable, Dict, List, Optional, TypeVar

from absl import logging

CUSTOM_CONFIG_KEY = "tfjob"
API_GROUP, API_VERSION, PLURAL = "kubeflow.org", "v1", "tfjobs"
CONTAINER_NAME = "tensorflow"  # the Training Operator requires this name
ENTRY = ("python", "-m", "trainer.tfjob_entry")
# Talk to this API server without credentials (``kubectl proxy``, tests).
API_HOST_ENV = "TWOTOWER_K8S_API_HOST"
# The execution a job belongs to; a job of the same name with another value is refused.
EXECUTION_ANNOTATION = "twotower-recommender/execution"
NAME_PREFIX = "twotower-train-"
CLEAN_POD_POLICIES = ("None", "Running", "All")
TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
FIRST_BACKOFF_SECONDS, MAX_BACKOFF_SECONDS = 1.0, 30.0

T = TypeVar("T")


class TFJobFailed(RuntimeError):
    """The TFJob failed, did not finish in time, or could not be watched."""


@dataclasses.dataclass(frozen=True)
class TFJobSettings:
    """The Trainer's ``custom_config["tfjob"]``."""
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
    # "Running": when the job ends, stop the workers still running (the others
    # wait in a collective after one fails) and keep finished pods' logs until the TTL.
    clean_pod_policy: str = "Running"
    ttl_seconds_after_finished: int = 24 * 3600
    api_timeout_seconds: float = 60.0
    # How long an API outage may last before the step gives up.
    api_patience_seconds: float = 600.0

    def __post_init__(self) -> None:
        if not self.image:
            raise ValueError("TFJob image is empty")
        if self.workers < 1:
            raise ValueError(f"TFJob workers must be >= 1, got {self.workers}")
        if self.gpus_per_worker < 0:
            raise ValueError(f"gpus_per_worker must be >= 0, got {self.gpus_per_worker}")
        if self.clean_pod_policy not in CLEAN_POD_POLICIES:
            raise ValueError(f"clean_pod_policy must be one of {CLEAN_POD_POLICIES}, "
                             f"got {self.clean_pod_policy!r}")
        for field in ("timeout_seconds", "poll_seconds", "api_timeout_seconds"):
            if getattr(self, field) <= 0:
                raise ValueError(f"TFJob {field} must be > 0, got {getattr(self, field)}")
        for field in ("ttl_seconds_after_finished", "api_patience_seconds"):
            if getattr(self, field) < 0:
                raise ValueError(f"TFJob {field} must be >= 0, got {getattr(self, field)}")

    @classmethod
    def from_custom_config(cls, custom_config: Optional[Dict[str, Any]]) -> "TFJobSettings":
        values = dict((custom_config or {}).get(CUSTOM_CONFIG_KEY) or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown custom_config['{CUSTOM_CONFIG_KEY}'] keys {unknown}; "
                             f"known: {sorted(known)}")
        return cls(**values)


def job_name(execution: str) -> str:
    """A TFJob name that is the same for every attempt of ``execution`` and differs
    between executions (27 characters, a valid DNS-1035 label for the pods' services).
    """
    return NAME_PREFIX + hashlib.sha256(execution.encode()).hexdigest()[:12]


def tfjob_manifest(name: str, settings: TFJobSettings, args: List[str],
                   execution: str = "") -> Dict[str, Any]:
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
    metadata: Dict[str, Any] = {
        "name": name, "namespace": settings.namespace,
        "labels": {"app.kubernetes.io/name": "twotower-trainer",
                   "app.kubernetes.io/part-of": "twotower-recommender"}}
    if execution:
        metadata["annotations"] = {EXECUTION_ANNOTATION: execution}
    return {
        "apiVersion": f"{API_GROUP}/{API_VERSION}", "kind": "TFJob",
        "metadata": metadata,
        "spec": {
            "runPolicy": {"cleanPodPolicy": settings.clean_pod_policy, "backoffLimit": 3,
                          "ttlSecondsAfterFinished": int(settings.ttl_seconds_after_finished),
                          "activeDeadlineSeconds": int(settings.timeout_seconds)},
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


def _status(error: BaseException) -> Optional[int]:
    from kubernetes.client.exceptions import ApiException
    return error.status if isinstance(error, ApiException) else None


def is_transient(error: BaseException) -> bool:
    """Whether an API call that raised ``error`` may succeed if tried again."""
    import urllib3
    return (_status(error) in TRANSIENT_STATUS
            or isinstance(error, (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError)))


class TFJobClient:
    """TFJobs in one namespace, through ``CustomObjectsApi`` with timeouts and retries.

    ``sleep`` and ``clock`` are the waiting and the monotonic time it uses (tests
    pass a fake pair, so hours of polling take no time).
    """

    def __init__(self, api, settings: TFJobSettings,
                 sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic):
        self.api, self.settings, self.sleep, self.clock = api, settings, sleep, clock
        self.namespace = settings.namespace

    def _call(self, what: str, call: Callable[..., T], *args: Any) -> T:
        """``call(*args)`` with the request timeout, retrying transient errors."""
        give_up = self.clock() + self.settings.api_patience_seconds
        backoff, attempt = FIRST_BACKOFF_SECONDS, 1
        while True:
            try:
                # A (connect, read) pair: the client ignores a float given alone.
                timeout = self.settings.api_timeout_seconds
                return call(API_GROUP, API_VERSION, self.namespace, PLURAL, *args,
                            _request_timeout=(timeout, timeout))
            except Exception as e:  # classified right below; others re-raised as they are
                if not is_transient(e):
                    raise
                if self.clock() + backoff > give_up:
                    raise TFJobFailed(
                        f"Kubernetes API kept failing while {what}: {attempt} attempts over "
                        f"{self.settings.api_patience_seconds:g}s (api_patience_seconds); "
                        f"last error: {_describe(e)}") from e
                logging.warning("Kubernetes API error while %s (attempt %d): %s; retrying "
                                "in %gs", what, attempt, _describe(e), backoff)
                self.sleep(backoff)
                backoff, attempt = min(2 * backoff, MAX_BACKOFF_SECONDS), attempt + 1

    def _call_or_none(self, answer: int, what: str, call: Callable[..., T], *args: Any
                      ) -> Optional[T]:
        """:meth:`_call`, with the HTTP status ``answer`` meaning None; the rest propagate."""
        try:
            return self._call(what, call, *args)
        except Exception as e:  # noqa: BLE001 (re-raised unless it is the answer)
            if _status(e) == answer:
                return None
            raise

    def get(self, name: str) -> Optional[Dict[str, Any]]:
        """The job, or None when there is none of that name (404)."""
        return self._call_or_none(404, f"reading TFJob {self.namespace}/{name}",
                                  self.api.get_namespaced_custom_object, name)

    def create(self, manifest: Dict[str, Any]) -> Optional[Dict[str, Any]]:
        """The created job, or None when a job of that name exists already.

        A create retried after a lost response meets its own job as a conflict;
        the caller then adopts it like any existing job.
        """
        name = manifest["metadata"]["name"]
        return self._call_or_none(409, f"creating TFJob {self.namespace}/{name}",
                                  self.api.create_namespaced_custom_object, manifest)

    def delete(self, name: str) -> None:
        """Deletes the job and, through their owner references, its pods."""
        try:
            self._call(f"deleting TFJob {self.namespace}/{name}",
                       self._delete_in_background, name)
        except Exception as e:  # a job already gone is deleted
            if _status(e) != 404:
                raise
        logging.info("deleted TFJob %s/%s", self.namespace, name)

    def _delete_in_background(self, *args: Any, **kwargs: Any) -> Any:
        return self.api.delete_namespaced_custom_object(*args, propagation_policy="Background",
                                                        **kwargs)

    def submit_or_adopt(self, manifest: Dict[str, Any],
                        before_create: Callable[[], None] = lambda: None) -> Dict[str, Any]:
        """Creates the job, or adopts the one an earlier attempt of the same execution
        created (running or succeeded). An earlier attempt's failed job is deleted and
        replaced. ``before_create`` runs only when a new job is created (staging).
        """
        name, execution = manifest["metadata"]["name"], _execution(manifest)
        deadline = self.clock() + self.settings.timeout_seconds
        while True:
            job = self.get(name)
            if job is None:
                before_create()
                created = self.create(manifest)
                if created is not None:
                    logging.info("submitted TFJob %s/%s (%d workers)", self.namespace, name,
                                 manifest["spec"]["tfReplicaSpecs"]["Worker"]["replicas"])
                    return created
                continue  # created meanwhile, maybe by our own lost request: adopt it
            if _execution(job) != execution:
                raise TFJobFailed(
                    f"TFJob {self.namespace}/{name} exists but belongs to execution "
                    f"{_execution(job)!r}, not {execution!r}; delete it to run this one")
            if (job.get("metadata") or {}).get("deletionTimestamp"):
                logging.info("waiting for the deletion of TFJob %s/%s", self.namespace, name)
            elif job_state(job) == "Failed":
                logging.warning("TFJob %s/%s from an earlier attempt failed (%s); deleting "
                                "it and submitting it again", self.namespace, name,
                                _failure_message(job))
                self.delete(name)
                continue
            else:
                logging.info("adopting TFJob %s/%s (%s), submitted by an earlier attempt "
                             "of this execution", self.namespace, name, job_state(job))
                return job
            if self.clock() > deadline:
                raise TFJobFailed(f"TFJob {self.namespace}/{name} from an earlier attempt was "
                                  f"not deleted within {self.settings.timeout_seconds}s")
            self.sleep(self.settings.poll_seconds)

    def wait(self, name: str) -> Dict[str, Any]:
        """Polls the job until it succeeds; raises :class:`TFJobFailed` otherwise."""
        deadline = self.clock() + self.settings.timeout_seconds
        while True:
            job = self.get(name)
            if job is None:
                raise TFJobFailed(f"TFJob {self.namespace}/{name} disappeared while the step "
                                  f"was waiting for it (deleted by someone else?)")
            state = job_state(job)
            if state == "Succeeded":
                return job
            if state == "Failed":
                raise TFJobFailed(f"TFJob {self.namespace}/{name} failed: "
                                  f"{_failure_message(job)}")
            if self.clock() > deadline:
                raise TFJobFailed(f"TFJob {self.namespace}/{name} did not finish in "
                                  f"{self.settings.timeout_seconds}s (timeout_seconds)")
            self.sleep(self.settings.poll_seconds)

    def run(self, manifest: Dict[str, Any],
            before_create: Callable[[], None] = lambda: None) -> Dict[str, Any]:
        """Submits or adopts the job and waits for it to succeed. Whatever stops the
        wait (failure, timeout, an API outage, an interrupt) deletes the job first.
        """
        name = manifest["metadata"]["name"]
        self.submit_or_adopt(manifest, before_create)
        try:
            return self.wait(name)
        except BaseException:
            try:
                self.delete(name)
            except Exception as e:  # the original error matters more; say this one too
                logging.error("could not delete TFJob %s/%s: %s; the operator deletes it "
                              "after activeDeadlineSeconds", self.namespace, name,
                              _describe(e))
            raise


def _execution(job: Dict[str, Any]) -> str:
    return ((job.get("metadata") or {}).get("annotations") or {}).get(EXECUTION_ANNOTATION, "")


def _describe(error: BaseException) -> str:
    status = _status(error)
    if status is not None:
        return f"HTTP {status} {getattr(error, 'reason', '')}".strip()
    return f"{type(error).__name__}: {error}"
