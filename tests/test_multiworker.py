"""Two worker processes on localhost train together with MultiWorkerMirroredStrategy."""
import json
import os
import subprocess
import sys

import portpicker
import pytest

from tests.conftest import REPO_ROOT, SMALL_TRAINER, component_outputs

pytestmark = pytest.mark.e2e

_WORKER = r"""
import json, sys
import project_env
import tensorflow as tf
import tensorflow_transform as tft
from trainer.config import TrainerConfig
from trainer.task import train_and_export
from transform.config import TransformConfig
graph, examples, out, run_dir = sys.argv[1:5]
cfg = TrainerConfig(**{**json.loads(sys.argv[5]), "epochs": 1})
summary = train_and_export([examples + "/Split-train/*"], [examples + "/Split-eval/*"],
                           tft.TFTransformOutput(graph), cfg, TransformConfig(), out, run_dir)
print("SUMMARY " + json.dumps({k: summary[k] for k in ("strategy", "replicas", "loss")}))
"""


def test_two_workers_train_and_chief_exports(small_pipeline, tmp_path):
    root, _, _ = small_pipeline
    transform = component_outputs(root, "Transform")
    sequences = component_outputs(root, "SequenceGen")["sequences"]
    ports = [portpicker.pick_unused_port() for _ in range(2)]
    cluster = {"worker": [f"localhost:{p}" for p in ports]}
    out = str(tmp_path / "model")
    procs = []
    for index in range(2):
        env = dict(os.environ, TF_CONFIG=json.dumps(
            {"cluster": cluster, "task": {"type": "worker", "index": index}}),
            CUDA_VISIBLE_DEVICES="")
        procs.append(subprocess.Popen(
            [sys.executable, "-c", _WORKER, transform["transform_graph"],
             sequences, out, str(tmp_path / f"run{index}"),
             json.dumps(SMALL_TRAINER)],
            env=env, cwd=str(REPO_ROOT), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True))
    results = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=600)
        assert p.returncode == 0, stderr[-3000:]
        [line] = [l for l in stdout.splitlines() if l.startswith("SUMMARY ")]
        results.append(json.loads(line[len("SUMMARY "):]))
    for r in results:
        assert r["strategy"] == "MultiWorkerMirroredStrategy" and r["replicas"] == 2
        assert len(r["loss"]) == 1
    # Only the chief (worker 0) keeps the model and the history.
    assert os.path.isfile(os.path.join(out, "saved_model.pb"))
    assert os.path.isfile(tmp_path / "run0" / "training_history.json")
    assert not (tmp_path / "run1").exists()
    import tensorflow as tf
    answer = tf.saved_model.load(out).signatures["serving_default"](
        user_id=tf.constant(["u0", "unknown-user"]))
    assert answer["item_ids"].shape == (2, 100)
