"""Every dotted path the pipeline hands to TFX must import, here and in the image."""
import importlib

import pipeline


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
