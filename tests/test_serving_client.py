"""The client against a fake in-process PredictionService: retries, deadlines, TLS, errors."""
import json
import socket
import subprocess
import threading
import time
from concurrent import futures

import grpc
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2,
                                     model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc)

from serving import client as cli
from serving.client import ClientConfig, RecommenderClient, ServingError


class _Fake(prediction_service_pb2_grpc.PredictionServiceServicer):
    """Fails the first ``unavailable`` calls with UNAVAILABLE, then answers 3 items per user."""

    def __init__(self, unavailable=0, delay=0.0):
        self.unavailable, self.delay, self.calls = unavailable, delay, []
        self._lock = threading.Lock()

    def Predict(self, request, context):
        with self._lock:
            self.calls.append(request)
            failing = len(self.calls) <= self.unavailable
        if failing:
            context.abort(grpc.StatusCode.UNAVAILABLE, "warming up")
        time.sleep(self.delay)
        users = tf.make_ndarray(request.inputs["user_id"])
        response = predict_pb2.PredictResponse()
        response.model_spec.name = request.model_spec.name
        response.model_spec.version.value = 7
        response.outputs["item_ids"].CopyFrom(tf.make_tensor_proto(
            [[b"a", b"b", b"c"]] * len(users), dtype=tf.string))
        response.outputs["scores"].CopyFrom(tf.make_tensor_proto(
            [[0.9, 0.5, 0.1]] * len(users), dtype=tf.float32))
        return response

    def GetModelMetadata(self, request, context):
        time.sleep(self.delay)
        return get_model_metadata_pb2.GetModelMetadataResponse()


class _FakeModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, fake):
        self.fake = fake

    def GetModelStatus(self, request, context):
        time.sleep(self.fake.delay)
        return get_model_status_pb2.GetModelStatusResponse()


def _serve(fake, credentials=None):
    server = grpc.server(futures.ThreadPoolExecutor(4), options=[("grpc.so_reuseport", 0)])
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(fake, server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(_FakeModelService(fake), server)
    port = (server.add_secure_port("localhost:0", credentials) if credentials
            else server.add_insecure_port("localhost:0"))
    server.start()
    return server, f"localhost:{port}"


@pytest.fixture
def fake_server(request):
    fake = _Fake(**getattr(request, "param", {}))
    server, address = _serve(fake)
    yield fake, address
    server.stop(0)


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("fake_server", [{"unavailable": 2}], indirect=True)
def test_unavailable_is_retried_with_backoff(fake_server):
    fake, address = fake_server
    config = ClientConfig(server=address, retries=3, initial_backoff=0.01)
    with RecommenderClient(config) as c:
        [r] = c.recommend(["u1"], k=2)
    assert len(fake.calls) == 3
    assert r.item_ids == ("a", "b") and r.scores == pytest.approx((0.9, 0.5))
    assert r.model_version == 7
    req = fake.calls[-1]
    assert req.model_spec.name == "recommender"
    assert req.model_spec.signature_name == "serving_default"


@pytest.mark.parametrize("fake_server", [{"unavailable": 5}], indirect=True)
def test_gives_up_after_the_retries(fake_server):
    fake, address = fake_server
    with RecommenderClient(ClientConfig(server=address, retries=1,
                                        initial_backoff=0.01)) as c:
        with pytest.raises(ServingError) as info:
            c.recommend(["u1"])
    assert len(fake.calls) == 2
    assert info.value.exit_code == cli.EXIT_UNAVAILABLE
    assert "unavailable after 2 attempt(s)" in str(info.value)


@pytest.mark.parametrize("fake_server", [{"delay": 1.0}], indirect=True)
def test_every_call_has_a_deadline(fake_server):
    _, address = fake_server
    start = time.monotonic()
    with RecommenderClient(ClientConfig(server=address, timeout=0.2)) as c:
        with pytest.raises(ServingError) as info:
            c.recommend(["u1"])
    assert time.monotonic() - start < 0.9
    assert info.value.exit_code == cli.EXIT_UNAVAILABLE and "within 0.2 s" in str(info.value)


@pytest.mark.parametrize("fake_server", [{"delay": 1.0}], indirect=True)
@pytest.mark.parametrize("call, name", [(lambda c: c.metadata(), "GetModelMetadata"),
                                        (lambda c: c.status(), "GetModelStatus")],
                         ids=["metadata", "status"])
def test_metadata_and_status_calls_have_the_deadline_too(fake_server, call, name):
    _, address = fake_server
    start = time.monotonic()
    with RecommenderClient(ClientConfig(server=address, timeout=0.2)) as c:
        with pytest.raises(ServingError, match=rf"no answer from {address} within 0.2 s "
                           rf"\({name}\)") as info:
            call(c)
    assert time.monotonic() - start < 0.9 and info.value.exit_code == cli.EXIT_UNAVAILABLE


def test_exclusions_lead_with_an_empty_item(fake_server):
    fake, address = fake_server
    with RecommenderClient(ClientConfig(server=address)) as c:
        c.recommend(["u1", "u2"], exclude_item_ids=[["x", "y"], []])
    request = fake.calls[-1]
    assert request.model_spec.signature_name == "recommend_excluding"
    rows = tf.make_ndarray(request.inputs["exclude_item_ids"]).tolist()
    assert rows == [[b"", b"x", b"y"], [b"", b"", b""]]


def test_cli_batch_json(fake_server, capsys):
    fake, address = fake_server
    code = cli.main(["--server", address, "--user-id", "u1", "--user-ids", "u2,u3",
                     "--k", "2", "--json", "--batch-size", "2"])
    assert code == 0
    answer = json.loads(capsys.readouterr().out)
    assert [r["user_id"] for r in answer["results"]] == ["u1", "u2", "u3"]
    assert answer["results"][0]["item_ids"] == ["a", "b"]
    assert [len(tf.make_ndarray(c.inputs["user_id"])) for c in fake.calls] == [2, 1]


def test_cli_warns_when_k_exceeds_what_the_model_returns(fake_server, capsys):
    _, address = fake_server
    assert cli.main(["--server", address, "--user-id", "u1", "--k", "50"]) == 0
    assert "returns 3 items per user, fewer than --k 50" in capsys.readouterr().err


@pytest.mark.parametrize("argv,code,message", [
    (["--server", "localhost", "--user-id", "u"], 2, "HOST:PORT"),
    (["--server", "localhost:1"], 2, "at least one --user-id"),
    (["--server", "localhost:1", "--user-id", "u", "--ca-cert", "/no/such.pem"], 2,
     "cannot read CA certificate /no/such.pem"),
])
def test_cli_bad_input(capsys, argv, code, message):
    assert cli.main(argv) == code
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_cli_server_down(capsys):
    port = _free_port()
    code = cli.main(["--server", f"localhost:{port}", "--user-id", "u", "--retries", "1",
                     "--timeout", "2"])
    err = capsys.readouterr().err
    assert code == cli.EXIT_UNAVAILABLE
    assert err.startswith(f"error: server localhost:{port} unavailable after 2 attempt(s)")


def test_tls_with_a_custom_ca(tmp_path):
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost"],
                   check=True, capture_output=True, timeout=60)
    credentials = grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())])
    server, address = _serve(_Fake(), credentials)
    try:
        config = ClientConfig(server=address, tls=True, ca_cert=str(cert))
        with RecommenderClient(config) as c:
            assert c.recommend(["u1"], k=1)[0].item_ids == ("a",)
        # The system's roots do not trust a self-signed certificate.
        with RecommenderClient(ClientConfig(server=address, tls=True, retries=0)) as c:
            with pytest.raises(ServingError) as info:
                c.recommend(["u1"])
        assert info.value.exit_code == cli.EXIT_UNAVAILABLE
        # Plain text against a TLS port fails too.
        with RecommenderClient(ClientConfig(server=address, retries=0, timeout=2)) as c:
            with pytest.raises(ServingError):
                c.recommend(["u1"])
    finally:
        server.stop(0)


def test_config_checks_name_the_bad_value():
    with pytest.raises(ValueError, match="HOST:PORT"):
        ClientConfig(server="localhost")
    with pytest.raises(ValueError, match="timeout must be > 0"):
        ClientConfig(server="h:1", timeout=0)
    with pytest.raises(ValueError, match="ca_cert needs tls"):
        ClientConfig(server="h:1", ca_cert="ca.pem")
