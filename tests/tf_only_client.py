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
sigs = sorted(model.signatures.keys())
known, unknown = sys.argv[2], "no-such-user-xyz"
out = model.signatures["serving_default"](user_id=tf.constant([known, unknown]))
ex = tf.train.Example(features=tf.train.Features(feature={
    "user_id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[known.encode()])),
    "user_age": tf.train.Feature(int64_list=tf.train.Int64List(value=[30])),
}))
out_ex = model.signatures["serve_tf_examples"](examples=tf.constant([ex.SerializeToString()]))
excl = model.signatures["recommend_excluding"](
    user_id=tf.constant([known]),
    exclude_item_ids=tf.constant([[out["item_ids"][0, 0].numpy(), b""]]))
loaded = sorted(m for m in sys.modules if m.split(".")[0] in _Block.BLOCKED)
print(json.dumps({
    "signatures": sigs, "loaded": loaded,
    "inputs": {k: [v.dtype.name, v.shape.as_list()] for k, v in
               model.signatures["serving_default"].structured_input_signature[1].items()},
    "item_dtype": out["item_ids"].dtype.name, "score_dtype": out["scores"].dtype.name,
    "items": [[x.decode() for x in row] for row in out["item_ids"].numpy()],
    "scores": out["scores"].numpy().tolist(),
    "example_items": [x.decode() for x in out_ex["item_ids"].numpy()[0]],
    "excluded_items": [x.decode() for x in excl["item_ids"].numpy()[0]],
}))
"""



def query_in_tensorflow_only_process(model_dir: str, known_user: str) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "TF_USE_LEGACY_KERAS")}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    proc = subprocess.run([sys.executable, "-c", _CLIENT, model_dir, known_user], env=env,
                          capture_output=True, text=True, timeout=300, cwd="/")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])
