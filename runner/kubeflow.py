"""Kubeflow entry point: compiles the pipeline into a spec the KFP API server accepts.

``KubeflowV2DagRunner`` writes a Vertex-style *PipelineJob* (``displayName``,
``pipelineSpec``, ``runtimeConfig``). The open-source KFP API server parses only a
bare *PipelineSpec* (top-level ``pipelineInfo.name`` and ``root``), so
:func:`to_pipeline_spec` unwraps it and carries the pipeline root and the runtime
parameter defaults over from ``runtimeConfig``.

A YAML output gets a second document, a KFP ``PlatformSpec`` in the kfp-kubernetes
format, that mounts the model volume into the Pusher (and optionally the data volume
into ExampleGen). JSON holds one document only, so it has no volume mounts.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import os
import subprocess
import tempfile
from typing import Any, Dict, List, Optional, Sequence, Tuple

import yaml

import pipeline as pipeline_def
from trainer.config import TrainerConfig

IMAGE_NAME = "twotower-recommender"
IMAGE_WORKDIR = "/pipeline"  # where the Dockerfile copies the repository
ENTRYPOINT = ("python", "-m", "runner.kfp_entrypoint")
DEFAULT_PIPELINE_ROOT = "minio://mlpipeline/v2/artifacts"  # KFP's default object store
DEFAULT_DATA_ROOT = "/data/prepared"
DEFAULT_SERVING_DIR = "/models/recommender"
DEFAULT_WARM_START_DIR = "/models/recommender-warm-start"  # the Trainer's, on the model volume
DEFAULT_OUTPUT = f"{pipeline_def.PIPELINE_NAME}.yaml"

# Runtime parameters of the compiled spec (root input parameters).
PARAM_DATA_ROOT = "data_root"
PARAM_MIN_RECALL = "min_recall"
PARAM_MIN_COVERAGE = "min_coverage"
PARAM_MAX_COMPRESSION_DROP = "max_compression_recall_drop"
PARAM_PUSH_DESTINATION = "push_destination"
PARAM_BASELINE_DIR = "baseline_serving_dir"
PARAMETER_TYPES = {PARAM_DATA_ROOT: str, PARAM_MIN_RECALL: float, PARAM_MIN_COVERAGE: float,
                   PARAM_MAX_COMPRESSION_DROP: float, PARAM_PUSH_DESTINATION: str,
                   PARAM_BASELINE_DIR: str}

# Beam options per runner. Flink and Spark run Python through Beam's portable job
# server; Dataflow needs a project, a region and a temp location.
BEAM_RUNNERS: Dict[str, Tuple[Tuple[str, ...], Tuple[str, ...]]] = {
    # runner: (options set here, options the user must add with --beam-pipeline-args)
    "direct": (("--runner=DirectRunner", "--direct_running_mode=multi_processing",
                "--direct_num_workers=0"), ()),
    "flink": (("--runner=PortableRunner", "--environment_type=EXTERNAL",
               "--environment_config=localhost:50000"), ("--job_endpoint",)),
    "spark": (("--runner=PortableRunner", "--environment_type=EXTERNAL",
               "--environment_config=localhost:50000"), ("--job_endpoint",)),
    "dataflow": (("--runner=DataflowRunner",), ("--project", "--region", "--temp_location")),
}


def beam_args(runner: str, extra: Sequence[str] = (), image: str = "") -> List[str]:
    """The Beam options of ``runner`` plus ``extra``; raises if a required one is missing.

    Dataflow workers run the pipeline image (``--sdk_container_image``) so that the
    project's modules resolve on them too.
    """
    if runner not in BEAM_RUNNERS:
        raise ValueError(f"unknown Beam runner {runner!r}; choose one of "
                         f"{', '.join(BEAM_RUNNERS)}")
    preset, required = BEAM_RUNNERS[runner]
    given = {a.split("=", 1)[0] for a in extra}
    missing = [r for r in required if r not in given]
    if missing:
        raise ValueError(f"Beam runner {runner!r} needs {', '.join(missing)} in "
                         f"--beam-pipeline-args (got {' '.join(extra) or 'nothing'})")
    args = [a for a in preset if a.split("=", 1)[0] not in given]
    if runner == "dataflow" and image and "--sdk_container_image" not in given:
        args.append(f"--sdk_container_image={image}")
    return args + list(extra)


def git_sha(repo: str = pipeline_def.REPO_ROOT) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=repo,
                             capture_output=True, text=True, timeout=10, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "nogit"


def project_version() -> str:
    from importlib import metadata
    try:
        return metadata.version("twotower-recsys")
    except metadata.PackageNotFoundError:
        return "0.0.0"


def image_tag(registry: str = "", version: str = "", sha: str = "") -> str:
    """``<registry>/twotower-recommender:<version>-<git sha>``, e.g.
    ``ghcr.io/acme/twotower-recommender:0.1.0-3f2c1a9b0d4e``."""
    name = f"{registry.rstrip('/')}/{IMAGE_NAME}" if registry else IMAGE_NAME
    return f"{name}:{version or project_version()}-{sha or git_sha()}"


@dataclasses.dataclass(frozen=True)
class VolumeMount:
    """A PersistentVolumeClaim mounted into one step's pod (kfp-kubernetes ``pvcMount``)."""

    claim: str
    mount_path: str


@dataclasses.dataclass(frozen=True)
class KubeflowOptions:
    image: str
    pipeline_root: str = DEFAULT_PIPELINE_ROOT
    data_root: str = DEFAULT_DATA_ROOT
    serving_dir: str = DEFAULT_SERVING_DIR
    beam_runner: str = "direct"
    beam_pipeline_args: Sequence[str] = ()
    trainer_resources: pipeline_def.Resources = pipeline_def.TRAINER_RESOURCES
    trainer: TrainerConfig = TrainerConfig()
    # Volumes: the Pusher writes to the model volume that TensorFlow Serving reads.
    model_volume: Optional[VolumeMount] = VolumeMount("twotower-models", "/models")
    data_volume: Optional[VolumeMount] = VolumeMount("twotower-data", "/data")
    # Trainer on a TFJob (components/tfjob_trainer/) instead of inside the pipeline step.
    tfjob: Optional[Dict[str, Any]] = None
    # Where the Trainer publishes its towers and finds the previous run's (warm start):
    # a folder on the model volume, because TFX compiles a Resolver into a Vertex-only
    # step. "" turns warm starts off on Kubeflow.
    warm_start_dir: str = DEFAULT_WARM_START_DIR
    enable_cache: bool = True


def push_destination_json(base_directory: str) -> str:
    return json.dumps({"filesystem": {"baseDirectory": base_directory}})


def pipeline_config(opts: KubeflowOptions) -> pipeline_def.PipelineConfig:
    """The pipeline with runtime parameters where TFX allows them."""
    from tfx.orchestration import data_types
    from components.retrieval_evaluator.component import NO_FLOOR
    from components.retrieval_evaluator.gate import GateConfig

    def param(name, ptype, default):
        return data_types.RuntimeParameter(name=name, ptype=ptype, default=default)

    gate = GateConfig(min_recall=param(PARAM_MIN_RECALL, float, NO_FLOOR),
                      min_coverage=param(PARAM_MIN_COVERAGE, float, NO_FLOOR))
    trainer_executor = None
    custom_config: Dict[str, Any] = {}
    if opts.tfjob is not None:
        from components.tfjob_trainer import executor as tfjob_executor, tfjob
        trainer_executor = tfjob_executor.TFJobTrainerExecutor
        custom_config = {tfjob.CUSTOM_CONFIG_KEY: {"image": opts.image, **opts.tfjob}}
    return pipeline_def.PipelineConfig(
        pipeline_root=opts.pipeline_root,
        data_root=param(PARAM_DATA_ROOT, str, opts.data_root),
        schema_file=f"{IMAGE_WORKDIR}/ingest/schema.pbtxt",
        gate=gate,
        max_compression_recall_drop=param(PARAM_MAX_COMPRESSION_DROP, float, 0.02),
        push_destination=param(PARAM_PUSH_DESTINATION, str,
                               push_destination_json(opts.serving_dir)),
        trainer=dataclasses.replace(opts.trainer, warm_start_dir=opts.warm_start_dir,
                                    warm_start=bool(opts.warm_start_dir)),
        trainer_resources=opts.trainer_resources,
        trainer_executor=trainer_executor,
        trainer_custom_config=custom_config,
        beam_pipeline_args=tuple(beam_args(opts.beam_runner, opts.beam_pipeline_args,
                                           opts.image)),
        resolve_base_model=False,
        # The regression baseline is the version being served, read from the model
        # volume that is mounted into the evaluator too.
        baseline_serving_dir=param(PARAM_BASELINE_DIR, str, opts.serving_dir),
        enable_cache=opts.enable_cache,
    )


def runtime_parameter_defaults(cfg: pipeline_def.PipelineConfig) -> Dict[str, Any]:
    """``{name: default}`` of every RuntimeParameter in ``cfg`` (gate included)."""
    from tfx.orchestration.data_types import RuntimeParameter
    values = [getattr(cfg.gate, f.name) for f in dataclasses.fields(cfg.gate)]
    values += [getattr(cfg, f.name) for f in dataclasses.fields(cfg)]
    return {v.name: v.default for v in values if isinstance(v, RuntimeParameter)}


def compile_pipeline_job(opts: KubeflowOptions) -> Dict[str, Any]:
    """Runs ``KubeflowV2DagRunner``; returns its PipelineJob with the parameter defaults
    in ``runtimeConfig.parameterValues``."""
    from tfx.orchestration.kubeflow.v2 import kubeflow_v2_dag_runner as kfp_runner
    config = kfp_runner.KubeflowV2DagRunnerConfig(
        default_image=opts.image, default_commands=list(ENTRYPOINT),
        use_pipeline_spec_2_1=True)
    cfg = pipeline_config(opts)
    with tempfile.TemporaryDirectory() as tmp:
        return kfp_runner.KubeflowV2DagRunner(config=config, output_dir=tmp).run(
            pipeline_def.create_pipeline(cfg),
            parameter_values=runtime_parameter_defaults(cfg), write_out=False)


def _executor_labels(spec: Dict[str, Any], component: str) -> str:
    return spec["components"][component]["executorLabel"]


def to_pipeline_spec(job: Dict[str, Any]) -> Dict[str, Any]:
    """Unwraps a PipelineJob into the bare PipelineSpec the KFP API server parses.

    ``runtimeConfig.gcsOutputDirectory`` becomes ``defaultPipelineRoot``, and every
    ``runtimeConfig.parameterValues`` entry becomes the default value of the root
    input parameter of the same name. Each executor also gets its component's output
    definitions (``--json_serialized_outputs_spec_args``), which the entrypoint uses
    when the launcher hands it output artifacts without a usable type.
    """
    if "pipelineSpec" not in job:
        raise ValueError(f"not a PipelineJob: top-level keys {sorted(job)}")
    spec = copy.deepcopy(job["pipelineSpec"])
    runtime = job.get("runtimeConfig", {})
    root_dir = runtime.get("gcsOutputDirectory")
    if root_dir:
        spec["defaultPipelineRoot"] = root_dir
    values = dict(runtime.get("parameterValues", {}))
    values.update({k: next(iter(v.values())) for k, v in runtime.get("parameters", {}).items()})
    params = spec["root"].setdefault("inputDefinitions", {}).setdefault("parameters", {})
    unknown = sorted(set(values) - set(params))
    if unknown:
        raise ValueError(f"runtimeConfig has values for {unknown}, which are not root "
                         f"input parameters ({sorted(params)})")
    for name, value in values.items():
        params[name]["defaultValue"] = value
        params[name]["isOptional"] = True
    for name, component in spec["components"].items():
        if "executorLabel" not in component:
            continue
        executor = spec["deploymentSpec"]["executors"][component["executorLabel"]]
        container = executor.get("container")
        if container is None or "--executor_class_path" not in container.get("args", []):
            continue
        outputs = json.dumps(component.get("outputDefinitions", {}), sort_keys=True)
        args = container["args"]
        at = args.index("--json_serialized_invocation_args") + 2
        container["args"] = args[:at] + ["--json_serialized_outputs_spec_args", outputs] + args[at:]
    return spec


def platform_spec(spec: Dict[str, Any], mounts: Dict[str, VolumeMount]) -> Dict[str, Any]:
    """A kfp-kubernetes PlatformSpec document mounting ``{component: volume}``."""
    executors = {}
    for component, volume in mounts.items():
        executors[_executor_labels(spec, component)] = {"pvcMount": [{
            "mountPath": volume.mount_path,
            "constant": volume.claim,
            "pvcNameParameter": {"runtimeValue": {"constant": volume.claim}},
        }]}
    return {"platforms": {"kubernetes": {"deploymentSpec": {"executors": executors}}}}


def volume_mounts(opts: KubeflowOptions) -> Dict[str, VolumeMount]:
    mounts = {}
    if opts.model_volume is not None:
        mounts["Pusher"] = opts.model_volume
        mounts["RetrievalEvaluator"] = opts.model_volume  # reads the served baseline
        mounts["Trainer"] = opts.model_volume  # reads and writes the warm-start towers
    if opts.data_volume is not None:
        mounts["FileBasedExampleGen"] = opts.data_volume
    return mounts


def compile_spec(opts: KubeflowOptions) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """``(PipelineSpec, PlatformSpec)`` dicts of the Kubeflow pipeline."""
    spec = to_pipeline_spec(compile_pipeline_job(opts))
    return spec, platform_spec(spec, volume_mounts(opts))


def write(spec: Dict[str, Any], platform: Dict[str, Any], output: str) -> str:
    """JSON (spec only) or, for ``.yaml``/``.yml``, YAML with the platform document."""
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(output, "w") as f:
        if output.endswith((".yaml", ".yml")):
            docs = [spec] + ([platform] if platform["platforms"]["kubernetes"]
                             ["deploymentSpec"]["executors"] else [])
            yaml.safe_dump_all(docs, f, sort_keys=True)
        else:
            json.dump(spec, f, indent=2, sort_keys=True)
    return os.path.abspath(output)


def load(path: str) -> Tuple[Dict[str, Any], Optional[Dict[str, Any]]]:
    """``(PipelineSpec, PlatformSpec or None)`` from a file :func:`write` wrote."""
    with open(path) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    return docs[0], (docs[1] if len(docs) > 1 else None)
