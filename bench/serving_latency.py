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

``--synthetic-items N`` builds (once, under ``--work-dir``) a served model over N
synthetic items with the export's own code (``bench/synthetic_catalog.py``): the
candidate index the export picks by size (``--index auto``: partitioned from
``IndexConfig.partitioned_min_items`` items on, int8 as pushed; ``int8`` or ``float``:
brute force), ``RetrievalModule``'s signatures, 10,000 users with stored histories,
popularity cold start, top-100. ``--embeddings clustered`` (default), ``weak`` or
``uniform``: how clustered the item vectors are (``bench/synthetic_catalog.py``).

Besides latency it reports the index's recall@100 against ``recommend_exact`` (on
``--recall-users`` known users in this process, and the export's own figure from
``assets.extra/candidate_index.json``) and the resident memory (VmRSS, VmHWM) of the
server process after loading and after the run, and of this process.
"""
from __future__ import annotations

import project_env  # noqa: F401  (before TensorFlow)

import argparse
import json
import multiprocessing
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

from bench.common import process_memory_mb  # noqa: E402
from bench.synthetic_catalog import build_synthetic  # noqa: E402
from serving.savedmodel import ann_recall  # noqa: E402
from serving.savedmodel.export import read_index_report  # noqa: E402
from tests.server_process import ServerProcess  # noqa: E402

K = 100


# --- the model under test -----------------------------------------------------
def build_in_child(num_items: int, work_dir: str, **settings) -> str:
    """``synthetic_catalog.build_synthetic`` in a child process, so that the build's
    memory (the float catalog, k-means) is returned before anything is measured."""
    ctx = multiprocessing.get_context("spawn")
    child = ctx.Process(target=build_synthetic, args=(num_items, work_dir), kwargs=settings)
    child.start()
    child.join()
    if child.exitcode != 0:
        raise RuntimeError(f"building the synthetic catalog failed (exit {child.exitcode})")
    return os.path.join(work_dir, "1")


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


def direct_caller(model) -> Callable[[], Callable[[str], None]]:
    """The same signature in this process: tensor in, NumPy out (what a server must do)."""
    function = model.signatures["serving_default"]

    def make():
        def call(user: str) -> None:
            out = function(user_id=tf.constant([user]))
            out["item_ids"].numpy(), out["scores"].numpy()
        return call
    return make


def recall_against_exact(model, users: Sequence[str], batch_size: int = 32) -> dict:
    """Mean share of ``recommend_exact``'s top K that ``serving_default`` returns, over
    ``users``, and the time of each signature per batch."""
    if "recommend_exact" not in model.signatures:
        return {}
    shares, seconds = [], {"serving_default": [], "recommend_exact": []}
    for lo in range(0, len(users), batch_size):
        batch = tf.constant(list(users[lo:lo + batch_size]))
        answers = {}
        for name in seconds:
            t0 = time.perf_counter()
            answers[name] = model.signatures[name](user_id=batch)["item_ids"].numpy()
            seconds[name].append(time.perf_counter() - t0)
        shares += ann_recall.shares(answers["serving_default"], answers["recommend_exact"])
    return {f"recall@{K}": float(np.mean(shares)), "users": len(shares),
            "batch_size": batch_size,
            **{f"{name}_ms_per_batch": 1000 * float(np.median(v)) for name, v in seconds.items()}}


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
    p.add_argument("--index", choices=["auto", "int8", "float"], default="auto",
                   help="candidate index of the synthetic model: the export's choice by "
                        "size (int8), or brute force over int8 or float rows")
    p.add_argument("--embeddings", choices=["clustered", "weak", "uniform"],
                   default="clustered", help="synthetic item vectors (synthetic_catalog.py)")
    p.add_argument("--lists", type=int, default=0, help="partitioned index lists (0: auto)")
    p.add_argument("--probes", type=int, default=128,
                   help="lists scored per query when --target-recall is 0")
    p.add_argument("--target-recall", type=float, default=0.95,
                   help="the export probes the fewest lists reaching this recall@100 "
                        "against brute force (0: exactly --probes)")
    p.add_argument("--recall-users", type=int, default=1000)
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
        name = f"synthetic-{a.synthetic_items}-{a.embeddings}-{a.index}-l{a.lists}-p{a.probes}-r{a.target_recall}"
        model_dir = build_in_child(a.synthetic_items, os.path.join(a.work_dir, name),
                                   index=a.index, kind=a.embeddings, lists=a.lists,
                                   probes=a.probes, target_recall=a.target_recall)
        label = f"synthetic {a.synthetic_items:,} {a.embeddings} items, {a.index} index"
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
    results["index"] = read_index_report(model_dir)
    synthetic = os.path.join(model_dir, "assets.extra", "synthetic.json")
    if os.path.exists(synthetic):
        with open(synthetic) as f:
            results["synthetic"] = json.load(f)
    model = tf.saved_model.load(model_dir)
    known = [u for u in users if not u.startswith("unknown-user-")]
    print(f"[bench] {label}: recall against recommend_exact on {a.recall_users} users",
          flush=True)
    results["recall"] = recall_against_exact(model, known[:a.recall_users])
    print(f"[bench] {json.dumps(results['recall'])}", flush=True)
    results["memory"] = {"bench_process_after_load": process_memory_mb(os.getpid())}
    print(f"[bench] {label}: direct in-process calls", flush=True)
    direct = direct_caller(model)
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
                if c == levels[0]:
                    results["memory"]["server_after_load"] = process_memory_mb(server.proc.pid)
                results["served"][str(c)] = run_level(
                    grpc_caller(server.address, a.timeout, users), users, c, a.seconds,
                    a.warmup_seconds)
                _print("served", c, results["served"][str(c)])
                results["memory"][f"server_after_c{c}"] = process_memory_mb(server.proc.pid)
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
    index = r.get("index") or {}
    if index:
        print(f"index: {index['kind']}, {index['storage']}" + (
            f", {index['lists']} lists of {index['list_size']}, {index['probes']} probed; "
            f"recall@{index['k']} vs exact at export {index['recall_vs_exact']:.4f}"
            if index["kind"] == "partitioned" else ""))
    if r.get("recall"):
        print(f"recall@{K} vs recommend_exact here: {r['recall'][f'recall@{K}']:.4f} "
              f"({r['recall']['users']} users)")
    for where, m in r.get("memory", {}).items():
        print(f"memory {where}: VmRSS {m['rss_mb']:.0f} MB, VmHWM {m['peak_rss_mb']:.0f} MB")
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
