"""Every dotted path the pipeline hands to TFX must import, here and in the image."""
import importlib
import subprocess
import sys

import pipeline
from tests.conftest import REPO_ROOT


def _load(dotted):
    module, _, attr = dotted.rpartition(".")
    return getattr(importlib.import_module(module), attr)


def test_dotted_paths_import():
    assert callable(_load(pipeline.PREPROCESSING_FN))
    assert callable(_load(pipeline.TRAINER_RUN_FN))


def test_executor_class_paths_of_the_compiled_components_import(tmp_path):
    p = pipeline.create_pipeline(pipeline.PipelineConfig(pipeline_root=str(tmp_path),
                                                         data_root=str(tmp_path)))
    for component in p.components:
        spec = getattr(component, "executor_spec", None)
        cls = getattr(spec, "executor_class", None)
        if cls is not None:
            assert _load(f"{cls.__module__}.{cls.__name__}") is cls
    assert {c.id for c in p.components} == {
        "FileBasedExampleGen", "StatisticsGen", "ImportSchemaGen", "ExampleValidator",
        "DataValidationGate", "Transform", "SequenceGen", "Trainer",
        "latest_model_resolver", "RetrievalEvaluator", "ModelCompressor", "Pusher"}


def test_python_pipeline_py_runs_the_file_once():
    """``python pipeline.py`` is ``__main__``; the runner's ``import pipeline`` must
    reuse it, not execute the file again (-X importtime lists every module executed)."""
    r = subprocess.run([sys.executable, "-X", "importtime", "pipeline.py", "image-tag"],
                       cwd=str(REPO_ROOT), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    imported = [line.rsplit("|", 1)[-1].strip() for line in r.stderr.splitlines()
                if line.startswith("import time:")]
    assert "runner.kubeflow" in imported  # image-tag went through the runner
    assert "pipeline" not in imported
