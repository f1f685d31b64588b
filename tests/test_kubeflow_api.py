"""`pipeline.py upload` and `schedule` against a local HTTP server that implements the
KFP v2beta1 endpoints they use. The server checks every request body against the
kfp-server-api models (unknown fields, wrong types and missing required fields fail
the request) and records the credentials each request carried."""
import datetime
import email.parser
import http.server
import json
import socket
import threading
import time
import urllib.parse
import uuid

import kfp_server_api
import pytest
import yaml
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

from runner import cli, kfp_api, kubeflow
from tests.fake_http import JSONHandler

TOKEN, COOKIE = "test-token-not-a-secret", "authservice_session=test-cookie"
PREFIX = "/apis/v2beta1"


class BodyError(ValueError):
    pass


def check_model(data, type_name: str, where: str = "body") -> None:
    """Strictly checks JSON ``data`` against a kfp_server_api model or type string."""
    if type_name.startswith("list["):
        if not isinstance(data, list):
            raise BodyError(f"{where}: expected a list")
        for i, item in enumerate(data):
            check_model(item, type_name[5:-1], f"{where}[{i}]")
        return
    if type_name.startswith("dict("):
        if not isinstance(data, dict):
            raise BodyError(f"{where}: expected an object")
        return
    scalars = {"str": str, "bool": bool, "int": int, "float": (int, float),
               "object": object, "datetime": str}
    if where.rsplit(".", 1)[-1] in INT64_FIELDS:  # protojson takes int64 as number or string
        if not isinstance(data, (int, str)) or not str(data).lstrip("-").isdigit():
            raise BodyError(f"{where}: expected an int64, got {data!r}")
        return
    if type_name in scalars:
        if not isinstance(data, scalars[type_name]):
            raise BodyError(f"{where}: expected {type_name}, got {data!r}")
        if type_name == "datetime":
            datetime.datetime.fromisoformat(data.replace("Z", "+00:00"))
        return
    model = getattr(kfp_server_api, type_name)
    if not getattr(model, "openapi_types", None):  # enums
        if data not in [v for k, v in vars(model).items() if k.isupper()]:
            raise BodyError(f"{where}: {data!r} is not a {type_name}")
        return
    if not isinstance(data, dict):
        raise BodyError(f"{where}: expected a {type_name} object")
    by_json = {v: k for k, v in model.attribute_map.items()}
    unknown = sorted(set(data) - set(by_json))
    if unknown:
        raise BodyError(f"{where}: unknown {type_name} fields {unknown}")
    for key, value in data.items():
        if value is not None:
            check_model(value, model.openapi_types[by_json[key]], f"{where}.{key}")


# int64 fields, typed "str" in the OpenAPI models (JSON strings or numbers).
INT64_FIELDS = {"max_concurrency", "interval_second"}
REQUIRED = {
    "V2beta1Experiment": {"display_name"},
    "V2beta1RecurringRun": {"display_name", "experiment_id", "trigger", "mode",
                            "pipeline_version_reference", "runtime_config"},
}
READ_ONLY = {"V2beta1RecurringRun": {"recurring_run_id", "created_at", "updated_at",
                                     "status", "error"},
             "V2beta1Experiment": {"experiment_id", "created_at", "last_run_created_at"}}


def check_create(body: dict, type_name: str) -> None:
    check_model(body, type_name)
    missing = REQUIRED[type_name] - {k for k, v in body.items() if v not in (None, "", {})}
    if missing:
        raise BodyError(f"{type_name} lacks {sorted(missing)}")
    if READ_ONLY[type_name] & set(body):
        raise BodyError(f"{type_name} sets output-only {sorted(READ_ONLY[type_name] & set(body))}")


class FakeKFP:
    """In-memory pipelines, versions, experiments and recurring runs."""

    def __init__(self):
        self.pipelines, self.versions, self.experiments, self.recurring = {}, {}, {}, []
        self.auth, self.errors, self.uploaded = [], [], []
        self.delay: dict = {}  # URL path -> seconds to hold the answer back

    def now(self):
        return datetime.datetime.now(datetime.timezone.utc).isoformat().replace("+00:00", "Z")

    def add_version(self, pipeline_id, name, spec):
        v = {"pipeline_id": pipeline_id, "pipeline_version_id": str(uuid.uuid4()),
             "display_name": name, "created_at": self.now(), "pipeline_spec": spec}
        self.versions.setdefault(pipeline_id, []).append(v)
        return v


def _filter_name(query):
    f = json.loads(query.get("filter", ["{}"])[0] or "{}")
    for p in f.get("predicates", []):
        if p.get("key") in ("display_name", "name"):
            return p.get("string_value") or p.get("stringValue")
    return None


def make_handler(state: FakeKFP):
    class Handler(JSONHandler):
        def _fail(self, message):
            state.errors.append(message)
            self._send(400, {"error": message, "code": 3, "message": message})

        def _record_auth(self):
            state.auth.append((self.headers.get("Authorization"), self.headers.get("Cookie")))
            time.sleep(state.delay.get(urllib.parse.urlparse(self.path).path, 0.0))

        def _body(self):
            return self.rfile.read(int(self.headers.get("Content-Length", 0)))

        def do_GET(self):
            self._record_auth()
            url = urllib.parse.urlparse(self.path)
            q = urllib.parse.parse_qs(url.query)
            if url.path == f"{PREFIX}/healthz":
                return self._send(200, {"multi_user": False})
            if url.path == f"{PREFIX}/pipelines":
                name = _filter_name(q)
                found = [p for p in state.pipelines.values() if p["display_name"] == name]
                return self._send(200, {"pipelines": found, "total_size": len(found)})
            if url.path.startswith(f"{PREFIX}/pipelines/") and url.path.endswith("/versions"):
                pid = url.path.split("/")[4]
                versions = sorted(state.versions.get(pid, []), key=lambda v: v["created_at"],
                                  reverse=True)
                if q.get("sort_by") != ["created_at desc"]:
                    return self._fail(f"unexpected sort_by {q.get('sort_by')}")
                versions = versions[:int(q.get("page_size", ["10"])[0])]
                return self._send(200, {"pipeline_versions": versions,
                                        "total_size": len(versions)})
            if url.path == f"{PREFIX}/experiments":
                name = _filter_name(q)
                found = [e for e in state.experiments.values() if e["display_name"] == name]
                return self._send(200, {"experiments": found, "total_size": len(found)})
            self._fail(f"unexpected GET {url.path}")

        def _uploaded_spec(self, body):
            msg = email.parser.BytesParser().parsebytes(
                b"Content-Type: " + self.headers["Content-Type"].encode() + b"\r\n\r\n" + body)
            [part] = [p for p in msg.get_payload() if p.get_param("name", header=
                                                                   "content-disposition")
                      == "uploadfile"]
            docs = [d for d in yaml.safe_load_all(part.get_payload(decode=True)) if d]
            json_format.ParseDict(docs[0], pipeline_spec_pb2.PipelineSpec())
            if len(docs) > 1:
                json_format.ParseDict(docs[1], pipeline_spec_pb2.PlatformSpec())
            state.uploaded.append(docs)
            return docs[0]

        def do_POST(self):
            self._record_auth()
            url = urllib.parse.urlparse(self.path)
            q = urllib.parse.parse_qs(url.query)
            body = self._body()
            try:
                if url.path == f"{PREFIX}/pipelines/upload":
                    spec = self._uploaded_spec(body)
                    name = q["name"][0]
                    if any(p["display_name"] == name for p in state.pipelines.values()):
                        return self._send(409, {"message": "pipeline exists"})
                    pid = str(uuid.uuid4())
                    state.pipelines[pid] = {"pipeline_id": pid, "display_name": name,
                                            "created_at": state.now()}
                    state.add_version(pid, name, spec)
                    return self._send(200, state.pipelines[pid])
                if url.path == f"{PREFIX}/pipelines/upload_version":
                    spec = self._uploaded_spec(body)
                    pid = q["pipelineid"][0]
                    if pid not in state.pipelines:
                        return self._fail(f"no pipeline {pid}")
                    return self._send(200, state.add_version(pid, q["name"][0], spec))
                data = json.loads(body)
                if url.path == f"{PREFIX}/experiments":
                    check_create(data, "V2beta1Experiment")
                    eid = str(uuid.uuid4())
                    state.experiments[eid] = {**data, "experiment_id": eid,
                                              "created_at": state.now()}
                    return self._send(200, state.experiments[eid])
                if url.path == f"{PREFIX}/recurringruns":
                    check_create(data, "V2beta1RecurringRun")
                    ref = data["pipeline_version_reference"]
                    if not any(v["pipeline_version_id"] == ref["pipeline_version_id"]
                               for v in state.versions.get(ref["pipeline_id"], [])):
                        return self._fail(f"unknown pipeline version {ref}")
                    if data["experiment_id"] not in state.experiments:
                        return self._fail("unknown experiment")
                    run = {**data, "recurring_run_id": str(uuid.uuid4()),
                           "created_at": state.now(), "status": "ENABLED"}
                    state.recurring.append(run)
                    return self._send(200, run)
            except (BodyError, KeyError, ValueError, json_format.ParseError) as e:
                return self._fail(f"{type(e).__name__}: {e}")
            self._fail(f"unexpected POST {url.path}")
    return Handler


@pytest.fixture
def kfp_server(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.config/kfp context from the host
    state = FakeKFP()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), make_handler(state))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", state
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("pkg") / "twotower-recommender.yaml")
    spec, platform = kubeflow.compile_spec(kubeflow.KubeflowOptions(image="reg/img:1"))
    return kubeflow.write(spec, platform, path)


def test_upload_then_new_version_then_schedule_with_token(kfp_server, package, monkeypatch,
                                                          capsys):
    host, state = kfp_server
    monkeypatch.setenv(kfp_api.TOKEN_ENV, TOKEN)
    monkeypatch.delenv(kfp_api.COOKIE_ENV, raising=False)
    client = kfp_api.client(host)
    first = kfp_api.upload(client, package, "twotower-recommender", "v1")
    assert first.new_pipeline and first.version_id
    second = kfp_api.upload(client, package, "twotower-recommender", "v2")
    assert not second.new_pipeline and second.pipeline_id == first.pipeline_id
    assert second.version_name == "v2"
    assert len(state.pipelines) == 1 and len(state.versions[first.pipeline_id]) == 2

    assert cli.main(["schedule", "--host", host, "--cron", "0 3 * * *",
                     "--experiment", "nightly", "--param", "min_recall=0.05",
                     "--param", "data_root=gs://bucket/prepared",
                     "--pipeline-root", "gs://bucket/root"]) == 0
    assert not state.errors, state.errors
    [run] = state.recurring
    assert run["trigger"] == {"cron_schedule": {"cron": "0 0 3 * * *"}}
    assert run["pipeline_version_reference"] == {"pipeline_id": first.pipeline_id,
                                                 "pipeline_version_id": second.version_id}
    assert run["runtime_config"] == {"parameters": {"min_recall": 0.05,
                                                    "data_root": "gs://bucket/prepared"},
                                     "pipeline_root": "gs://bucket/root"}
    assert run["mode"] == "ENABLE" and run["no_catchup"] is True
    [exp] = state.experiments.values()
    assert exp["display_name"] == "nightly" and run["experiment_id"] == exp["experiment_id"]
    assert state.auth and all(a == (f"Bearer {TOKEN}", None) for a in state.auth)
    out = capsys.readouterr()
    assert TOKEN not in out.out + out.err


def test_upload_command_compiles_and_sends_the_cookie(kfp_server, monkeypatch, capsys):
    host, state = kfp_server
    monkeypatch.delenv(kfp_api.TOKEN_ENV, raising=False)
    monkeypatch.setenv(kfp_api.COOKIE_ENV, COOKIE)
    assert cli.main(["upload", "--host", host, "--pipeline-name", "recsys",
                     "--image", "reg/twotower-recommender:0.1.0-abc"]) == 0
    assert not state.errors, state.errors
    [docs] = state.uploaded
    assert docs[0]["pipelineInfo"]["name"] == "twotower-recommender"
    assert len(docs) == 2  # PipelineSpec + PlatformSpec (volume mounts)
    assert all(a == (None, COOKIE) for a in state.auth)
    out = capsys.readouterr()
    assert "new pipeline" in out.out and "test-cookie" not in out.out + out.err


def test_schedule_reuses_an_existing_experiment(kfp_server, package, monkeypatch):
    host, state = kfp_server
    client = kfp_api.client(host)
    kfp_api.upload(client, package, "twotower-recommender", "v1")
    eid = kfp_api.experiment_id(client, "exp")
    assert kfp_api.experiment_id(client, "exp") == eid and len(state.experiments) == 1
    kfp_api.schedule(client, "twotower-recommender", "*/30 * * * *", "exp", {})
    assert state.recurring[0]["experiment_id"] == eid and not state.errors


def test_the_fake_server_rejects_wrong_fields():
    with pytest.raises(BodyError, match="unknown V2beta1RecurringRun fields"):
        check_create({"display_name": "x", "experiment_id": "e", "mode": "ENABLE",
                      "trigger": {"cron_schedule": {"cron": "0 0 * * * *"}},
                      "pipeline_version_reference": {"pipeline_id": "p"},
                      "runtime_config": {}, "schedule": "daily"}, "V2beta1RecurringRun")
    with pytest.raises(BodyError, match="unknown V2beta1Trigger fields"):
        check_model({"cron": "x"}, "V2beta1Trigger")
    with pytest.raises(BodyError, match="lacks"):
        check_create({"display_name": "x"}, "V2beta1RecurringRun")
    with pytest.raises(BodyError, match="not a RecurringRunMode"):
        check_model({"mode": "ON"}, "V2beta1RecurringRun")


def test_schedule_checks_params_and_cron():
    with pytest.raises(ValueError, match="unknown pipeline parameter 'min_recal'"):
        kfp_api.parse_params(["min_recal=1"], kubeflow.PARAMETER_TYPES)
    assert kfp_api.parse_params(["min_coverage=0.2"], kubeflow.PARAMETER_TYPES) == {
        "min_coverage": 0.2}
    with pytest.raises(ValueError, match="5 or 6 fields"):
        kfp_api.kfp_cron("daily")
    assert kfp_api.kfp_cron("0 0 3 * * *") == "0 0 3 * * *"


def test_schedule_without_uploaded_pipeline_fails_clearly(kfp_server, capsys):
    host, _ = kfp_server
    assert cli.main(["schedule", "--host", host, "--cron", "0 3 * * *"]) == 2
    assert "pipeline.py upload" in capsys.readouterr().err


def test_a_slow_api_fails_the_command_naming_the_endpoint_and_the_timeout(kfp_server, capsys):
    host, state = kfp_server
    state.delay[f"{PREFIX}/pipelines"] = 5.0  # answers, but too late
    start = time.monotonic()
    assert cli.main(["schedule", "--host", host, "--cron", "0 3 * * *",
                     "--api-timeout", "0.5"]) == 3
    assert time.monotonic() - start < 3.0  # a read that timed out is not retried
    err = capsys.readouterr().err
    assert f"KFP API GET {host}{PREFIX}/pipelines: no answer within 0.5 s" in err, err


def test_the_health_check_inside_kfp_client_has_a_deadline_too(kfp_server):
    host, state = kfp_server  # no kfp context file: kfp.Client asks healthz for the mode
    state.delay[f"{PREFIX}/healthz"] = 5.0
    start = time.monotonic()
    with pytest.raises(kfp_api.KFPUnreachable, match=rf"GET {host}{PREFIX}/healthz: no "
                       r"answer within 0.3 s"):
        kfp_api.client(host, timeout=0.3)
    assert time.monotonic() - start < 3.0
    assert kfp_api.client(host, namespace="team", timeout=0.3)  # no healthz call then


def test_the_upload_has_a_deadline(kfp_server, package):
    host, state = kfp_server
    client = kfp_api.client(host, timeout=0.5)
    state.delay[f"{PREFIX}/pipelines/upload"] = 5.0
    with pytest.raises(kfp_api.KFPUnreachable, match=rf"POST {host}{PREFIX}/pipelines/"
                       r"upload: no answer within 0.5 s"):
        kfp_api.upload(client, package, "twotower-recommender", "v1")


def test_no_server_fails_clearly(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    with socket.socket() as s:  # a port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert cli.main(["schedule", "--host", f"http://127.0.0.1:{port}", "--cron",
                     "0 3 * * *"]) == 3
    assert f"KFP API GET http://127.0.0.1:{port}{PREFIX}/healthz: cannot connect" in \
        capsys.readouterr().err
