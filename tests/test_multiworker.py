"""Two worker processes on localhost train together with MultiWorkerMirroredStrategy:
the same loss as one process on the same global batch, the same weights on both
workers, and a different shard of the training windows for each."""
import collections
import json
import os
import subprocess
import sys

import numpy as np
import portpicker
import pytest
import tensorflow as tf

from tests.conftest import REPO_ROOT, SMALL_TRAINER, component_outputs
from trainer import data as D
from trainer.config import TrainerConfig
from transform import features as F


def _run_workers(script: str, args=(), timeout: int = 600):
    """Runs ``script`` as workers 0 and 1 of one cluster; each prints one line
    ``RESULT <json>``, returned in worker order. ``{index}`` in an argument becomes
    the worker's index."""
    ports = [portpicker.pick_unused_port() for _ in range(2)]
    cluster = {"worker": [f"localhost:{p}" for p in ports]}
    procs = []
    for index in range(2):
        env = dict(os.environ, TF_CONFIG=json.dumps(
            {"cluster": cluster, "task": {"type": "worker", "index": index}}),
            CUDA_VISIBLE_DEVICES="", PYTHONPATH=str(REPO_ROOT))
        procs.append(subprocess.Popen(
            [sys.executable, "-c", script, *[a.replace("{index}", str(index)) for a in args]],
            env=env, cwd=str(REPO_ROOT), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True))
    results = []
    try:
        for p in procs:
            stdout, stderr = p.communicate(timeout=timeout)
            assert p.returncode == 0, stderr[-3000:]
            [line] = [x for x in stdout.splitlines() if x.startswith("RESULT ")]
            results.append(json.loads(line[len("RESULT "):]))
    finally:
        for p in procs:  # a worker whose peer died waits for it forever
            if p.poll() is None:
                p.kill()
    return results


_SAME_LOSS = r"""
import json
import project_env
import numpy as np
import tensorflow as tf
strategy = tf.distribute.MultiWorkerMirroredStrategy()
import trainer
from tests import ml100k_windows as W
index = strategy.cluster_resolver.task_id
out = {"trainer": trainer.__file__}
for name, cfg in (("full", W.FULL), ("sampled", W.SAMPLED)):
    tf.keras.utils.set_random_seed(0)
    with strategy.scope():
        model = W.build_model(cfg)
        model.compile(optimizer=tf.keras.optimizers.SGD(1.0))
    # One process: a plain model with the same weights, on the whole global batch.
    one = W.build_model(cfg)
    one.set_weights(model.get_weights())
    one.compile(optimizer=tf.keras.optimizers.SGD(1.0))
    share = strategy.run(tf.function(model.compute_loss),
                         args=({k: tf.constant(v) for k, v in W.HALVES[index].items()},))
    two = float(strategy.reduce("SUM", share, axis=None))
    # One Keras step each: the cluster's global batch is the 12 windows, half a worker.
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = \
        tf.data.experimental.AutoShardPolicy.DATA
    data = tf.data.Dataset.from_tensor_slices(W.WINDOWS).batch(W.USERS).with_options(options)
    logs = model.fit(data, verbose=0).history
    one_logs = one.fit(data, verbose=0).history
    out[name] = {"loss_one_process": one_logs["loss"][0], "loss_two_workers": two,
                 "fit_loss_two_workers": logs["loss"][0],
                 "weight_gap": max(float(np.abs(a - b).max())
                                   for a, b in zip(model.get_weights(), one.get_weights()))}
print("RESULT " + json.dumps(out))
"""


def test_two_workers_give_the_one_process_loss_and_step():
    """Each worker holds half of one MovieLens 100K global batch; the reference is a
    plain model (no strategy) with the same weights on the whole batch, in the same
    worker."""
    results = _run_workers(_SAME_LOSS)
    for r in results:
        assert r["trainer"] == str(REPO_ROOT / "trainer" / "__init__.py")
        for name in ("full", "sampled"):
            got = r[name]
            # The global batch's loss, summed over the workers' shares, and after one
            # SGD step the weights of one process.
            assert got["loss_two_workers"] == pytest.approx(got["loss_one_process"], rel=1e-5)
            assert got["fit_loss_two_workers"] == pytest.approx(got["loss_one_process"],
                                                                rel=1e-5)
            assert got["weight_gap"] < 1e-5, (name, got)


_TRAIN = r"""
import json, sys
import project_env
import numpy as np
import tensorflow as tf
import tensorflow_transform as tft
from trainer import task
from trainer.config import TrainerConfig
from trainer.model import SequenceRetrievalModel
from transform import features as F
from transform.config import TransformConfig
graph, examples, out, run_dir, record = sys.argv[1:6]
cfg = TrainerConfig(**{**json.loads(sys.argv[6]), "epochs": 1})

# Instruments this worker: the windows its replica trained on, and its weights after
# the first step and at the end. The training itself is the Trainer's.
seen, weights = [], {}
train_step = SequenceRetrievalModel.train_step
def recording_train_step(self, inputs):
    def note(items, users):
        seen.append([f"{u}:{','.join(map(str, row))}"
                     for u, row in zip(users.numpy().ravel(), items.numpy())])
        return 0
    tf.py_function(note, [inputs[F.WINDOW_ITEMS], inputs[F.WINDOW_USER]], tf.int64)
    return train_step(self, inputs)
SequenceRetrievalModel.train_step = recording_train_step
towers = lambda m: [w for t in (m.query_tower, m.candidate_tower, m.encoder)  # noqa: E731
                    for w in t.get_weights()]
class AfterFirstStep(tf.keras.callbacks.Callback):  # the variables exist from then on
    def on_train_batch_end(self, batch, logs=None):
        weights.setdefault("first", towers(self.model))
fit = SequenceRetrievalModel.fit
def recording_fit(self, *args, callbacks=(), **kwargs):
    return fit(self, *args, callbacks=[*(callbacks or ()), AfterFirstStep()], **kwargs)
SequenceRetrievalModel.fit = recording_fit
export = task.export
def recording_export(target, query, candidate, encoder, *args, **kwargs):
    weights["end"] = [w for t in (query, candidate, encoder) for w in t.get_weights()]
    return export(target, query, candidate, encoder, *args, **kwargs)
task.export = recording_export

summary = task.train_and_export([examples + "/Split-train/*"], [examples + "/Split-eval/*"],
                                tft.TFTransformOutput(graph), cfg, TransformConfig(), out,
                                run_dir)
np.savez(record + ".npz", *weights["end"])
np.savez(record + "-first.npz", *weights["first"])
with open(record + ".json", "w") as f:
    json.dump(seen, f)
print("RESULT " + json.dumps({k: summary[k] for k in
                             ("strategy", "replicas", "loss", "batch_size")}))
"""


@pytest.mark.e2e
def test_two_workers_train_on_their_own_shards_and_end_equal(small_pipeline, tmp_path):
    root, _, _ = small_pipeline
    transform = component_outputs(root, "Transform")
    sequences = component_outputs(root, "SequenceGen")["sequences"]
    out = str(tmp_path / "model")
    results = _run_workers(_TRAIN, [transform["transform_graph"], sequences, out,
                                    str(tmp_path / "run{index}"),
                                    str(tmp_path / "worker{index}"),
                                    json.dumps(SMALL_TRAINER)])
    for r in results:
        assert r["strategy"] == "MultiWorkerMirroredStrategy" and r["replicas"] == 2
        assert len(r["loss"]) == 1
    batch = results[0]["batch_size"]

    # Each worker's replica trained on half of every global batch, its own half.
    seen = [json.loads((tmp_path / f"worker{i}.json").read_text()) for i in range(2)]
    assert len(seen[0]) == len(seen[1]) > 0
    assert all(len(step) == batch // 2 for worker in seen for step in worker)
    windows = [collections.Counter(w for step in worker for w in step) for worker in seen]
    assert not set(windows[0]) & set(windows[1])
    # Together they are the training windows, each at most once in the epoch.
    every = collections.Counter()
    spec = D.window_spec(TrainerConfig(**SMALL_TRAINER).max_history)
    for b in D.make_dataset([sequences + "/Split-train/*"], spec, 4096):
        every.update(f"{u}:{','.join(map(str, row))}" for u, row in
                     zip(b[F.WINDOW_USER].numpy().ravel(), b[F.WINDOW_ITEMS].numpy()))
    union = windows[0] + windows[1]
    assert max(union.values()) == 1 and not union - every
    assert len(every) - len(union) < batch  # only the last partial batch is dropped

    # Both workers end with the same weights, which the steps after the first moved.
    end = [np.load(tmp_path / f"worker{i}.npz") for i in range(2)]
    start = np.load(tmp_path / "worker0-first.npz")
    assert len(end[0].files) == len(end[1].files) > 0
    for key in end[0].files:
        np.testing.assert_array_equal(end[0][key], end[1][key], err_msg=key)
    assert start.files == end[0].files
    assert max(float(np.abs(start[k] - end[0][k]).max()) for k in start.files) > 1e-3

    # Only the chief (worker 0) keeps the model and the history.
    assert os.path.isfile(os.path.join(out, "saved_model.pb"))
    assert os.path.isfile(tmp_path / "run0" / "training_history.json")
    assert not (tmp_path / "run1").exists()
    answer = tf.saved_model.load(out).signatures["serving_default"](
        user_id=tf.constant(["u0", "unknown-user"]))
    assert answer["item_ids"].shape == (2, 100)
