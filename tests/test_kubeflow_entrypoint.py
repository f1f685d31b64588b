"""The image's entrypoint, called the way the open-source KFP v2 launcher calls it.

A small fake launcher walks the compiled spec's DAG: it builds each step's executor
input as the launcher does (``minio://`` artifact URIs staged at local paths, input
artifacts typed ``system.Artifact`` as ML Metadata returns them, one output type
left empty, parameters from the spec and the run's parameter values), runs the
step's container arguments through ``runner.kfp_entrypoint.main``, and reads the
executor output. Every step runs for real on a few thousand synthetic interactions.
"""
import glob
import http.server
import json
import os
import threading

import pytest
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2 as pb

from components.tfjob_trainer import executor as tfjob_executor, tfjob
from runner import kfp_entrypoint, kubeflow
from trainer.config import TrainerConfig
from tests.conftest import artifact
from tests.fake_http import JSONHandler

ORDER = ["ImportSchemaGen", "FileBasedExampleGen", "StatisticsGen", "ExampleValidator",
         "DataValidationGate", "Transform", "SequenceGen", "Trainer", "RetrievalEvaluator",
         "ModelCompressor", "Pusher"]
BUCKET = "minio://mlpipeline/v2/artifacts/run-1"
LAUNCHER_DEFAULT_ROOTS = dict(kfp_entrypoint.LAUNCHER_LOCAL_ROOTS)
TINY_TRAINER = TrainerConfig(epochs=1, batch_size=256, tower_layers=(32,), output_dim=32,
                             id_embedding_dim=16, feature_embedding_dim=4)


class FakeLauncher:
    def __init__(self, spec, tmp, params, bucket=BUCKET):
        self.spec, self.tmp, self.params, self.bucket = spec, tmp, params, bucket
        self.outputs = {}  # task -> {key: RuntimeArtifact dict with remote URI}

    def _param(self, value):
        if "runtimeValue" in value:
            return value["runtimeValue"]["constant"]
        name = value["componentInputParameter"]
        root = self.spec["root"]["inputDefinitions"]["parameters"][name]
        return self.params.get(name, root.get("defaultValue"))

    def executor_input(self, task):
        t = self.spec["root"]["dag"]["tasks"][task]
        component = self.spec["components"][t["componentRef"]["name"]]
        inputs = {"parameterValues": {k: self._param(v) for k, v in
                                      t.get("inputs", {}).get("parameters", {}).items()},
                  "artifacts": {}}
        for key, ref in t.get("inputs", {}).get("artifacts", {}).items():
            produced = dict(self.outputs[ref["taskOutputArtifact"]["producerTask"]][
                ref["taskOutputArtifact"]["outputArtifactKey"]])
            produced["type"] = {"schemaTitle": "system.Artifact"}  # as ML Metadata types it
            inputs["artifacts"][key] = {"artifacts": [produced]}
        # A fresh file per run and task, as each launcher pod has.
        outputs = {"artifacts": {}, "outputFile": os.path.join(
            self.tmp, "kfp_outputs", self.bucket.rsplit("/", 1)[-1], task,
            "output_metadata.json")}
        for i, (key, d) in enumerate(sorted(component.get("outputDefinitions", {}).get(
                "artifacts", {}).items())):
            artifact_type = dict(d["artifactType"]) if i else {"instanceSchema": ""}
            outputs["artifacts"][key] = {"artifacts": [{
                "name": f"{task}-{key}", "uri": f"{self.bucket}/{task}/{key}",
                "type": artifact_type}]}
        return {"inputs": inputs, "outputs": outputs}

    def run(self, task):
        executor_input = self.executor_input(task)
        label = self.spec["components"][task]["executorLabel"]
        container = self.spec["deploymentSpec"]["executors"][label]["container"]
        assert container["command"] == list(kubeflow.ENTRYPOINT)
        args = [json.dumps(executor_input) if a == "{{$}}" else a for a in container["args"]]
        kfp_entrypoint.main(args)
        with open(executor_input["outputs"]["outputFile"]) as f:
            output = json_format.Parse(f.read(), pb.ExecutorOutput())
        produced = {}
        for key, artifact_list in executor_input["outputs"]["artifacts"].items():
            [declared] = artifact_list["artifacts"]
            got = output.artifacts[key].artifacts[0]
            assert got.uri == declared["uri"], "executor output must name the remote URI"
            produced[key] = {"name": declared["name"], "uri": got.uri,
                             "metadata": json_format.MessageToDict(got.metadata)}
        self.outputs[task] = produced
        return produced

    def local(self, task, key):
        return kfp_entrypoint.local_path(self.outputs[task][key]["uri"])


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    from ingest import prepare, synthetic
    tmp = str(tmp_path_factory.mktemp("kfp"))
    raw, prepared = os.path.join(tmp, "raw"), os.path.join(tmp, "prepared")
    # A data producer's first increment (README "Continuous training").
    synthetic.generate(os.path.join(raw, "span-1"),
                       synthetic.SyntheticConfig(num_interactions=4000, seed=5))
    prepare.prepare(raw, prepared, log=lambda *_: None)
    warm_dir = os.path.join(tmp, "models", "recommender-warm-start")
    spec, _ = kubeflow.compile_spec(kubeflow.KubeflowOptions(
        image="reg/twotower-recommender:test", trainer=TINY_TRAINER, warm_start_dir=warm_dir,
        beam_pipeline_args=("--direct_running_mode=in_memory", "--direct_num_workers=1")))
    # The schema file's image path (/pipeline/...) is this checkout here.
    schema = spec["root"]["dag"]["tasks"]["ImportSchemaGen"]["inputs"]["parameters"][
        "schema_file"]["runtimeValue"]
    schema["constant"] = schema["constant"].replace(kubeflow.IMAGE_WORKDIR,
                                                    os.path.dirname(kubeflow.__file__) + "/..")
    serving = os.path.join(tmp, "models", "recommender")
    params = {"data_root": prepared, "min_recall": 0.0, "min_coverage": 0.0,
              "max_compression_recall_drop": 0.5,
              "push_destination": kubeflow.push_destination_json(serving)}
    roots = dict(kfp_entrypoint.LAUNCHER_LOCAL_ROOTS, **{"minio://": tmp + "/minio/"})
    saved, kfp_entrypoint.LAUNCHER_LOCAL_ROOTS = kfp_entrypoint.LAUNCHER_LOCAL_ROOTS, roots
    try:
        launcher = FakeLauncher(spec, tmp, params)
        launcher.raw, launcher.warm_dir = raw, warm_dir
        for task in ORDER:
            launcher.run(task)
        yield launcher, serving
    finally:
        kfp_entrypoint.LAUNCHER_LOCAL_ROOTS = saved


def test_example_gen_resolves_the_span_and_writes_both_splits(launched):
    launcher, _ = launched
    examples = launcher.outputs["FileBasedExampleGen"]["examples"]
    assert examples["uri"].startswith("minio://")
    assert json.loads(examples["metadata"]["split_names"]) == ["train", "eval"]
    # TFX records the driver's span as a custom property ("custom:span").
    span = examples["metadata"].get("span", examples["metadata"].get("custom:span"))
    assert span == max(int(d.split("-")[1]) for d in os.listdir(launcher.params["data_root"]))
    local = launcher.local("FileBasedExampleGen", "examples")
    for split in ("train", "eval"):
        assert os.listdir(os.path.join(local, f"Split-{split}"))


def test_validation_and_transform(launched):
    launcher, _ = launched
    assert os.listdir(os.path.join(launcher.local("ExampleValidator", "anomalies"),
                                   "Split-eval"))
    graph = launcher.local("Transform", "transform_graph")
    assert os.path.isdir(os.path.join(graph, "transform_fn"))
    transformed = launcher.local("Transform", "transformed_examples")
    assert os.listdir(os.path.join(transformed, "Split-train"))


def test_trainer_writes_the_tfx_model_layout(launched):
    launcher, _ = launched
    model = launcher.local("Trainer", "model")
    assert os.path.isfile(os.path.join(model, "Format-Serving", "saved_model.pb"))
    assert os.listdir(launcher.local("Trainer", "model_run"))


def test_custom_components_and_pusher(launched):
    launcher, serving = launched
    with open(os.path.join(launcher.local("RetrievalEvaluator", "evaluation"),
                           "metrics.json")) as f:
        metrics = json.load(f)
    # A trained model: at least twice a random ranking's recall@50 (50 / catalog size).
    assert metrics["metrics"]["model"]["recall@50"] > 2 * 50 / metrics["catalog_size"]
    assert metrics["floors"] == {"min_recall": 0.0, "min_coverage": 0.0}  # runtime params
    gate_passed = all(c["passed"] for c in metrics["checks"])
    evaluator_blessing = launcher.outputs["RetrievalEvaluator"]["blessing"]
    assert (evaluator_blessing["metadata"].get("blessed") == 1) == gate_passed
    blessing = launcher.outputs["ModelCompressor"]["blessing"]
    blessed = blessing["metadata"].get("blessed") == 1
    assert not blessed or gate_passed  # the compressor never blesses a refused model
    assert os.path.isfile(os.path.join(launcher.local("ModelCompressor", "blessing"),
                                       "BLESSED" if blessed else "NOT_BLESSED"))
    pushed = launcher.outputs["Pusher"]["pushed_model"]["metadata"].get("pushed") == 1
    assert pushed == blessed
    versions = os.listdir(serving) if os.path.isdir(serving) else []
    if pushed:
        [version] = versions
        assert os.path.isfile(os.path.join(serving, version, "saved_model.pb"))
    else:
        assert versions == []


def _artifact(title="", uri="minio://b/x", **metadata):
    a = pb.RuntimeArtifact(uri=uri)
    if title is not None:
        a.type.schema_title = title
    if metadata:
        a.metadata.update(metadata)
    return a


def test_type_resolution_order():
    declared = pb.ArtifactTypeSchema(instance_schema="title: tfx.Schema\ntype: object\n")
    assert kfp_entrypoint.resolve_title("s", _artifact("system.Artifact"), declared) == \
        "tfx.Schema"
    assert kfp_entrypoint.resolve_title("m", _artifact("system.Model"), None) == "tfx.Model"
    assert kfp_entrypoint.resolve_title("e", _artifact(None, span=0, version=0,
                                                       split_names='["a"]'), None) == \
        "tfx.Examples"
    untyped = pb.RuntimeArtifact()
    untyped.type.instance_schema = ""  # the launcher's None instance_schema
    untyped.metadata.update({"blessed": 1})
    assert kfp_entrypoint.resolve_title("b", untyped, None) == "tfx.ModelBlessing"
    assert kfp_entrypoint.resolve_title("t", _artifact("tfx.TransformGraph"), None) == \
        "tfx.TransformGraph"
    with pytest.raises(kfp_entrypoint.ArtifactTypeError, match="'x'"):
        kfp_entrypoint.resolve_title("x", _artifact("system.Artifact"), None)


def test_local_paths_match_the_launcher(monkeypatch):
    monkeypatch.setattr(kfp_entrypoint, "LAUNCHER_LOCAL_ROOTS", LAUNCHER_DEFAULT_ROOTS)
    assert kfp_entrypoint.local_path("gs://b/p/x") == "/gcs/b/p/x"
    assert kfp_entrypoint.local_path("minio://mlpipeline/v2/a") == "/minio/mlpipeline/v2/a"
    assert kfp_entrypoint.local_path("s3://b/k") == "/s3/b/k"
    assert kfp_entrypoint.local_path("/data/x") is None


class FakeKubernetes:
    """Kubernetes API for TFJobs; its 'operator' runs the worker command in-process."""

    def __init__(self, succeed=True):
        self.created, self.gets, self.deleted, self.succeed = [], 0, [], succeed
        self.done = threading.Event()

    def handler(self):
        fake = self

        class Handler(JSONHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                assert self.path == f"/apis/kubeflow.org/v1/namespaces/" \
                    f"{body['metadata']['namespace']}/tfjobs"
                fake.created.append(body)
                threading.Thread(target=fake.operate, args=(body,), daemon=True).start()
                self._send(201, body)

            def do_GET(self):
                fake.gets += 1
                if not fake.created or fake.deleted:
                    return self._send(404, {"kind": "Status", "code": 404,
                                            "reason": "NotFound"})
                [job] = fake.created
                state = None
                if fake.done.is_set():
                    state = "Succeeded" if fake.succeed else "Failed"
                conditions = [{"type": "Created", "status": "True"}]
                if state:
                    conditions.append({"type": state, "status": "True",
                                       "message": "worker 1 exited with code 1"})
                self._send(200, {**job, "status": {"conditions": conditions}})

            def do_DELETE(self):
                fake.deleted.append(self.path)
                self._send(200, {"kind": "Status", "status": "Success"})
        return Handler

    def operate(self, job):
        if self.succeed:
            from trainer import tfjob_entry
            [c] = job["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"]["containers"]
            assert c["command"] == list(tfjob.ENTRY)
            # What the workers find at their input paths (staged, removed afterwards).
            args = c["args"]
            self.inputs_seen = {flag: [glob.glob(args[i + 1]) for i, a in enumerate(args)
                                       if a == flag]
                                for flag in ("--train-files", "--eval-files")}
            tfjob_entry.main(c["args"])
        self.done.set()


@pytest.fixture
def fake_k8s(monkeypatch):
    servers = []

    def start(succeed=True):
        fake = FakeKubernetes(succeed)
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), fake.handler())
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        monkeypatch.setenv(tfjob.API_HOST_ENV, f"http://127.0.0.1:{server.server_address[1]}")
        return fake
    yield start
    for s in servers:
        s.shutdown()
        s.server_close()


def _trainer_dicts(launcher, out_dir, settings):
    from tfx.types import standard_artifacts
    inputs = {
        "examples": [artifact(standard_artifacts.Examples,
                         launcher.local("SequenceGen", "sequences"),
                         split_names='["train", "eval", "items", "users", "history"]')],
        "transform_graph": [artifact(standard_artifacts.TransformGraph,
                                launcher.local("Transform", "transform_graph"))],
        "schema": [artifact(standard_artifacts.Schema, launcher.local("ImportSchemaGen", "schema"))],
    }
    outputs = {"model": [artifact(standard_artifacts.Model, os.path.join(out_dir, "model"))],
               "model_run": [artifact(standard_artifacts.ModelRun, os.path.join(out_dir, "run"))]}
    custom = {**TINY_TRAINER.to_custom_config(), tfjob.CUSTOM_CONFIG_KEY: settings}
    props = {"train_args": '{"splits": ["train"]}', "eval_args": '{"splits": ["eval"]}',
             "custom_config": json.dumps(custom), "run_fn": "trainer.task.run_fn"}
    return inputs, outputs, props


def test_tfjob_trainer_submits_waits_and_collects_the_model(launched, fake_k8s, tmp_path):
    launcher, _ = launched
    fake = fake_k8s()
    settings = {"image": "reg/twotower-recommender:test", "workers": 2, "gpus_per_worker": 2,
                "namespace": "team", "staging_dir": str(tmp_path / "staging"),
                "poll_seconds": 0.2, "timeout_seconds": 600}
    inputs, outputs, props = _trainer_dicts(launcher, str(tmp_path / "out"), settings)
    tfjob_executor.TFJobTrainerExecutor().Do(inputs, outputs, props)
    [job] = fake.created
    worker = job["spec"]["tfReplicaSpecs"]["Worker"]
    assert worker["replicas"] == 2
    container = worker["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "2"
    # Every path the workers get is rebased into this job's staging folder, and the
    # staged inputs are real copies (the train and eval globs matched files there,
    # and the workers trained on them).
    stage = os.path.join(str(tmp_path / "staging"), job["metadata"]["name"])
    args = container["args"]
    paths = {flag: [args[i + 1] for i, a in enumerate(args) if a == flag]
             for flag in ("--train-files", "--eval-files", "--transform-graph",
                          "--serving-model-dir", "--model-run-dir")}
    for flag, values in paths.items():
        assert values, flag
        assert all(v.startswith(stage + os.sep) for v in values), (flag, values)
    for flag, matched in fake.inputs_seen.items():
        assert matched and all(matched), (flag, matched)  # each pattern matched files
    model = outputs["model"][0].uri
    assert not os.path.exists(stage)  # the copies are removed once the model is back
    assert os.path.isfile(os.path.join(model, "Format-Serving", "saved_model.pb"))
    assert os.listdir(outputs["model_run"][0].uri)


def test_tfjob_failure_fails_the_step(launched, fake_k8s, tmp_path):
    launcher, _ = launched
    fake = fake_k8s(succeed=False)
    settings = {"image": "img:1", "namespace": "team", "poll_seconds": 0.1}
    inputs, outputs, props = _trainer_dicts(launcher, str(tmp_path / "out"), settings)
    with pytest.raises(tfjob.TFJobFailed, match="worker 1 exited"):
        tfjob_executor.TFJobTrainerExecutor().Do(inputs, outputs, props)
    [job] = fake.created
    [deleted] = fake.deleted  # no workers are left behind a failed step
    assert deleted.split("?")[0].endswith(f"/tfjobs/{job['metadata']['name']}")


def test_next_span_warm_starts_the_trainer_from_the_model_volume(launched):
    from ingest import prepare, synthetic
    from trainer import warmstart
    launcher, _ = launched
    first = warmstart.newest_published(launcher.warm_dir)
    assert first is not None, "the first run's Trainer publishes its towers"
    with open(os.path.join(launcher.local("Trainer", "model_run"),
                           "training_history.json")) as f:
        assert json.load(f)["training"]["mode"] == "full"
    # The producer drops the next increment; the next scheduled run picks it up.
    synthetic.generate(os.path.join(launcher.raw, "span-2"),
                       synthetic.SyntheticConfig(num_interactions=1500, seed=6))
    prepare.prepare(launcher.raw, launcher.params["data_root"], log=lambda *_: None)
    second = FakeLauncher(launcher.spec, launcher.tmp, launcher.params,
                          bucket=BUCKET.replace("run-1", "run-2"))
    second.outputs = dict(launcher.outputs)  # the schema of the first run's ImportSchemaGen
    roots = dict(kfp_entrypoint.LAUNCHER_LOCAL_ROOTS, **{"minio://": launcher.tmp + "/minio/"})
    saved, kfp_entrypoint.LAUNCHER_LOCAL_ROOTS = kfp_entrypoint.LAUNCHER_LOCAL_ROOTS, roots
    try:
        for task in ("FileBasedExampleGen", "Transform", "SequenceGen", "Trainer"):
            second.run(task)
    finally:
        kfp_entrypoint.LAUNCHER_LOCAL_ROOTS = saved
    with open(os.path.join(kfp_entrypoint.local_path(second.outputs["Trainer"]["model_run"]["uri"]),
                           "training_history.json")) as f:
        t = json.load(f)["training"]
    assert t["mode"] == "warm_start" and t["base_model"] == first, t["reason"]
    assert t["spans"] == ["1", "2"] and t["new_windows"] > 0 and t["steps"] > 0
    assert t["warm_runs"] == 1  # the first warm run after a from-scratch base
    assert t["carried_rows"]["item_id_xf"]["kept"] > 0
    assert warmstart.newest_published(launcher.warm_dir) == t["published"] != first
