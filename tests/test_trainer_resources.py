"""The Trainer's GPU, CPU and memory requests reach the compiled Kubeflow spec."""
import json
import os

from tfx.orchestration.kubeflow.v2 import kubeflow_v2_dag_runner as kfp_runner

import pipeline


def test_trainer_resources_in_kubeflow_v2_spec(tmp_path):
    resources = pipeline.Resources(cpu=6, memory_gib=24, gpu_count=2, gpu_type="nvidia.com/gpu")
    cfg = pipeline.PipelineConfig(pipeline_root="gs://bucket/root", data_root="gs://bucket/data",
                                  trainer_resources=resources,
                                  # as runner/kubeflow.py: KFP v2 compiles no custom Resolver
                                  resolve_base_model=False)
    kfp_runner.KubeflowV2DagRunner(
        config=kfp_runner.KubeflowV2DagRunnerConfig(default_image="example/recsys:test"),
        output_dir=str(tmp_path), output_filename="spec.json",
    ).run(pipeline.create_pipeline(cfg))
    with open(os.path.join(tmp_path, "spec.json")) as f:
        executors = json.load(f)["pipelineSpec"]["deploymentSpec"]["executors"]
    trainer = executors["Trainer_executor"]["container"]
    assert trainer["image"] == "example/recsys:test"
    assert trainer["resources"] == {"cpuLimit": 6.0, "memoryLimit": 24.0,
                                    "accelerator": {"type": "nvidia.com/gpu", "count": "2"}}
    assert "resources" not in executors["Transform_executor"]["container"]
    assert {"RetrievalEvaluator_executor", "ModelCompressor_executor",
            "Pusher_executor"} <= set(executors)
