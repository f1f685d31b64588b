"""The local server over a model pushed by the pipeline: contract, errors, hot swap.

One server process (``python -m serving.server``) serves a copy of the version the
``small_pipeline`` run pushed; tests query it with the client library, its CLI and
raw TensorFlow Serving stubs.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from concurrent import futures

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2,
                                     model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc)

from serving import client as client_cli
from serving.client import ClientConfig, RecommenderClient, ServingError
from tests.conftest import REPO_ROOT
from components.pusher.executor import push_atomically
from tests.server_process import ServerProcess, wait_for

pytestmark = pytest.mark.e2e

K = 100
AVAILABLE = get_model_status_pb2.ModelVersionStatus.AVAILABLE
END = get_model_status_pb2.ModelVersionStatus.END


@pytest.fixture(scope="module")
def pushed(small_pipeline):
    """The pipeline's pushed version directory and its integer version."""
    _, summary, _ = small_pipeline
    path = summary["run_summary"]["pushed_version_dir"]
    return path, int(os.path.basename(path))


@pytest.fixture(scope="module")
def server(pushed, tmp_path_factory):
    """A server over its own base path (the pipeline's serving dir is left untouched)."""
    source, version = pushed
    base = str(tmp_path_factory.mktemp("serving") / "recommender")
    os.makedirs(base)
    assert push_atomically(source, base, now=version) == str(version)
    proc = ServerProcess(base)
    yield proc, base, version
    code = proc.stop()
    assert code == 0, proc.output()[-3000:]
    assert "[serving] stopped" in proc.output()


@pytest.fixture(scope="module")
def stubs(server):
    proc, _, _ = server
    channel = grpc.insecure_channel(proc.address)
    yield (prediction_service_pb2_grpc.PredictionServiceStub(channel),
           model_service_pb2_grpc.ModelServiceStub(channel))
    channel.close()


def _request(inputs, signature="serving_default", model="recommender", version=None):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = version
    for key, value in inputs.items():
        request.inputs[key].CopyFrom(value)
    return request


def _users(*ids):
    return tf.make_tensor_proto(list(ids), dtype=tf.string)


def test_raw_stub_answers_the_contract(stubs, server, pushed):
    predict, _ = stubs
    _, _, version = server
    response = predict.Predict(_request({"user_id": _users("u0", "no-such-user")}), timeout=10)
    assert response.model_spec.name == "recommender"
    assert response.model_spec.signature_name == "serving_default"
    assert response.model_spec.version.value == version
    items = response.outputs["item_ids"]
    scores = response.outputs["scores"]
    assert items.dtype == tf.string.as_datatype_enum and scores.dtype == tf.float32.as_datatype_enum
    assert [d.size for d in items.tensor_shape.dim] == [2, K]
    assert [d.size for d in scores.tensor_shape.dim] == [2, K]
    s = tf.make_ndarray(scores)
    assert (np.diff(s, axis=1) <= 1e-6).all()  # highest first
    ids = tf.make_ndarray(items)
    assert len(set(ids[1])) == K and all(ids[1])  # cold start: K real items
    # The same answer as calling the signature in-process.
    direct = tf.saved_model.load(pushed[0]).signatures["serving_default"](
        user_id=tf.constant(["u0", "no-such-user"]))
    assert (direct["item_ids"].numpy() == ids).all()
    np.testing.assert_allclose(direct["scores"].numpy(), s, rtol=1e-5, atol=1e-6)


def test_client_library_batch_and_exclusion(server):
    proc, _, version = server
    with RecommenderClient(ClientConfig(server=proc.address)) as c:
        known, cold = c.recommend(["u0", "no-such-user"], k=K)
        assert known.user_id == "u0" and known.model_version == version
        assert len(known.item_ids) == K and len(cold.item_ids) == K
        assert list(known.scores) == sorted(known.scores, reverse=True)
        assert known.item_ids != cold.item_ids
        top3 = c.recommend(["u0"], k=3)[0]
        assert top3.item_ids == known.item_ids[:3]
        # recommend_excluding, rows of different lengths padded by the client.
        a, b = c.recommend(["u0", "u1"], k=5,
                           exclude_item_ids=[[known.item_ids[0]], []])
        assert a.item_ids[0] == known.item_ids[1] and known.item_ids[0] not in a.item_ids
        assert b.item_ids == c.recommend(["u1"], k=5)[0].item_ids
        # A specific, loaded version.
        assert c.recommend(["u0"], k=3, version=version)[0].item_ids == top3.item_ids


def test_request_history_through_the_server(server):
    proc, _, version = server
    with RecommenderClient(ClientConfig(server=proc.address)) as c:
        known, cold = c.recommend(["u0", "no-such-user"], k=K)
        history = list(cold.item_ids[3:6])
        new, old = c.recommend(["no-such-user", "u0"], k=K,
                               history_item_ids=[history + ["not-an-item"], history[:1]])
    # A new user with three items gets a list of their own, without those items; the
    # unknown ID was ignored, not an error.
    assert len(new.item_ids) == K and new.item_ids != cold.item_ids
    assert not set(history) & set(new.item_ids)
    # A known user's request item is added to the stored history and left out.
    assert history[0] not in old.item_ids and old.item_ids != known.item_ids
    out = subprocess.run(
        [sys.executable, "-m", "serving.client", "--server", proc.address, "--user-id",
         "no-such-user", "--history", ",".join(history), "--k", "5", "--json"],
        cwd=str(REPO_ROOT), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    answer = json.loads(out.stdout)
    assert answer["model"]["signature"] == "recommend_from_history"
    assert answer["results"][0]["item_ids"] == list(new.item_ids[:5])


def test_metadata_lists_the_signatures(stubs, server):
    predict, _ = stubs
    _, _, version = server
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "recommender"
    response = predict.GetModelMetadata(request, timeout=10)
    assert response.model_spec.version.value == version
    signatures = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signatures)
    defs = signatures.signature_def
    assert {"serving_default", "recommend_from_history", "recommend_excluding",
            "recommend_given_history", "serve_tf_examples"} <= set(defs)
    default = defs["serving_default"]
    assert set(default.inputs) == {"user_id"} and set(default.outputs) == {"item_ids", "scores"}
    assert default.inputs["user_id"].dtype == tf.string.as_datatype_enum
    assert default.outputs["scores"].dtype == tf.float32.as_datatype_enum


def test_cli_json_and_text(server):
    proc, _, version = server
    out = subprocess.run(
        [sys.executable, "-m", "serving.client", "--server", proc.address,
         "--model-name", "recommender", "--user-id", "u0", "--k", "10", "--json"],
        cwd=str(REPO_ROOT), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    answer = json.loads(out.stdout)
    assert answer["model"] == {"name": "recommender", "signature": "serving_default",
                               "version": version}
    [row] = answer["results"]
    assert row["user_id"] == "u0" and len(row["item_ids"]) == 10
    assert row["scores"] == sorted(row["scores"], reverse=True)


def test_cli_text_output_for_a_batch(server, capsys):
    # In-process: the same entry point without a second TensorFlow start-up.
    proc, _, _ = server
    assert client_cli.main(["--server", proc.address, "--user-id", "u0",
                            "--user-ids", "u1,no-such-user", "--k", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("user u0: top 3 from model 'recommender' version ")
    assert [l.split()[0] for l in lines[1:4]] == ["1", "2", "3"]
    assert lines[4].startswith("user u1: ") and lines[8].startswith("user no-such-user: ")


@pytest.mark.parametrize("argv,exit_code,message", [
    (["--model-name", "nope"], 4, "model 'nope' not found"),
    (["--model-version", "1"], 4, "not found"),
    (["--k", "0"], 2, "--k must be >= 1"),
])
def test_cli_errors_name_the_problem(server, capsys, argv, exit_code, message):
    proc, _, _ = server
    code = client_cli.main(["--server", proc.address, "--user-id", "u0", *argv])
    err = capsys.readouterr().err
    assert code == exit_code, err
    assert message in err and "Traceback" not in err


def _code(call):
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details()


def test_bad_requests_get_tf_serving_codes(stubs):
    predict, model = stubs
    p = lambda req: _code(lambda: predict.Predict(req, timeout=10))  # noqa: E731
    code, msg = p(_request({}))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "Missing but required: {user_id}" in msg
    code, msg = p(_request({"user_id": tf.make_tensor_proto([1, 2], dtype=tf.int64)}))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "DT_STRING" in msg and "DT_INT64" in msg
    code, msg = p(_request({"user_id": _users("u0"), "extra": _users("x")}))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "Sent extra: {extra}" in msg
    code, msg = p(_request({"user_id": tf.make_tensor_proto([["u0"]], dtype=tf.string)}))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "shape" in msg
    code, msg = p(_request({"user_id": _users("u0")}, signature="no_such_signature"))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "no_such_signature" in msg
    code, msg = p(_request({"user_id": _users("u0")}, model="other_model"))
    assert code == grpc.StatusCode.NOT_FOUND and "other_model" in msg
    code, msg = p(_request({"user_id": _users("u0")}, version=12345))
    assert code == grpc.StatusCode.NOT_FOUND
    request = _request({"user_id": _users("u0")})
    request.output_filter.append("no_such_output")
    code, msg = p(request)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "no_such_output" in msg
    code, msg = p(_request({"examples": _users("not a tf.Example")},
                           signature="serve_tf_examples"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    code, _ = _code(lambda: predict.GetModelMetadata(
        get_model_metadata_pb2.GetModelMetadataRequest(
            model_spec={"name": "recommender"}), timeout=10))
    assert code == grpc.StatusCode.INVALID_ARGUMENT  # no metadata_field
    code, _ = _code(lambda: model.GetModelStatus(get_model_status_pb2.GetModelStatusRequest(
        model_spec={"name": "other_model"}), timeout=10))
    assert code == grpc.StatusCode.NOT_FOUND
    # Still serving after all of that.
    ok = predict.Predict(_request({"user_id": _users("u0")}), timeout=10)
    assert ok.outputs["item_ids"].tensor_shape.dim[1].size == K


def test_batching_with_the_manifests_parameters_gives_the_unbatched_answers(
        server, pushed, tmp_path):
    """``--enable_batching`` with the Deployment's batching_parameters.txt (its timeout
    raised to 200 ms, so that a burst surely merges): concurrent requests of every
    kind, histories and exclusions of different widths included, get what the
    unbatched server answers."""
    unbatched, _, version = server
    source, _ = pushed
    base = str(tmp_path / "recommender")
    os.makedirs(base)
    push_atomically(source, base, now=version)
    text = (REPO_ROOT / "manifests" / "base" / "serving-config" /
            "batching_parameters.txt").read_text()
    params = tmp_path / "batching_parameters.txt"
    params.write_text(re.sub(r"batch_timeout_micros \{ value: \d+ \}",
                             "batch_timeout_micros { value: 200000 }", text))
    batched = ServerProcess(base, ["--enable_batching", f"--batching_parameters_file={params}"])
    asks = ([dict(user_ids=[u]) for u in ("u0", "u1", "u2", "no-such-user")]
            + [dict(user_ids=["u0"], history_item_ids=[items])
               for items in (["1"], ["2", "3"], ["4", "5", "6", "7"])]
            + [dict(user_ids=["u1"], exclude_item_ids=[items])
               for items in (["1"], ["2", "3", "4"])]
            + [dict(user_ids=["u2", "u3"]) for _ in range(4)])

    def ask_all(address):
        with RecommenderClient(ClientConfig(server=address, retries=0)) as c:
            barrier = threading.Barrier(len(asks))

            def ask(kwargs):
                barrier.wait()
                return c.recommend(k=K, **kwargs)
            with futures.ThreadPoolExecutor(len(asks)) as pool:
                return list(pool.map(ask, asks))

    try:
        got, want = ask_all(batched.address), ask_all(unbatched.address)
    finally:
        assert batched.stop() == 0
    for g, w in zip(got, want):
        for a, b in zip(g, w):
            assert a.user_id == b.user_id and a.model_version == b.model_version
            assert a.item_ids[:10] == b.item_ids[:10]
            np.testing.assert_allclose(a.scores, b.scores, rtol=1e-5, atol=1e-6)
    out = batched.output()
    assert "pad_variable_length_inputs=True" in out and "num_batch_threads=2" in out
    sizes = re.search(r"\[serving\] batching: .* sizes ([\dx, ]+)\)", out).group(1)
    assert max(int(s.split("x")[0]) for s in sizes.split(", ")) > 1, out[-2000:]  # merged


def _status(model_stub):
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "recommender"
    response = model_stub.GetModelStatus(request, timeout=10)
    return {s.version: (s.state, s.status.error_message) for s in response.model_version_status}


def test_new_version_is_swapped_in_without_failed_requests(server, stubs, pushed):
    """Runs last in this module: afterwards the server serves version + 1."""
    proc, base, version = server
    _, model = stubs
    assert _status(model) == {version: (AVAILABLE, "")}
    seen, failures, stop = [], [], threading.Event()

    by_thread = {0: [], 1: []}

    def stream(i):
        with RecommenderClient(ClientConfig(server=proc.address, retries=0)) as c:
            while not stop.is_set():
                try:
                    [r] = c.recommend(["u0"], k=K)
                    assert len(r.item_ids) == K
                    seen.append(r.model_version)
                    by_thread[i].append(r.model_version)
                except (ServingError, AssertionError) as e:
                    failures.append(repr(e))

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: len(seen) >= 20)
        # The Pusher's staging directory (a version being written) is ignored.
        staging = os.path.join(base, f".push-{version + 5}")
        shutil.copytree(pushed[0], staging)
        assert push_atomically(pushed[0], base, now=version + 1) == str(version + 1)
        wait_for(lambda: seen and seen[-1] == version + 1, timeout=120)
        n = len(seen)
        wait_for(lambda: len(seen) >= n + 20)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert failures == []
    assert seen[0] == version and seen.count(version + 1) >= 20
    # Once switched, never back: each client's requests, one after another, get the old
    # version and then only the new one. (Across clients, a request that started on the
    # old version may finish after others got the new one: the old version serves the
    # requests it resolved until they end.)
    for got in by_thread.values():
        assert got == sorted(got) and set(got) <= {version, version + 1}, got
    status = _status(model)
    assert status[version + 1] == (AVAILABLE, "")
    assert status[version][0] == END
    assert version + 5 not in status
    out = proc.output()
    assert f"switched recommender from version {version} to {version + 1}" in out
    assert "warm-up requests replayed" in out


def test_broken_version_does_not_replace_the_serving_one(server, stubs):
    proc, base, version = server
    predict, model = stubs
    broken = os.path.join(base, str(version + 2))
    os.makedirs(broken + ".tmp")
    with open(os.path.join(broken + ".tmp", "saved_model.pb"), "wb") as f:
        f.write(b"not a SavedModel")
    os.rename(broken + ".tmp", broken)
    state, error = wait_for(lambda: _status(model).get(version + 2), timeout=60)
    assert state == END and error  # reported, with the load error
    assert _status(model)[version + 1][0] == AVAILABLE
    r = predict.Predict(_request({"user_id": _users("u0")}), timeout=10)
    assert r.model_spec.version.value == version + 1
    assert f"failed to load recommender version {version + 2}" in proc.output()
