"""A local stand-in for ``tensorflow_model_server`` (development and tests only).

    python -m serving.server --model-base-path DIR [--model-name recommender] [--port 8500]
        [--enable_batching [--batching_parameters_file FILE]]

Speaks TensorFlow Serving's gRPC API for what users of this project touch:
``PredictionService.Predict``, ``PredictionService.GetModelMetadata`` (the
SignatureDefMap) and ``ModelService.GetModelStatus``. It serves the newest version
under ``DIR``, polls for new ones, replays their warm-up requests and switches
without dropping requests in flight. With ``--enable_batching`` it merges concurrent
Predicts as TF Serving does (``serving/batching.py``), reading the same
``BatchingParameters`` file. Anything that matters (latency, Prometheus metrics)
must be checked with the real server; see the README.
"""
from __future__ import annotations

import project_env  # noqa: F401  (before TensorFlow)

import argparse
import dataclasses
import signal
import sys
import threading
import time
import traceback
from concurrent import futures
from typing import Callable, Optional, Sequence, Tuple

import grpc
import tensorflow as tf
from google.protobuf import text_format
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2,
                                     model_service_pb2_grpc, prediction_service_pb2_grpc)

from serving.batching import BatchScheduler
from serving.batching_config import BatchingOptions, read_batching_parameters
from serving.errors import RequestError, invalid
from serving.version_manager import VersionManager

SIGNATURE_DEF_FIELD = "signature_def"


def _log(message: str) -> None:
    print(message, flush=True)


def _log_error(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class ErrorLog:
    """Prints an error's traceback the first time; the same error again (type and
    message) only as a count at 2, 4, 8, ... repeats, and once when it stops, so a
    persistent error does not flood the log every poll."""

    def __init__(self, what: str, log: Callable[[str], None] = _log_error) -> None:
        self.what = what
        self._log = log
        self._last: Optional[Tuple[str, str]] = None
        self._count = 0
        self._lock = threading.Lock()

    def error(self, e: BaseException) -> None:
        key = (type(e).__name__, str(e))
        with self._lock:
            if key != self._last:
                self._last, self._count = key, 1
                self._log(f"[serving] {self.what} failed:\n" + "".join(
                    traceback.format_exception(type(e), e, e.__traceback__)).rstrip())
                return
            self._count += 1
            if self._count & (self._count - 1) == 0:  # a power of two
                self._log(f"[serving] {self.what} failed again ({self._count} times in a "
                          f"row): {key[0]}: {key[1].splitlines()[0][:300] if key[1] else ''}")

    def ok(self) -> None:
        with self._lock:
            if self._last is not None:
                self._log(f"[serving] {self.what} works again after {self._count} failures")
            self._last, self._count = None, 0


_REQUEST_ERRORS = ErrorLog("a request")


def _answer(context, call):
    """Runs ``call``; a ``RequestError`` becomes its status, anything else INTERNAL."""
    try:
        return call()
    except RequestError as e:
        context.abort(e.code, e.message)
    except Exception as e:  # noqa: BLE001 (a bad request must never take the server down)
        _REQUEST_ERRORS.error(e)
        context.abort(grpc.StatusCode.INTERNAL, f"{type(e).__name__}: {e}")


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    """Predict and GetModelMetadata; Classify, Regress and MultiInference are UNIMPLEMENTED."""

    def __init__(self, manager: VersionManager,
                 batcher: Optional[BatchScheduler] = None) -> None:
        self._manager = manager
        self._batcher = batcher

    def Predict(self, request, context):
        return _answer(context, lambda: self._predict(request, context))

    def _predict(self, request, context):
        loaded = self._manager.resolve(request.model_spec)
        if self._batcher is None:
            return loaded.predict(request, self._manager.model_name)
        remaining = context.time_remaining()  # None: the client set no deadline
        deadline = None if remaining is None else time.monotonic() + remaining
        return loaded.predict(request, self._manager.model_name, self._batcher, deadline)

    def GetModelMetadata(self, request, context):
        return _answer(context, lambda: self._metadata(request))

    def _metadata(self, request):
        if not request.metadata_field:
            raise invalid("GetModelMetadataRequest must specify at least one metadata_field")
        for field in request.metadata_field:
            if field != SIGNATURE_DEF_FIELD:
                raise invalid(f"Metadata field {field} is not supported")
        loaded = self._manager.resolve(request.model_spec)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = self._manager.model_name
        response.model_spec.version.value = loaded.version
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        for name, signature in loaded.signature_defs.items():
            signature_map.signature_def[name].CopyFrom(signature)
        response.metadata[SIGNATURE_DEF_FIELD].Pack(signature_map)
        return response


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    """GetModelStatus; HandleReloadConfigRequest is UNIMPLEMENTED."""

    def __init__(self, manager: VersionManager) -> None:
        self._manager = manager

    def GetModelStatus(self, request, context):
        return _answer(context, lambda: self._status(request))

    def _status(self, request):
        spec = request.model_spec
        if not spec.name:
            raise invalid("Missing ModelSpec name")
        if spec.name != self._manager.model_name:
            raise RequestError(grpc.StatusCode.NOT_FOUND,
                               f"Could not find any versions of model {spec.name}")
        statuses = self._manager.statuses()
        if spec.HasField("version"):
            statuses = [(v, s) for v, s in statuses if v == spec.version.value]
            if not statuses:
                raise RequestError(grpc.StatusCode.NOT_FOUND,
                                   f"Could not find version {spec.version.value} "
                                   f"of model {spec.name}")
        elif not statuses:
            raise RequestError(grpc.StatusCode.NOT_FOUND,
                               f"Could not find any versions of model {spec.name}")
        response = get_model_status_pb2.GetModelStatusResponse()
        for version, status in statuses:
            out = response.model_version_status.add(version=version, state=status.state)
            if status.error:
                out.status.error_code = grpc.StatusCode.UNKNOWN.value[0]
                out.status.error_message = status.error
        return response


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    model_base_path: str
    model_name: str = "recommender"
    port: int = 8500
    host: str = "0.0.0.0"
    num_versions: int = 1
    poll_seconds: float = 1.0
    max_workers: int = 16
    grace_seconds: float = 5.0
    ssl_cert: Optional[str] = None
    ssl_key: Optional[str] = None
    intra_op_parallelism: int = 0  # 0: TensorFlow's default (one thread per core)
    inter_op_parallelism: int = 0
    batching: Optional[BatchingOptions] = None  # None: every request runs on its own


class LocalModelServer:
    """The gRPC server, its version manager and the polling thread."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        # Thread pools can be set only before TensorFlow runs its first op.
        if config.intra_op_parallelism:
            tf.config.threading.set_intra_op_parallelism_threads(config.intra_op_parallelism)
        if config.inter_op_parallelism:
            tf.config.threading.set_inter_op_parallelism_threads(config.inter_op_parallelism)
        self.batcher = BatchScheduler(config.batching) if config.batching else None
        self.manager = VersionManager(
            config.model_name, config.model_base_path, config.num_versions, log=_log,
            on_unload=self.batcher.close if self.batcher else lambda version: None)
        # so_reuseport=0: a second server on a busy port must fail, not share it.
        self._grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=config.max_workers),
                                 options=[("grpc.so_reuseport", 0)])
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
            PredictionServicer(self.manager, self.batcher), self._grpc)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(
            ModelServicer(self.manager), self._grpc)
        self._stop = threading.Event()
        self._poll_errors = ErrorLog("polling the model directory")
        self._poller = threading.Thread(target=self._poll_loop, name="version-poller",
                                        daemon=True)
        self.port: Optional[int] = None

    def start(self) -> int:
        """Loads the newest version (as TF Serving does before it listens), then listens."""
        self.manager.poll()
        if not self.manager.serving_versions:
            _log(f"[serving] no loadable version of {self.config.model_name} under "
                 f"{self.config.model_base_path} yet; waiting for one")
        address = f"{self.config.host}:{self.config.port}"
        if self.config.ssl_cert:
            with open(self.config.ssl_key, "rb") as k, open(self.config.ssl_cert, "rb") as c:
                credentials = grpc.ssl_server_credentials([(k.read(), c.read())])
            self.port = self._grpc.add_secure_port(address, credentials)
        else:
            self.port = self._grpc.add_insecure_port(address)
        self._grpc.start()
        self._poller.start()
        versions = ", ".join(map(str, self.manager.serving_versions)) or "none yet"
        if self.batcher:
            _log(f"[serving] batching: {self.config.batching}")
        _log(f"[serving] serving model '{self.config.model_name}' version {versions} "
             f"on port {self.port} (gRPC{', TLS' if self.config.ssl_cert else ''})")
        return self.port

    def _poll_loop(self) -> None:
        while not self._stop.wait(self.config.poll_seconds):
            try:
                self.manager.poll()
            except Exception as e:  # noqa: BLE001 (keep polling; the error is printed)
                self._poll_errors.error(e)
            else:
                self._poll_errors.ok()

    def stop(self) -> None:
        """Refuses new requests, lets those in flight finish (up to the grace period)."""
        self._stop.set()
        self._grpc.stop(self.config.grace_seconds).wait()
        if self.batcher:
            self.batcher.stop()
            _log(f"[serving] batching: {self.batcher.stats().summary()}")


def _parse_args(argv: Optional[Sequence[str]]) -> ServerConfig:
    p = argparse.ArgumentParser(prog="python -m serving.server", description=__doc__.split("\n")[0])
    p.add_argument("--model-base-path", required=True,
                   help="directory holding <integer version>/saved_model.pb")
    p.add_argument("--model-name", default="recommender")
    p.add_argument("--port", type=int, default=8500, help="0 picks a free port (printed)")
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--num-versions", type=int, default=1,
                   help="serve the newest N versions (TF Serving: latest { num_versions })")
    p.add_argument("--poll-seconds", type=float, default=1.0,
                   help="how often to look for new versions (TF Serving: "
                        "--file_system_poll_wait_seconds, default 1)")
    p.add_argument("--max-workers", type=int, default=16, help="gRPC handler threads")
    p.add_argument("--grace-seconds", type=float, default=5.0,
                   help="on SIGTERM, how long requests in flight may take to finish")
    p.add_argument("--ssl-cert", help="PEM certificate chain; with --ssl-key, serve TLS")
    p.add_argument("--ssl-key", help="PEM private key")
    p.add_argument("--intra-op-parallelism", type=int, default=0,
                   help="threads one op may use (TF Serving: --tensorflow_intra_op_parallelism;"
                        " 0 = TensorFlow's default)")
    p.add_argument("--inter-op-parallelism", type=int, default=0,
                   help="ops run at once per call (TF Serving: "
                        "--tensorflow_inter_op_parallelism; 0 = TensorFlow's default)")
    # TF Serving's own flag names, so the manifests' arguments work here unchanged.
    p.add_argument("--enable_batching", "--enable-batching", nargs="?", const=True,
                   default=False, type=_flag_bool, metavar="true|false",
                   help="merge concurrent Predicts into batches, as tensorflow_model_server")
    p.add_argument("--batching_parameters_file", "--batching-parameters-file",
                   help="text-format BatchingParameters (default: TF Serving's defaults)")
    a = p.parse_args(argv)
    batching = None
    if a.enable_batching:
        try:
            batching = read_batching_parameters(a.batching_parameters_file)
        except (OSError, ValueError, text_format.ParseError) as e:
            p.error(f"--batching_parameters_file {a.batching_parameters_file}: {e}")
    elif a.batching_parameters_file:
        p.error("--batching_parameters_file is set without setting --enable_batching "
                "(as tensorflow_model_server refuses it)")
    if bool(a.ssl_cert) != bool(a.ssl_key):
        p.error("--ssl-cert and --ssl-key go together")
    if a.num_versions < 1:
        p.error(f"--num-versions must be >= 1, got {a.num_versions}")
    return ServerConfig(model_base_path=a.model_base_path, model_name=a.model_name,
                        port=a.port, host=a.host, num_versions=a.num_versions,
                        poll_seconds=a.poll_seconds, max_workers=a.max_workers,
                        grace_seconds=a.grace_seconds, ssl_cert=a.ssl_cert, ssl_key=a.ssl_key,
                        intra_op_parallelism=a.intra_op_parallelism,
                        inter_op_parallelism=a.inter_op_parallelism, batching=batching)


def _flag_bool(text: str) -> bool:
    """A gflags boolean value: ``--enable_batching=true`` (or 1, false, 0)."""
    value = text.strip().lower()
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    config = _parse_args(argv)
    server = LocalModelServer(config)
    try:
        server.start()
    except (RuntimeError, OSError) as e:  # port taken, unreadable certificate, ...
        print(f"error: cannot serve on {config.host}:{config.port}: {e}", file=sys.stderr)
        return 1
    stopping = threading.Event()

    def _on_signal(signum, _frame):
        _log(f"[serving] {signal.Signals(signum).name}: finishing requests in flight "
             f"(up to {config.grace_seconds:g} s)")
        stopping.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    stopping.wait()
    server.stop()
    _log("[serving] stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
