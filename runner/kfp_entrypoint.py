"""Container entrypoint for TFX components under the open-source KFP v2 launcher.

TFX 1.16's ``kubeflow_v2_run_executor`` was written for Vertex AI. Under the
open-source KFP v2 driver/launcher its artifact parsing and storage assumptions
break. This module repairs the launcher's executor input, then hands it to TFX's own
``_run_executor`` (same flags, same executor output):

1. ``system.*`` schema titles. The launcher types input artifacts by their ML
   Metadata type, e.g. ``schemaTitle: system.Artifact``; TFX's
   ``_retrieve_class_path`` imports an unknown title as a class path and fails.
2. An empty or ``None`` ``instance_schema`` (or no type at all): TFX's
   ``_retrieve_class_path`` leaves ``title`` unbound (or calls ``.get`` on ``None``).
3. No usable type at all: the class is inferred from the artifact's metadata keys
   (``span``/``version``/``split_names`` → Examples, ``blessed`` → ModelBlessing).
4. Type enrichment: before 1 and 3, the type comes from the component's own
   declaration (``--json_serialized_inputs_spec_args``, and
   ``--json_serialized_outputs_spec_args`` that ``runner/kubeflow.py`` adds).
5. Model-directory layout. The launcher downloads inputs to, and uploads outputs
   from, local paths (``gs://b/x`` → ``/gcs/b/x``, ``minio://`` → ``/minio/``,
   ``s3://`` → ``/s3/``) and creates only their parent folders. TFX used the remote
   URIs: ``minio://`` and ``s3://`` do not open in TensorFlow 2.16, and on GCS
   ``tf.io.gfile.makedirs`` leaves zero-byte ``dir/`` objects that the launcher later
   downloads as files, so ``model/Format-Serving`` clashes with a file of that name.
   Here executors read and write the local paths (output folders created first), and
   the executor output names the remote URIs again.

A sixth difference: ``FileBasedExampleGen``'s span-resolving driver runs in a Vertex
``preCacheCheck`` hook, which the open-source launcher does not run. The driver runs
here, before the executor, when the executor input has no resolved span.

    python -m runner.kfp_entrypoint --executor_class_path CLS \\
        --json_serialized_invocation_args '{{$}}' [--json_serialized_inputs_spec_args J] \\
        [--json_serialized_outputs_spec_args J] [beam args...]
"""
from __future__ import annotations

import project_env  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow loads)

import argparse
import json
import os
import sys
from typing import Dict, List, Mapping, Optional, Tuple

import yaml
from absl import logging
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2 as pb
from tfx.orchestration.kubeflow.v2 import compiler_utils
from tfx.utils import import_utils

# Where the KFP v2 launcher stages artifacts of each remote scheme.
LAUNCHER_LOCAL_ROOTS = {"gs://": "/gcs/", "minio://": "/minio/", "s3://": "/s3/"}
# Set to "0" to let executors use the remote URIs directly.
LOCAL_ARTIFACTS_ENV = "TWOTOWER_KFP_LOCAL_ARTIFACTS"

# KFP system types with a TFX counterpart.
SYSTEM_TITLES = {"system.Model": "tfx.Model", "system.Dataset": "tfx.Examples"}
# Property and custom-property keys that identify a TFX type.
METADATA_SIGNATURES = (
    ({"span", "version", "split_names"}, "tfx.Examples"),
    ({"blessed"}, "tfx.ModelBlessing"),
)


class ArtifactTypeError(ValueError):
    """An artifact's class could not be worked out."""


def local_path(uri: str) -> Optional[str]:
    """The launcher's local path of a remote ``uri``; ``None`` for other URIs."""
    for scheme, root in LAUNCHER_LOCAL_ROOTS.items():
        if uri.startswith(scheme):
            return root + uri[len(scheme):]
    return None


def schema_title(type_schema: pb.ArtifactTypeSchema) -> str:
    """The type's title, or "" when the type is missing, empty or unparsable."""
    kind = type_schema.WhichOneof("kind")
    if kind == "schema_title":
        return type_schema.schema_title
    if kind == "instance_schema" and type_schema.instance_schema:
        try:
            data = yaml.safe_load(type_schema.instance_schema)
        except yaml.YAMLError:
            return ""
        return data.get("title", "") if isinstance(data, dict) else ""
    return ""


def is_tfx_title(title: str) -> bool:
    """Whether TFX's own parser can import the class named by ``title``."""
    if not title or title.startswith("system."):
        return False
    if title in compiler_utils.TITLE_TO_CLASS_PATH:
        return True
    try:
        import_utils.import_class_by_path(title)
        return True
    except (ImportError, AttributeError, ValueError):
        return False


def _metadata_keys(artifact: pb.RuntimeArtifact) -> set:
    keys = set(artifact.metadata.keys()) | set(artifact.properties.keys())
    return keys | set(artifact.custom_properties.keys())


def resolve_title(key: str, artifact: pb.RuntimeArtifact,
                  declared: Optional[pb.ArtifactTypeSchema]) -> str:
    """The TFX title of ``artifact``: its own, the declared one, the system-type
    counterpart, or one inferred from its metadata keys, in that order."""
    own = schema_title(artifact.type)
    if is_tfx_title(own):
        return own
    if declared is not None and is_tfx_title(schema_title(declared)):
        return schema_title(declared)
    if own in SYSTEM_TITLES:
        return SYSTEM_TITLES[own]
    keys = _metadata_keys(artifact)
    for signature, title in METADATA_SIGNATURES:
        if signature <= keys:
            return title
    raise ArtifactTypeError(
        f"artifact {key!r} ({artifact.uri}) has type {own or 'none'!r}, no declared "
        f"type and metadata keys {sorted(keys)} that match no TFX type")


def _declared_types(spec_json: Optional[str]) -> Dict[str, pb.ArtifactTypeSchema]:
    if not spec_json:
        return {}
    spec = json.loads(spec_json)
    return {k: json_format.ParseDict(v.get("artifactType", {}), pb.ArtifactTypeSchema())
            for k, v in spec.get("artifacts", {}).items()}


def repair_executor_input(executor_input: pb.ExecutorInput,
                          inputs_spec_json: Optional[str] = None,
                          outputs_spec_json: Optional[str] = None,
                          local_artifacts: bool = True) -> Dict[str, str]:
    """Fixes artifact types and URIs in place; returns ``{local path: remote URI}``."""
    remote_of: Dict[str, str] = {}
    sides = ((executor_input.inputs.artifacts, _declared_types(inputs_spec_json), False),
             (executor_input.outputs.artifacts, _declared_types(outputs_spec_json), True))
    for artifacts, declared, is_output in sides:
        for key, artifact_list in artifacts.items():
            for artifact in artifact_list.artifacts:
                title = resolve_title(key, artifact, declared.get(key))
                if title != schema_title(artifact.type):
                    logging.info("artifact %r: type %r -> %r", key,
                                 schema_title(artifact.type) or None, title)
                    artifact.type.Clear()
                    artifact.type.schema_title = title
                path = local_path(artifact.uri) if local_artifacts else None
                if path is not None:
                    remote_of[path] = artifact.uri
                    artifact.uri = path
                if is_output and "://" not in artifact.uri:
                    os.makedirs(artifact.uri, exist_ok=True)
    return remote_of


def _read_output(output_file: str) -> Optional[pb.ExecutorOutput]:
    if not os.path.exists(output_file):
        return None
    with open(output_file) as f:
        return json_format.Parse(f.read(), pb.ExecutorOutput(), ignore_unknown_fields=True)


def restore_remote_uris(output_file: str, remote_of: Mapping[str, str],
                        driver_output: Optional[pb.ExecutorOutput] = None) -> None:
    """Rewrites the executor output's local artifact paths back to remote URIs and
    keeps the driver's artifact metadata (ExampleGen's span and version)."""
    output = _read_output(output_file)
    if output is None:
        return
    for key, artifact_list in output.artifacts.items():
        for i, artifact in enumerate(artifact_list.artifacts):
            artifact.uri = remote_of.get(artifact.uri, artifact.uri)
            if driver_output is not None and key in driver_output.artifacts and \
                    i < len(driver_output.artifacts[key].artifacts):
                for k, v in driver_output.artifacts[key].artifacts[i].metadata.items():
                    if k not in artifact.metadata:
                        artifact.metadata[k] = v
    with open(output_file, "w") as f:
        f.write(json_format.MessageToJson(output, sort_keys=True))


def _needs_example_gen_driver(executor_class_path: str,
                              executor_input: pb.ExecutorInput) -> bool:
    from tfx.components.example_gen import base_example_gen_executor, utils
    cls = import_utils.import_class_by_path(executor_class_path)
    return (issubclass(cls, base_example_gen_executor.BaseExampleGenExecutor)
            and "input_base" in executor_input.inputs.parameter_values
            and utils.SPAN_PROPERTY_NAME not in executor_input.inputs.parameter_values
            and not os.path.exists(executor_input.outputs.output_file))


def parse_args(argv: List[str]) -> Tuple[argparse.Namespace, List[str]]:
    p = argparse.ArgumentParser(prog="runner.kfp_entrypoint", description=__doc__.split(
        "\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--executor_class_path", required=True)
    p.add_argument("--json_serialized_invocation_args", required=True,
                   help="the launcher's executor input ({{$}})")
    p.add_argument("--json_serialized_inputs_spec_args")
    p.add_argument("--json_serialized_outputs_spec_args")
    return p.parse_known_args(argv)


def run(argv: List[str]) -> None:
    """Repairs the executor input, runs the executor, restores the remote URIs."""
    from tfx.orchestration.kubeflow.v2.container import kubeflow_v2_run_executor as tfx_entry
    args, beam_args = parse_args(argv)
    logging.set_verbosity(logging.INFO)
    executor_input = json_format.Parse(args.json_serialized_invocation_args,
                                       pb.ExecutorInput(), ignore_unknown_fields=True)
    remote_of = repair_executor_input(
        executor_input, args.json_serialized_inputs_spec_args,
        args.json_serialized_outputs_spec_args,
        local_artifacts=os.environ.get(LOCAL_ARTIFACTS_ENV, "1") != "0")
    if _needs_example_gen_driver(args.executor_class_path, executor_input):
        from tfx.orchestration.kubeflow.v2.file_based_example_gen import driver
        inputs_spec = None
        if args.json_serialized_inputs_spec_args:
            inputs_spec = json_format.Parse(args.json_serialized_inputs_spec_args,
                                            pb.ComponentInputsSpec())
        logging.info("resolving the ExampleGen span (the launcher runs no preCacheCheck)")
        driver._run_driver(executor_input, inputs_spec)  # pylint: disable=protected-access
        driver_output = _read_output(executor_input.outputs.output_file)
    else:
        driver_output = None
    tfx_args = argparse.Namespace(
        executor_class_path=args.executor_class_path,
        json_serialized_invocation_args=json_format.MessageToJson(executor_input),
        json_serialized_inputs_spec_args=args.json_serialized_inputs_spec_args)
    tfx_entry._run_executor(tfx_args, beam_args)  # pylint: disable=protected-access
    restore_remote_uris(executor_input.outputs.output_file, remote_of, driver_output)


def main(argv: Optional[List[str]] = None) -> int:
    run(sys.argv[1:] if argv is None else argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
