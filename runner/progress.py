"""Console progress for local runs: one line as each component starts and ends.

LocalDagRunner reports component boundaries only through absl INFO logs, and
absl INFO also carries thousands of lines of Beam chatter. This filter lets the
boundary lines through (reworded, with the component's wall time) plus warnings.
"""
from __future__ import annotations

import logging
import re
import time
from typing import Dict

from absl import logging as absl_logging

_BOUNDARY = re.compile(r"^Component (\S+) is (running|finished)\.$")
# Warnings that TFX and TF Transform print on every run and that need no action.
_KNOWN_NOISE = ("Tables initialized inside a tf.function",
                "is a no-op, use None instead",
                "ArtifactQuery.property_predicate is not supported")
# Beam relays every worker warning through this logger ("No semi_persistent_directory").
_BEAM_WORKER_LOGGER = "apache_beam.runners.portability.local_job_service"


class ComponentProgressFilter(logging.Filter):
    def __init__(self) -> None:
        super().__init__()
        self.started: Dict[str, float] = {}
        self.seconds: Dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            return not any(n in record.getMessage() for n in _KNOWN_NOISE)
        m = _BOUNDARY.match(record.getMessage())
        if not m:
            return False
        node, event = m.groups()
        if event == "running":
            self.started[node] = time.time()
            print(f"[pipeline] {node}: running", flush=True)
        else:
            self.seconds[node] = round(time.time() - self.started.get(node, time.time()), 1)
            print(f"[pipeline] {node}: done in {self.seconds[node]:.1f}s", flush=True)
        return False


def install() -> ComponentProgressFilter:
    """Turns absl INFO on, filtered to component boundaries; returns the filter."""
    absl_logging.set_verbosity(absl_logging.INFO)
    f = ComponentProgressFilter()
    # A logger-level filter sees every record, whichever handler prints it.
    logging.getLogger("absl").addFilter(f)
    logging.getLogger("tensorflow").addFilter(f)
    logging.getLogger(_BEAM_WORKER_LOGGER).setLevel(logging.ERROR)
    return f
