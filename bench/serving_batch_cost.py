"""What one ``serving_default`` call costs for B users: the number batching trades on.

    python bench/serving_batch_cost.py --synthetic-items 1000000 \
        --output bench/results/serving_batch_cost_1m_int8.json

Calls the signature in this process (no server) with B = 1, 2, 4, ..., 32 users for
``--seconds`` each and reports the median call time, time per user and users per
second. If a call for 16 users costs about what a call for one does, batching 16
concurrent requests multiplies throughput by up to 16; if the cost grows with B,
batching saves only the per-call overhead. Same models as ``serving_latency.py``.
"""
from __future__ import annotations

import project_env  # noqa: F401  (before TensorFlow)

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from bench.serving_latency import build_synthetic, user_ids_of  # noqa: E402


def time_batches(function, users, sizes, seconds: float):
    """``{B: {"calls", "median_ms", "p90_ms", "ms_per_user", "users_per_s"}}``."""
    out = {}
    for b in sizes:
        times, i = [], 0
        stop_at = time.monotonic() + seconds
        while time.monotonic() < stop_at or len(times) < 3:
            batch = tf.constant([users[(i + j) % len(users)] for j in range(b)])
            i += b
            t0 = time.perf_counter()
            result = function(user_id=batch)
            result["item_ids"].numpy(), result["scores"].numpy()
            times.append(time.perf_counter() - t0)
        ms = np.asarray(times) * 1000
        median = float(np.median(ms))
        out[str(b)] = {"calls": len(ms), "median_ms": median,
                       "p90_ms": float(np.percentile(ms, 90)),
                       "ms_per_user": median / b, "users_per_s": 1000 * b / median}
        print(f"[bench] B={b:<3} median {median:8.2f} ms  p90 {out[str(b)]['p90_ms']:8.2f} ms"
              f"  {median / b:7.3f} ms/user  {1000 * b / median:8.1f} users/s "
              f"({len(ms)} calls)", flush=True)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--synthetic-items", type=int, required=True)
    p.add_argument("--index", choices=["int8", "float"], default="int8")
    p.add_argument("--work-dir", default=os.path.join(tempfile.gettempdir(), "serving_bench"))
    p.add_argument("--sizes", default="1,2,4,8,16,32")
    p.add_argument("--seconds", type=float, default=5.0, help="per batch size")
    p.add_argument("--output")
    a = p.parse_args(argv)
    model_dir = build_synthetic(
        a.synthetic_items,
        os.path.join(a.work_dir, f"synthetic-{a.synthetic_items}-{a.index}"), a.index)
    function = tf.saved_model.load(model_dir).signatures["serving_default"]
    users = user_ids_of(model_dir, 5000)
    time_batches(function, users, [1], 1.0)  # warm-up: traces, the int8 cache
    load_start = os.getloadavg()
    results = {"model": f"synthetic {a.synthetic_items:,} items, {a.index} index",
               "cpus": os.cpu_count(), "seconds_per_size": a.seconds,
               "batches": time_batches(function, users,
                                       [int(s) for s in a.sizes.split(",")], a.seconds),
               "loadavg_start": load_start, "loadavg_end": os.getloadavg()}
    if a.output:
        with open(a.output, "w") as f:
            json.dump(results, f, indent=2)
        print(f"[bench] wrote {a.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
