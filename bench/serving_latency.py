"""Latency and throughput of the served model over gRPC, against a direct in-process call.

    python bench/serving_latency.py --pipeline-root /tmp/s6/ml100k \
        --output bench/results/serving_latency_ml100k.json
    python bench/serving_latency.py --synthetic-items 1000000 \
        --output bench/results/serving_latency_1m.json

For each concurrency level (default 1, 4, 16) it runs that many client threads, each
with its own channel, sending one-user ``serving_default`` Predicts for ``--seconds``,
and reports p50/p95/p99 latency and requests per second. The same is measured for
the signature called in this process (no gRPC, no serialization), and the server's
overhead is the ratio of the two. The server is ``python -m serving.server`` (the
local stand-in), not ``tensorflow_model_server``.

``--synthetic-items N`` builds a SavedModel with the same ``serving_default``
signature over N random items: the project's int8 candidate index
(``serving.savedmodel.index.Int8Index``, as in the pushed model; ``--index
float`` for the Trainer's ``FloatIndex``), a user table, popularity cold start and
top-100.
"""
from __future__ import annotations

import project_env  # noqa: F401  (before TensorFlow)

import argparse
import json
import os
import shlex
import sys
import tempfile
import threading
import time
from typing import Callable, Dict, List, Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import grpc  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc  # noqa: E402

from tests.server_process import ServerProcess  # noqa: E402

K = 100


# --- the model under test -----------------------------------------------------
class SyntheticCatalogModel(tf.Module):
    """``serving_default(user_id [B]) -> item_ids, scores [B, K]`` over a random catalog."""

    def __init__(self, num_items: int, num_users: int, dim: int, seed: int,
                 index: str = "int8") -> None:
        super().__init__()
        from serving.savedmodel.index import Int8Index
        from serving.savedmodel.index import FloatIndex
        rng = np.random.default_rng(seed)

        def unit(n):
            x = rng.standard_normal((n, dim)).astype(np.float32)
            return x / np.linalg.norm(x, axis=1, keepdims=True)

        self.index = (Int8Index if index == "int8" else FloatIndex)(unit(num_items))
        self.users = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
            tf.constant([f"u{i}" for i in range(num_users)]),
            tf.range(num_users, dtype=tf.int64)), -1)
        self.user_embeddings = tf.Variable(unit(num_users), trainable=False)
        popularity = np.sort(rng.zipf(1.3, num_items).astype(np.float32))[::-1]
        self.popularity = tf.Variable(popularity / popularity.sum(), trainable=False)
        self.num_users = num_users

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="user_id")])
    def serve(self, user_id):
        row = self.users.lookup(user_id)
        known = row >= 0
        query = tf.gather(self.user_embeddings, tf.maximum(row, 0))
        scores = self.index.scores(query)
        cold = tf.broadcast_to(self.popularity[tf.newaxis, :], tf.shape(scores))
        top = tf.math.top_k(tf.where(known[:, tf.newaxis], scores, cold), k=K)
        return {"item_ids": tf.strings.join(["item", tf.strings.as_string(top.indices)]),
                "scores": top.values}


def build_synthetic(num_items: int, work_dir: str, index: str = "int8",
                    num_users: int = 10_000, dim: int = 64, seed: int = 0) -> str:
    """Saves (once) the synthetic model as ``work_dir/1``; returns that directory."""
    from serving.savedmodel.warmup import write_warmup_requests
    path = os.path.join(work_dir, "1")
    if os.path.exists(os.path.join(path, "saved_model.pb")):
        return path
    start = time.perf_counter()
    model = SyntheticCatalogModel(num_items, num_users, dim, seed, index)
    tf.saved_model.save(model, path + ".tmp", signatures={"serving_default": model.serve})
    write_warmup_requests(path + ".tmp", "recommender", ["u0", "u1"])
    os.rename(path + ".tmp", path)
    print(f"[bench] built a {num_items:,}-item synthetic model in "
          f"{time.perf_counter() - start:.1f} s: {path}", flush=True)
    return path


def user_ids_of(model_dir: str, count: int, seed: int = 0) -> List[str]:
    """Known users from the model's user vocabulary (if any) plus 10% unknown ones."""
    assets = os.path.join(model_dir, "assets")
    known: List[str] = []
    if os.path.isdir(assets):
        for name in sorted(os.listdir(assets)):
            if "user_id" in name:
                with open(os.path.join(assets, name)) as f:
                    known = [line.rstrip("\n") for line in f if line.strip()]
                break
    if not known:
        known = [f"u{i}" for i in range(1000)]
    rng = np.random.default_rng(seed)
    users = [known[i] for i in rng.integers(0, len(known), count)]
    for i in range(0, count, 10):
        users[i] = f"unknown-user-{i}"
    return users


# --- measurement --------------------------------------------------------------
def _stats(latencies: Sequence[float], seconds: float, errors: int) -> Dict[str, float]:
    ms = np.asarray(latencies) * 1000.0
    return {"requests": int(len(ms)), "errors": errors,
            "p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
            "p99_ms": float(np.percentile(ms, 99)), "mean_ms": float(ms.mean()),
            "max_ms": float(ms.max()), "throughput_rps": len(ms) / seconds}


def run_level(make_call: Callable[[], Callable[[str], None]], users: Sequence[str],
              concurrency: int, seconds: float, warmup_seconds: float) -> Dict[str, float]:
    """``concurrency`` threads call for ``seconds`` after a warm-up; latency of each call."""
    latencies: List[List[float]] = [[] for _ in range(concurrency)]
    errors = [0] * concurrency
    start_at = time.monotonic() + warmup_seconds
    stop_at = start_at + seconds
    barrier = threading.Barrier(concurrency)

    def worker(slot: int) -> None:
        call = make_call()
        barrier.wait()
        i = slot
        while True:
            now = time.monotonic()
            if now >= stop_at:
                return
            user = users[i % len(users)]
            i += concurrency
            t0 = time.perf_counter()
            try:
                call(user)
            except grpc.RpcError:
                errors[slot] += 1
                continue
            if now >= start_at:
                latencies[slot].append(time.perf_counter() - t0)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return _stats([x for per in latencies for x in per], seconds, sum(errors))


def direct_caller(model_dir: str) -> Callable[[], Callable[[str], None]]:
    """The same signature in this process: tensor in, NumPy out (what a server must do)."""
    function = tf.saved_model.load(model_dir).signatures["serving_default"]

    def make():
        def call(user: str) -> None:
            out = function(user_id=tf.constant([user]))
            out["item_ids"].numpy(), out["scores"].numpy()
        return call
    return make


def grpc_caller(address: str, timeout: float,
                users: Sequence[str]) -> Callable[[], Callable[[str], None]]:
    """Round trips only: requests are built before the clock starts."""
    requests = {}
    for user in set(users):
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "recommender"
        request.model_spec.signature_name = "serving_default"
        request.inputs["user_id"].CopyFrom(tf.make_tensor_proto([user], dtype=tf.string))
        requests[user] = request

    def make():
        stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(address))

        def call(user: str) -> None:
            stub.Predict(requests[user], timeout=timeout)
        return call
    return make


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model-dir", help="a SavedModel version directory")
    src.add_argument("--pipeline-root", help="use run_summary.json's pushed_version_dir")
    src.add_argument("--synthetic-items", type=int, help="build a catalog of N random items")
    p.add_argument("--index", choices=["int8", "float"], default="int8",
                   help="candidate index of the synthetic model: the compressed model's "
                        "Int8Index or the Trainer's FloatIndex")
    p.add_argument("--work-dir", default=os.path.join(tempfile.gettempdir(), "serving_bench"))
    p.add_argument("--concurrency", default="1,4,16")
    p.add_argument("--seconds", type=float, default=10.0, help="measured time per level")
    p.add_argument("--warmup-seconds", type=float, default=1.0)
    p.add_argument("--timeout", type=float, default=30.0, help="deadline per request")
    p.add_argument("--intra-op-parallelism", type=int, default=0,
                   help="TensorFlow threads per op, in the server and the direct calls alike")
    p.add_argument("--inter-op-parallelism", type=int, default=0)
    p.add_argument("--batching-parameters", metavar="FILE",
                   help="serve with --enable_batching and this BatchingParameters file "
                        "(e.g. manifests/base/serving-config/batching_parameters.txt)")
    p.add_argument("--server-args", default="",
                   help="more arguments for python -m serving.server (one string, "
                        "shell-quoted), e.g. \"--max-workers 32\"")
    p.add_argument("--output", help="write the figures as JSON here")
    a = p.parse_args(argv)
    levels = [int(c) for c in a.concurrency.split(",")]
    if a.intra_op_parallelism:
        tf.config.threading.set_intra_op_parallelism_threads(a.intra_op_parallelism)
    if a.inter_op_parallelism:
        tf.config.threading.set_inter_op_parallelism_threads(a.inter_op_parallelism)

    if a.synthetic_items:
        model_dir = build_synthetic(
            a.synthetic_items,
            os.path.join(a.work_dir, f"synthetic-{a.synthetic_items}-{a.index}"), a.index)
        label = f"synthetic {a.synthetic_items:,} items, {a.index} index"
    else:
        model_dir = a.model_dir
        if a.pipeline_root:
            with open(os.path.join(a.pipeline_root, "run_summary.json")) as f:
                model_dir = json.load(f)["pushed_version_dir"]
        label = model_dir
    model_dir = os.path.abspath(model_dir)
    users = user_ids_of(model_dir, 5000)
    load_start = os.getloadavg()

    results = {"model": label, "model_dir": model_dir, "cpus": os.cpu_count(),
               "intra_op_parallelism": a.intra_op_parallelism,
               "inter_op_parallelism": a.inter_op_parallelism,
               "seconds_per_level": a.seconds, "direct": {}, "served": {}, "overhead": {}}
    print(f"[bench] {label}: direct in-process calls", flush=True)
    direct = direct_caller(model_dir)
    for c in levels:
        results["direct"][str(c)] = run_level(direct, users, c, a.seconds, a.warmup_seconds)
        _print("direct", c, results["direct"][str(c)])

    server_args = ["--intra-op-parallelism", str(a.intra_op_parallelism),
                   "--inter-op-parallelism", str(a.inter_op_parallelism)]
    if a.batching_parameters:
        server_args += ["--enable_batching", f"--batching_parameters_file="
                        f"{os.path.abspath(a.batching_parameters)}"]
        with open(a.batching_parameters) as f:
            results["batching_parameters"] = f.read()
    server_args += shlex.split(a.server_args)
    results["server_args"], results["server_batching"] = server_args, {}
    base = os.path.join(a.work_dir, "base-" + str(os.getpid()))
    os.makedirs(base, exist_ok=True)
    link = os.path.join(base, "1")
    if not os.path.exists(link):
        os.symlink(model_dir, link)
    try:
        # A server per level: its batching summary (printed when it stops) is that level's.
        for c in levels:
            server = ServerProcess(base, server_args)
            try:
                print(f"[bench] served by serving.server on {server.address}", flush=True)
                results["served"][str(c)] = run_level(
                    grpc_caller(server.address, a.timeout, users), users, c, a.seconds,
                    a.warmup_seconds)
                _print("served", c, results["served"][str(c)])
            finally:
                server.stop()
            summary = [line for line in server.lines if line.startswith("[serving] batching: ")]
            if summary:
                results["server_batching"][str(c)] = summary[-1].split(": ", 1)[1].strip()
                print(f"[bench] server batching c={c}: {results['server_batching'][str(c)]}")
    finally:
        os.unlink(link)
        os.rmdir(base)
    for c in levels:
        d, s = results["direct"][str(c)], results["served"][str(c)]
        results["overhead"][str(c)] = {
            "p50_ratio": s["p50_ms"] / d["p50_ms"], "p99_ratio": s["p99_ms"] / d["p99_ms"],
            "throughput_ratio": s["throughput_rps"] / d["throughput_rps"]}
    results["loadavg_start"], results["loadavg_end"] = load_start, os.getloadavg()
    _table(results, levels)
    if a.output:
        os.makedirs(os.path.dirname(os.path.abspath(a.output)), exist_ok=True)
        with open(a.output, "w") as f:
            json.dump(results, f, indent=2)
        print(f"[bench] wrote {a.output}")
    return 0


def _print(kind: str, c: int, s: Dict[str, float]) -> None:
    print(f"[bench] {kind:>6} c={c:<3} p50 {s['p50_ms']:7.2f} ms  p95 {s['p95_ms']:7.2f} ms  "
          f"p99 {s['p99_ms']:7.2f} ms  {s['throughput_rps']:8.1f} req/s  "
          f"({s['requests']} requests, {s['errors']} errors)", flush=True)


def _table(r: dict, levels: Sequence[int]) -> None:
    print(f"\n{r['model']} (load average {r['loadavg_start'][0]:.1f} -> "
          f"{r['loadavg_end'][0]:.1f} on {r['cpus']} CPUs)")
    print("| concurrency | p50 ms | p95 ms | p99 ms | req/s | direct p50 ms | direct req/s "
          "| overhead (p50 ratio) |")
    print("|---|---|---|---|---|---|---|---|")
    for c in levels:
        s, d, o = r["served"][str(c)], r["direct"][str(c)], r["overhead"][str(c)]
        print(f"| {c} | {s['p50_ms']:.2f} | {s['p95_ms']:.2f} | {s['p99_ms']:.2f} | "
              f"{s['throughput_rps']:.0f} | {d['p50_ms']:.2f} | {d['throughput_rps']:.0f} | "
              f"{o['p50_ratio']:.2f}x |")


if __name__ == "__main__":
    sys.exit(main())
