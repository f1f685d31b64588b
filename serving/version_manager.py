"""Finds version directories under a base path, loads them and switches atomically.

Policy, as TensorFlow Serving's default ``latest { num_versions: N }`` with its
availability-preserving order (load the new version, then unload the old one):

* A version is a sub-directory whose name is an integer, as for TensorFlow
  Serving's file-system poller; other names (``.push-ab12``, ``123.partial``) are
  ignored. Writers stage under such a name and rename (the project's Pusher,
  ``components/pusher/executor.py``), so a version appears complete. A directory
  caught mid-copy fails to load like any broken version below.
* The newest ``num_versions`` loadable versions are served. A new one is loaded and
  its warm-up requests replayed before it is published; requests already running
  keep the ``LoadedVersion`` they resolved, so a switch drops none of them.
* A version that fails to load is marked ``END`` with the error and retried only
  when its directory's content changes; the previous version keeps serving.
"""
from __future__ import annotations

import dataclasses
import os
import threading
from typing import Callable, Dict, List, Mapping, Optional, Tuple

from tensorflow_serving.apis import get_model_status_pb2

from serving.errors import invalid, not_found
from serving.model_version import LoadedVersion, timed_load

State = get_model_status_pb2.ModelVersionStatus.State


@dataclasses.dataclass(frozen=True)
class VersionStatus:
    state: int  # ModelVersionStatus.State
    error: str = ""  # empty when OK


def list_versions(base_path: str) -> Dict[int, str]:
    """``{version: directory}`` of the integer-named directories under ``base_path``."""
    try:
        names = os.listdir(base_path)
    except FileNotFoundError:
        return {}
    found = {}
    for name in names:
        path = os.path.join(base_path, name)
        if name.isdigit() and os.path.isdir(path):
            found[int(name)] = path
    return found


def _fingerprint(path: str) -> Tuple:
    """What changes when a version directory's content changes."""
    out = []
    for d, _, files in os.walk(path):
        for f in files:
            st = os.stat(os.path.join(d, f))
            out.append((os.path.relpath(os.path.join(d, f), path), st.st_size, st.st_mtime_ns))
    return tuple(sorted(out))


class VersionManager:
    """Serves the newest ``num_versions`` versions of one model under ``base_path``."""

    def __init__(self, model_name: str, base_path: str, num_versions: int = 1,
                 log: Callable[[str], None] = print,
                 on_unload: Callable[[LoadedVersion], None] = lambda version: None) -> None:
        """``on_unload`` is called with each version no longer served, after the switch."""
        if num_versions < 1:
            raise ValueError(f"num_versions must be >= 1, got {num_versions}")
        self.model_name = model_name
        self.base_path = base_path
        self.num_versions = num_versions
        self._log = log
        self._on_unload = on_unload
        # Replaced as a whole, never mutated: readers take one reference and keep it.
        self._serving: Mapping[int, LoadedVersion] = {}
        self._status: Dict[int, VersionStatus] = {}
        self._failed: Dict[int, Tuple] = {}  # version -> fingerprint that failed
        self._poll_lock = threading.Lock()

    # --- request side -------------------------------------------------------
    def resolve(self, model_spec) -> LoadedVersion:
        """The loaded version a request's ``ModelSpec`` names (newest if none)."""
        if not model_spec.name:
            raise invalid("Missing ModelSpec name")
        if model_spec.name != self.model_name:
            raise not_found(f"Servable not found for request: Latest({model_spec.name})")
        serving = self._serving
        choice = model_spec.WhichOneof("version_choice")
        if choice == "version_label":
            raise invalid(f"Unrecognized servable version label: {model_spec.version_label}")
        if choice == "version":
            version = model_spec.version.value
            if version not in serving:
                raise not_found(f"Servable not found for request: "
                                f"Specific({self.model_name}, {version})")
            return serving[version]
        if not serving:
            raise not_found(f"Servable not found for request: Latest({self.model_name})")
        return serving[max(serving)]

    def statuses(self) -> List[Tuple[int, VersionStatus]]:
        return sorted(dict(self._status).items())

    @property
    def serving_versions(self) -> List[int]:
        return sorted(self._serving)

    # --- loading side -------------------------------------------------------
    def poll(self) -> None:
        """Loads what the policy wants, publishes it, then unloads what it no longer wants."""
        with self._poll_lock:
            self._poll()

    def _poll(self) -> None:
        on_disk = list_versions(self.base_path)
        for version in [v for v in self._failed if v not in on_disk]:
            del self._failed[version]
        loaded = dict(self._serving)
        while True:
            candidates = sorted((v for v in on_disk if not self._still_failed(v, on_disk[v])),
                                reverse=True)
            wanted = candidates[:self.num_versions]
            missing = [v for v in wanted if v not in loaded]
            if not missing:
                break
            version = missing[0]
            loaded_version = self._load(version, on_disk[version])
            if loaded_version is not None:
                loaded[version] = loaded_version
        keep = {v: loaded[v] for v in wanted if v in loaded}
        if not keep:
            return  # nothing loadable on disk: keep answering with what is loaded
        previous = sorted(self._serving)
        if sorted(keep) == previous:
            return
        unloaded = [v for k, v in self._serving.items() if k not in keep]
        self._serving = keep  # the atomic switch
        for version in unloaded:
            self._status[version.version] = VersionStatus(State.END)
            self._on_unload(version)
        if previous:
            self._log(f"[serving] switched {self.model_name} from version "
                      f"{', '.join(map(str, previous))} to {', '.join(map(str, sorted(keep)))}")

    def _still_failed(self, version: int, path: str) -> bool:
        return version in self._failed and self._failed[version] == _fingerprint(path)

    def _load(self, version: int, path: str) -> Optional[LoadedVersion]:
        self._status[version] = VersionStatus(State.LOADING)
        try:
            loaded, warmed, seconds = timed_load(version, path, self.model_name)
        except Exception as e:  # noqa: BLE001 (any load error is reported, never fatal)
            self._failed[version] = _fingerprint(path)
            message = f"{type(e).__name__}: {e}"
            self._status[version] = VersionStatus(State.END, message)
            self._log(f"[serving] failed to load {self.model_name} version {version} "
                      f"from {path}: {message.splitlines()[0][:300]}")
            return None
        self._status[version] = VersionStatus(State.AVAILABLE)
        self._log(f"[serving] loaded {self.model_name} version {version} from {path} in "
                  f"{seconds:.2f} s ({warmed} warm-up requests replayed)")
        return loaded
