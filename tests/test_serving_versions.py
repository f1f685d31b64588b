"""Version discovery, loading, warm-up and switching on tiny hand-built SavedModels."""
import os
import shutil
import time

import grpc
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (get_model_status_pb2, model_pb2, predict_pb2,
                                     prediction_log_pb2)

from serving.savedmodel.warmup import write_warmup_requests
from serving.errors import RequestError
from serving.version_manager import VersionManager, list_versions

AVAILABLE = get_model_status_pb2.ModelVersionStatus.AVAILABLE
END = get_model_status_pb2.ModelVersionStatus.END


class _Tiny(tf.Module):
    """Answers every user with ``[tag] * 3``, so a response shows which version served."""

    def __init__(self, tag: str) -> None:
        super().__init__()
        self.tag = tf.Variable(tag)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="user_id")])
    def serve(self, user_id):
        n = tf.shape(user_id)[0]
        return {"item_ids": tf.fill([n, 3], self.tag.read_value()),
                "scores": tf.ones([n, 3]) * tf.constant([3.0, 2.0, 1.0])}


def _save(base, version, warmup=True):
    path = os.path.join(str(base), str(version))
    module = _Tiny(f"v{version}")
    tf.saved_model.save(module, path, signatures={"serving_default": module.serve})
    if warmup:
        write_warmup_requests(path, "recommender", ["u0", "u1"])
    return path


def _spec(name="recommender", version=None, label=None):
    spec = model_pb2.ModelSpec(name=name, signature_name="serving_default")
    if version is not None:
        spec.version.value = version
    if label is not None:
        spec.version_label = label
    return spec


def _ask(manager, version=None):
    request = predict_pb2.PredictRequest(model_spec=_spec(version=version))
    request.inputs["user_id"].CopyFrom(tf.make_tensor_proto(["u0"], dtype=tf.string))
    loaded = manager.resolve(request.model_spec)
    response = loaded.predict(request, "recommender")
    return tf.make_ndarray(response.outputs["item_ids"])[0, 0].decode()


def test_integer_directories_are_versions(tmp_path):
    """As TF Serving's poller: every integer name, complete or not (a broken one fails
    to load); the Pusher's staging name and other names are not versions."""
    _save(tmp_path, 3)
    (tmp_path / "7" / "variables").mkdir(parents=True)
    (tmp_path / ".push-9").mkdir()
    (tmp_path / ".push-9" / "saved_model.pb").write_bytes(b"")
    (tmp_path / "latest").mkdir()
    (tmp_path / "12").write_bytes(b"")  # a file, not a directory
    assert sorted(list_versions(str(tmp_path))) == [3, 7]
    assert list_versions(str(tmp_path / "missing")) == {}


def test_serves_the_newest_and_switches_after_warm_up(tmp_path):
    logs = []
    manager = VersionManager("recommender", str(tmp_path), log=logs.append)
    manager.poll()
    with pytest.raises(RequestError) as info:
        _ask(manager)
    assert info.value.code == grpc.StatusCode.NOT_FOUND  # nothing to serve yet
    _save(tmp_path, 1)
    _save(tmp_path, 2)
    manager.poll()
    assert manager.serving_versions == [2] and _ask(manager) == "v2"
    assert "2 warm-up requests replayed" in logs[-1]
    held = manager.resolve(_spec())  # a request in flight keeps its version
    _save(tmp_path, 5)
    manager.poll()
    assert _ask(manager) == "v5" and manager.serving_versions == [5]
    assert "switched recommender from version 2 to 5" in logs[-1]
    assert held.version == 2 and held.functions["serving_default"](
        user_id=tf.constant(["u"]))["item_ids"].numpy()[0, 0] == b"v2"
    assert [(v, s.state) for v, s in manager.statuses()] == [(2, END), (5, AVAILABLE)]


def test_a_version_that_fails_warm_up_is_not_served_and_retried_when_it_changes(tmp_path):
    logs = []
    _save(tmp_path, 1)
    manager = VersionManager("recommender", str(tmp_path), log=logs.append)
    manager.poll()
    bad = _save(tmp_path, 2, warmup=False)
    # A warm-up request for an input the model does not have: TF Serving fails the load.
    request = predict_pb2.PredictRequest(model_spec=_spec())
    request.inputs["wrong_input"].CopyFrom(tf.make_tensor_proto(["u0"], dtype=tf.string))
    os.makedirs(os.path.join(bad, "assets.extra"))
    with tf.io.TFRecordWriter(os.path.join(bad, "assets.extra",
                                           "tf_serving_warmup_requests")) as w:
        w.write(prediction_log_pb2.PredictionLog(
            predict_log=prediction_log_pb2.PredictLog(request=request)).SerializeToString())
    manager.poll()
    assert _ask(manager) == "v1"
    status = dict(manager.statuses())
    assert status[2].state == END and "warm-up request 1 failed" in status[2].error
    assert "failed to load recommender version 2" in logs[-1]
    n = len(logs)
    manager.poll()  # unchanged directory: not retried
    assert len(logs) == n
    write_warmup_requests(bad, "recommender", ["u0"])  # fixed in place
    manager.poll()
    assert _ask(manager) == "v2"


def test_latest_two_versions_and_specific_version_requests(tmp_path):
    for v in (1, 2, 3):
        _save(tmp_path, v, warmup=False)
    manager = VersionManager("recommender", str(tmp_path), num_versions=2, log=lambda _: None)
    manager.poll()
    assert manager.serving_versions == [2, 3]
    assert _ask(manager) == "v3" and _ask(manager, version=2) == "v2"
    for spec, code in [(_spec(version=1), grpc.StatusCode.NOT_FOUND),
                       (_spec(name="other"), grpc.StatusCode.NOT_FOUND),
                       (_spec(label="stable"), grpc.StatusCode.INVALID_ARGUMENT),
                       (_spec(name=""), grpc.StatusCode.INVALID_ARGUMENT)]:
        with pytest.raises(RequestError) as info:
            manager.resolve(spec)
        assert info.value.code == code


def test_emptied_base_path_keeps_the_loaded_version(tmp_path):
    _save(tmp_path, 1, warmup=False)
    manager = VersionManager("recommender", str(tmp_path), log=lambda _: None)
    manager.poll()
    shutil.rmtree(tmp_path / "1")
    manager.poll()
    assert _ask(manager) == "v1"


def test_a_persistent_poll_error_is_printed_once_then_counted(tmp_path, capfd):
    """The model directory replaced by a file: every poll fails the same way. The
    traceback is printed once, repeats only as counts, and recovery is said."""
    from serving.server import LocalModelServer, ServerConfig

    base = tmp_path / "recommender"
    _save(base, 1)
    server = LocalModelServer(ServerConfig(str(base), port=0, host="127.0.0.1",
                                           poll_seconds=0.01))
    server.start()
    try:
        moved = tmp_path / "moved"
        base.rename(moved)
        base.write_text("not a directory")
        time.sleep(1.5)
        base.unlink()
        moved.rename(base)
        time.sleep(0.3)
    finally:
        server.stop()
    err = capfd.readouterr().err
    assert err.count("[serving] polling the model directory failed:\n") == 1, err
    assert "NotADirectoryError" in err
    again = [line for line in err.splitlines() if "failed again (" in line]
    counts = [int(line.split("failed again (")[1].split()[0]) for line in again]
    assert counts[:3] == [2, 4, 8] and all(c & (c - 1) == 0 for c in counts), again
    assert len(err.splitlines()) < 40, err  # not one traceback per poll
    assert "[serving] polling the model directory works again after" in err
