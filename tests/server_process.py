"""Test harness: runs ``python -m serving.server`` in a subprocess (the serving tests and
``bench/serving_latency.py``)."""
from __future__ import annotations

import os
import pathlib
import re
import signal
import subprocess
import sys
import threading
import time
from typing import List, Optional, Sequence

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
_SERVING_LINE = re.compile(r"\[serving\] serving model '.*' .* on port (\d+)")


class ServerProcess:
    """A local server on a free port; ``lines`` collects everything it prints."""

    def __init__(self, base_path: str, extra_args: Sequence[str] = (),
                 poll_seconds: float = 0.2, timeout: float = 300.0) -> None:
        self.lines: List[str] = []
        self.port: Optional[int] = None
        self._ready = threading.Event()
        cmd = [sys.executable, "-m", "serving.server", "--model-base-path", base_path,
               "--port", "0", "--poll-seconds", str(poll_seconds), *extra_args]
        self.proc = subprocess.Popen(cmd, cwd=str(REPO_ROOT), stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        threading.Thread(target=self._drain, daemon=True).start()
        if not self._ready.wait(timeout) or self.port is None:
            self.proc.kill()
            raise RuntimeError("server did not start:\n" + "".join(self.lines[-40:]))

    def _drain(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)
            match = _SERVING_LINE.search(line)
            if match:
                self.port = int(match.group(1))
                self._ready.set()
        self._ready.set()  # exited (before serving, if port is still None)

    @property
    def address(self) -> str:
        return f"localhost:{self.port}"

    def output(self) -> str:
        return "".join(self.lines)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, as Kubernetes sends it; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise


def wait_for(condition, timeout: float = 60.0, every: float = 0.1):
    """Polls ``condition()`` until it is truthy; returns its value or raises TimeoutError."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError(f"condition not met within {timeout} s")
