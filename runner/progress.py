"""Console progress for local runs: one line as each component starts and ends.

LocalDagRunner reports component boundaries only through absl INFO logs, and
absl INFO also carries thousands of lines of Beam and TFX chatter. This filter lets
the boundary lines through (reworded, with the component's wall time and peak
memory), every INFO record that the project's own code logs (the evaluator's report,
where the Pusher wrote the model, the Trainer's catalog line), and warnings. A :class:`StageMonitor` thread samples the memory of this process
and all its children (Beam's worker processes) and prints a heartbeat line while a
component runs, so a run never sits silent for minutes.
"""
from __future__ import annotations

import logging
import os
import re
import threading
import time
from typing import Callable, Dict, Mapping, Optional, Tuple

import psutil
from absl import logging as absl_logging

_BOUNDARY = re.compile(r"^Component (\S+) is (running|finished)\.$")
# Warnings that TFX and TF Transform print on every run and that need no action.
_KNOWN_NOISE = ("Tables initialized inside a tf.function",
                "is a no-op, use None instead",
                "ArtifactQuery.property_predicate is not supported",
                # pipeline.py passes its executors as custom_executor_spec on purpose: a
                # component subclass would rename the components that CONTRACTS.md names.
                "`custom_executor_spec` is deprecated")
# Beam relays every worker warning through this logger ("No semi_persistent_directory").
_BEAM_WORKER_LOGGER = "apache_beam.runners.portability.local_job_service"
MB = 1024 * 1024
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_PROJECT_CODE = tuple(os.path.join(_REPO, d) + os.sep for d in (
    "components", "evaluation", "ingest", "runner", "serving", "trainer", "transform"))


def from_project(record: logging.LogRecord) -> bool:
    """Whether the project's own code logged ``record`` (not TFX, Beam or TF)."""
    return os.path.abspath(record.pathname).startswith(_PROJECT_CODE)


def tree_rss_bytes(process: Optional[psutil.Process] = None) -> int:
    """Resident memory of ``process`` (default: this one) plus all its descendants."""
    process = process or psutil.Process(os.getpid())
    total = 0
    for p in [process] + process.children(recursive=True):
        try:
            total += p.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass  # a Beam worker that exited between listing and reading
    return total


class StageMonitor:
    """Samples the process tree's resident memory (RSS) every ``interval`` seconds.

    ``peak_mb[stage]`` is the highest sum of RSS over this process and its children
    seen while ``stage`` was current: a sampling high-water mark, so a spike shorter
    than ``interval`` can be missed. While a stage runs, a heartbeat line is printed
    every ``heartbeat`` seconds (0: never).
    """

    def __init__(self, interval: float = 0.5, heartbeat: float = 30.0,
                 log: Callable[[str], None] = print) -> None:
        self.interval = interval
        self.heartbeat = heartbeat
        self.log = log
        self.peak_mb: Dict[str, float] = {}
        self._stage: Optional[str] = None
        self._stage_start = 0.0
        self._last_beat = 0.0
        self._detail: Callable[[], str] = lambda: ""
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._process = psutil.Process(os.getpid())

    def start(self) -> "StageMonitor":
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="stage-monitor",
                                            daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> "StageMonitor":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.end_stage()
        self.stop()

    @property
    def current(self) -> Optional[Tuple[str, float]]:
        """``(stage, seconds so far)`` of the open stage, or None."""
        with self._lock:
            return (self._stage, time.time() - self._stage_start) if self._stage else None

    def begin_stage(self, name: str, detail: Optional[Callable[[], str]] = None) -> None:
        with self._lock:
            self._stage = name
            self._stage_start = self._last_beat = time.time()
            self._detail = detail or (lambda: "")
        self._sample()

    def end_stage(self) -> Optional[float]:
        """Ends the current stage; returns its peak memory in MB."""
        self._sample()
        with self._lock:
            name, self._stage = self._stage, None
        return self.peak_mb.get(name) if name else None

    def _sample(self) -> float:
        rss_mb = tree_rss_bytes(self._process) / MB
        with self._lock:
            if self._stage is not None:
                self.peak_mb[self._stage] = round(max(self.peak_mb.get(self._stage, 0.0),
                                                      rss_mb), 1)
        return rss_mb

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                rss_mb = self._sample()
            except psutil.Error:
                continue
            with self._lock:
                stage, now = self._stage, time.time()
                due = stage is not None and self.heartbeat and \
                    now - self._last_beat >= self.heartbeat
                if due:
                    self._last_beat = now
                    detail = self._detail()
            if due:
                extra = f", {detail}" if detail else ""
                self.log(f"[progress] {stage}: still running, {now - self._stage_start:.0f}s, "
                         f"memory {rss_mb:.0f} MB{extra}")


class ComponentProgressFilter(logging.Filter):
    """Prints component boundaries; ``seconds`` and ``peak_mb`` per component.

    ``rows`` optionally maps a component to the number of rows it processes, which
    is then printed with its rows per second.
    """

    def __init__(self, monitor: Optional[StageMonitor] = None,
                 rows: Optional[Mapping[str, int]] = None) -> None:
        super().__init__()
        self.started: Dict[str, float] = {}
        self.seconds: Dict[str, float] = {}
        self.monitor = monitor
        self.rows = dict(rows or {})
        self.previous_verbosity = absl_logging.WARNING

    @property
    def peak_mb(self) -> Dict[str, float]:
        return {k: v for k, v in (self.monitor.peak_mb if self.monitor else {}).items()
                if k in self.seconds}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            return not any(n in record.getMessage() for n in _KNOWN_NOISE)
        m = _BOUNDARY.match(record.getMessage())
        if not m:
            return from_project(record)
        node, event = m.groups()
        rows = self.rows.get(node)
        if event == "running":
            self.started[node] = time.time()
            print(f"[pipeline] {node}: running" + (f" ({rows:,} rows)" if rows else ""),
                  flush=True)
            if self.monitor:
                self.monitor.begin_stage(node)
        else:
            self.seconds[node] = round(time.time() - self.started.get(node, time.time()), 1)
            peak = self.monitor.end_stage() if self.monitor else None
            extra = []
            if rows:
                extra.append(f"{rows:,} rows, {rows / max(self.seconds[node], 0.1):,.0f} rows/s")
            if peak:
                extra.append(f"peak memory {peak:,.0f} MB")
            print(f"[pipeline] {node}: done in {self.seconds[node]:.1f}s"
                  + (f" ({'; '.join(extra)})" if extra else ""), flush=True)
        return False


def install(monitor: Optional[StageMonitor] = None,
            rows: Optional[Mapping[str, int]] = None) -> ComponentProgressFilter:
    """Turns absl INFO on, filtered to component boundaries; returns the filter.

    Call :func:`uninstall` with the result when the run ends, so filters of earlier
    runs in the same process do not print twice.
    """
    f = ComponentProgressFilter(monitor, rows)
    f.previous_verbosity = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.INFO)
    # A logger-level filter sees every record, whichever handler prints it.
    logging.getLogger("absl").addFilter(f)
    logging.getLogger("tensorflow").addFilter(f)
    logging.getLogger(_BEAM_WORKER_LOGGER).setLevel(logging.ERROR)
    return f


def uninstall(f: ComponentProgressFilter) -> None:
    """Removes the filter and restores absl's verbosity (else every later INFO record,
    such as ML Metadata's "MetadataStore with DB connection initialized", is printed)."""
    logging.getLogger("absl").removeFilter(f)
    logging.getLogger("tensorflow").removeFilter(f)
    absl_logging.set_verbosity(getattr(f, "previous_verbosity", absl_logging.WARNING))
