"""The Pusher publishes a version atomically: a server polling the serving directory
never sees a version that is still being written.

The copy is slowed (each file 30 ms) so that a non-atomic push would be seen: TFX's own
Pusher, run the same way, is, which shows the check can fail.
"""
import os
import threading
import time

import pytest
import tensorflow as tf
from tfx.components.pusher import executor as tfx_pusher
from tfx.dsl.io import fileio
from tfx.proto import pusher_pb2
from tfx.types import standard_artifacts, standard_component_specs as keys
from tfx.utils import proto_utils

from components.pusher import executor as pusher
from serving.savedmodel.warmup import write_warmup_requests
from serving.version_manager import VersionManager
from tests.test_serving_versions import _Tiny


def _save(path: str, tag: str) -> str:
    module = _Tiny(tag)
    tf.saved_model.save(module, path, signatures={"serving_default": module.serve})
    write_warmup_requests(path, "recommender", ["u0"])
    return path


def _files(path: str) -> frozenset:
    return frozenset(os.path.relpath(os.path.join(d, f), path)
                     for d, _, fs in os.walk(path) for f in fs)


def _push(executor, model_uri: str, base: str, pushed_uri: str):
    model = standard_artifacts.Model()
    model.uri = model_uri
    blessing = standard_artifacts.ModelBlessing()
    blessing.set_int_custom_property("blessed", 1)
    pushed = standard_artifacts.PushedModel()
    pushed.uri = pushed_uri
    destination = pusher_pb2.PushDestination(
        filesystem=pusher_pb2.PushDestination.Filesystem(base_directory=base))
    executor.Do({keys.MODEL_KEY: [model], keys.MODEL_BLESSING_KEY: [blessing]},
                {keys.PUSHED_MODEL_KEY: [pushed]},
                {keys.PUSH_DESTINATION_KEY: proto_utils.proto_to_json(destination)})
    return pushed


def _push_while_polling(executor_cls, tmp_path, monkeypatch):
    """Pushes a second version while a VersionManager polls and a watcher lists every
    integer directory's files; returns (snapshots of the new version, server log,
    pushed artifact, manager)."""
    base = str(tmp_path / "serving")
    _save(os.path.join(base, "1"), "v1")
    candidate = _save(str(tmp_path / "model" / "Format-Serving"), "v2")
    complete = _files(candidate)
    real_copy = fileio.copy

    def slow_copy(src, dst, overwrite=False):
        real_copy(src, dst, overwrite)
        time.sleep(0.03)

    monkeypatch.setattr(fileio, "copy", slow_copy)
    logs, snapshots, stop = [], [], threading.Event()
    manager = VersionManager("recommender", base, log=logs.append)
    manager.poll()

    def watch():
        while not stop.is_set():
            for name in os.listdir(base):
                if name.isdigit() and name != "1":
                    snapshots.append(_files(os.path.join(base, name)))
            manager.poll()

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        pushed = _push(executor_cls(), str(tmp_path / "model"), base, str(tmp_path / "pushed"))
        time.sleep(0.2)
        manager.poll()
    finally:
        stop.set()
        watcher.join(60)
    return snapshots, complete, logs, pushed, manager, base


def test_a_pushed_version_appears_complete_or_not_at_all(tmp_path, monkeypatch):
    snapshots, complete, logs, pushed, manager, base = _push_while_polling(
        pusher.Executor, tmp_path, monkeypatch)
    assert snapshots and set(snapshots) == {complete}
    assert not [line for line in logs if "failed to load" in line]
    version = pushed.get_string_custom_property("pushed_version")
    assert pushed.get_int_custom_property("pushed") == 1
    assert pushed.get_string_custom_property("pushed_destination") == os.path.join(base, version)
    assert manager.serving_versions == [int(version)]
    # Loaded once, with its warm-up, which the rename carried in with the rest.
    [loaded] = [line for line in logs if f"loaded recommender version {version} " in line]
    assert "(2 warm-up requests replayed)" in loaded
    # Nothing staged is left behind.
    assert sorted(os.listdir(base)) == sorted(["1", version])


def test_tfx_pusher_alone_is_seen_half_written(tmp_path, monkeypatch):
    """The control: the same push through TFX's executor is observed incomplete."""
    snapshots, complete, logs, _, _, _ = _push_while_polling(
        tfx_pusher.Executor, tmp_path, monkeypatch)
    assert any(s != complete for s in snapshots)


def test_versions_always_increase(tmp_path):
    """Two pushes in one second, or a clock behind the newest version, still give a
    new, higher version (TFX's Pusher would skip the second as "already exists")."""
    base = str(tmp_path / "serving")
    model = _save(str(tmp_path / "m"), "x")
    first = pusher.push_atomically(model, base, now=1000)
    assert first == "1000"
    assert pusher.push_atomically(model, base, now=1000) == "1001"
    assert pusher.push_atomically(model, base, now=5) == "1002"
    assert sorted(os.listdir(base)) == ["1000", "1001", "1002"]


def test_a_failed_copy_leaves_no_version_and_no_staging(tmp_path, monkeypatch):
    base = str(tmp_path / "serving")
    model = _save(str(tmp_path / "m"), "x")
    real_copy = fileio.copy

    def failing_copy(src, dst, overwrite=False):
        if src.endswith("saved_model.pb"):
            raise OSError("disk full")
        real_copy(src, dst, overwrite)

    monkeypatch.setattr(fileio, "copy", failing_copy)
    with pytest.raises(OSError, match="disk full"):
        pusher.push_atomically(model, base)
    assert os.listdir(base) == []
