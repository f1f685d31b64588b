"""Console progress: component boundaries, memory sampling, heartbeats, training lines."""
import logging
import subprocess
import sys
import time

from runner import progress


def _record(message, level=logging.INFO):
    return logging.LogRecord("absl", level, __file__, 1, message, None, None)


def test_monitor_samples_children_and_prints_heartbeats():
    lines = []
    monitor = progress.StageMonitor(interval=0.05, heartbeat=0.2, log=lines.append).start()
    try:
        monitor.begin_stage("Transform", detail=lambda: "12 rows")
        # A child process holding about 200 MB counts towards the stage's peak.
        child = subprocess.Popen([sys.executable, "-c",
                                  "import time; b = bytearray(200 << 20); time.sleep(1.5)"])
        time.sleep(1.2)
        peak = monitor.end_stage()
        child.wait()
    finally:
        monitor.stop()
    own = progress.tree_rss_bytes() / progress.MB
    assert peak > 150 and peak >= own * 0.5, (peak, own)
    assert monitor.peak_mb["Transform"] == peak
    assert any(line.startswith("[progress] Transform: still running") and "12 rows" in line
               for line in lines), lines
    assert monitor.end_stage() is None  # no stage open


def test_filter_prints_boundaries_with_rows_and_peak(capsys):
    monitor = progress.StageMonitor(interval=10, heartbeat=0)
    f = progress.ComponentProgressFilter(monitor, rows={"Transform": 5000})
    assert not f.filter(_record("Component Transform is running."))
    assert not f.filter(_record("some Beam chatter"))
    assert not f.filter(_record("Component Transform is finished."))
    assert f.filter(_record("a real warning", logging.WARNING))
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "[pipeline] Transform: running (5,000 rows)"
    assert out[1].startswith("[pipeline] Transform: done in ")
    assert "5,000 rows" in out[1] and "rows/s" in out[1] and "peak memory" in out[1]
    assert set(f.seconds) == {"Transform"} and f.peak_mb["Transform"] > 0


def test_the_projects_own_info_records_are_shown(tmp_path, caplog):
    """The Pusher's INFO line (logged by components/pusher/executor.py through absl)
    reaches the console; TFX's own INFO lines (its Pusher's "Model version: ...") do
    not."""
    import tensorflow as tf
    from tests.test_atomic_push import _push, _Tiny
    from components.pusher.executor import Executor

    module = _Tiny("v")
    tf.saved_model.save(module, str(tmp_path / "m" / "Format-Serving"),
                        signatures={"serving_default": module.serve})
    f = progress.install()
    try:
        with caplog.at_level(logging.INFO):
            _push(Executor(), str(tmp_path / "m"), str(tmp_path / "serving"),
                  str(tmp_path / "pushed"))
    finally:
        progress.uninstall(f)
    shown = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("Pusher: model written to serving path") for m in shown), shown
    from tfx.components.pusher import executor as tfx_pusher
    assert not f.filter(logging.LogRecord("absl", logging.INFO, tfx_pusher.__file__, 1,
                                          "Model version: 1", None, None))


def test_uninstall_lets_the_next_run_see_the_boundaries(capsys):
    first = progress.install()
    progress.uninstall(first)
    second = progress.install()
    try:
        logging.getLogger("absl").info("Component Trainer is running.")
        logging.getLogger("absl").info("Component Trainer is finished.")
    finally:
        progress.uninstall(second)
    assert "Trainer" in second.seconds and "Trainer" not in first.seconds


def test_after_the_run_absl_info_is_quiet_again(capsys):
    """ML Metadata's INFO line, logged when the summary reads the store after the run,
    is not printed once the filter is gone."""
    from absl import logging as absl_logging
    absl_logging.set_verbosity(absl_logging.WARNING)
    f = progress.install()
    assert absl_logging.get_verbosity() == absl_logging.INFO
    progress.uninstall(f)
    assert absl_logging.get_verbosity() == absl_logging.WARNING
    absl_logging.info("MetadataStore with DB connection initialized")
    assert "MetadataStore" not in capsys.readouterr().err
    # TFX's deprecation of the executor spec the pipeline uses on purpose is filtered.
    assert not progress.ComponentProgressFilter().filter(
        _record("`custom_executor_spec` is deprecated. Please customize component directly.",
                logging.WARNING))


def test_training_progress_lines(capsys):
    from trainer.task import ProgressLogger
    cb = ProgressLogger(batch_size=100, steps_per_epoch=4, epochs=2, interval=0.0)
    cb.on_epoch_begin(0)
    cb.on_train_batch_end(0, {"loss": 3.5})
    cb.on_epoch_end(0, {"loss": 3.0, "val_loss": 3.2})
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("[trainer] epoch 1/2, step 1/4: ") and "windows/s" in out[0]
    assert "loss 3.5000" in out[0]
    assert "(epoch done)" in out[1] and "val_loss 3.2000" in out[1]


def test_synthetic_generation_reports_progress(tmp_path):
    from ingest import synthetic
    lines = []
    cfg = synthetic.SyntheticConfig(num_interactions=20_000, users_per_chunk=100)
    summary = synthetic.generate(str(tmp_path), cfg, log=lines.append, log_every=0.0)
    assert lines and all(line.startswith("[data] generated ") for line in lines)
    assert summary["interactions"] > 0


def test_summary_names_the_split_the_compressor_chose_on():
    from runner.run_summary import format_summary
    s = {"gate": {"k": 50, "failed": []}, "blessed": True, "pushed": False,
         "push_skipped_reason": "x", "pushed_version_dir": None,
         "evaluation": {"recall@10": 0.1, "recall@50": 0.3, "ndcg@10": 0.1, "coverage@10": 0.5},
         "baseline": {"popularity": {"recall@50": 0.2}},
         "compression": {"method": "m", "size_ratio": 1.5, "original_bytes": 3,
                         "compressed_bytes": 2, "weight_size_ratio": 6.0,
                         "recall_drop_relative": 0.01, "blessed": True,
                         "chosen_on": "validation", "validation": {"users": 943},
                         "validation_recall_drop_relative": 0.0064}}
    line = [l for l in format_summary(s).splitlines() if "compression" in l][0]
    assert "drop 1.00% relative (chosen on a validation slice of 943 train users: " \
           "drop 0.64%); BLESSED" in line


def test_summary_names_the_candidate_index_and_its_recall():
    from runner.run_summary import index_line
    assert index_line(None) is None
    assert index_line({"kind": "brute_force", "num_items": 1682, "storage": "int8"}) == \
        "[summary] candidate index: brute force over 1,682 items (int8)"
    line = index_line({"kind": "partitioned", "num_items": 1_000_000, "lists": 4096,
                       "probes": 64, "target_recall": 0.95, "k": 100,
                       "recall_vs_exact": 0.9712, "recall_queries": 256})
    assert line == ("[summary] candidate index: partitioned, 1,000,000 items in 4,096 "
                    "lists, 64 probed (target recall 0.95); recall@100 against brute "
                    "force 0.9712 on 256 stored users")
