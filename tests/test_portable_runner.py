"""The pipeline's Beam steps through Beam's portable job API, as Flink and Spark run them.

ExampleGen through SequenceGen (``pipeline.create_sub_pipeline``) run twice on the same
prepared synthetic data: on the DirectRunner, and on the PortableRunner with Beam's
embedded job service and a loopback SDK worker. The job service is the same
protocol a Flink or Spark job server speaks (submit, stage artifacts, run on SDK
workers); only the engine behind it differs. Both runs must write the same examples,
statistics, vocabularies, transformed examples and sequences.
"""
import collections
import glob
import json
import logging
import os
import re
import time

import pytest
import tensorflow as tf
from absl import logging as absl_logging
from tensorflow_metadata.proto.v0 import statistics_pb2
from tfx import v1 as tfx

import pipeline
from ingest import prepare as prep
from ingest import synthetic
from runner import local

pytestmark = pytest.mark.e2e

PORTABLE_ARGS = ("--runner=PortableRunner", "--job_endpoint=embed",
                 "--environment_type=LOOPBACK")
# The reference: no options, i.e. Beam's default runner, the DirectRunner in this
# process (and TFX, given no options, builds no tfx_ephemeral package to stage). The
# pipeline's own default (multi_processing) writes the same outputs but starts two
# worker processes per Beam job, about 2 minutes more on this data.
DIRECT_ARGS = ()
COMPONENTS = ("FileBasedExampleGen", "ImportSchemaGen", "StatisticsGen", "ExampleValidator",
              "DataValidationGate", "Transform", "SequenceGen")
BEAM_COMPONENTS = ("FileBasedExampleGen", "StatisticsGen", "Transform", "SequenceGen")
# The embedded job service logs one line per job it ran:
# "Completed job in 3.2 seconds with state DONE."
JOB_SERVICE_LOGGER = "apache_beam.runners.portability.local_job_service"
_BOUNDARY = re.compile(r"^Component (\S+) is (running|finished)\.$")


class BeamJobLog(logging.Handler):
    """Counts the jobs the job service completed, by the TFX component that ran them,
    and times every component (from LocalDagRunner's boundary lines)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.component = None
        self.jobs_done = collections.Counter()
        self.started, self.seconds = {}, {}

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        m = _BOUNDARY.match(message)
        if m:
            name, event = m.groups()
            if event == "running":
                self.component, self.started[name] = name, time.time()
            else:
                self.seconds[name] = round(time.time() - self.started[name], 1)
        elif record.name == JOB_SERVICE_LOGGER and message.startswith("Completed job") \
                and message.rstrip(".").endswith("DONE"):
            self.jobs_done[self.component] += 1


def _run(root: str, data_root: str, beam_args) -> dict:
    cfg = pipeline.PipelineConfig(pipeline_root=root, data_root=data_root,
                                  beam_pipeline_args=beam_args, enable_cache=False)
    connection = tfx.orchestration.metadata.sqlite_metadata_connection_config(
        local.metadata_path(root))
    log = BeamJobLog()
    loggers = [logging.getLogger("absl"), logging.getLogger(JOB_SERVICE_LOGGER)]
    levels = [lg.level for lg in loggers]
    verbosity = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.INFO)  # LocalDagRunner's boundary lines
    for lg in loggers:
        lg.addHandler(log)
    loggers[1].setLevel(logging.INFO)  # runner/progress.py may have set ERROR
    start = time.time()
    try:
        tfx.orchestration.LocalDagRunner().run(
            pipeline.create_sub_pipeline(cfg, COMPONENTS, connection))
    finally:
        for lg, level in zip(loggers, levels):
            lg.removeHandler(log)
            lg.setLevel(level)
        absl_logging.set_verbosity(verbosity)
    records = {c: local.component_record(root, c) for c in COMPONENTS}
    return {"records": records, "jobs_done": log.jobs_done, "seconds": log.seconds,
            "total_seconds": round(time.time() - start, 1)}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("portable")
    data_dir = local.ensure_synthetic_data(
        str(base / "raw"), synthetic.SyntheticConfig(num_interactions=5_000, seed=3))
    data_root = local.prepared_root(str(base), data_dir)
    [span] = prep.prepare(data_dir, data_root, prep.default_split(data_dir, None, 0.2))
    result = {"split": span.report["split"],
              "direct": _run(str(base / "direct"), data_root, DIRECT_ARGS),
              "portable": _run(str(base / "portable"), data_root, PORTABLE_ARGS)}
    for name in ("direct", "portable"):  # shown with -s; figures for docs/pipeline.md
        r = result[name]
        print(f"\n[{name}] {r['total_seconds']}s: "
              + ", ".join(f"{c} {r['seconds'][c]}s" for c in BEAM_COMPONENTS))
    return result


def _uri(run: dict, component: str, key: str) -> str:
    return run["records"][component].uris()[key]


def _records_by_split(uri: str) -> dict:
    """``{split: sorted serialized tf.Examples}``; serialized deterministically, so the
    same features give the same bytes whatever order a runner wrote them in."""
    out = {}
    for d in sorted(glob.glob(os.path.join(uri, "Split-*"))):
        files = sorted(glob.glob(os.path.join(d, "*")))
        assert files, d
        out[os.path.basename(d)] = sorted(
            tf.train.Example.FromString(r.numpy()).SerializeToString(deterministic=True)
            for r in tf.data.TFRecordDataset(files, compression_type="GZIP"))
    return out


def _statistics(uri: str, split: str):
    """A split's statistics with each numeric feature's mean and standard deviation
    taken out and returned apart: they are float sums, whose last bits depend on the
    order a runner adds the rows in."""
    with open(os.path.join(uri, f"Split-{split}", "FeatureStats.pb"), "rb") as f:
        stats = statistics_pb2.DatasetFeatureStatisticsList.FromString(f.read())
    moments = {}
    for feature in stats.datasets[0].features:
        if feature.HasField("num_stats"):
            moments[feature.path.step[0]] = (feature.num_stats.mean, feature.num_stats.std_dev)
            feature.num_stats.ClearField("mean")
            feature.num_stats.ClearField("std_dev")
    return stats, moments


def test_every_beam_step_ran_on_the_job_service(runs):
    for name in ("direct", "portable"):
        assert {c: r.state for c, r in runs[name]["records"].items()} == \
            {c: "COMPLETE" for c in COMPONENTS}, name
    done = runs["portable"]["jobs_done"]
    assert all(done[c] >= 1 for c in BEAM_COMPONENTS), done
    assert not runs["direct"]["jobs_done"]  # the DirectRunner has no job service


def test_examples_and_statistics_equal_the_direct_runs(runs):
    direct, portable = runs["direct"], runs["portable"]
    examples = _records_by_split(_uri(portable, "FileBasedExampleGen", "examples"))
    assert {k: len(v) for k, v in examples.items()} == {
        "Split-train": runs["split"]["train_rows"], "Split-eval": runs["split"]["eval_rows"]}
    assert examples == _records_by_split(_uri(direct, "FileBasedExampleGen", "examples"))
    for split in ("train", "eval"):
        got, got_moments = _statistics(_uri(portable, "StatisticsGen", "statistics"), split)
        want, want_moments = _statistics(_uri(direct, "StatisticsGen", "statistics"), split)
        assert got.datasets[0].num_examples == runs["split"][f"{split}_rows"]
        assert got == want, split
        assert got_moments.keys() == want_moments.keys() and got_moments
        for feature, moments in got_moments.items():
            assert moments == pytest.approx(want_moments[feature], rel=1e-9), feature


def test_transform_output_equals_the_direct_runs(runs):
    direct, portable = runs["direct"], runs["portable"]
    assets = os.path.join("transform_fn", "assets")
    got_dir = os.path.join(_uri(portable, "Transform", "transform_graph"), assets)
    want_dir = os.path.join(_uri(direct, "Transform", "transform_graph"), assets)
    names = sorted(os.listdir(got_dir))
    assert {"user_id_vocab", "item_id_vocab", "item_genres_vocab"} <= set(names)
    assert names == sorted(os.listdir(want_dir))
    for name in names:
        with open(os.path.join(got_dir, name), "rb") as got, \
                open(os.path.join(want_dir, name), "rb") as want:
            assert got.read() == want.read(), name
    with open(os.path.join(got_dir, "user_id_vocab")) as f:
        assert len(f.read().split()) == runs["split"]["train_users"]
    transformed = _records_by_split(_uri(portable, "Transform", "transformed_examples"))
    assert {k: len(v) for k, v in transformed.items()} == {
        "Split-train": runs["split"]["train_rows"], "Split-eval": runs["split"]["eval_rows"]}
    assert transformed == _records_by_split(
        _uri(direct, "Transform", "transformed_examples"))


def test_sequences_equal_the_direct_runs(runs):
    got_uri = _uri(runs["portable"], "SequenceGen", "sequences")
    want_uri = _uri(runs["direct"], "SequenceGen", "sequences")
    got = _records_by_split(got_uri)
    assert set(got) == {"Split-train", "Split-eval", "Split-items", "Split-users",
                        "Split-history"} and all(got.values())
    assert got == _records_by_split(want_uri)
    with open(os.path.join(got_uri, "spans.json")) as g, \
            open(os.path.join(want_uri, "spans.json")) as w:
        assert json.load(g) == json.load(w)

