"""The TFX pipeline: a typed factory, plus the command line of CONTRACTS.md.

``create_pipeline`` reads no environment, does no I/O and calls no runner; the entry
points in ``runner/`` work out paths and call it.

    python pipeline.py run [--data-dir DIR] [--pipeline-root DIR] ...
    python pipeline.py compile [--output FILE] [--image IMAGE]
    python pipeline.py upload --host URL [--pipeline-name NAME]
    python pipeline.py schedule --host URL --cron "EXPR" [--experiment NAME]
"""
from __future__ import annotations

import project_env  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)

import dataclasses
import os
import sys
from typing import Any, Dict, List, Optional, Sequence, Union

from tfx import v1 as tfx
from tfx.components import FileBasedExampleGen
from tfx.dsl.components.base import executor_spec
from tfx.orchestration.data_types import RuntimeParameter
from kfp.pipeline_spec import pipeline_spec_pb2
from tfx.proto import example_gen_pb2, trainer_pb2, transform_pb2

import layout
from components.compression.component import ModelCompressor
from components.data_validation_gate.component import DataValidationGate
from components.retrieval_evaluator.component import RetrievalEvaluator
from components.retrieval_evaluator.gate import GateConfig
from evaluation.sampling import DEFAULT_MAX_USERS as DEFAULT_MAX_EVAL_USERS
from components.sequence_gen.component import SequenceGen
from components.latest_model import LatestOrNoneStrategy
from components.parquet_example_gen import Executor as ParquetExecutor
from components.pusher.executor import Executor as PusherExecutor
from trainer.config import TrainerConfig
from transform.config import TransformConfig

PIPELINE_NAME = layout.PIPELINE_NAME
MODEL_NAME = "recommender"  # TensorFlow Serving model name
REPO_ROOT = os.path.dirname(os.path.abspath(__file__))
SCHEMA_FILE = os.path.join(REPO_ROOT, "ingest", "schema.pbtxt")

# Dotted paths the components load at run time; tests import each one.
PREPROCESSING_FN = "transform.preprocessing.preprocessing_fn"
TRAINER_RUN_FN = "trainer.task.run_fn"

# Beam on the local DirectRunner: one worker process per core.
LOCAL_BEAM_ARGS = ("--direct_running_mode=multi_processing", "--direct_num_workers=0")

# ExampleGen reads the newest span of the prepared data (ingest/prepare.py layout).
TRAIN_PATTERN = "span-{SPAN}/train/*"
EVAL_PATTERN = "span-{SPAN}/eval/*"


@dataclasses.dataclass(frozen=True)
class Resources:
    """Container resources of one step on Kubeflow (ignored by LocalDagRunner)."""

    cpu: float
    memory_gib: float
    gpu_count: int = 0
    gpu_type: str = "nvidia.com/gpu"

    def to_platform_config(self):
        spec = pipeline_spec_pb2.PipelineDeploymentConfig.PipelineContainerSpec.ResourceSpec(
            cpu_limit=self.cpu, memory_limit=self.memory_gib)
        if self.gpu_count:
            spec.accelerator.type = self.gpu_type
            spec.accelerator.count = self.gpu_count
        return spec


TRAINER_RESOURCES = Resources(cpu=8, memory_gib=32, gpu_count=1)


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """Everything that varies between runs of the same pipeline graph."""

    pipeline_root: str
    data_root: Union[str, RuntimeParameter]  # prepared data: span-N/{train,eval}/*.parquet
    schema_file: str = SCHEMA_FILE
    transform: TransformConfig = TransformConfig()
    trainer: TrainerConfig = TrainerConfig()
    gate: GateConfig = GateConfig()
    serving_dir: str = ""  # Pusher base directory; "" = <pipeline_root>/serving
    max_compression_recall_drop: Union[float, RuntimeParameter] = 0.02
    # Eval users the evaluator and the compressor's verdict score at most (0: all), a
    # sample fixed by the seed (evaluation.sampling); ML-100K and the built-in
    # synthetic data have fewer, so all of theirs are scored.
    max_eval_users: int = DEFAULT_MAX_EVAL_USERS
    eval_sample_seed: int = 0
    # Kubeflow: the Pusher's PushDestination as JSON text, e.g. a RuntimeParameter;
    # overrides serving_dir (a proto field cannot hold a RuntimeParameter).
    push_destination: Optional[Union[str, RuntimeParameter]] = None
    # Kubeflow only: LocalDagRunner rejects container resource specs.
    trainer_resources: Optional[Resources] = None
    # Kubeflow: a Trainer executor class, e.g. components.tfjob_trainer.executor.TFJobTrainerExecutor,
    # and extra Trainer custom_config entries it reads.
    trainer_executor: Optional[type] = None
    trainer_custom_config: Dict[str, Any] = dataclasses.field(default_factory=dict)
    # Warm start from the Trainer's newest model through a Resolver (TFX's base_model).
    # TFX compiles a Resolver into a Vertex-only step, so on Kubeflow the Trainer finds
    # its base under TrainerConfig.warm_start_dir instead.
    resolve_base_model: bool = True
    # The regression baseline: the newest version pushed under this directory, i.e.
    # what TensorFlow Serving serves now. "" = the Pusher's directory (serving_dir).
    baseline_serving_dir: Union[str, RuntimeParameter] = ""
    beam_pipeline_args: Sequence[str] = LOCAL_BEAM_ARGS
    enable_cache: bool = True
    pipeline_name: str = PIPELINE_NAME


def create_pipeline(cfg: PipelineConfig,
                    metadata_connection_config: Optional[object] = None) -> tfx.dsl.Pipeline:
    """Builds the whole pipeline: ingestion, validation, Transform, Trainer, the
    retrieval evaluator gate, compression and the Pusher."""
    return _pipeline(cfg, _components(cfg), metadata_connection_config)


def _components(cfg: PipelineConfig) -> List[Any]:
    """Every component of the pipeline, wired, in the order they run."""
    example_gen = FileBasedExampleGen(
        input_base=cfg.data_root,
        input_config=example_gen_pb2.Input(splits=[
            example_gen_pb2.Input.Split(name="train", pattern=TRAIN_PATTERN),
            example_gen_pb2.Input.Split(name="eval", pattern=EVAL_PATTERN),
        ]),
        custom_executor_spec=executor_spec.BeamExecutorSpec(ParquetExecutor),
    )
    statistics_gen = tfx.components.StatisticsGen(examples=example_gen.outputs["examples"])
    schema_gen = tfx.components.ImportSchemaGen(schema_file=cfg.schema_file)
    example_validator = tfx.components.ExampleValidator(
        statistics=statistics_gen.outputs["statistics"], schema=schema_gen.outputs["schema"])
    validation_gate = DataValidationGate(anomalies=example_validator.outputs["anomalies"])
    transform = tfx.components.Transform(
        examples=example_gen.outputs["examples"],
        schema=schema_gen.outputs["schema"],
        preprocessing_fn=PREPROCESSING_FN,
        custom_config=cfg.transform.to_custom_config(),
        splits_config=transform_pb2.SplitsConfig(analyze=["train"],
                                                 transform=["train", "eval"]),
        # Transform's own pre/post-transform statistics: the pre-transform ones repeat
        # StatisticsGen, and the post-transform branch (a Flatten behind a side input)
        # makes the DirectRunner hold every transformed row in memory: 1M rows
        # 5.0 -> 3.3 GB, 3M rows 8.0 -> 3.5 GB peak without them (bench/scale.py).
        disable_statistics=True,
    )
    transform.add_upstream_node(validation_gate)  # no Transform on data with anomalies
    # Per-user ordered histories on Beam: training windows, catalog tables and the
    # served model's history and exclusion tables (every split).
    sequence_gen = SequenceGen(
        examples=example_gen.outputs["examples"],
        transformed_examples=transform.outputs["transformed_examples"],
        transform_graph=transform.outputs["transform_graph"],
        max_history=cfg.trainer.max_history, exclusion_cap=cfg.trainer.exclusion_cap)
    latest_model = tfx.dsl.Resolver(
        strategy_class=LatestOrNoneStrategy,
        model=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Model,
                              producer_component_id="Trainer", output_key="model"),
    ).with_id("latest_model_resolver") if cfg.resolve_base_model else None
    trainer = tfx.components.Trainer(
        run_fn=TRAINER_RUN_FN,
        base_model=latest_model.outputs["model"] if latest_model else None,
        examples=sequence_gen.outputs["sequences"],
        transform_graph=transform.outputs["transform_graph"],
        schema=schema_gen.outputs["schema"],
        train_args=trainer_pb2.TrainArgs(splits=["train"]),
        eval_args=trainer_pb2.EvalArgs(splits=["eval"]),
        # The Trainer needs the Transform settings too (vocabulary and bucket sizes).
        custom_config={**cfg.transform.to_custom_config(), **cfg.trainer.to_custom_config(),
                       **cfg.trainer_custom_config},
        custom_executor_spec=(executor_spec.ExecutorClassSpec(cfg.trainer_executor)
                              if cfg.trainer_executor else None),
    )
    if cfg.trainer_resources is not None:
        trainer.with_platform_config(cfg.trainer_resources.to_platform_config())
    serving_dir = cfg.serving_dir or os.path.join(cfg.pipeline_root, "serving")
    # The model served now is the baseline the new one must not regress on; both are
    # scored by the same code on the same split.
    evaluator = RetrievalEvaluator(
        model=trainer.outputs["model"], examples=example_gen.outputs["examples"],
        transform_graph=transform.outputs["transform_graph"], gate=cfg.gate,
        baseline_serving_dir=cfg.baseline_serving_dir or serving_dir,
        max_eval_users=cfg.max_eval_users, eval_sample_seed=cfg.eval_sample_seed)
    compressor = ModelCompressor(
        model=trainer.outputs["model"], model_blessing=evaluator.outputs["blessing"],
        examples=example_gen.outputs["examples"],
        sequences=sequence_gen.outputs["sequences"],
        transform_graph=transform.outputs["transform_graph"], gate_k=cfg.gate.k,
        max_recall_drop=cfg.max_compression_recall_drop, model_name=MODEL_NAME,
        max_eval_users=cfg.max_eval_users, eval_sample_seed=cfg.eval_sample_seed)
    # TFX's Pusher, except that it pushes nothing when nothing changed
    # (components/pusher/executor.py).
    pusher = tfx.components.Pusher(
        model=compressor.outputs["compressed_model"],
        model_blessing=compressor.outputs["blessing"],
        push_destination=cfg.push_destination or tfx.proto.PushDestination(
            filesystem=tfx.proto.PushDestination.Filesystem(base_directory=serving_dir)),
        custom_executor_spec=executor_spec.ExecutorClassSpec(PusherExecutor))
    components = [example_gen, statistics_gen, schema_gen, example_validator,
                  validation_gate, transform, sequence_gen, latest_model, trainer, evaluator,
                  compressor, pusher]
    return [c for c in components if c is not None]


def _pipeline(cfg: PipelineConfig, components: List[Any],
              metadata_connection_config: Optional[object]) -> tfx.dsl.Pipeline:
    return tfx.dsl.Pipeline(
        pipeline_name=cfg.pipeline_name,
        pipeline_root=cfg.pipeline_root,
        components=components,
        enable_cache=cfg.enable_cache,
        metadata_connection_config=metadata_connection_config,
        beam_pipeline_args=list(cfg.beam_pipeline_args),
    )


def create_sub_pipeline(cfg: PipelineConfig, component_ids: Sequence[str],
                        metadata_connection_config: Optional[object] = None
                        ) -> tfx.dsl.Pipeline:
    """The components of ``create_pipeline(cfg)`` named in ``component_ids``, and no
    other, e.g. ExampleGen through Transform to run the Beam steps alone.

    The edges to the components left out are cut. Keep every component a kept one
    reads an artifact from (Transform: ExampleGen and ImportSchemaGen); TFX only warns
    when one is missing.
    """
    components = _components(cfg)
    known = [c.id for c in components]
    unknown = sorted(set(component_ids) - set(known))
    if unknown:
        raise ValueError(f"no component {', '.join(unknown)} in the pipeline; its "
                         f"components are {', '.join(known)}")
    keep = [c for c in components if c.id in component_ids]
    for c in keep:
        for up in list(c.upstream_nodes):
            if up.id not in component_ids:
                c.remove_upstream_node(up)
        for down in list(c.downstream_nodes):
            if down.id not in component_ids:
                c.remove_downstream_node(down)
    return _pipeline(cfg, keep, metadata_connection_config)


def main(argv: Optional[List[str]] = None) -> int:
    from runner import cli
    return cli.main(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    # The runners import ``pipeline`` for the factory; as a script this file is
    # ``__main__``, and without the alias Python would run it a second time as
    # ``pipeline``, with a second copy of every class and constant defined here.
    sys.modules.setdefault("pipeline", sys.modules[__name__])
    sys.exit(main())
