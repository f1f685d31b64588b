"""The pipeline image holds every module the compiled pipeline names: the Dockerfile
copies the repository root and .dockerignore excludes none of those files."""
import fnmatch
import importlib
import json
import pathlib
import re
import subprocess
import sys

import pipeline
from components.tfjob_trainer import tfjob
from runner import kubeflow

REPO = pathlib.Path(__file__).resolve().parent.parent


def dockerignore_patterns():
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [l.strip() for l in lines if l.strip() and not l.startswith("#")]


def excluded(rel: str, patterns) -> bool:
    """Docker's rule: the last matching pattern wins; a pattern matches a path or any
    of its parent folders; ``**/`` matches any depth; ``!`` re-includes."""
    parts = rel.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    result = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern[1:] if negate else pattern
        pat = pat.strip("/")
        regex = fnmatch.translate(pat.replace("**/", "\0")).replace("\0", "(?:.*/)?")
        regex = regex.replace(".*", "[^/]*").replace("(?:[^/]*/)?", "(?:.*/)?")
        if any(re.fullmatch(regex, p) for p in prefixes):
            result = not negate
    return result


def copied_into_image(rel: str) -> bool:
    dockerfile = (REPO / "Dockerfile").read_text()
    copies = re.findall(r"^COPY\s+(.+)\s+(\S+)$", dockerfile, flags=re.M)
    whole_repo = any(src.split() == ["."] for src, _ in copies)
    return whole_repo and not excluded(rel, dockerignore_patterns())


def module_file(dotted_module: str) -> str:
    path = pathlib.Path(importlib.import_module(dotted_module).__file__).resolve()
    return str(path.relative_to(REPO))


def _module_paths_of_the_compiled_pipeline():
    spec, _ = kubeflow.compile_spec(kubeflow.KubeflowOptions(
        image="x:1", tfjob={"workers": 2}))
    modules = {kubeflow.ENTRYPOINT[2], tfjob.ENTRY[2]}
    for executor in spec["deploymentSpec"]["executors"].values():
        args = executor["container"]["args"]
        modules.add(args[args.index("--executor_class_path") + 1].rsplit(".", 1)[0])
    modules |= {pipeline.PREPROCESSING_FN.rsplit(".", 1)[0],
                pipeline.TRAINER_RUN_FN.rsplit(".", 1)[0]}
    return spec, modules


def test_ignore_matcher_follows_docker_rules():
    pats = ["tests", "**/__pycache__", "*.egg-info", "!tests/keep.py"]
    assert excluded("tests/test_x.py", pats)
    assert not excluded("tests/keep.py", pats)
    assert excluded("runner/__pycache__/cli.pyc", pats)
    assert excluded("twotower_recsys.egg-info/PKG-INFO", pats)
    assert not excluded("runner/cli.py", pats)


def test_every_module_the_pipeline_names_is_in_the_image():
    spec, modules = _module_paths_of_the_compiled_pipeline()
    project = [m for m in modules if not m.startswith("tfx.")]
    assert {"runner.kfp_entrypoint", "trainer.tfjob_entry", "components.tfjob_trainer.executor",
            "transform.preprocessing", "trainer.task",
            "components.retrieval_evaluator.component",
            "components.compression.component", "components.parquet_example_gen",
            "components.data_validation_gate.component"} <= set(project)
    missing = [m for m in project if not copied_into_image(module_file(m))]
    assert not missing, f"not in the image: {missing}"


def test_project_imports_of_those_modules_are_in_the_image():
    """The modules' own project imports (evaluation/, ingest/, ...) must be there too.

    Imported in a fresh interpreter: this session's sys.modules also holds whatever
    other tests imported (bench/, say), which the pipeline never does.
    """
    _, modules = _module_paths_of_the_compiled_pipeline()
    script = (
        "import importlib, json, pathlib, sys\n"
        f"repo = pathlib.Path({str(REPO)!r})\n"
        f"for m in {sorted(modules)!r}: importlib.import_module(m)\n"
        "files = {str(pathlib.Path(m.__file__).resolve().relative_to(repo))\n"
        "         for m in list(sys.modules.values()) if getattr(m, '__file__', None)\n"
        "         and pathlib.Path(m.__file__).resolve().is_relative_to(repo)\n"
        "         and '.venv' not in m.__file__}\n"
        "print(json.dumps(sorted(files)))\n")
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                         text=True, timeout=300, check=True).stdout
    project_files = set(json.loads(out.strip().splitlines()[-1]))
    assert {"evaluation/model_eval.py", "project_env.py"} <= project_files
    missing = sorted(f for f in project_files if not copied_into_image(f))
    assert not missing, f"imported at run time but not in the image: {missing}"


def test_schema_file_of_the_compiled_spec_is_in_the_image():
    spec, _ = _module_paths_of_the_compiled_pipeline()
    path = spec["root"]["dag"]["tasks"]["ImportSchemaGen"]["inputs"]["parameters"][
        "schema_file"]["runtimeValue"]["constant"]
    assert path.startswith(kubeflow.IMAGE_WORKDIR + "/")
    rel = path[len(kubeflow.IMAGE_WORKDIR) + 1:]
    assert (REPO / rel).is_file() and copied_into_image(rel)
    assert f"WORKDIR {kubeflow.IMAGE_WORKDIR}" in (REPO / "Dockerfile").read_text()


def test_dockerfile_builds_from_the_pinned_tfx_and_runs_the_entrypoint():
    dockerfile = (REPO / "Dockerfile").read_text()
    [pin] = re.findall(r"^tfx==(\S+)$", (REPO / "constraints.txt").read_text(), flags=re.M)
    assert re.search(rf"^FROM tensorflow/tfx:{re.escape(pin)}$", dockerfile, flags=re.M)
    assert 'ENTRYPOINT ["python", "-m", "runner.kfp_entrypoint"]' in dockerfile
    assert "-c constraints.txt" in dockerfile
