"""``layout``: the run's file names and paths, below every other part of the project."""
import json
import os
import subprocess
import sys

import pytest

import layout


def test_import_layout_loads_only_the_standard_library():
    # Anything more and a low layer would pay for (or cycle through) a high one.
    code = ("import sys; before = set(sys.modules); import layout; "
            "import json; print(json.dumps(sorted(set(sys.modules) - before)))")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True,
                         text=True, check=True, timeout=60).stdout
    loaded = {m.split(".")[0] for m in json.loads(out)} - {"layout"}
    assert loaded <= set(sys.stdlib_module_names), loaded - set(sys.stdlib_module_names)


def test_the_writers_take_their_names_from_layout():
    import pipeline
    from components.compression.component import REPORT_FILE as COMPRESSION_FILE
    from components.retrieval_evaluator.component import METRICS_FILE
    from runner.run_summary import SUMMARY_FILE
    from trainer.task import HISTORY_FILE
    assert layout.PIPELINE_NAME == pipeline.PIPELINE_NAME
    assert layout.EVALUATION_METRICS_FILE == METRICS_FILE
    assert layout.COMPRESSION_REPORT_FILE == COMPRESSION_FILE
    assert layout.TRAINING_HISTORY_FILE == HISTORY_FILE
    assert layout.RUN_SUMMARY_FILE == SUMMARY_FILE


def test_runner_uses_the_layout_helpers():
    from runner import local, mlmd_summary
    from layout import mlmd
    assert local.metadata_path is layout.metadata_path
    assert local.prepared_root is layout.prepared_root
    assert mlmd_summary.last_run_records is mlmd.last_run_records


def test_prepared_paths(tmp_path):
    root = str(tmp_path)
    a = layout.prepared_root(root, "/data/ml-100k")
    b = layout.prepared_root(root, "/other/ml-100k")
    # Same base name, different sources: different folders under <root>/prepared.
    assert a != b and os.path.dirname(a) == os.path.join(root, "prepared")
    assert os.path.basename(a).startswith("ml-100k-")
    for folder in (a, b):
        os.makedirs(os.path.join(folder, "span-2"))
    os.makedirs(os.path.join(a, "span-1"))
    assert layout.prepared_span_dirs(root, 1) == [os.path.join(a, "span-1")]
    assert layout.prepared_span_dirs(root, 2) == sorted(
        [os.path.join(a, "span-2"), os.path.join(b, "span-2")])
    assert layout.metadata_path(root) == os.path.join(root, "metadata.sqlite")


def test_mlmd_reader_refuses_a_missing_store(tmp_path):
    from layout import mlmd
    with pytest.raises(FileNotFoundError, match="no ML Metadata store"):
        mlmd.sqlite_connection(str(tmp_path / "metadata.sqlite"))
    assert not (tmp_path / "metadata.sqlite").exists()
