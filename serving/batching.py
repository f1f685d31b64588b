"""Request batching with TensorFlow Serving's semantics (``--enable_batching``).

Modelled on TF Serving's ``SharedBatchScheduler`` (tensorflow/core/kernels/batching_util)
and ``BatchingSession`` (tensorflow_serving/batching/batching_session.cc):

* One queue per loaded version, signature and set of outputs; tasks of different
  queues are never merged, so a batch never mixes versions.
* A queue is a list of batches; the last one is open. A request joins the open batch
  if it fits in ``max_batch_size`` rows, otherwise that batch is closed and a new one
  opened. A request of more than ``max_batch_size`` rows is ``INVALID_ARGUMENT``
  ("Task size 40 is larger than maximum input batch size 32"); when a new batch
  would exceed ``max_enqueued_batches`` the request is ``UNAVAILABLE`` at once.
* ``num_batch_threads`` threads, shared by all queues, take a closed batch, or the
  open one once it is full, once ``batch_timeout_micros`` has passed since its first
  request, or once its queue is closed (the version was unloaded).
* A batch's inputs are concatenated along dimension 0. Inputs whose other dimensions
  differ are padded to the largest with the tensor's *first element* when
  ``pad_variable_length_inputs`` is on (``batching_util.h``; the project's client
  leads every history row with ``""`` for this reason); otherwise the whole batch
  fails with ``FAILED_PRECONDITION``, as in TF Serving. With ``allowed_batch_sizes``
  the batch is padded up to the next allowed size by repeating the last request's
  first row. Outputs are split back by rows; an error reaches every request of the
  batch. A batch whose every request has passed its deadline is not run
  (``RESOURCE_EXHAUSTED``, as TF Serving).
"""
from __future__ import annotations

import collections
import dataclasses
import threading
import time
from typing import Callable, Dict, Hashable, List, Mapping, Optional

import grpc
import numpy as np

from serving.batching_config import BatchingOptions
from serving.errors import RequestError, failed_precondition, invalid

Arrays = Dict[str, np.ndarray]
RunFn = Callable[[Arrays], Arrays]


def unavailable(message: str) -> RequestError:
    return RequestError(grpc.StatusCode.UNAVAILABLE, message)


class _Task:
    """One request: its inputs, and where the batch thread leaves its outputs."""

    def __init__(self, inputs: Arrays, size: int, deadline: Optional[float]) -> None:
        self.inputs = inputs
        self.size = size
        self.deadline = deadline  # time.monotonic() value, None = no deadline
        self.outputs: Optional[Arrays] = None
        self.error: Optional[BaseException] = None
        self.done = threading.Event()


class _Batch:
    def __init__(self) -> None:
        self.tasks: List[_Task] = []
        self.size = 0
        self.opened_at = 0.0  # when its first task arrived


class _Queue:
    def __init__(self, owner: object, run: RunFn) -> None:
        self.owner = owner
        self.run = run
        self.batches = collections.deque([_Batch()])
        self.closed = False


@dataclasses.dataclass
class BatchStats:
    """Counters a test or the log can read: how the requests were merged."""

    batches: int = 0
    requests: int = 0
    rows: int = 0
    padding_rows: int = 0
    rejected_full: int = 0
    rejected_too_large: int = 0
    failed_batches: int = 0
    sizes: Dict[int, int] = dataclasses.field(default_factory=dict)  # rows -> batches

    def summary(self) -> str:
        if not self.batches:
            return "no batch run"
        sizes = ", ".join(f"{s}x{n}" for s, n in sorted(self.sizes.items()))
        return (f"{self.requests} requests in {self.batches} batches (mean "
                f"{self.rows / self.batches:.2f} rows, sizes {sizes}); padding rows "
                f"{self.padding_rows}; refused: {self.rejected_full} queue full, "
                f"{self.rejected_too_large} too large; {self.failed_batches} batches failed")


class BatchScheduler:
    """Queues requests per key and runs them in batches on a shared thread pool."""

    def __init__(self, options: BatchingOptions) -> None:
        self.options = options
        # Only queues with requests waiting: an unloaded version is not kept alive.
        self._queues: Dict[Hashable, _Queue] = {}
        self._cv = threading.Condition()
        self._stopping = False
        self._stats = BatchStats()
        self._threads = [threading.Thread(target=self._work, name=f"batch-{i}", daemon=True)
                         for i in range(options.num_batch_threads)]
        for t in self._threads:
            t.start()

    # --- request side -------------------------------------------------------
    def run(self, owner: object, key: Hashable, run: RunFn, inputs: Arrays,
            deadline: Optional[float] = None) -> Arrays:
        """``run(inputs)``'s outputs for this request, run in a batch with the other
        requests of ``(owner, key)``; blocks until its batch has run.

        ``owner`` is the loaded version: its queues are closed when it is unloaded.
        Raises ``RequestError`` with TF Serving's status when refused or failed.
        """
        task = _Task(inputs, _batch_size(inputs), deadline)
        self._schedule((id(owner), key), owner, run, task)
        task.done.wait()
        if isinstance(task.error, RequestError):
            # A copy per request: the batch's requests raise it in their own threads.
            raise RequestError(task.error.code, task.error.message)
        if task.error is not None:
            raise task.error
        return task.outputs

    def _schedule(self, queue_key, owner: object, run: RunFn, task: _Task) -> None:
        o = self.options
        with self._cv:
            if self._stopping:
                raise unavailable("the server is stopping")
            if task.size > o.max_batch_size:
                self._stats.rejected_too_large += 1
                raise invalid(f"Task size {task.size} is larger than maximum input batch "
                              f"size {o.max_batch_size}")
            queue = self._queues.get(queue_key)
            if queue is None:
                queue = self._queues[queue_key] = _Queue(owner, run)
            open_batch = queue.batches[-1]
            if open_batch.size + task.size > o.max_batch_size:
                if len(queue.batches) >= o.max_enqueued_batches:
                    self._stats.rejected_full += 1
                    raise unavailable(
                        f"The batch scheduling queue to which this task was submitted is "
                        f"full; currently {len(queue.batches)} batches enqueued and "
                        f"max_enqueued_batches is {o.max_enqueued_batches}")
                open_batch = _Batch()
                queue.batches.append(open_batch)
            if not open_batch.tasks:
                open_batch.opened_at = time.monotonic()
            open_batch.tasks.append(task)
            open_batch.size += task.size
            self._cv.notify_all()

    def close(self, owner: object) -> None:
        """The version was unloaded: its open batches run at once, nothing is dropped
        (TF Serving's ``CloseAndWaitUntilEmpty``)."""
        with self._cv:
            for queue in self._queues.values():
                if queue.owner is owner:
                    queue.closed = True
            self._cv.notify_all()

    def stats(self) -> BatchStats:
        with self._cv:
            return dataclasses.replace(self._stats, sizes=dict(self._stats.sizes))

    def stop(self) -> None:
        """Runs what is queued, then ends the threads."""
        with self._cv:
            for queue in self._queues.values():
                queue.closed = True
            self._stopping = True
            self._cv.notify_all()
        for t in self._threads:
            t.join()

    # --- batch threads ------------------------------------------------------
    def _work(self) -> None:
        while True:
            with self._cv:
                while True:
                    picked = self._next_batch()
                    if picked is not None:
                        break
                    if self._stopping and not self._queues:
                        return
                    self._cv.wait(self._seconds_to_next_timeout())
            self._process(*picked)

    def _next_batch(self):
        """A schedulable ``(queue, batch)``, the one waiting longest, or None."""
        now = time.monotonic()
        best = None
        for key, queue in list(self._queues.items()):
            first = queue.batches[0]
            ready = len(queue.batches) > 1 or (first.tasks and (
                queue.closed or first.size >= self.options.max_batch_size
                or now >= first.opened_at + self.options.batch_timeout_seconds))
            if ready and (best is None or first.opened_at < best[1].opened_at):
                best = (key, first, queue)
        if best is None:
            return None
        key, batch, queue = best
        queue.batches.popleft()
        if not queue.batches:
            del self._queues[key]  # drained; the next request opens a new one
        return queue, batch

    def _seconds_to_next_timeout(self) -> Optional[float]:
        opens = [q.batches[0].opened_at for q in self._queues.values() if q.batches[0].tasks]
        if not opens:
            return None
        return max(0.0, min(opens) + self.options.batch_timeout_seconds - time.monotonic())

    def _process(self, queue: _Queue, batch: _Batch) -> None:
        tasks = batch.tasks
        padded = self.options.padded_size(batch.size)
        try:
            now = time.monotonic()
            if all(t.deadline is not None and t.deadline <= now for t in tasks):
                raise RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                   "Run() timeout exceeded while waiting in batching queue")
            merged = merge_inputs([t.inputs for t in tasks], padded - batch.size,
                                  self.options.pad_variable_length_inputs)
            outputs = queue.run(merged)
            for name, value in outputs.items():
                if value.ndim == 0 or value.shape[0] != padded:
                    raise failed_precondition(
                        "Batched output tensor's 0th dimension does not equal the sum of "
                        f"the 0th dimension sizes of the input tensors ('{name}': "
                        f"{list(value.shape)} for {padded} rows)")
            start = 0
            for t in tasks:
                t.outputs = {n: v[start:start + t.size] for n, v in outputs.items()}
                start += t.size
            failed = False
        except BaseException as e:  # noqa: BLE001 (every request of the batch gets it)
            for t in tasks:
                t.error = e
            failed = True
        with self._cv:
            s = self._stats
            s.batches += 1
            s.requests += len(tasks)
            s.rows += padded
            s.padding_rows += padded - batch.size
            s.sizes[padded] = s.sizes.get(padded, 0) + 1
            s.failed_batches += failed
        for t in tasks:
            t.done.set()


def _batch_size(inputs: Mapping[str, np.ndarray]) -> int:
    """The request's rows (dimension 0, equal for every input), as ``ComputeTensorBatchSize``."""
    if not inputs:
        raise invalid("Batching Run() must have at least one input tensor")
    sizes = set()
    for value in inputs.values():
        if value.ndim == 0:
            raise invalid("Batching Run() input tensors must have at least one dimension")
        sizes.add(value.shape[0])
    if len(sizes) > 1:
        raise invalid("Batching Run() input tensors must have equal 0th-dimension size")
    return sizes.pop()


def merge_inputs(per_task: List[Arrays], padding_rows: int, pad_variable_length: bool) -> Arrays:
    """The tasks' inputs concatenated along dimension 0 (``MergeInputTensors``).

    ``pad_variable_length``: other dimensions are padded at the end to the largest,
    with each tensor's first element (``AddPadding``); otherwise they must be equal.
    ``padding_rows`` copies of the last task's first row are appended (allowed sizes).
    """
    merged = {}
    for name in per_task[0]:
        arrays = [inputs[name] for inputs in per_task]
        if pad_variable_length:
            if len({a.ndim for a in arrays}) > 1:
                raise failed_precondition(f"Tensors with name '{name}' from different "
                                          "tasks have different ranks")
            widest = np.max([a.shape for a in arrays], axis=0)
            arrays = [_pad_to(a, widest, name) for a in arrays]
        elif any(a.shape[1:] != arrays[0].shape[1:] for a in arrays):
            raise failed_precondition(
                f"Tensors with name '{name}' from different tasks have different shapes and "
                "padding is turned off. Set pad_variable_length_inputs to true, or ensure "
                "that all tensors with the same name have equal dimensions starting with "
                "the first dim.")
        if padding_rows:
            arrays.append(np.repeat(arrays[-1][:1], padding_rows, axis=0))
        merged[name] = np.concatenate(arrays) if len(arrays) > 1 else arrays[0]
    return merged


def _pad_to(array: np.ndarray, widest, name: str) -> np.ndarray:
    pad = [(0, 0)] + [(0, int(w) - s) for w, s in zip(widest[1:], array.shape[1:])]
    if not any(after for _, after in pad):
        return array
    if array.size == 0:
        if array.shape[0] == 0:  # no rows: nothing to pad (TF Serving reshapes it)
            return np.empty((0, *map(int, widest[1:])), dtype=array.dtype)
        raise invalid(f"input '{name}': Got empty tensor in batch of non-empty tensors.")
    return np.pad(array, pad, mode="constant", constant_values=array.flat[0])
