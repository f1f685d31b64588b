"""`pipeline.py compile`: a bare KFP PipelineSpec (plus a PlatformSpec in YAML) that the
KFP SDK's own protos parse strictly, with the whole DAG, image, resources, Beam
arguments and runtime parameters."""
import json

import pytest
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

from runner import cli, kubeflow

IMAGE = "registry.example.com/twotower-recommender:0.1.0-abc123"
STEPS = {"FileBasedExampleGen", "StatisticsGen", "ImportSchemaGen", "ExampleValidator",
         "DataValidationGate", "Transform", "SequenceGen", "Trainer", "RetrievalEvaluator",
         "ModelCompressor", "Pusher"}


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    out = tmp_path_factory.mktemp("compile") / "spec.yaml"
    assert cli.main(["compile", "--output", str(out), "--image", IMAGE,
                     "--pipeline-root", "gs://bucket/root", "--beam-runner", "flink",
                     "--beam-pipeline-args=--job_endpoint=flink-jobserver:8099",
                     "--trainer-gpus", "2", "--trainer-cpu", "6",
                     "--trainer-memory-gib", "24"]) == 0
    spec, platform = kubeflow.load(str(out))
    return out, spec, platform


def _parse(spec):
    return json_format.ParseDict(spec, pipeline_spec_pb2.PipelineSpec(),
                                 ignore_unknown_fields=False)


def test_bare_pipeline_spec_parses_strictly(compiled):
    _, spec, platform = compiled
    proto = _parse(spec)
    assert proto.pipeline_info.name == "twotower-recommender"
    assert proto.root.dag.tasks
    assert proto.default_pipeline_root == "gs://bucket/root"
    assert not {"pipelineSpec", "runtimeConfig", "displayName", "labels"} & set(spec)
    json_format.ParseDict(platform, pipeline_spec_pb2.PlatformSpec(),
                          ignore_unknown_fields=False)


def test_full_dag_from_example_gen_to_pusher(compiled):
    _, spec, _ = compiled
    tasks = spec["root"]["dag"]["tasks"]
    assert set(tasks) == STEPS
    upstream = {name: set(t.get("dependentTasks", [])) for name, t in tasks.items()}

    def ancestors(name):
        seen, todo = set(), [name]
        while todo:
            for p in upstream[todo.pop()]:
                if p not in seen:
                    seen.add(p)
                    todo.append(p)
        return seen
    assert ancestors("Pusher") == STEPS - {"Pusher"}
    assert {"ModelCompressor"} <= upstream["Pusher"]
    assert {"Trainer", "Transform", "FileBasedExampleGen"} <= upstream["RetrievalEvaluator"]
    assert "DataValidationGate" in upstream["Transform"]
    pusher_inputs = tasks["Pusher"]["inputs"]["artifacts"]
    assert pusher_inputs["model"]["taskOutputArtifact"] == {
        "producerTask": "ModelCompressor", "outputArtifactKey": "compressed_model"}


def test_every_step_runs_the_project_image_and_entrypoint(compiled):
    _, spec, _ = compiled
    executors = spec["deploymentSpec"]["executors"]
    classes = {}
    for name in STEPS:
        container = executors[spec["components"][name]["executorLabel"]]["container"]
        assert container["image"] == IMAGE
        assert container["command"] == list(kubeflow.ENTRYPOINT)
        args = container["args"]
        classes[name] = args[args.index("--executor_class_path") + 1]
        assert "--json_serialized_outputs_spec_args" in args
    assert classes["RetrievalEvaluator"] == "components.retrieval_evaluator.component.Executor"
    assert classes["ModelCompressor"] == "components.compression.component.Executor"
    assert classes["FileBasedExampleGen"] == "components.parquet_example_gen.Executor"
    assert classes["Trainer"] == "tfx.components.trainer.executor.GenericExecutor"
    assert classes["Pusher"] == "components.pusher.executor.Executor"  # skips unchanged models


def test_trainer_resources(compiled):
    _, spec, _ = compiled
    executors = spec["deploymentSpec"]["executors"]
    trainer = executors["Trainer_executor"]["container"]
    assert trainer["resources"] == {"cpuLimit": 6.0, "memoryLimit": 24.0,
                                    "accelerator": {"type": "nvidia.com/gpu", "count": "2"}}
    assert "resources" not in executors["Transform_executor"]["container"]


def test_beam_steps_get_the_distributed_runner_args(compiled):
    _, spec, _ = compiled
    executors = spec["deploymentSpec"]["executors"]
    for step in ("Transform", "StatisticsGen", "FileBasedExampleGen"):
        args = executors[f"{step}_executor"]["container"]["args"]
        assert "--runner=PortableRunner" in args
        assert "--job_endpoint=flink-jobserver:8099" in args
        assert "--runner=DirectRunner" not in args


def test_runtime_parameters_with_defaults(compiled):
    _, spec, _ = compiled
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert set(params) == set(kubeflow.PARAMETER_TYPES)
    assert params["data_root"] == {"parameterType": "STRING", "defaultValue": "/data/prepared",
                                   "isOptional": True}
    assert params["min_recall"]["parameterType"] == "NUMBER_DOUBLE"
    assert params["min_recall"]["defaultValue"] == -1.0
    assert json.loads(params["push_destination"]["defaultValue"]) == {
        "filesystem": {"baseDirectory": "/models/recommender"}}
    # No Resolver on KFP: the version being served is the regression baseline.
    assert params["baseline_serving_dir"]["defaultValue"] == "/models/recommender"
    tasks = spec["root"]["dag"]["tasks"]
    wired = {(task, key): p["componentInputParameter"]
             for task, t in tasks.items()
             for key, p in t.get("inputs", {}).get("parameters", {}).items()
             if "componentInputParameter" in p}
    assert wired == {("FileBasedExampleGen", "input_base"): "data_root",
                     ("RetrievalEvaluator", "min_recall"): "min_recall",
                     ("RetrievalEvaluator", "min_coverage"): "min_coverage",
                     ("RetrievalEvaluator", "baseline_serving_dir"): "baseline_serving_dir",
                     ("ModelCompressor", "max_recall_drop"): "max_compression_recall_drop",
                     ("Pusher", "push_destination"): "push_destination"}
    schema = tasks["ImportSchemaGen"]["inputs"]["parameters"]["schema_file"]
    assert schema["runtimeValue"]["constant"] == "/pipeline/ingest/schema.pbtxt"


def test_platform_spec_mounts_the_model_volume_into_the_pusher(compiled):
    _, spec, platform = compiled
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    # The Pusher writes versions there; the evaluator reads the served one as baseline;
    # the Trainer keeps its towers there for the next run's warm start.
    for step in ("Pusher", "RetrievalEvaluator", "Trainer"):
        [mount] = executors[spec["components"][step]["executorLabel"]]["pvcMount"]
        assert mount["mountPath"] == "/models" and mount["constant"] == "twotower-models"
    assert set(executors) <= set(spec["deploymentSpec"]["executors"])


def test_the_trainer_warm_starts_from_the_model_volume(compiled):
    _, spec, _ = compiled
    tasks = spec["root"]["dag"]["tasks"]
    # No Resolver step (TFX compiles one into a Vertex-only executor): the Trainer reads
    # the newest towers under warm_start_dir and publishes its own there.
    assert not any("resolver" in t for t in tasks)
    assert "base_model" not in tasks["Trainer"].get("inputs", {}).get("artifacts", {})
    config = json.loads(tasks["Trainer"]["inputs"]["parameters"]["custom_config"][
        "runtimeValue"]["constant"])
    assert config["trainer"]["warm_start_dir"] == kubeflow.DEFAULT_WARM_START_DIR
    assert config["trainer"]["warm_start"] is True
    assert kubeflow.DEFAULT_WARM_START_DIR.startswith("/models/")


def test_json_output_is_the_spec_alone(tmp_path):
    job = kubeflow.compile_pipeline_job(kubeflow.KubeflowOptions(image=IMAGE))
    spec = kubeflow.to_pipeline_spec(job)
    path = kubeflow.write(spec, kubeflow.platform_spec(spec, {}), str(tmp_path / "p.json"))
    with open(path) as f:
        assert _parse(json.load(f)).pipeline_info.name == "twotower-recommender"


def test_to_pipeline_spec_rejects_other_documents():
    with pytest.raises(ValueError, match="not a PipelineJob"):
        kubeflow.to_pipeline_spec({"pipelineInfo": {"name": "x"}})


def test_beam_runner_options_are_checked():
    with pytest.raises(ValueError, match="--project, --region, --temp_location"):
        kubeflow.beam_args("dataflow")
    args = kubeflow.beam_args("dataflow", ["--project=p", "--region=r",
                                           "--temp_location=gs://b/t"], image="img:1")
    assert "--sdk_container_image=img:1" in args and "--runner=DataflowRunner" in args
    with pytest.raises(ValueError, match="unknown Beam runner"):
        kubeflow.beam_args("storm")


def test_image_tag_scheme():
    assert kubeflow.image_tag("ghcr.io/acme/", "0.1.0", "abc") == \
        "ghcr.io/acme/twotower-recommender:0.1.0-abc"
    tag = kubeflow.image_tag()
    assert tag.startswith("twotower-recommender:") and "-" in tag.split(":")[1]
