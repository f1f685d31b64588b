"""Evaluator gate, compression and Pusher across successive runs of one pipeline root."""
import dataclasses
import hashlib
import json
import os

import pytest
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

from components.compression import component as compression
from components.retrieval_evaluator.gate import GateConfig
from runner import local
from trainer.config import TrainerConfig

pytestmark = pytest.mark.e2e

CONTRACT_KEYS = {"evaluation", "baseline", "blessed", "compression", "pushed",
                 "pushed_version_dir"}


def _tree_digest(directory):
    """Every file under ``directory`` with its content hash."""
    out = {}
    for d, _, files in os.walk(directory):
        for f in files:
            p = os.path.join(d, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, directory)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def _first(pipeline):
    root, summary, opts = pipeline
    serving = os.path.join(root, "serving")
    return root, opts, serving, _tree_digest(serving)


@pytest.fixture
def first(small_pipeline):
    """The first run, to read."""
    return _first(small_pipeline)


@pytest.fixture
def rerun(rerun_pipeline):
    """The first run's root, to run the pipeline again in."""
    return _first(rerun_pipeline)


def test_first_run_blesses_compresses_and_pushes(first):
    root, _, serving, _ = first
    with open(os.path.join(root, "run_summary.json")) as f:
        s = json.load(f)
    assert CONTRACT_KEYS <= set(s)
    assert {"recall@10", "recall@50", "ndcg@10", "coverage@10"} <= set(s["evaluation"])
    assert "recall@50" in s["baseline"]["popularity"]
    assert s["blessed"] is True and s["gate"]["failed"] == []
    assert s["evaluation"]["recall@50"] > s["baseline"]["popularity"]["recall@50"]
    c = s["compression"]
    assert c["blessed"] and c["recall_drop_relative"] <= 0.05
    # The int8 weights are at least 3.5x smaller (4x minus the float scales and
    # biases); the whole directory less, as both hold the same per-user tables.
    assert c["weight_size_ratio"] >= 3.5 and c["size_ratio"] > 1.0
    assert c["method"] and 0.2 < c["sparsity"] <= 0.4
    # Every method tried is measured; the pushed one is the smallest within tolerance on
    # the validation slice (train users' newest train items), judged on the eval split.
    original, *tried = c["tried"]
    assert original["method"] == "original (float32)" and not original["chosen"]
    assert original["size_bytes"] == c["original_bytes"]
    assert {t["method"] for t in tried} == {
        "magnitude-pruning+int8-per-row",
        "distilled-student(1/2)+magnitude-pruning+int8-per-row"}
    [chosen] = [t for t in tried if t["chosen"]]
    assert chosen["method"] == c["method"] and chosen["size_bytes"] == c["compressed_bytes"]
    # Below the step cap every phase runs its whole epochs: 1 to fine-tune, 5 to distill.
    pruned, student = sorted(tried, key=lambda t: "distilled" in t["method"])
    assert 0 < pruned["fine_tune_steps"] == student["fine_tune_steps"] < 1000
    assert student["distill_steps"] == 5 * student["fine_tune_steps"]
    assert c["chosen_on"] == "validation" and c["validation"]["users"] > 0
    # (Past a first choice the eval split refused, if any: fell_back_from.)
    assert chosen["size_bytes"] == min(t["size_bytes"] for t in tried
                                       if t["validation_recall_drop_relative"] <= 0.05
                                       and t["method"] not in c["fell_back_from"])
    # The pushed model's candidate index, as its export recorded it: a small catalog
    # is scored in full.
    assert s["index"]["kind"] == "brute_force" and s["index"]["storage"] == "int8"
    assert s["index"]["num_items"] > 100
    assert s["pushed"] is True
    version = s["pushed_version_dir"]
    assert os.path.dirname(version) == serving and os.path.basename(version).isdigit()
    assert os.path.isfile(os.path.join(version, "saved_model.pb"))
    assert os.path.isdir(os.path.join(version, "variables"))
    assert compression.directory_bytes(version) == c["compressed_bytes"]
    warmup = os.path.join(version, "assets.extra", "tf_serving_warmup_requests")
    logs = [prediction_log_pb2.PredictionLog.FromString(r.numpy())
            for r in tf.data.TFRecordDataset(warmup)]
    # serving_default (a known user, then a batch with an unknown one), recommend_exact
    # and recommend_from_history: every path a client takes is traced before it asks.
    signatures = [l.predict_log.request.model_spec.signature_name for l in logs]
    assert signatures == ["serving_default", "serving_default", "recommend_exact",
                          "recommend_from_history"]
    assert b"__warmup_unknown_user__" in tf.make_ndarray(
        logs[1].predict_log.request.inputs["user_id"]).tolist()


def test_impossible_floor_blocks_the_push_and_says_why(rerun, capsys):
    root, opts, serving, before = rerun
    summary = local.run(dataclasses.replace(opts, gate=GateConfig(min_recall=0.99)))
    s = summary["run_summary"]
    assert s["blessed"] is False and s["pushed"] is False and s["pushed_version_dir"] is None
    [failure] = [m for m in s["gate"]["failed"] if "floor 0.9900" in m]
    assert failure.startswith("recall@50 ") and "(-0." in failure
    assert "NOT BLESSED: recall@50" in capsys.readouterr().out
    assert s["compression"]["blessed"] is False
    # The version pushed by the first run is still there, byte for byte.
    assert _tree_digest(serving) == before


def test_worse_model_is_refused_against_the_served_version(rerun):
    root, opts, serving, before = rerun
    # Trained from scratch: a warm start would begin from the good model's weights.
    worse = dataclasses.replace(opts.trainer, epochs=1, logq_correction=False,
                                learning_rate=1e-5, full_retrain=True)
    summary = local.run(dataclasses.replace(opts, trainer=worse))
    s = summary["run_summary"]
    assert s["training"]["mode"] == "full" and s["training"]["reason"].startswith(
        "full retrain requested")
    assert "served" in s["baseline"]
    assert s["baseline"]["last_blessed"] == s["baseline"]["served"]  # the earlier key
    regression = [c for c in s["gate"]["checks"] if c["name"] == "no_regression"][0]
    assert not regression["passed"]
    assert "vs served" in regression["message"]
    assert s["blessed"] is False and s["pushed"] is False
    assert s["push_skipped_reason"] == "the evaluator did not bless the model"
    assert _tree_digest(serving) == before


def test_rerun_on_unchanged_data_pushes_nothing_and_says_why(rerun, capsys):
    root, opts, serving, before = rerun
    summary = local.run(opts)
    s = summary["run_summary"]
    # The Trainer warm-starts from the newest model and finds no interaction it lacks.
    t = s["training"]
    assert t["mode"] == "warm_start" and t["steps"] == 0 and t["examples"] == 0
    assert t["base_model"].startswith(os.path.join(root, "Trainer", "model"))
    assert s["pushed"] is False and s["pushed_version_dir"] is None
    assert s["push_skipped_reason"].startswith("nothing new to push: the data (spans 1) and "
                                               "the settings are those of served version")
    assert "not pushed (nothing new to push" in capsys.readouterr().out
    assert _tree_digest(serving) == before


def test_pusher_pushes_nothing_identical_to_the_served_version(first, tmp_path):
    """The Pusher executor against a copy of the served version in its own directory."""
    import shutil
    from tfx.proto import pusher_pb2
    from tfx.types import standard_artifacts
    from tfx.utils import proto_utils
    from components.pusher.executor import SKIPPED_REASON, Executor
    from serving.savedmodel.fingerprint import (FINGERPRINT_FILE, newest_version_dir,
                                                read_fingerprint, write_fingerprint)
    root, _, serving, _ = first
    base = tmp_path / "serving"
    served = newest_version_dir(serving)
    shutil.copytree(served, base / os.path.basename(served))
    assert read_fingerprint(served)["spans"] == ["1"]

    def push(candidate):
        model, blessing = standard_artifacts.Model(), standard_artifacts.ModelBlessing()
        model.uri, blessing.uri = str(candidate), str(tmp_path / "blessing")
        blessing.set_int_custom_property("blessed", 1)
        pushed = standard_artifacts.PushedModel()
        pushed.uri = str(tmp_path / "pushed")
        destination = pusher_pb2.PushDestination(
            filesystem=pusher_pb2.PushDestination.Filesystem(base_directory=str(base)))
        Executor().Do({"model": [model], "model_blessing": [blessing]},
                      {"pushed_model": [pushed]},
                      {"push_destination": proto_utils.proto_to_json(destination)})
        return pushed

    candidate = tmp_path / "candidate"
    shutil.copytree(served, candidate / "Format-Serving")
    pushed = push(candidate)
    assert pushed.get_int_custom_property("pushed") == 0
    assert pushed.get_string_custom_property(SKIPPED_REASON).startswith(
        "nothing new to push: the data (spans 1) and the settings are those of served")
    # Other data behind the same weights: still nothing new.
    fingerprint = read_fingerprint(served)
    write_fingerprint(str(candidate / "Format-Serving"), {**fingerprint, "data": "other"})
    pushed = push(candidate)
    assert pushed.get_string_custom_property(SKIPPED_REASON).startswith(
        "nothing new to push: the model is identical to served version")
    # Other weights: a new version.
    with open(candidate / "Format-Serving" / "variables" / "variables.index", "ab") as f:
        f.write(b"\0")
    pushed = push(candidate)
    assert pushed.get_int_custom_property("pushed") == 1
    assert len(os.listdir(base)) == 2 and os.path.isfile(
        os.path.join(pushed.get_string_custom_property("pushed_destination"), FINGERPRINT_FILE))
