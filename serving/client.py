"""Asks a TensorFlow Serving endpoint (real or ``serving.server``) for recommendations.

    python -m serving.client --server HOST:PORT [--model-name recommender] --user-id ID
        [--k 10] [--history ID,ID,...] [--json]

Library: ``RecommenderClient(ClientConfig(server=...)).recommend(["u1", "u2"], k=10)``.
Every call names the model and the signature and has a deadline; ``UNAVAILABLE`` is
retried with exponential back-off and jitter. Failures raise ``ServingError`` with a
message that names the problem; the CLI prints it and exits with:

    0 ok · 2 bad input · 3 server unreachable or too slow · 4 model, version or
    signature not found · 5 request rejected by the server · 1 anything else
"""
from __future__ import annotations

import project_env  # noqa: F401  (before TensorFlow)

import argparse
import dataclasses
import json
import random
import sys
import time
from typing import List, Optional, Sequence, Tuple

import grpc
import tensorflow as tf
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2,
                                     model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc)

SERVING_DEFAULT = "serving_default"
RECOMMEND_EXCLUDING = "recommend_excluding"
RECOMMEND_FROM_HISTORY = "recommend_from_history"

EXIT_OK, EXIT_OTHER, EXIT_BAD_INPUT, EXIT_UNAVAILABLE, EXIT_NOT_FOUND, EXIT_REJECTED = \
    0, 1, 2, 3, 4, 5


class ServingError(Exception):
    """A request that did not get an answer; ``exit_code`` is the CLI's exit status."""

    def __init__(self, message: str, exit_code: int = EXIT_OTHER,
                 code: Optional[grpc.StatusCode] = None) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.code = code


@dataclasses.dataclass(frozen=True)
class ClientConfig:
    """Where and how to ask. Times are in seconds."""

    server: str
    model_name: str = "recommender"
    signature_name: str = SERVING_DEFAULT
    timeout: float = 5.0  # deadline of each attempt
    retries: int = 3  # extra attempts after UNAVAILABLE
    initial_backoff: float = 0.1
    max_backoff: float = 2.0
    tls: bool = False
    ca_cert: Optional[str] = None  # PEM file; None = the system's roots
    server_name_override: Optional[str] = None  # TLS name check, e.g. for an IP address

    def __post_init__(self) -> None:
        host, sep, port = self.server.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"server must be HOST:PORT, got {self.server!r}")
        if self.timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {self.timeout}")
        if self.retries < 0:
            raise ValueError(f"retries must be >= 0, got {self.retries}")
        if self.ca_cert and not self.tls:
            raise ValueError("ca_cert needs tls=True")


@dataclasses.dataclass(frozen=True)
class Recommendation:
    """One user's answer: ``item_ids`` and ``scores`` in rank order, highest first."""

    user_id: str
    item_ids: Tuple[str, ...]
    scores: Tuple[float, ...]
    model_version: int


def _channel(config: ClientConfig) -> grpc.Channel:
    options = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]
    if not config.tls:
        return grpc.insecure_channel(config.server, options=options)
    root = None
    if config.ca_cert:
        try:
            with open(config.ca_cert, "rb") as f:
                root = f.read()
        except OSError as e:
            raise ServingError(f"cannot read CA certificate {config.ca_cert}: {e.strerror}",
                               EXIT_BAD_INPUT) from e
    if config.server_name_override:
        options.append(("grpc.ssl_target_name_override", config.server_name_override))
    return grpc.secure_channel(config.server, grpc.ssl_channel_credentials(root), options)


class RecommenderClient:
    """gRPC client of a TensorFlow Serving model with this project's signatures."""

    def __init__(self, config: ClientConfig) -> None:
        self.config = config
        self._channel = _channel(config)
        self._predict = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        self._model = model_service_pb2_grpc.ModelServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "RecommenderClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- the project's signatures --------------------------------------------
    def recommend(self, user_ids: Sequence[str], k: int = 10,
                  exclude_item_ids: Optional[Sequence[Sequence[str]]] = None,
                  version: Optional[int] = None,
                  history_item_ids: Optional[Sequence[Sequence[str]]] = None
                  ) -> List[Recommendation]:
        """Top ``k`` items for each user, in one Predict call.

        ``history_item_ids`` (one list per user, oldest first: what each user did since
        the model was exported, or a new user's whole history) switches to
        ``recommend_from_history``; ``exclude_item_ids`` to ``recommend_excluding``.
        """
        users = [str(u) for u in user_ids]
        if not users:
            raise ServingError("no user IDs given", EXIT_BAD_INPUT)
        if k < 1:
            raise ServingError(f"k must be >= 1, got {k}", EXIT_BAD_INPUT)
        if exclude_item_ids is not None and history_item_ids is not None:
            raise ServingError("give history or exclusions, not both (the history's items "
                               "are left out anyway)", EXIT_BAD_INPUT)
        request = self.new_request(version=version)
        request.inputs["user_id"].CopyFrom(tf.make_tensor_proto(users, dtype=tf.string))
        for lists, signature, name in ((exclude_item_ids, RECOMMEND_EXCLUDING, "exclude_item_ids"),
                                       (history_item_ids, RECOMMEND_FROM_HISTORY,
                                        "history_item_ids")):
            if lists is None:
                continue
            if len(lists) != len(users):
                raise ServingError(f"got {len(lists)} item lists for {len(users)} users",
                                   EXIT_BAD_INPUT)
            request.model_spec.signature_name = signature
            request.inputs[name].CopyFrom(tf.make_tensor_proto(_padded(lists),
                                                               dtype=tf.string))
        response = self.predict(request)
        return parse_recommendations(users, response, k)

    def new_request(self, signature_name: Optional[str] = None,
                    version: Optional[int] = None) -> predict_pb2.PredictRequest:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = self.config.model_name
        request.model_spec.signature_name = signature_name or self.config.signature_name
        if version is not None:
            request.model_spec.version.value = version
        return request

    # --- raw TensorFlow Serving calls, with deadline and retries --------------
    def predict(self, request: predict_pb2.PredictRequest) -> predict_pb2.PredictResponse:
        return self._call(self._predict.Predict, request, "Predict")

    def metadata(self, version: Optional[int] = None) -> dict:
        """``{signature name: SignatureDef}`` as the server reports it."""
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        request.model_spec.name = self.config.model_name
        if version is not None:
            request.model_spec.version.value = version
        response = self._call(self._predict.GetModelMetadata, request, "GetModelMetadata")
        signatures = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signatures)
        return dict(signatures.signature_def)

    def status(self) -> get_model_status_pb2.GetModelStatusResponse:
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = self.config.model_name
        return self._call(self._model.GetModelStatus, request, "GetModelStatus")

    def _call(self, method, request, what: str):
        delay = self.config.initial_backoff
        for attempt in range(self.config.retries + 1):
            try:
                return method(request, timeout=self.config.timeout)
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.UNAVAILABLE or attempt == self.config.retries:
                    raise self._explain(e, what, attempt + 1) from None
            time.sleep(min(delay, self.config.max_backoff) * random.uniform(0.5, 1.0))
            delay *= 2
        raise AssertionError("unreachable")

    def _explain(self, error: grpc.RpcError, what: str, attempts: int) -> ServingError:
        code, detail = error.code(), error.details() or ""
        where = f"{self.config.server}"
        model = f"model '{self.config.model_name}'"
        if code == grpc.StatusCode.UNAVAILABLE:
            return ServingError(f"server {where} unavailable after {attempts} attempt(s): "
                                f"{detail}", EXIT_UNAVAILABLE, code)
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return ServingError(f"no answer from {where} within {self.config.timeout:g} s "
                                f"({what})", EXIT_UNAVAILABLE, code)
        if code == grpc.StatusCode.NOT_FOUND:
            return ServingError(f"{model} not found on {where}: {detail}", EXIT_NOT_FOUND, code)
        if code == grpc.StatusCode.FAILED_PRECONDITION and "signature" in detail.lower():
            return ServingError(f"{model} on {where} has no such signature: {detail}",
                                EXIT_NOT_FOUND, code)
        if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION):
            return ServingError(f"{where} rejected the {what} request: {detail}",
                                EXIT_REJECTED, code)
        return ServingError(f"{what} on {where} failed: {code.name}: {detail}", EXIT_OTHER, code)


def _padded(lists: Sequence[Sequence[str]]) -> List[List[str]]:
    """``[users, width]`` item IDs. "" (no item) pads the rows and also leads each one:
    TF Serving's batching pads variable-length inputs with the tensor's first element,
    which must therefore be no item (see batching_parameters.txt)."""
    width = max(len(row) for row in lists)
    return [[""] + list(map(str, row)) + [""] * (width - len(row)) for row in lists]


def parse_recommendations(users: Sequence[str], response: predict_pb2.PredictResponse,
                          k: int) -> List[Recommendation]:
    """Reads the named outputs ``item_ids`` and ``scores`` (``[len(users), K]``)."""
    for name in ("item_ids", "scores"):
        if name not in response.outputs:
            raise ServingError(f"the answer has no '{name}' output (outputs: "
                               f"{sorted(response.outputs)}); is this the recommender?")
    items = tf.make_ndarray(response.outputs["item_ids"])
    scores = tf.make_ndarray(response.outputs["scores"])
    if items.shape[0] != len(users) or scores.shape != items.shape:
        raise ServingError(f"the answer has item_ids {list(items.shape)} and scores "
                           f"{list(scores.shape)} for {len(users)} users")
    version = response.model_spec.version.value
    out = []
    for i, u in enumerate(users):
        # "" marks a slot with no item left to recommend (all others left out).
        row = [(x.decode("utf-8", "replace"), float(s)) for x, s in zip(items[i], scores[i])
               if x][:k]
        out.append(Recommendation(user_id=u, item_ids=tuple(x for x, _ in row),
                                  scores=tuple(s for _, s in row), model_version=version))
    return out


# --- command line -----------------------------------------------------------
def _format_text(results: List[Recommendation], config: ClientConfig) -> str:
    lines = []
    for r in results:
        lines.append(f"user {r.user_id}: top {len(r.item_ids)} from model "
                     f"'{config.model_name}' version {r.model_version}")
        width = max((len(i) for i in r.item_ids), default=0)
        lines += [f"  {rank:>3}  {item:<{width}}  {score:.4f}"
                  for rank, (item, score) in enumerate(zip(r.item_ids, r.scores), start=1)]
    return "\n".join(lines)


def _format_json(results: List[Recommendation], config: ClientConfig, signature: str) -> str:
    return json.dumps({
        "model": {"name": config.model_name, "signature": signature,
                  "version": results[0].model_version if results else None},
        "results": [{"user_id": r.user_id, "item_ids": list(r.item_ids),
                     "scores": list(r.scores)} for r in results],
    }, indent=2)


def _read_user_ids(args) -> List[str]:
    users = list(args.user_id or [])
    for chunk in args.user_ids or []:
        users += [u for u in chunk.split(",") if u]
    if args.user_ids_file:
        try:
            f = sys.stdin if args.user_ids_file == "-" else open(args.user_ids_file)
            with f:
                users += [line.strip() for line in f if line.strip()]
        except OSError as e:
            raise ServingError(f"cannot read {args.user_ids_file}: {e.strerror}",
                               EXIT_BAD_INPUT) from e
    return users


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m serving.client",
        description="Top-k items for users from a TensorFlow Serving endpoint (gRPC).",
        epilog="exit codes: 0 ok, 2 bad input, 3 server unreachable or too slow, "
               "4 model/version/signature not found, 5 request rejected, 1 other")
    p.add_argument("--server", required=True, help="HOST:PORT of the gRPC endpoint")
    p.add_argument("--model-name", default="recommender")
    p.add_argument("--user-id", action="append", help="a user ID (repeat for a batch)")
    p.add_argument("--user-ids", action="append", help="comma-separated user IDs")
    p.add_argument("--user-ids-file", help="file with one user ID per line ('-' = stdin)")
    p.add_argument("--k", type=int, default=10, help="items per user (default 10)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--exclude", action="append", default=[], metavar="ITEM_ID",
                   help="leave this item out (uses the recommend_excluding signature)")
    p.add_argument("--history", metavar="ID,ID,...",
                   help="items the user interacted with since the model was exported, "
                        "oldest first (a new user's whole history); they are added to the "
                        "stored history and left out (recommend_from_history)")
    p.add_argument("--model-version", type=int, help="ask this version instead of the newest")
    p.add_argument("--batch-size", type=int, default=256, help="users per Predict call")
    p.add_argument("--timeout", type=float, default=5.0, help="deadline per call, seconds")
    p.add_argument("--retries", type=int, default=3, help="retries on UNAVAILABLE")
    p.add_argument("--tls", action="store_true", help="use TLS")
    p.add_argument("--ca-cert", help="PEM file of the CA that signed the server (implies --tls)")
    p.add_argument("--server-name-override", help="name to check the server certificate against")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    history = [x.strip() for x in (args.history or "").split(",") if x.strip()]
    signature = RECOMMEND_FROM_HISTORY if history else \
        RECOMMEND_EXCLUDING if args.exclude else SERVING_DEFAULT
    try:
        if history and args.exclude:
            raise ServingError("give --history or --exclude, not both", EXIT_BAD_INPUT)
        users = _read_user_ids(args)
        if not users:
            raise ServingError("give at least one --user-id (or --user-ids/--user-ids-file)",
                               EXIT_BAD_INPUT)
        if args.k < 1:
            raise ServingError(f"--k must be >= 1, got {args.k}", EXIT_BAD_INPUT)
        if args.batch_size < 1:
            raise ServingError(f"--batch-size must be >= 1, got {args.batch_size}",
                               EXIT_BAD_INPUT)
        try:
            config = ClientConfig(server=args.server, model_name=args.model_name,
                                  timeout=args.timeout, retries=args.retries,
                                  tls=args.tls or bool(args.ca_cert), ca_cert=args.ca_cert,
                                  server_name_override=args.server_name_override)
        except ValueError as e:
            raise ServingError(str(e), EXIT_BAD_INPUT) from None
        results: List[Recommendation] = []
        with RecommenderClient(config) as client:
            for lo in range(0, len(users), args.batch_size):
                batch = users[lo:lo + args.batch_size]
                exclude = [args.exclude] * len(batch) if args.exclude else None
                results += client.recommend(
                    batch, k=args.k, exclude_item_ids=exclude, version=args.model_version,
                    history_item_ids=[history] * len(batch) if history else None)
    except ServingError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    print(_format_json(results, config, signature) if args.json else _format_text(results, config))
    short = [r for r in results if len(r.item_ids) < args.k]
    if short:
        print(f"note: the model returns {len(short[0].item_ids)} items per user, "
              f"fewer than --k {args.k}", file=sys.stderr)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
