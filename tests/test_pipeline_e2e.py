"""The local TFX pipeline, end to end on a few thousand synthetic rows."""
import glob
import os

import pytest
import tensorflow as tf
from tfx import v1 as tfx

import pipeline
from components.data_validation_gate.component import DataAnomaliesError
from runner import local, mlmd_summary
from tests.conftest import SMALL_TRAINER, write

pytestmark = pytest.mark.e2e


def _records(root):
    conn = tfx.orchestration.metadata.sqlite_metadata_connection_config(
        local.metadata_path(root))
    return {r.component: r for r in mlmd_summary.last_run_records(conn, pipeline.PIPELINE_NAME)}


def _count(pattern):
    files = glob.glob(pattern)
    assert files, pattern
    return sum(1 for _ in tf.data.TFRecordDataset(files, compression_type="GZIP"))


@pytest.fixture(scope="module")
def first_run(small_pipeline):
    root, summary, _ = small_pipeline
    return root, summary


def test_runs_through_trainer_and_records_in_mlmd(first_run):
    root, summary = first_run
    records = summary["records"]
    assert set(records) == {"FileBasedExampleGen", "StatisticsGen", "ImportSchemaGen",
                            "ExampleValidator", "DataValidationGate", "Transform", "SequenceGen",
                            "Trainer",
                            "latest_model_resolver", "RetrievalEvaluator",
                            "ModelCompressor", "Pusher"}
    assert all(r.state == "COMPLETE" for r in records.values())
    examples = records["FileBasedExampleGen"].output("examples")
    assert examples.type_name == "Examples" and examples.span == 1


def test_every_prepared_row_is_transformed(first_run):
    root, summary = first_run
    split = summary["ingest_report"]["split"]
    transform = summary["records"]["Transform"].uris()
    examples = transform["transformed_examples"]
    # No statistics of Transform's own: StatisticsGen covers the raw data, and the
    # post-transform branch holds every row in the DirectRunner's memory (bench/scale.py).
    assert not {k for k in transform if "transform_stats" in k or "transform_schema" in k}
    assert _count(os.path.join(examples, "Split-train", "*")) == split["train_rows"]
    assert _count(os.path.join(examples, "Split-eval", "*")) == split["eval_rows"]
    vocab = os.path.join(transform["transform_graph"], "transform_fn", "assets",
                         "user_id_vocab")
    with open(vocab) as f:
        assert len(f.read().split()) == split["train_users"]
    record = next(iter(tf.data.TFRecordDataset(
        glob.glob(os.path.join(examples, "Split-eval", "*")), compression_type="GZIP")))
    keys = set(tf.train.Example.FromString(record.numpy()).features.feature)
    assert {"user_id_xf", "item_id_xf", "item_genres_xf", "user_age_xf", "hour_of_day",
            "day_of_week", "time_scaled", "item_year_xf", "rating_xf"} <= keys


def test_trainer_recorded_model_and_history(first_run):
    root, summary = first_run
    trainer = summary["records"]["Trainer"]
    model, run = trainer.output("model"), trainer.output("model_run")
    assert model.type_name == "Model" and run.type_name == "ModelRun"
    assert os.path.isfile(os.path.join(model.uri, "Format-Serving", "saved_model.pb"))
    import json
    with open(os.path.join(run.uri, "training_history.json")) as f:
        history = json.load(f)
    assert len(history["loss"]) == SMALL_TRAINER["epochs"]
    assert history["loss"][-1] < history["loss"][0]


def test_second_run_with_unchanged_inputs_is_cached(rerun_pipeline):
    root, first, opts = rerun_pipeline
    summary = local.run(opts)["run_summary"]
    states = {name: r.state for name, r in _records(root).items()}
    assert states["FileBasedExampleGen"] == "CACHED"
    assert states["StatisticsGen"] == "CACHED"
    assert states["Transform"] == "CACHED"
    # The Resolver now hands the first run's model to the Trainer as base_model: a new
    # input, so the Trainer runs, warm-started, with nothing new to train on.
    assert states["Trainer"] == "COMPLETE"
    training = summary["training"]
    assert training["mode"] == "warm_start" and training["steps"] == 0
    assert training["base_model"].startswith(os.path.join(root, "Trainer", "model"))
    assert summary["pushed"] is False and summary["push_skipped_reason"]


def test_anomalies_stop_the_run_before_transform(tmp_path):
    raw = tmp_path / "raw"
    rows = "".join(f"u{u},i{(u * 7 + k) % 40},4,{1000 * u + k}\n"
                   for u in range(60) for k in range(12))
    write(raw / "interactions.csv", "user_id,item_id,rating,timestamp\n" + rows)
    # Age 200 is outside the schema's int_domain [-1, 150].
    write(raw / "users.csv", "user_id,age\n" + "".join(
        f"u{u},{200 if u % 3 == 0 else 30}\n" for u in range(60)))
    root = str(tmp_path / "root")
    with pytest.raises(Exception) as e:
        local.run(local.LocalRunOptions(pipeline_root=root, data_dir=str(raw)))
    chain, exc = [], e.value
    while exc is not None:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    message = "\n".join(str(x) for x in chain)
    assert any(isinstance(x, DataAnomaliesError) for x in chain) or \
        "Data validation failed" in message
    assert "feature 'user_age'" in message and "split 'train'" in message
    assert "Transform" not in _records(root)
