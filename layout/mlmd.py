"""What the newest run recorded in ML Metadata: each component's state and outputs.

Moved here from ``runner/mlmd_summary.py`` so that the report, which sits below the
runner, can find a component's output URIs too. Depends on ``ml_metadata`` only.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Dict, List, Optional

from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2

_STATE = metadata_store_pb2.Execution.State


@dataclasses.dataclass
class Output:
    key: str
    type_name: str
    uri: str
    span: Optional[int]
    properties: Dict[str, Any]  # custom properties (int, float or string values)


@dataclasses.dataclass
class ComponentRecord:
    component: str
    state: str  # COMPLETE, CACHED, FAILED, ...
    outputs: List[Output]

    def uris(self) -> Dict[str, str]:
        return {o.key: o.uri for o in self.outputs}

    def output(self, key: str) -> Output:
        return next(o for o in self.outputs if o.key == key)


def sqlite_connection(path: str) -> metadata_store_pb2.ConnectionConfig:
    """A connection to an existing SQLite store; FileNotFoundError if there is none.

    TFX's ``sqlite_metadata_connection_config`` would create an empty store instead,
    which a reader must not do to a mistyped pipeline root.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no ML Metadata store at {path}")
    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = path
    config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READWRITE
    return config


def _value(v: metadata_store_pb2.Value) -> Any:
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind in ("int_value", "double_value", "string_value") else None


def last_run_records(connection_config: metadata_store_pb2.ConnectionConfig,
                     pipeline_name: str) -> List[ComponentRecord]:
    """The newest execution of every component of ``pipeline_name``, in run order."""
    store = metadata_store.MetadataStore(connection_config)
    types = {t.id: t.name for t in store.get_artifact_types()}
    records = []
    for ctx in store.get_contexts_by_type("node"):
        if not ctx.name.startswith(pipeline_name + "."):
            continue
        executions = store.get_executions_by_context(ctx.id)
        if not executions:
            continue
        last = max(executions, key=lambda e: e.id)
        events = [e for e in store.get_events_by_execution_ids([last.id])
                  if e.type == metadata_store_pb2.Event.OUTPUT]
        artifacts = {a.id: a for a in store.get_artifacts_by_id([e.artifact_id for e in events])}
        outputs = []
        for e in events:
            a = artifacts[e.artifact_id]
            key = e.path.steps[0].key if e.path.steps else ""
            span = a.custom_properties["span"].int_value if "span" in a.custom_properties \
                else (a.properties["span"].int_value if "span" in a.properties else None)
            outputs.append(Output(key, types.get(a.type_id, "?"), a.uri, span,
                                  {k: _value(v) for k, v in a.custom_properties.items()}))
        records.append((last.id, ComponentRecord(ctx.name[len(pipeline_name) + 1:],
                                                 _STATE.Name(last.last_known_state), outputs)))
    return [r for _, r in sorted(records, key=lambda x: x[0])]


def component_record(connection_config: metadata_store_pb2.ConnectionConfig,
                     pipeline_name: str, component: str) -> ComponentRecord:
    """The newest execution of one component; KeyError if it never ran."""
    for r in last_run_records(connection_config, pipeline_name):
        if r.component == component:
            return r
    raise KeyError(f"{component} has no execution in ML Metadata")
