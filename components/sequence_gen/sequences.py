"""Per-user ordered histories, built with Beam (the SequenceGen component's logic).

Each interaction becomes a small ``(timestamp, split, item index, span)`` event keyed
by raw user ID (items outside the train vocabulary are dropped and counted: the model can
neither embed nor recommend them); one ``GroupByKey`` over both splits gives each
user's events, and sorted (train before eval at a tie, as the split put them) they
yield:

* **training windows** from the train split only: ``[N + 1]`` item indices, front
  padded with ``PAD``, and their timestamps (the query's "as of when"). Position ``t`` predicts item ``t + 1`` from the items up to
  ``t``; windows are cut from the newest end with one item of overlap, so every train
  interaction after a user's first is a target exactly once and the first is the
  target of the empty history. Each window also carries the newest span and timestamp
  among its targets and their number, so that a warm-started Trainer can pick the
  windows that hold interactions its base model never trained on.
* **eval windows**: the newest ``N + 1`` items of train and eval together, for users
  with eval interactions (validation loss only).
* **history rows** keyed by raw user ID: the newest ``N`` item indices of train and
  eval (oldest first), the distinct ones, newest first, up to ``exclusion_cap``, and
  the newest one's timestamp.
  These become the served model's history and exclusion tables
  (``serving/savedmodel/history.py``).
* **span digests**: per span, the row count, an order-free digest of the rows and
  their time range, and the newest train timestamp (``spans.json``). A warm start
  compares them with its base model's to detect a changed past.
"""
from __future__ import annotations

import hashlib
import json
from typing import Dict, Iterable, Iterator, List, Sequence, Tuple

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
import pyarrow as pa
from tfx_bsl.coders import example_coder

from transform.features import (ENTITY_COUNT as COUNT, HISTORY_EXCLUDE, HISTORY_ITEMS,
                                HISTORY_LAST_TIME,
                                HISTORY_USER, PAD_INDEX as PAD, SPANS_FILE, WINDOW_ITEMS, WINDOW_SPAN,
                                WINDOW_TARGETS, WINDOW_TIME, WINDOW_TIMES, WINDOW_USER)

TRAIN, EVAL = 0, 1
NO_SPAN = 0  # rows of prepared data from before the span column

# (timestamp, split, item index, span)
Event = Tuple[int, int, int, int]


def ordered(events: Iterable[Event]) -> List[Event]:
    return sorted(events)


def windows(items: Sequence[int], length: int) -> Iterator[List[int]]:
    """Windows of ``length`` (= N + 1) over ``[PAD] + items``, newest first, front padded.

    Consecutive windows share one item, so every item is a target exactly once, the
    first one with the empty history: ``windows([1, ..., 7], 4)`` gives
    ``[4, 5, 6, 7]``, ``[1, 2, 3, 4]`` and ``[PAD, PAD, PAD, 1]``.
    """
    if length < 2:
        raise ValueError(f"a window needs at least 2 items, got length {length}")
    seq = [PAD] + list(items)
    end = len(seq)
    while end > 1:
        start = max(0, end - length)
        yield _front_pad(seq[start:end], length)
        end = start + 1


def span_windows(events: Sequence[Event], length: int) -> Iterator[Dict[str, List[int]]]:
    """:func:`windows` of the events' items and their times, each with its targets'
    newest span and time."""
    for window in windows(range(len(events)), length):
        targets = [events[i] for i in window[1:] if i != PAD]
        yield {WINDOW_ITEMS: [events[i][2] if i != PAD else PAD for i in window],
               WINDOW_TIMES: [events[i][0] if i != PAD else 0 for i in window],
               WINDOW_SPAN: [max(e[3] for e in targets)],
               WINDOW_TIME: [max(e[0] for e in targets)], WINDOW_TARGETS: [len(targets)]}


def row_digest(user: bytes, item: bytes, timestamp: int, rating: float) -> int:
    """A 64-bit hash of one interaction, the same in every process (unlike ``hash``)."""
    h = hashlib.blake2b(b"%s\x00%s\x00%d\x00%r" % (user, item, timestamp, rating),
                        digest_size=8)
    return int.from_bytes(h.digest(), "little")


class SpanDigest(beam.CombineFn):
    """Per span: ``[rows, digest sum mod 2^64, first time, last time, last train time]``."""

    def create_accumulator(self):
        return [0, 0, None, None, None]

    def add_input(self, acc, part):
        return self.merge_accumulators([acc, part])

    def merge_accumulators(self, accs):
        out = self.create_accumulator()
        for a in accs:
            out[0] += a[0]
            out[1] = (out[1] + a[1]) % (1 << 64)
            for i, pick in ((2, min), (3, max), (4, max)):
                values = [v for v in (out[i], a[i]) if v is not None]
                out[i] = pick(values) if values else None
        return out

    def extract_output(self, acc):
        return acc


def spans_summary(per_span: Iterable[Tuple[int, list]]) -> dict:
    """``spans.json``: each span's rows, digest and time range; the newest train time."""
    spans = {str(s): {"rows": a[0], "digest": f"{a[1]:016x}", "first_time": a[2],
                      "last_time": a[3]} for s, a in sorted(per_span)}
    train_times = [a[4] for _, a in per_span if a[4] is not None]
    return {"spans": spans, "newest_span": max((int(s) for s in spans), default=NO_SPAN),
            "train_last_time": max(train_times) if train_times else None}


def write_json(value: dict, path: str) -> None:
    with FileSystems.create(path) as f:
        f.write(json.dumps(value, indent=2, sort_keys=True).encode())


def _front_pad(window: List[int], length: int) -> List[int]:
    """Left-pads (or trims from the left) to ``length``."""
    if len(window) > length:
        return window[-length:]
    return [PAD] * (length - len(window)) + window


def history_row(events: Sequence[Event], max_history: int,
                exclusion_cap: int) -> Tuple[List[int], List[int]]:
    """``(newest max_history items oldest first, distinct items newest first)``."""
    items = [e[2] for e in events]
    seen, exclude = set(), []
    for item in reversed(items):
        if item not in seen:
            seen.add(item)
            exclude.append(item)
            if len(exclude) >= exclusion_cap:
                break
    return items[-max_history:], exclude


def decode_columns(batch: List[bytes], columns: Sequence[str],
                   optional: Sequence[str] = ()) -> Dict[str, list]:
    """Serialized tf.Examples -> ``{column: [row value]}``; one-value features unwrapped.
    ``optional`` columns the examples lack are left out."""
    rb = example_coder.ExamplesToRecordBatchDecoder().DecodeBatch(batch)
    out = {}
    for name in list(columns) + list(optional):
        idx = rb.schema.get_field_index(name)
        if idx < 0:
            if name in optional:
                continue
            raise ValueError(f"examples lack feature {name!r}; they have {rb.schema.names}")
        out[name] = rb.column(idx).to_pylist()
    return out


def encode_rows(rows: List[Dict[str, list]], types: Dict[str, pa.DataType]) -> List[bytes]:
    """Rows of ``{feature: list of values}`` -> serialized tf.Examples (C++ encoder)."""
    arrays = [pa.array([r[name] for r in rows], type=pa.list_(t)) for name, t in types.items()]
    batch = pa.RecordBatch.from_arrays(arrays, list(types))
    return list(example_coder.RecordBatchToExamples(batch))


def read_vocabulary(path: str) -> Dict[bytes, int]:
    """Token -> line number of a Transform vocabulary file, through Beam's file systems
    (no TF runtime needed in the Beam workers)."""
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        return {line.rstrip(b"\n"): i for i, line in enumerate(f)}


class _Events(beam.DoFn):
    """Decoded raw examples -> ``(user ID, (timestamp, split, item index, span))``, and
    per batch a ``digest`` output ``(span, SpanDigest accumulator)`` over every row."""

    def __init__(self, split: int, item_vocab_file: str) -> None:
        self._split, self._file = split, item_vocab_file
        self._missing = beam.metrics.Metrics.counter("SequenceGen", "rows_missing_fields")
        self._unknown = beam.metrics.Metrics.counter("SequenceGen",
                                                     "rows_item_outside_vocabulary")

    def setup(self) -> None:
        self._items = read_vocabulary(self._file)

    def process(self, batch: List[bytes]):
        cols = decode_columns(batch, ("user_id", "item_id", "timestamp"), ("rating", "span"))
        n = len(cols["user_id"])
        spans, ratings = cols.get("span", [None] * n), cols.get("rating", [None] * n)
        digests: Dict[int, list] = {}
        for user, item, ts, span, rating in zip(cols["user_id"], cols["item_id"],
                                                 cols["timestamp"], spans, ratings):
            if not user or not item or not ts:
                self._missing.inc()
                continue
            span, ts = int(span[0]) if span else NO_SPAN, int(ts[0])
            d = digests.setdefault(span, [0, 0, ts, ts, None])
            d[0] += 1
            d[1] = (d[1] + row_digest(user[0], item[0], ts,
                                      float(rating[0]) if rating else 0.0)) % (1 << 64)
            d[2], d[3] = min(d[2], ts), max(d[3], ts)
            if self._split == TRAIN:
                d[4] = ts if d[4] is None else max(d[4], ts)
            index = self._items.get(item[0], PAD)
            if index == PAD:
                self._unknown.inc()
                continue
            yield user[0], (ts, self._split, index, span)
        for span, d in digests.items():
            yield beam.pvalue.TaggedOutput("digest", (span, d))


class _UserSequences(beam.DoFn):
    """One user's events -> tagged training windows, an eval window and a history row."""

    def __init__(self, user_vocab_file: str, max_history: int, exclusion_cap: int) -> None:
        self._file = user_vocab_file
        self._n, self._cap = max_history, exclusion_cap

    def setup(self) -> None:
        self._users = read_vocabulary(self._file)

    def process(self, element):
        user, events = element
        events = ordered(events)
        user_index = self._users.get(user, PAD)
        train = [e for e in events if e[1] == TRAIN]
        for window in span_windows(train, self._n + 1):
            yield beam.pvalue.TaggedOutput("train", {WINDOW_USER: [user_index], **window})
        if any(e[1] == EVAL for e in events):
            newest = events[-(self._n + 1):]
            yield beam.pvalue.TaggedOutput("eval", {
                WINDOW_USER: [user_index],
                WINDOW_ITEMS: _front_pad([e[2] for e in newest], self._n + 1),
                WINDOW_TIMES: [0] * (self._n + 1 - len(newest)) + [e[0] for e in newest]})
        history, exclude = history_row(events, self._n, self._cap)
        yield beam.pvalue.TaggedOutput("history", {HISTORY_USER: [user],
                                                   HISTORY_ITEMS: history,
                                                   HISTORY_EXCLUDE: exclude,
                                                   HISTORY_LAST_TIME: [events[-1][0]]})


WINDOW_TYPES = {WINDOW_USER: pa.int64(), WINDOW_ITEMS: pa.int64(), WINDOW_TIMES: pa.int64()}
TRAIN_WINDOW_TYPES = {**WINDOW_TYPES, WINDOW_SPAN: pa.int64(), WINDOW_TIME: pa.int64(),
                      WINDOW_TARGETS: pa.int64()}
HISTORY_TYPES = {HISTORY_USER: pa.binary(), HISTORY_ITEMS: pa.int64(),
                 HISTORY_EXCLUDE: pa.int64(), HISTORY_LAST_TIME: pa.int64()}


class _FirstAndCount(beam.CombineFn):
    """Keeps one row of features per key and counts the key's rows."""

    def create_accumulator(self):
        return None, 0

    def add_input(self, acc, row):
        return (acc[0] if acc[0] is not None else row), acc[1] + 1

    def merge_accumulators(self, accs):
        accs = list(accs)
        first = next((a[0] for a in accs if a[0] is not None), None)
        return first, sum(a[1] for a in accs)

    def extract_output(self, acc):
        return acc


class _EntityRows(beam.DoFn):
    """Transformed examples -> ``(index, {feature: values})`` for one entity's features."""

    def __init__(self, key: str, features: Sequence[str]) -> None:
        self._key, self._features = key, tuple(features)

    def process(self, batch: List[bytes]):
        cols = decode_columns(batch, (self._key,) + self._features)
        for i, key in enumerate(cols[self._key]):
            yield int(key[0]), {f: cols[f][i] for f in self._features}


def _entity_row(key: str):
    def to_row(element):
        index, (features, count) = element
        return {key: [index], COUNT: [count], **features}
    return to_row


@beam.ptransform_fn
def ReadExamples(pipeline, pattern: str, batch_size: int = 1000):  # noqa: N802
    """Gzip TFRecords of tf.Examples -> lists of serialized examples."""
    return (pipeline
            | "Read" >> beam.io.ReadFromTFRecord(pattern,
                                                 compression_type=CompressionTypes.GZIP)
            | "Batch" >> beam.BatchElements(min_batch_size=batch_size,
                                            max_batch_size=batch_size))


@beam.ptransform_fn
def WriteExamples(rows, prefix: str, types: Dict[str, pa.DataType]):  # noqa: N802
    return (rows
            | "Batch" >> beam.BatchElements(min_batch_size=500, max_batch_size=500)
            | "Encode" >> beam.FlatMap(encode_rows, types)
            | "Write" >> beam.io.WriteToTFRecord(
                prefix, file_name_suffix=".gz",
                compression_type=CompressionTypes.GZIP))


@beam.ptransform_fn
def BuildUserSequences(pipeline, train_pattern: str, eval_pattern: str,  # noqa: N802
                       item_vocab_file: str, user_vocab_file: str, max_history: int,
                       exclusion_cap: int):
    """Raw train and eval examples -> tagged ``train``, ``eval`` and ``history`` rows, and
    ``spans``: one ``spans.json`` dict."""
    train = (pipeline | "ReadTrain" >> ReadExamples(train_pattern)
             | "TrainEvents" >> beam.ParDo(_Events(TRAIN, item_vocab_file))
             .with_outputs("digest", main="events"))
    evals = (pipeline | "ReadEval" >> ReadExamples(eval_pattern)
             | "EvalEvents" >> beam.ParDo(_Events(EVAL, item_vocab_file))
             .with_outputs("digest", main="events"))
    out = ((train.events, evals.events) | "Flatten" >> beam.Flatten()
           | "GroupByUser" >> beam.GroupByKey()
           | "Sequences" >> beam.ParDo(_UserSequences(
               user_vocab_file, max_history, exclusion_cap)
           ).with_outputs("train", "eval", "history"))
    spans = ((train.digest, evals.digest) | "FlattenDigests" >> beam.Flatten()
             | "DigestPerSpan" >> beam.CombinePerKey(SpanDigest())
             | "AllSpans" >> beam.combiners.ToList()
             | "Summary" >> beam.Map(spans_summary))
    return {"train": out.train, "eval": out.eval, "history": out.history, "spans": spans}


@beam.ptransform_fn
def EntityTable(pipeline, pattern: str, key: str, features: Sequence[str]):  # noqa: N802
    """One row per entity index of transformed examples: its features and row count."""
    return (pipeline | "Read" >> ReadExamples(pattern)
            | "Rows" >> beam.ParDo(_EntityRows(key, features))
            | "PerKey" >> beam.CombinePerKey(_FirstAndCount())
            | "ToRow" >> beam.Map(_entity_row(key)))
