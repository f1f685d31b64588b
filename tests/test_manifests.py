"""Kubernetes manifests: every file and every rendered overlay is valid against the
Kubernetes OpenAPI schemas (kubernetes-validate), and the serving Deployment keeps
the ports, probes, security settings and configs that TF Serving needs.

Rendering needs ``kubectl`` (kustomize is built in). Where it is missing the render
tests fail with a message saying so; set ``TWOTOWER_SKIP_KUSTOMIZE=1`` to skip them
explicitly instead (the skip reason is printed by pytest -ra).
"""
import os
import pathlib
import shutil
import subprocess

import kubernetes_validate
import pytest
import yaml

from components.tfjob_trainer import tfjob

MANIFESTS = pathlib.Path(__file__).resolve().parent.parent / "manifests"
K8S_VERSION = "1.32"
OVERLAYS = ["base", "overlays/dev", "overlays/prod", "training"]
SKIP_ENV = "TWOTOWER_SKIP_KUSTOMIZE"


def _kustomize(path: pathlib.Path) -> list:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        if os.environ.get(SKIP_ENV) == "1":
            pytest.skip(f"kubectl not installed; {SKIP_ENV}=1 skips rendering the overlays")
        pytest.fail(f"kubectl (with built-in kustomize) is not installed, so the overlays "
                    f"cannot be rendered; install it or set {SKIP_ENV}=1 to skip")
    out = subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def _validate(doc: dict) -> None:
    if doc["kind"] == "TFJob":
        validate_tfjob(doc)
    else:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def validate_tfjob(doc: dict) -> None:
    """kubernetes-validate has no schemas for CRDs: the TFJob's own structure is checked
    here, and its pod template against the core PodTemplateSpec schema."""
    assert doc["apiVersion"] == "kubeflow.org/v1" and doc["kind"] == "TFJob"
    assert set(doc) <= {"apiVersion", "kind", "metadata", "spec"}
    assert doc["metadata"].get("name") or doc["metadata"].get("generateName")
    spec = doc["spec"]
    assert set(spec) <= {"runPolicy", "tfReplicaSpecs", "successPolicy", "enableDynamicWorker"}
    assert set(spec["runPolicy"]) <= {"cleanPodPolicy", "backoffLimit", "ttlSecondsAfterFinished",
                                      "activeDeadlineSeconds", "schedulingPolicy", "suspend"}
    assert spec["runPolicy"]["cleanPodPolicy"] in ("None", "Running", "All")
    assert spec["tfReplicaSpecs"], "no replicas"
    for kind, replica in spec["tfReplicaSpecs"].items():
        assert kind in ("Chief", "Worker", "PS", "Evaluator", "Master")
        assert set(replica) <= {"replicas", "restartPolicy", "template"}
        assert isinstance(replica["replicas"], int) and replica["replicas"] >= 1
        assert replica["restartPolicy"] in ("Always", "OnFailure", "Never", "ExitCode")
        containers = replica["template"]["spec"]["containers"]
        assert any(c["name"] == tfjob.CONTAINER_NAME for c in containers), \
            "the Training Operator needs a container named 'tensorflow'"
        kubernetes_validate.validate({"apiVersion": "v1", "kind": "PodTemplate",
                                      "metadata": {"name": "t"},
                                      "template": replica["template"]}, K8S_VERSION, strict=True)


def _files():
    return sorted(p for p in MANIFESTS.rglob("*.yaml") if p.name != "kustomization.yaml")


@pytest.mark.parametrize("path", _files(), ids=lambda p: str(p.relative_to(MANIFESTS)))
def test_every_manifest_file_is_valid(path):
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert docs
    for doc in docs:
        _validate(doc)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rendered_overlays_are_valid(overlay):
    docs = _kustomize(MANIFESTS / overlay)
    assert docs
    for doc in docs:
        _validate(doc)


def _by_kind(docs):
    return {d["kind"]: d for d in docs}


@pytest.mark.parametrize("overlay", ["overlays/dev", "overlays/prod"])
def test_serving_overlay_has_every_object(overlay):
    docs = _by_kind(_kustomize(MANIFESTS / overlay))
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget",
            "PersistentVolumeClaim", "NetworkPolicy", "ConfigMap"} <= set(docs)
    namespaces = {d["metadata"].get("namespace") for d in docs.values()}
    assert len(namespaces) == 1 and None not in namespaces
    dep = docs["Deployment"]
    pod = dep["spec"]["template"]["spec"]
    [c] = pod["containers"]
    assert {p["containerPort"] for p in c["ports"]} == {8500, 8501}
    assert c["readinessProbe"] and c["livenessProbe"]
    assert c["resources"]["requests"] and c["resources"]["limits"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    for flag in ("--model_config_file=/config/models.config", "--enable_batching",
                 "--batching_parameters_file=/config/batching_parameters.txt",
                 "--monitoring_config_file=/config/monitoring.config", "--port=8500",
                 "--rest_api_port=8501"):
        assert flag in c["args"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    config_map = docs["ConfigMap"]
    assert volumes["config"]["configMap"]["name"] == config_map["metadata"]["name"]
    assert {"models.config", "batching_parameters.txt", "monitoring.config"} <= set(
        config_map["data"])
    assert "/models/recommender" in config_map["data"]["models.config"]
    pvc = docs["PersistentVolumeClaim"]
    assert volumes["models"]["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    assert {m["mountPath"] for m in c["volumeMounts"]} >= {"/models", "/config"}
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    selector = dep["spec"]["selector"]["matchLabels"]
    for kind in ("Service", "PodDisruptionBudget", "NetworkPolicy"):
        sel = docs[kind]["spec"].get("selector") or docs[kind]["spec"]["podSelector"]
        sel = sel.get("matchLabels", sel)
        assert sel == selector, kind
    assert docs["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]["name"] == \
        dep["metadata"]["name"]


def test_model_volume_matches_the_compile_default():
    from runner import kubeflow
    pvc = yaml.safe_load((MANIFESTS / "base" / "model-volume.yaml").read_text())
    assert pvc["metadata"]["name"] == kubeflow.KubeflowOptions(image="x").model_volume.claim


def test_standalone_tfjob_runs_the_trainer_entry_with_multiple_gpu_workers():
    [job] = [d for d in yaml.safe_load_all((MANIFESTS / "training" / "tfjob.yaml").read_text())
             if d]
    worker = job["spec"]["tfReplicaSpecs"]["Worker"]
    assert worker["replicas"] > 1
    [c] = worker["template"]["spec"]["containers"]
    assert c["command"] == list(tfjob.ENTRY)
    assert int(c["resources"]["limits"]["nvidia.com/gpu"]) > 1
    from trainer import tfjob_entry
    a = tfjob_entry._parser().parse_args(c["args"])
    fn_args = tfjob_entry.fn_args_from(a)
    assert fn_args.serving_model_dir.endswith("Format-Serving")


def test_tfjob_the_pipeline_submits_is_valid():
    settings = tfjob.TFJobSettings(image="reg/twotower-recommender:1", workers=3,
                                   gpus_per_worker=2, staging_claim="twotower-tfjob-staging")
    doc = tfjob.tfjob_manifest("twotower-train-abc", settings, ["--transform-graph", "g"])
    validate_tfjob(doc)
    worker = doc["spec"]["tfReplicaSpecs"]["Worker"]
    assert worker["replicas"] == 3
    assert worker["template"]["spec"]["containers"][0]["resources"]["limits"][
        "nvidia.com/gpu"] == "2"
