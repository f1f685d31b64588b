"""TFX's Pusher, which pushes nothing when there is nothing new to push.

A rerun on unchanged data, or a model identical to the served one, would otherwise
become a new version that TensorFlow Serving loads and switches to for nothing. The
candidate's ``model_fingerprint.json`` (data and settings digests,
``serving/savedmodel/fingerprint.py``) and weights are compared with the newest
version under the push destination; when they match, the ``PushedModel`` is marked
not pushed and its ``push_skipped_reason`` custom property says why.
"""
from __future__ import annotations

from typing import Any, Dict, List

from absl import logging
from tfx import types
from tfx.components.pusher import executor as tfx_pusher
from tfx.proto import pusher_pb2
from tfx.types import artifact_utils, standard_component_specs
from tfx.utils import proto_utils

from serving.savedmodel.fingerprint import newest_version_dir, unchanged_reason

SKIPPED_REASON = "push_skipped_reason"


class Executor(tfx_pusher.Executor):
    def Do(self, input_dict: Dict[str, List[types.Artifact]],
           output_dict: Dict[str, List[types.Artifact]], exec_properties: Dict[str, Any]) -> None:
        pushed = artifact_utils.get_single_instance(
            output_dict[standard_component_specs.PUSHED_MODEL_KEY])
        destination = pusher_pb2.PushDestination()
        proto_utils.json_to_proto(
            exec_properties[standard_component_specs.PUSH_DESTINATION_KEY], destination)
        if self.CheckBlessing(input_dict) and destination.HasField("filesystem"):
            served = newest_version_dir(destination.filesystem.base_directory)
            reason = unchanged_reason(self.GetModelPath(input_dict), served)
            if reason:
                logging.warning("Pusher: %s; nothing pushed", reason)
                print(f"[pusher] {reason}; nothing pushed", flush=True)
                self._MarkNotPushed(pushed)
                pushed.set_string_custom_property(SKIPPED_REASON, reason)
                return
        super().Do(input_dict, output_dict, exec_properties)
