"""RetrievalEvaluator's baseline from a TensorFlow Serving directory (no Resolver)."""
import json
import os

import pytest
from tfx.types import standard_artifacts

from components.retrieval_evaluator import component as evaluator


def _version(base, name, complete=True):
    os.makedirs(os.path.join(base, name))
    if complete:
        open(os.path.join(base, name, "saved_model.pb"), "wb").close()


def test_newest_version_dir_is_the_one_tf_serving_would_serve(tmp_path):
    base = str(tmp_path)
    assert evaluator.newest_version_dir(base) is None
    assert evaluator.newest_version_dir(os.path.join(base, "missing")) is None
    assert evaluator.newest_version_dir("") is None
    _version(base, "9")
    _version(base, "10")   # numeric order, not text order: 10 > 9
    _version(base, "11", complete=False)  # broken (no SavedModel): TF Serving cannot serve it
    _version(base, ".push-12")  # the Pusher's staging name
    assert evaluator.newest_version_dir(base) == os.path.join(base, "10")


def _artifact(cls, uri):
    a = cls()
    a.uri = uri
    os.makedirs(uri, exist_ok=True)
    return a


@pytest.mark.e2e
def test_served_version_is_the_regression_baseline(small_pipeline, tmp_path):
    root, summary, _ = small_pipeline
    uris = {name: summary["records"][name].uris()
            for name in ("Trainer", "FileBasedExampleGen", "Transform")}
    pushed = summary["run_summary"]["pushed_version_dir"]
    out = {"evaluation": _artifact(standard_artifacts.ModelEvaluation, str(tmp_path / "e")),
           "blessing": _artifact(standard_artifacts.ModelBlessing, str(tmp_path / "b"))}
    inputs = {"model": [_artifact(standard_artifacts.Model, uris["Trainer"]["model"])],
              "examples": [_artifact(standard_artifacts.Examples,
                                     uris["FileBasedExampleGen"]["examples"])],
              "transform_graph": [_artifact(standard_artifacts.TransformGraph,
                                            uris["Transform"]["transform_graph"])]}
    props = {"ks": "[10, 50]", "gate_k": 50, "min_recall": -1.0, "min_coverage": -1.0,
             "regression_tolerance": 0.05, "batch_size": 256,
             "baseline_serving_dir": os.path.dirname(pushed)}
    evaluator.Executor().Do(inputs, {k: [v] for k, v in out.items()}, props)
    with open(tmp_path / "e" / evaluator.METRICS_FILE) as f:
        result = json.load(f)
    assert result["baseline_model"] == evaluator.newest_version_dir(os.path.dirname(pushed))
    base = result["metrics"]["served"]
    assert base is not None and base["recall@50"] > 0
    [check] = [c for c in result["checks"] if c["name"] == "no_regression"]
    # The pushed model is this model, compressed within 5% of its recall@50.
    assert check["passed"] and base["recall@50"] >= 0.95 * result["metrics"]["model"]["recall@50"]
