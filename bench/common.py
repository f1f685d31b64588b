"""Shared helpers of the benchmark scripts: machine facts, timed stages, JSON output."""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import platform
import resource
import time
from typing import Dict, Iterator, List, Optional

import psutil

from runner.progress import StageMonitor


def machine() -> dict:
    """What a figure depends on: cores, memory, and the load when it was measured."""
    load = os.getloadavg()
    return {"cpus": os.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "load_average_1_5_15": [round(x, 2) for x in load], "python": platform.python_version(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


@dataclasses.dataclass
class StageResult:
    name: str
    seconds: float
    peak_mb: float  # sampled RSS high-water mark of this process plus its children
    load_before: Optional[float]  # 1-minute load average at the start
    extra: dict = dataclasses.field(default_factory=dict)


class StageTimer:
    """Times named stages and records the peak memory of each with a :class:`StageMonitor`."""

    def __init__(self, heartbeat: float = 30.0) -> None:
        self.monitor = StageMonitor(heartbeat=heartbeat).start()
        self.results: List[StageResult] = []

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[dict]:
        extra: dict = {}
        load = os.getloadavg()[0]
        print(f"[bench] {name}: start (load {load:.2f})", flush=True)
        self.monitor.begin_stage(name)
        start = time.time()
        try:
            yield extra
        finally:
            seconds = time.time() - start
            peak = self.monitor.end_stage() or 0.0
            self.results.append(StageResult(name, round(seconds, 1), peak, round(load, 2), extra))
            print(f"[bench] {name}: {seconds:.1f}s, peak memory {peak:,.0f} MB", flush=True)

    def close(self) -> None:
        self.monitor.stop()

    def as_dict(self) -> Dict[str, dict]:
        return {r.name: {"seconds": r.seconds, "peak_mb": r.peak_mb,
                         "load_before": r.load_before, **r.extra} for r in self.results}


def self_max_rss_mb() -> float:
    """``ru_maxrss`` of this process (kernel high-water mark, KB on Linux)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def process_memory_mb(pid: int) -> Dict[str, float]:
    """``{"rss_mb", "peak_rss_mb"}`` of a running process (``VmRSS`` and ``VmHWM`` of
    ``/proc/<pid>/status``, Linux only)."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out["rss_mb" if key == "VmRSS" else "peak_rss_mb"] = \
                    round(int(value.split()[0]) / 1024, 1)
    return out


def write_json(path: str, payload: dict) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=2, sort_keys=False)
    os.replace(tmp, path)
    return path


def table(rows: List[List[object]], header: List[str]) -> str:
    """A plain text table, right-aligned numbers."""
    cells = [[str(c) for c in header]] + [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in
                       enumerate(zip(r, widths))) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:,.1f}" if abs(v) >= 10 else f"{v:.4f}" if abs(v) < 1 else f"{v:.2f}"
    if isinstance(v, int):
        return f"{v:,}"
    return "" if v is None else str(v)


def optional_int(text: Optional[str]) -> Optional[int]:
    return None if text in (None, "") else int(text)
