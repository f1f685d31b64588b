"""The TFJob Trainer against the Kubernetes API's TFJob endpoints.

No cluster runs here, so ``FakeTFJobAPI`` serves the endpoints the real ``kubernetes``
client calls (``/apis/kubeflow.org/v1/namespaces/NS/tfjobs[/NAME]``: POST, GET,
DELETE, with the API server's 404/409 answers) over HTTP, and the tests talk to it
through the real client. A ``FakeClock`` stands in for time, so that hours of polling
and backoff take none; its ``sleep`` plays the Training Operator's next move.
The training itself on a TFJob is tested in ``test_kubeflow_entrypoint``.
"""
import glob
import http.server
import json
import os
import threading
import time
import urllib.parse

import pytest
from tfx.types import standard_artifacts

from components.tfjob_trainer import executor as tfjob_executor
from components.tfjob_trainer import tfjob
from tests.conftest import artifact
from tests.fake_http import JSONHandler
from tests.test_manifests import validate_tfjob

NS = "team"
PREFIX = f"/apis/kubeflow.org/v1/namespaces/{NS}/tfjobs"


class FakeTFJobAPI:
    """The TFJob endpoints of a Kubernetes API server, in memory."""

    def __init__(self):
        self.jobs = {}  # name -> job
        self.requests = []  # (method, path with query)
        self.faults = []  # per request, in order: an HTTP status, or "drop" the connection
        self.lock = threading.Lock()

    def finish(self, name, state, message=""):
        """What the operator does when the workers end: a True condition."""
        self.jobs[name].setdefault("status", {})["conditions"] = [
            {"type": "Created", "status": "True"},
            {"type": state, "status": "True", "message": message}]

    def methods(self, method):
        return [p for m, p in self.requests if m == method]

    def handler(self):
        fake = self

        class Handler(JSONHandler):
            def _route(self, method):
                with fake.lock:
                    fake.requests.append((method, self.path))
                    fault = fake.faults.pop(0) if fake.faults else None
                if fault == "drop":  # the connection ends with no answer at all
                    self.close_connection = True
                    return None
                if fault == "slow":  # answers, 3 s late
                    time.sleep(3)
                    fault = None
                if fault:
                    return self._status(fault, "ServiceUnavailable")
                path = urllib.parse.urlsplit(self.path).path
                assert path.startswith(PREFIX), path
                return path[len(PREFIX):].strip("/")

            def _status(self, code, reason, message=""):
                self._send(code, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                  "reason": reason, "message": message, "code": code})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self._route("POST") is None:
                    return
                name = body["metadata"]["name"]
                if name in fake.jobs:
                    return self._status(409, "AlreadyExists",
                                        f'tfjobs.kubeflow.org "{name}" already exists')
                body["metadata"]["uid"] = f"uid-{len(fake.methods('POST'))}"
                fake.jobs[name] = body
                self._send(201, body)

            def do_GET(self):
                name = self._route("GET")
                if name is None:
                    return
                if name not in fake.jobs:
                    return self._status(404, "NotFound", f'tfjobs "{name}" not found')
                self._send(200, fake.jobs[name])

            def do_DELETE(self):
                name = self._route("DELETE")
                if name is None:
                    return
                if name not in fake.jobs:
                    return self._status(404, "NotFound", f'tfjobs "{name}" not found')
                del fake.jobs[name]
                self._status(200, "", "")
        return Handler


class FakeClock:
    """Monotonic time that moves only when slept; ``on_sleep(n)`` runs at the n-th sleep."""

    def __init__(self, on_sleep=lambda n: None):
        self.now, self.slept, self.on_sleep = 1000.0, [], on_sleep

    def monotonic(self):
        return self.now

    def sleep(self, seconds):
        self.slept.append(seconds)
        self.now += seconds
        self.on_sleep(len(self.slept))


@pytest.fixture
def fake_api(monkeypatch):
    fake = FakeTFJobAPI()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), fake.handler())
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv(tfjob.API_HOST_ENV, f"http://127.0.0.1:{server.server_address[1]}")
    yield fake
    server.shutdown()
    server.server_close()


SETTINGS = dict(image="reg/twotower-recommender:1", namespace=NS, poll_seconds=30.0,
                timeout_seconds=3600, api_patience_seconds=120)


def _client(clock, **overrides):
    settings = tfjob.TFJobSettings(**{**SETTINGS, **overrides})
    return tfjob.TFJobClient(tfjob.custom_objects_api(), settings, sleep=clock.sleep,
                             clock=clock.monotonic), settings


def _manifest(settings, execution="minio://mlpipeline/v2/artifacts/p/run-1/Trainer/model"):
    name = tfjob.job_name(execution)
    return tfjob.tfjob_manifest(name, settings, ["--transform-graph", "g"],
                                execution=execution)


# --- the manifest ---------------------------------------------------------------------

def test_the_job_cleans_its_pods_expires_and_has_a_server_side_deadline():
    settings = tfjob.TFJobSettings(**SETTINGS)
    job = _manifest(settings)
    validate_tfjob(job)
    assert job["spec"]["runPolicy"] == {"cleanPodPolicy": "Running", "backoffLimit": 3,
                                        "ttlSecondsAfterFinished": 24 * 3600,
                                        "activeDeadlineSeconds": 3600}
    with pytest.raises(ValueError, match="clean_pod_policy must be one of .* got 'Some'"):
        tfjob.TFJobSettings(**{**SETTINGS, "clean_pod_policy": "Some"})
    with pytest.raises(ValueError, match="timeout_seconds must be > 0, got 0"):
        tfjob.TFJobSettings(**{**SETTINGS, "timeout_seconds": 0})


def test_the_job_name_is_the_executions():
    a = "minio://mlpipeline/v2/artifacts/p/run-1/Trainer/model"
    assert tfjob.job_name(a) == tfjob.job_name(a)  # every attempt of one execution
    assert tfjob.job_name(a) != tfjob.job_name(a.replace("run-1", "run-2"))
    name = tfjob.job_name(a)
    # The operator names services NAME-worker-N: a DNS-1035 label of at most 63 chars.
    assert len(name + "-worker-99") <= 63 and name.replace("-", "").isalnum()
    assert name == name.lower() and name[0].isalpha()


# --- one job's life -------------------------------------------------------------------

def test_a_failed_job_is_deleted_and_its_message_fails_the_step(fake_api):
    def operator(n):
        if n == 2:
            fake_api.finish(name, "Failed", "worker 1 exited with code 137")
    clock = FakeClock(operator)
    client, settings = _client(clock)
    manifest = _manifest(settings)
    name = manifest["metadata"]["name"]
    with pytest.raises(tfjob.TFJobFailed, match=f"{NS}/{name} failed: worker 1 exited "
                                                 "with code 137"):
        client.run(manifest)
    assert fake_api.jobs == {}
    [delete] = fake_api.methods("DELETE")
    assert delete.startswith(f"{PREFIX}/{name}?") and "propagationPolicy=Background" in delete
    assert clock.slept == [30.0, 30.0]


def test_a_job_past_its_timeout_is_deleted(fake_api):
    clock = FakeClock()  # the operator never finishes it
    client, settings = _client(clock, timeout_seconds=100, poll_seconds=30)
    manifest = _manifest(settings)
    with pytest.raises(tfjob.TFJobFailed, match="did not finish in 100s"):
        client.run(manifest)
    assert fake_api.jobs == {} and len(fake_api.methods("DELETE")) == 1
    assert len(clock.slept) == 4  # polled at 0, 30, 60, 90 and 120 s; 120 > 100


def test_transient_api_errors_while_polling_are_retried_with_backoff(fake_api):
    def operator(n):
        if n == 1:  # between the first and second poll: four failures, then success
            fake_api.faults += [503, 500, 429, 504]
        if n == 5:
            fake_api.finish(name, "Succeeded")
    clock = FakeClock(operator)
    client, settings = _client(clock)
    manifest = _manifest(settings)
    name = manifest["metadata"]["name"]
    job = client.run(manifest)
    assert tfjob.job_state(job) == "Succeeded"
    assert len(fake_api.methods("POST")) == 1 and not fake_api.methods("DELETE")
    assert clock.slept == [30.0, 1.0, 2.0, 4.0, 8.0]  # a poll, then backoff doubling


def test_a_dropped_connection_is_transient(fake_api):
    clock = FakeClock(lambda n: fake_api.finish(name, "Succeeded") if n == 2 else None)
    client, settings = _client(clock)
    manifest = _manifest(settings)
    name = manifest["metadata"]["name"]
    # urllib3 retries a GET three times by itself; the fourth drop reaches the client.
    fake_api.faults += [None, None, "drop", "drop", "drop", "drop"]
    assert tfjob.job_state(client.run(manifest)) == "Succeeded"
    assert 1.0 in clock.slept  # our own backoff ran after urllib3 gave up


def test_every_request_has_a_deadline(fake_api):
    """A poll answered 3 s late is abandoned after api_timeout_seconds (0.5) and asked
    again. (The kubernetes client ignores a float timeout given alone: the request
    would then wait the 3 s.)"""
    def operator(n):
        if n == 1:  # after the first poll: the next answer comes late
            fake_api.faults.append("slow")
        if n == 2:
            fake_api.finish(name, "Succeeded")
    clock = FakeClock(operator)
    client, settings = _client(clock, api_timeout_seconds=0.5)
    manifest = _manifest(settings)
    name = manifest["metadata"]["name"]
    start = time.monotonic()
    assert tfjob.job_state(client.run(manifest)) == "Succeeded"
    assert time.monotonic() - start < 2.5
    # The late poll was abandoned and asked again (by urllib3's own retry of a GET).
    assert len(fake_api.methods("GET")) == 5  # with the adoption check before the create


def test_an_outage_longer_than_the_patience_fails_the_step_and_names_the_error(fake_api):
    def operator(n):
        if n == 1:
            fake_api.faults += [503] * 1000
    clock = FakeClock(operator)
    client, settings = _client(clock, api_patience_seconds=60)
    manifest = _manifest(settings)
    with pytest.raises(tfjob.TFJobFailed, match=r"kept failing while reading TFJob "
                       r"team/twotower-train-\w+: 6 attempts over 60s .*HTTP 503"):
        client.run(manifest)
    # Backoff 1+2+4+8+16 = 31 s; the next wait (30 s, the cap) would end past 60 s.
    assert clock.slept[1:6] == [1.0, 2.0, 4.0, 8.0, 16.0]


def test_an_error_that_is_not_transient_is_not_retried(fake_api):
    from kubernetes.client.exceptions import ApiException
    clock = FakeClock()
    client, settings = _client(clock)
    fake_api.faults += [403]
    with pytest.raises(ApiException) as raised:
        client.run(_manifest(settings))
    assert raised.value.status == 403
    assert len(fake_api.requests) == 1 and clock.slept == []


# --- retries of the step: one job per execution ---------------------------------------

def test_a_retried_step_adopts_the_running_job(fake_api):
    clock = FakeClock(lambda n: fake_api.finish(name, "Succeeded") if n == 3 else None)
    client, settings = _client(clock)
    manifest = _manifest(settings)
    name = manifest["metadata"]["name"]
    fake_api.jobs[name] = json.loads(json.dumps(manifest))  # the killed attempt's job
    staged = []
    job = client.run(manifest, before_create=lambda: staged.append(True))
    assert tfjob.job_state(job) == "Succeeded"
    assert fake_api.methods("POST") == [] and staged == []  # nothing submitted or restaged


def test_a_retried_step_collects_a_job_that_already_succeeded(fake_api):
    clock = FakeClock()
    client, settings = _client(clock)
    manifest = _manifest(settings)
    name = manifest["metadata"]["name"]
    fake_api.jobs[name] = json.loads(json.dumps(manifest))
    fake_api.finish(name, "Succeeded")
    assert tfjob.job_state(client.run(manifest)) == "Succeeded"
    assert fake_api.methods("POST") == [] and clock.slept == []


def test_an_earlier_attempts_failed_job_is_replaced(fake_api):
    clock = FakeClock(lambda n: fake_api.finish(name, "Succeeded") if n == 1 else None)
    client, settings = _client(clock)
    manifest = _manifest(settings)
    name = manifest["metadata"]["name"]
    fake_api.jobs[name] = json.loads(json.dumps(manifest))
    fake_api.finish(name, "Failed", "OOMKilled")
    assert tfjob.job_state(client.run(manifest)) == "Succeeded"
    assert len(fake_api.methods("DELETE")) == 1 and len(fake_api.methods("POST")) == 1
    assert fake_api.jobs[name]["metadata"]["uid"] == "uid-1"  # the new job


def test_a_job_of_that_name_from_another_execution_is_refused(fake_api):
    clock = FakeClock()
    client, settings = _client(clock)
    manifest = _manifest(settings)
    name = manifest["metadata"]["name"]
    other = _manifest(settings, execution="something-else")
    other["metadata"]["name"] = name
    fake_api.jobs[name] = other
    with pytest.raises(tfjob.TFJobFailed, match="belongs to execution 'something-else'"):
        client.run(manifest)
    assert name in fake_api.jobs and not fake_api.methods("DELETE")  # not ours to delete


def test_a_create_whose_answer_was_lost_adopts_its_own_job(fake_api):
    """The POST reached the server, the answer did not; the retry meets a 409."""
    clock = FakeClock(lambda n: fake_api.finish(name, "Succeeded") if n == 2 else None)
    client, settings = _client(clock)
    manifest = _manifest(settings)
    name = manifest["metadata"]["name"]
    real_create = client.api.create_namespaced_custom_object

    def create_then_lose_the_answer(*args, **kwargs):
        real_create(*args, **kwargs)
        if len(fake_api.methods("POST")) == 1:
            raise ConnectionResetError("connection reset by peer")
        return real_create(*args, **kwargs)
    client.api.create_namespaced_custom_object = create_then_lose_the_answer
    assert tfjob.job_state(client.run(manifest)) == "Succeeded"
    assert len(fake_api.methods("POST")) == 2  # the retry's POST got 409
    assert fake_api.jobs[name]["metadata"]["uid"] == "uid-1"


# --- the executor ---------------------------------------------------------------------

def _write(path, text="x"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


@pytest.fixture
def trainer_step(tmp_path):
    """A Trainer step's inputs and outputs; a few files stand in for the data."""
    examples, graph = tmp_path / "SequenceGen" / "sequences", tmp_path / "Transform" / "graph"
    for split, n in (("train", 3), ("eval", 1)):
        for i in range(n):
            _write(str(examples / f"Split-{split}" / f"data-{i:05d}-of-{n:05d}.gz"),
                   f"{split}{i}")
    _write(str(graph / "transform_fn" / "saved_model.pb"), "graph")
    inputs = {"examples": [artifact(standard_artifacts.Examples, str(examples),
                                     split_names='["train", "eval"]')],
              "transform_graph": [artifact(standard_artifacts.TransformGraph, str(graph))]}
    out = tmp_path / "minio" / "run-7" / "Trainer"
    outputs = {"model": [artifact(standard_artifacts.Model, str(out / "model"))],
               "model_run": [artifact(standard_artifacts.ModelRun, str(out / "model_run"))]}

    def props(**settings):
        custom = {"trainer": {"epochs": 1}, tfjob.CUSTOM_CONFIG_KEY: {
            **SETTINGS, "staging_dir": str(tmp_path / "staging"), **settings}}
        return {"train_args": '{"splits": ["train"]}', "eval_args": '{"splits": ["eval"]}',
                "custom_config": json.dumps(custom), "run_fn": "trainer.task.run_fn"}
    return inputs, outputs, props, tmp_path


def _args(job):
    [c] = job["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"]["containers"]
    a = c["args"]
    return {flag: [a[i + 1] for i, x in enumerate(a) if x == flag] for flag in set(a[::2])}


def _chief_writes_the_model(job):
    """The chief worker's output: a model and run logs where the args say."""
    args = _args(job)
    _write(os.path.join(args["--serving-model-dir"][0], "saved_model.pb"), "model")
    _write(os.path.join(args["--model-run-dir"][0], "events.out"), "logs")


class _Executor(tfjob_executor.TFJobTrainerExecutor):
    clock = None

    def client_factory(self, api, settings):
        return tfjob.TFJobClient(api, settings, sleep=self.clock.sleep,
                                 clock=self.clock.monotonic)


def test_the_executor_stages_rebased_inputs_and_collects_the_model(fake_api, trainer_step):
    inputs, outputs, props, tmp = trainer_step
    seen = {}

    def operator(n):
        [job] = fake_api.jobs.values()
        args = _args(job)
        # The workers read only staged copies: every pattern matches the same files in
        # the stage as the original split does, and the graph is a copy.
        stage = os.path.join(str(tmp / "staging"), job["metadata"]["name"])
        for flag, split in (("--train-files", "train"), ("--eval-files", "eval")):
            [pattern] = args[flag]
            assert pattern == os.path.join(stage, "examples", f"Split-{split}", "*")
            original = inputs["examples"][0].uri + f"/Split-{split}/*"
            seen[split] = sorted(os.path.basename(p) for p in glob.glob(pattern))
            assert seen[split] == sorted(os.path.basename(p) for p in glob.glob(original))
        assert args["--transform-graph"] == [os.path.join(stage, "transform_graph")]
        with open(os.path.join(stage, "transform_graph", "transform_fn",
                               "saved_model.pb")) as f:
            assert f.read() == "graph"
        _chief_writes_the_model(job)
        fake_api.finish(job["metadata"]["name"], "Succeeded")
    executor = _Executor()
    executor.clock = FakeClock(operator)
    executor.Do(inputs, outputs, props())
    assert len(seen["train"]) == 3 and len(seen["eval"]) == 1
    model = outputs["model"][0].uri
    with open(os.path.join(model, "Format-Serving", "saved_model.pb")) as f:
        assert f.read() == "model"
    assert os.listdir(outputs["model_run"][0].uri) == ["events.out"]
    assert os.listdir(tmp / "staging") == []  # the copies are removed
    [job] = fake_api.jobs.values()
    assert job["metadata"]["name"] == tfjob.job_name(model)
    assert job["metadata"]["annotations"][tfjob.EXECUTION_ANNOTATION] == model


def test_a_retried_executor_adopts_the_job_its_killed_attempt_submitted(fake_api,
                                                                        trainer_step):
    inputs, outputs, props, tmp = trainer_step
    polling, never = threading.Event(), threading.Event()

    def first_attempt_dies(n):
        polling.set()
        never.wait()  # SIGKILL: this attempt never runs another line, cleanup included
    first = _Executor()
    first.clock = FakeClock(first_attempt_dies)
    threading.Thread(target=first.Do, args=(inputs, outputs, props()), daemon=True).start()
    assert polling.wait(60), "the first attempt never started polling its job"
    [name] = fake_api.jobs
    # What the killed attempt leaves: its job, and the staged inputs that job reads.
    assert os.listdir(tmp / "staging") == [name]
    staged = os.path.join(str(tmp / "staging"), name, "transform_graph", "transform_fn",
                          "saved_model.pb")
    copied_at = os.stat(staged).st_mtime_ns

    def operator(n):
        _chief_writes_the_model(fake_api.jobs[name])
        fake_api.finish(name, "Succeeded")
    retry = _Executor()
    retry.clock = FakeClock(operator)
    retry.Do(inputs, outputs, props())
    assert len(fake_api.methods("POST")) == 1  # one job for the execution
    assert list(fake_api.jobs) == [name]
    assert os.path.isfile(os.path.join(outputs["model"][0].uri, "Format-Serving",
                                       "saved_model.pb"))
    assert retry.clock.slept == [30.0]  # it waited for the adopted job, not a new one
    assert not os.path.exists(staged) and copied_at  # staged once, removed at the end


def test_the_executor_deletes_a_failed_job_and_its_staging(fake_api, trainer_step):
    inputs, outputs, props, tmp = trainer_step
    executor = _Executor()
    executor.clock = FakeClock(lambda n: fake_api.finish(*fake_api.jobs, "Failed",
                                                         "worker 0 exited with code 1"))
    with pytest.raises(tfjob.TFJobFailed, match="worker 0 exited with code 1"):
        executor.Do(inputs, outputs, props())
    assert fake_api.jobs == {} and os.listdir(tmp / "staging") == []
    assert not os.path.exists(os.path.join(outputs["model"][0].uri, "Format-Serving"))


def test_a_job_that_wrote_no_model_fails_the_step(fake_api, trainer_step):
    inputs, outputs, props, _ = trainer_step
    executor = _Executor()
    executor.clock = FakeClock(lambda n: fake_api.finish(*fake_api.jobs, "Succeeded"))
    with pytest.raises(tfjob.TFJobFailed, match="succeeded but wrote no model at .*"
                                                "/model/Format-Serving"):
        executor.Do(inputs, outputs, props())


def test_rebase_refuses_a_pattern_outside_the_staged_folder():
    assert tfjob_executor.rebase("/a/ex/Split-train/*", "/a/ex/", "gs://b/s") == \
        "gs://b/s/Split-train/*"
    with pytest.raises(ValueError, match="'/a/other/Split-train/\\*' is not under the "
                                         "staged folder '/a/ex'"):
        tfjob_executor.rebase("/a/other/Split-train/*", "/a/ex", "gs://b/s")
    with pytest.raises(ValueError, match="not under"):
        tfjob_executor.rebase("/a/exx/Split-train/*", "/a/ex", "gs://b/s")
