"""Request batching in the local server (``--enable_batching``), over a real gRPC server
and a tiny hand-built SavedModel whose outputs show how each request was run.

The probe model answers every row with the number of rows of the call it was in
(``batch_size``) and, for histories, the width it saw (``width``), so a response tells
whether it was merged, with how many rows and how it was padded; the server's
``BatchStats`` count the same from the other side.
"""
import concurrent.futures
import pathlib
import time

import grpc
import numpy as np
import pytest
import tensorflow as tf
import yaml
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from serving.batching import merge_inputs
from serving.batching_config import (BatchingOptions, parse_batching_parameters,
                                     read_batching_parameters)
from serving.server import LocalModelServer, ServerConfig, _parse_args

MANIFESTS = pathlib.Path(__file__).resolve().parent.parent / "manifests" / "base"
NUM_ITEMS, DIM, K = 50, 8, 5


class _Probe(tf.Module):
    """``serving_default(user_id [B])``: top-K of a random catalog for a hashed user
    embedding, plus ``echo`` (the ID), ``batch_size`` (B) and ``tag`` (the version).
    ``recommend_from_history(user_id [B], history_item_ids [B, M])``: ``items`` (the
    non-"" history entries per row), ``width`` (M) and ``batch_size``.
    ``parse(user_id [B])``: the IDs as numbers; a non-number fails the call."""

    def __init__(self, tag: str) -> None:
        super().__init__()
        rng = np.random.default_rng(0)
        self.tag = tf.Variable(tag)
        self.users = tf.constant(rng.standard_normal((1000, DIM)), tf.float32)
        self.items = tf.constant(rng.standard_normal((NUM_ITEMS, DIM)), tf.float32)

    def _rows(self, x):
        return tf.fill([tf.shape(x)[0]], tf.shape(x)[0])

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="user_id")])
    def serve(self, user_id):
        query = tf.gather(self.users, tf.strings.to_hash_bucket_fast(user_id, 1000))
        top = tf.math.top_k(tf.matmul(query, self.items, transpose_b=True), k=K)
        return {"item_ids": tf.strings.as_string(top.indices), "scores": top.values,
                "echo": user_id, "batch_size": self._rows(user_id),
                "tag": tf.fill([tf.shape(user_id)[0]], self.tag.read_value())}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="user_id"),
                                  tf.TensorSpec([None, None], tf.string,
                                                name="history_item_ids")])
    def from_history(self, user_id, history_item_ids):
        real = tf.cast(tf.not_equal(history_item_ids, ""), tf.int32)
        return {"items": tf.reduce_sum(real, axis=1),
                "width": tf.fill([tf.shape(user_id)[0]], tf.shape(history_item_ids)[1]),
                "batch_size": self._rows(user_id)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="user_id")])
    def parse(self, user_id):
        return {"number": tf.strings.to_number(user_id), "batch_size": self._rows(user_id)}


def _save(base: pathlib.Path, version: int) -> str:
    path = str(base / str(version))
    probe = _Probe(f"v{version}")
    tf.saved_model.save(probe, path, signatures={
        "serving_default": probe.serve, "recommend_from_history": probe.from_history,
        "parse": probe.parse})
    return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A saved probe, copied (symlinked) as version 1 into each test's base path."""
    return _save(tmp_path_factory.mktemp("probe"), 1)


@pytest.fixture
def serve(model_dir, tmp_path):
    """``serve(**batching options)`` -> (server, stub) over version 1; stopped after the test."""
    started = []

    def start(num_versions=1, **options):
        base = tmp_path / f"base{len(started)}"
        base.mkdir()
        (base / "1").symlink_to(model_dir)
        config = ServerConfig(model_base_path=str(base), port=0, host="localhost",
                              num_versions=num_versions, poll_seconds=3600,
                              batching=BatchingOptions(**options) if options else None)
        server = LocalModelServer(config)
        server.start()
        channel = grpc.insecure_channel(f"localhost:{server.port}")
        started.append((server, channel))
        return server, prediction_service_pb2_grpc.PredictionServiceStub(channel)

    yield start
    for server, channel in started:
        channel.close()
        server.stop()


def _request(signature="serving_default", version=None, **inputs):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "recommender"
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = version
    for key, value in inputs.items():
        request.inputs[key].CopyFrom(tf.make_tensor_proto(value, dtype=tf.string))
    return request


def _outputs(response):
    return {k: tf.make_ndarray(v) for k, v in response.outputs.items()}


def _concurrently(stub, requests, timeout=30):
    """Sends all requests at once; returns (outputs or grpc.RpcError, seconds) for each."""
    def send(request):
        start = time.perf_counter()
        try:
            out = _outputs(stub.Predict(request, timeout=timeout))
        except grpc.RpcError as e:
            out = e
        return out, time.perf_counter() - start

    with concurrent.futures.ThreadPoolExecutor(len(requests)) as pool:
        return list(pool.map(send, requests))


def test_concurrent_requests_are_merged_and_get_their_own_answers(serve, model_dir):
    # 1 + 2 + 3 + 2 = 8 rows = max_batch_size: the batch is full and runs at once,
    # long before the 20 s timeout.
    server, stub = serve(max_batch_size=8, batch_timeout_micros=20_000_000,
                         num_batch_threads=2)
    users = [["a"], ["b", "c"], ["d", "e", "f"], ["g", "no-such-user"]]
    start = time.perf_counter()
    answers = _concurrently(stub, [_request(user_id=u) for u in users])
    assert time.perf_counter() - start < 15
    direct = tf.saved_model.load(model_dir).signatures["serving_default"]
    for rows, (out, _) in zip(users, answers):
        assert not isinstance(out, grpc.RpcError), out
        assert list(out["echo"]) == [u.encode() for u in rows]  # its own rows, in order
        assert list(out["batch_size"]) == [8] * len(rows)  # the model ran them as one call
        alone = direct(user_id=tf.constant(rows))  # the same answer as unbatched
        assert (alone["item_ids"].numpy() == out["item_ids"]).all()
        np.testing.assert_allclose(alone["scores"].numpy(), out["scores"], rtol=1e-6)
    stats = server.batcher.stats()
    assert (stats.batches, stats.requests, stats.sizes) == (1, 4, {8: 1})


def test_without_batching_each_request_is_its_own_call(serve):
    _, stub = serve()  # no batching options: the default, unchanged behaviour
    answers = _concurrently(stub, [_request(user_id=[u]) for u in "abcd"])
    assert [list(out["batch_size"]) for out, _ in answers] == [[1]] * 4


def test_the_timeout_flushes_a_lone_request_and_merges_what_comes_within_it(serve):
    server, stub = serve(max_batch_size=8, batch_timeout_micros=1_000_000)
    start = time.perf_counter()
    out = _outputs(stub.Predict(_request(user_id=["a"]), timeout=30))
    seconds = time.perf_counter() - start
    assert list(out["batch_size"]) == [1]
    assert 1.0 <= seconds < 10  # waited for partners, then ran alone

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        first = pool.submit(stub.Predict, _request(user_id=["a"]), timeout=30)
        time.sleep(0.3)  # inside the first request's 1 s window
        second = pool.submit(stub.Predict, _request(user_id=["b"]), timeout=30)
        assert list(_outputs(first.result())["batch_size"]) == [2]
        assert list(_outputs(second.result())["batch_size"]) == [2]
    assert server.batcher.stats().sizes == {1: 1, 2: 1}


def test_a_request_larger_than_max_batch_size_is_invalid(serve):
    # As TF Serving without enable_large_batch_splitting: refused, not split.
    server, stub = serve(max_batch_size=4)
    with pytest.raises(grpc.RpcError) as info:
        stub.Predict(_request(user_id=list("abcde")), timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Task size 5 is larger than maximum input batch size 4" in info.value.details()
    out = _outputs(stub.Predict(_request(user_id=list("abcd")), timeout=30))
    assert list(out["batch_size"]) == [4] * 4
    assert server.batcher.stats().rejected_too_large == 1


def test_a_full_queue_answers_unavailable_at_once(serve):
    # One batch may wait (the open one, held by the 20 s timeout); a request that does
    # not fit in it would need a second batch.
    server, stub = serve(max_batch_size=2, batch_timeout_micros=20_000_000,
                         max_enqueued_batches=1, num_batch_threads=1)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        held = pool.submit(stub.Predict, _request(user_id=["a"]), timeout=60)
        time.sleep(0.5)
        start = time.perf_counter()
        with pytest.raises(grpc.RpcError) as info:
            stub.Predict(_request(user_id=["b", "c"]), timeout=60)
        assert time.perf_counter() - start < 5  # refused, not queued
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "queue to which this task was submitted is full" in info.value.details()
        # One more row fits: it fills the held batch, which runs at once.
        fits = pool.submit(stub.Predict, _request(user_id=["d"]), timeout=60)
        assert list(_outputs(fits.result())["batch_size"]) == [2]
        assert list(_outputs(held.result())["batch_size"]) == [2]
    assert server.batcher.stats().rejected_full == 1


def _history(user, items):
    return _request("recommend_from_history", user_id=[user], history_item_ids=[items])


def test_differing_history_widths_are_padded_with_the_first_element(serve):
    _, stub = serve(max_batch_size=3, batch_timeout_micros=20_000_000,
                    pad_variable_length_inputs=True)
    # Rows as serving.client builds them: "" first, so the padding is "" (no item).
    rows = [["", "i1", "i2"], ["", "i3"], ["", "i4", "i5", "i6", "i7"]]
    answers = _concurrently(stub, [_history(u, r) for u, r in zip("abc", rows)])
    for row, (out, _) in zip(rows, answers):
        assert not isinstance(out, grpc.RpcError), out
        assert list(out["batch_size"]) == [3] and list(out["width"]) == [5]  # merged, padded
        assert list(out["items"]) == [len(row) - 1]  # the same answer as alone
    # TF Serving pads with the tensor's first element, not "": a row that does not lead
    # with "" gets its first item repeated (the reason the client leads with "").
    answers = _concurrently(stub, [_history("a", ["i1", "i2"]), _history("b", ["", "i3", "i4", "i5"]),
                                   _history("c", ["", "i6", "i7", "i8"])])
    assert [list(out["items"]) for out, _ in answers] == [[4], [3], [3]]


def test_without_padding_differing_widths_fail_their_batch(serve):
    server, stub = serve(max_batch_size=2, batch_timeout_micros=20_000_000)
    answers = _concurrently(stub, [_history("a", ["", "i1"]), _history("b", ["", "i2", "i3"])])
    for out, _ in answers:  # TF Serving merges them and the whole batch fails
        assert isinstance(out, grpc.RpcError) and out.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "different shapes and padding is turned off" in out.details()
    answers = _concurrently(stub, [_history("a", ["", "i1"]), _history("b", ["", "i2"])])
    assert [list(out["batch_size"]) for out, _ in answers] == [[2], [2]]
    assert server.batcher.stats().failed_batches == 1


def test_an_error_reaches_every_request_of_its_batch(serve):
    _, stub = serve(max_batch_size=3, batch_timeout_micros=20_000_000)
    answers = _concurrently(stub, [_request("parse", user_id=[x]) for x in ("1", "x", "2")])
    for out, _ in answers:
        assert isinstance(out, grpc.RpcError) and out.code() == grpc.StatusCode.INVALID_ARGUMENT
    out = _outputs(stub.Predict(_request("parse", user_id=["1", "2", "3"]), timeout=30))
    assert list(out["number"]) == [1.0, 2.0, 3.0]


def test_versions_are_never_merged_together(serve, tmp_path):
    server, stub = serve(num_versions=2, max_batch_size=2, batch_timeout_micros=20_000_000)
    base = pathlib.Path(server.config.model_base_path)
    _save(base, 2)
    server.manager.poll()
    assert server.manager.serving_versions == [1, 2]
    versions = [1, 2, 1, 2]
    answers = _concurrently(stub, [_request(version=v, user_id=[f"u{i}"])
                                   for i, v in enumerate(versions)])
    for v, (out, _) in zip(versions, answers):  # each batch (of 2) is one version's
        assert list(out["tag"]) == [f"v{v}".encode()] and list(out["batch_size"]) == [2]


def test_a_version_switch_runs_the_old_versions_queued_requests(serve):
    server, stub = serve(max_batch_size=4, batch_timeout_micros=60_000_000)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        start = time.perf_counter()
        held = pool.submit(stub.Predict, _request(user_id=["a"]), timeout=120)
        time.sleep(0.5)
        _save(pathlib.Path(server.config.model_base_path), 2)
        server.manager.poll()  # loads 2, switches, unloads 1: its queue runs now
        response = held.result()
        assert time.perf_counter() - start < 50  # not held for the 60 s timeout
    assert response.model_spec.version.value == 1
    assert list(_outputs(response)["tag"]) == [b"v1"]
    # New requests go to version 2 (alone here: 4 of them fill its batch).
    answers = _concurrently(stub, [_request(user_id=[u]) for u in "abcd"])
    assert [list(out["tag"]) for out, _ in answers] == [[b"v2"]] * 4


def test_a_batch_whose_callers_all_gave_up_is_not_run(serve):
    server, stub = serve(max_batch_size=4, batch_timeout_micros=1_000_000)
    with pytest.raises(grpc.RpcError) as info:
        stub.Predict(_request(user_id=["a"]), timeout=0.2)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    time.sleep(1.5)
    stats = server.batcher.stats()
    assert (stats.batches, stats.failed_batches) == (1, 1)  # RESOURCE_EXHAUSTED, not run


def test_allowed_batch_sizes_pad_the_batch_with_the_last_requests_first_row(serve):
    server, stub = serve(max_batch_size=8, allowed_batch_sizes=(4, 8),
                         batch_timeout_micros=2_000_000)
    out = _outputs(stub.Predict(_request(user_id=["a", "b", "c"]), timeout=30))
    assert list(out["batch_size"]) == [4] * 3 and list(out["echo"]) == [b"a", b"b", b"c"]
    stats = server.batcher.stats()
    assert (stats.sizes, stats.padding_rows) == ({4: 1}, 1)


def test_merge_pads_every_non_batch_dimension():
    # [1, 2] and [2, 3] string rows -> [3, 3]; each tensor padded with its own first element.
    merged = merge_inputs([{"h": np.array([[b"", b"x"]], dtype=object)},
                           {"h": np.array([[b"a", b"b", b"c"], [b"d", b"e", b"f"]],
                                          dtype=object)}], padding_rows=1,
                          pad_variable_length=True)
    assert merged["h"].tolist() == [[b"", b"x", b""], [b"a", b"b", b"c"],
                                    [b"d", b"e", b"f"], [b"a", b"b", b"c"]]


# --- the flags and the file ---------------------------------------------------
def _manifest_batching_args():
    """The batching flags the Deployment gives tensorflow_model_server, the file local."""
    deployment = yaml.safe_load((MANIFESTS / "deployment.yaml").read_text())
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    args = [a for a in container["args"] if "batching" in a]
    return [a.replace("/config/", str(MANIFESTS / "serving-config") + "/") for a in args]


def test_the_server_takes_the_manifests_batching_flags_and_file():
    args = _manifest_batching_args()
    assert args[0] == "--enable_batching" and args[1].startswith("--batching_parameters_file=")
    config = _parse_args(["--model-base-path", "/models", *args])
    assert config.batching == read_batching_parameters(
        str(MANIFESTS / "serving-config" / "batching_parameters.txt"))
    assert config.batching.num_batch_threads == 2 and config.batching.pad_variable_length_inputs


def test_batching_is_off_unless_asked_and_the_file_needs_the_flag(capsys):
    assert _parse_args(["--model-base-path", "/m"]).batching is None
    assert _parse_args(["--model-base-path", "/m", "--enable_batching=false"]).batching is None
    defaults = _parse_args(["--model-base-path", "/m", "--enable_batching=true"]).batching
    assert defaults == BatchingOptions()  # TF Serving's defaults
    assert (defaults.max_batch_size, defaults.max_enqueued_batches) == (1000, 10)
    with pytest.raises(SystemExit):
        _parse_args(["--model-base-path", "/m", "--batching_parameters_file", "x.txt"])
    assert "without setting --enable_batching" in capsys.readouterr().err


@pytest.mark.parametrize("text,message", [
    ("max_batch_size { value: 8 } allowed_batch_sizes: 4 allowed_batch_sizes: 6",
     "must match max_batch_size"),
    ("max_batch_size { value: 8 } allowed_batch_sizes: 8 allowed_batch_sizes: 4",
     "monotonically increasing"),
    ("num_batch_threads { value: 0 }", "num_batch_threads must be >= 1"),
    ("enable_large_batch_splitting { value: true }", "not implemented"),
])
def test_parameters_tf_serving_refuses_are_refused(text, message):
    with pytest.raises(ValueError, match=message):
        parse_batching_parameters(text)


def test_a_bad_parameters_file_stops_the_server_with_a_message(tmp_path, capsys):
    bad = tmp_path / "batching.txt"
    bad.write_text("max_batch_size: 32\n")  # a wrapper, not a plain int
    with pytest.raises(SystemExit):
        _parse_args(["--model-base-path", "/m", "--enable_batching",
                     f"--batching_parameters_file={bad}"])
    assert str(bad) in capsys.readouterr().err
