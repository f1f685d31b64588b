"""Queries a SavedModel from a process that can import nothing but TensorFlow."""
import json
import os
import subprocess
import sys

# Runs in a fresh interpreter: only `tensorflow` is imported, as in tensorflow_model_server.
_CLIENT = r"""
import importlib.abc, json, sys

class _Block(importlib.abc.MetaPathFinder):
    # What tensorflow_model_server lacks: fail loudly if loading the model needs it.
    BLOCKED = ("tensorflow_transform", "tfx", "tfx_bsl", "tensorflow_recommenders",
               "tf_keras", "tensorflow_model_optimization")
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.BLOCKED:
            raise ImportError(f"{name} is blocked: the model must need TensorFlow only")
        return None

sys.meta_path.insert(0, _Block())
import tensorflow as tf
model = tf.saved_model.load(sys.argv[1])
ask = json.loads(sys.argv[2])
users = ask["users"] + ["no-such-user-xyz"]
sigs = model.signatures
ids = lambda out: [[x.decode() for x in row if x] for row in out["item_ids"].numpy()]
out = sigs["serving_default"](user_id=tf.constant(users))
ex = tf.train.Example(features=tf.train.Features(feature={
    "user_id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[users[0].encode()])),
    "user_age": tf.train.Feature(int64_list=tf.train.Int64List(value=[30])),
}))
out_ex = sigs["serve_tf_examples"](examples=tf.constant([ex.SerializeToString()]))
first = out["item_ids"][0, 0].numpy()
excl = sigs["recommend_excluding"](user_id=tf.constant([users[0]]),
                                   exclude_item_ids=tf.constant([[first, b""]]))
history = ask["history"]
fresh = sigs["recommend_from_history"](
    user_id=tf.constant(["no-such-user-xyz", users[0]]),
    history_item_ids=tf.constant([history + ["not-an-item", ""], history + ["", ""]]))
given = sigs["recommend_given_history"](
    user_id=tf.constant([users[0]]), history_item_ids=tf.constant([history]),
    exclude_item_ids=tf.constant([history]), days_since_history=tf.constant([0.0]))
exact = (ids(sigs["recommend_exact"](user_id=tf.constant(users)))
         if "recommend_exact" in sigs else None)
loaded = sorted(m for m in sys.modules if m.split(".")[0] in _Block.BLOCKED)
print(json.dumps({
    "signatures": sorted(sigs.keys()), "loaded": loaded,
    "inputs": {k: [v.dtype.name, v.shape.as_list()] for k, v in
               sigs["serving_default"].structured_input_signature[1].items()},
    "history_inputs": {k: [v.dtype.name, v.shape.as_list()] for k, v in
                       sigs["recommend_from_history"].structured_input_signature[1].items()},
    "item_dtype": out["item_ids"].dtype.name, "score_dtype": out["scores"].dtype.name,
    "items": ids(out), "scores": out["scores"].numpy().tolist(),
    "example_items": ids(out_ex)[0], "excluded_items": ids(excl)[0],
    "from_history": ids(fresh), "given_history": ids(given)[0], "exact_items": exact,
}))
"""


def query_in_tensorflow_only_process(model_dir: str, users, history) -> dict:
    """Calls every signature for ``users`` (plus an unknown user, last) and, with
    ``history`` as request history, for an unknown user and ``users[0]``;
    ``exact_items`` is ``recommend_exact``'s answer (None without it)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "TF_USE_LEGACY_KERAS")}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    ask = json.dumps({"users": list(users), "history": list(history)})
    proc = subprocess.run([sys.executable, "-c", _CLIENT, model_dir, ask], env=env,
                          capture_output=True, text=True, timeout=300, cwd="/")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])
