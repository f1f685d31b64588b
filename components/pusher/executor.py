"""TFX's Pusher, made atomic, and pushing nothing when there is nothing new to push.

Atomic: TFX's Pusher copies the model file by file straight into
``<base>/<version>/`` (``saved_model.pb`` last). TensorFlow Serving's poller takes
every integer-named directory as a version, so it can try to load one whose
``variables/`` or ``assets.extra/`` warm-up are still being written, fail, and wait
for its retry. This executor copies into a hidden staging directory on the same file
system (``<base>/.push-<version>-<random>``, a name TF Serving ignores) and renames it
to ``<base>/<version>``: on a POSIX file system the version appears complete or not
at all. Object stores (``gs://``) have no atomic directory rename: there the rename
is a copy of each object, ``saved_model.pb`` still last.

Nothing new: a rerun on unchanged data, or a model identical to the served one, would
otherwise become a new version that TensorFlow Serving loads and switches to for
nothing. The candidate's ``model_fingerprint.json`` (data and settings digests,
``serving/savedmodel/fingerprint.py``) and weights are compared with the newest
version under the push destination; when they match, the ``PushedModel`` is marked
not pushed and its ``push_skipped_reason`` custom property says why.
"""
from __future__ import annotations

import os
import time
import uuid
from typing import Any, Dict, List, Optional

from absl import logging
from tfx import types
from tfx.components.pusher import executor as tfx_pusher
from tfx.dsl.io import fileio
from tfx.proto import pusher_pb2
from tfx.types import artifact_utils, standard_component_specs
from tfx.utils import io_utils, proto_utils

from serving.savedmodel.fingerprint import newest_version_dir, unchanged_reason

SKIPPED_REASON = "push_skipped_reason"
STAGING_PREFIX = ".push-"
SAVED_MODEL = "saved_model.pb"


def _versions(base: str) -> List[int]:
    return [int(d.rstrip("/")) for d in fileio.listdir(base) if d.rstrip("/").isdigit()]


def push_atomically(model_dir: str, base: str, now: Optional[float] = None) -> str:
    """Copies ``model_dir`` to a new version under ``base`` by staging and renaming;
    returns the version. The version is the Unix time, as TFX's Pusher names it, but
    always above every existing version, so a second push within the same second
    is a new version rather than TFX's silent "already exists, skipping"."""
    fileio.makedirs(base)
    staging = os.path.join(base, f"{STAGING_PREFIX}{uuid.uuid4().hex[:12]}")
    try:
        io_utils.copy_dir(model_dir, staging, deny_regex_patterns=[r"saved_model\.pb"])
        io_utils.copy_file(os.path.join(model_dir, SAVED_MODEL),
                           os.path.join(staging, SAVED_MODEL))
        version = max([int(now if now is not None else time.time())]
                      + [v + 1 for v in _versions(base)])
        while True:
            try:
                fileio.rename(staging, os.path.join(base, str(version)), overwrite=False)
                return str(version)
            except OSError:  # another writer took this version meanwhile
                if not fileio.exists(os.path.join(base, str(version))):
                    raise
                version += 1
    finally:
        if fileio.exists(staging):
            fileio.rmtree(staging)


class Executor(tfx_pusher.Executor):
    def Do(self, input_dict: Dict[str, List[types.Artifact]],
           output_dict: Dict[str, List[types.Artifact]], exec_properties: Dict[str, Any]) -> None:
        pushed = artifact_utils.get_single_instance(
            output_dict[standard_component_specs.PUSHED_MODEL_KEY])
        destination = pusher_pb2.PushDestination()
        proto_utils.json_to_proto(
            exec_properties[standard_component_specs.PUSH_DESTINATION_KEY], destination)
        if not destination.HasField("filesystem"):
            super().Do(input_dict, output_dict, exec_properties)
            return
        self._log_startup(input_dict, output_dict, exec_properties)
        if not self.CheckBlessing(input_dict):
            self._MarkNotPushed(pushed)
            return
        model_dir = self.GetModelPath(input_dict)
        base = destination.filesystem.base_directory
        reason = unchanged_reason(model_dir, newest_version_dir(base))
        if reason:
            logging.warning("Pusher: %s; nothing pushed", reason)
            print(f"[pusher] {reason}; nothing pushed", flush=True)
            self._MarkNotPushed(pushed)
            pushed.set_string_custom_property(SKIPPED_REASON, reason)
            return
        version = push_atomically(model_dir, base)
        serving_path = os.path.join(base, version)
        logging.info("Pusher: model written to serving path %s", serving_path)
        io_utils.copy_dir(model_dir, pushed.uri)
        self._MarkPushed(pushed, pushed_destination=serving_path, pushed_version=version)
