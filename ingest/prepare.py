"""Turns a raw data directory into ExampleGen's input: ``span-N/{train,eval}/*.parquet``.

A prepared span holds every interaction up to that point, split into train and eval,
and a ``span`` column that says in which increment each row arrived. ExampleGen's
input patterns use ``span-{SPAN}`` and so always read the newest span; a scheduled
run picks up new data as soon as a new span folder lands.

Two raw layouts:

* **Increments** (continuous training): the raw directory holds ``span-1/``,
  ``span-2/``, ... each in one of the supported formats and each holding only the
  interactions that are new since the previous span. Prepared span N is spans
  1..N together, split by global time: the eval window is the newest span (the
  ``newest_span`` split), which the next run then trains on.
  The manifest records the fingerprint of every increment; an increment that changed
  after it was prepared is reported (``changed_spans``), and the Trainer, which
  compares the rows themselves, then retrains from scratch.
* **One snapshot**: an unchanged snapshot maps to the span already written (so the
  pipeline's cache hits), a changed one becomes the next span, all of its rows in
  that span.

Spans are written to a temporary folder and renamed into place, so an interrupted
run never leaves a half-written span for ExampleGen to read.

Command line: ``python -m ingest.prepare --data-dir RAW --output-dir PREPARED``.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import re
import shutil
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ingest.readers import detect_format, read_dataset
from ingest.report import DropReport, InputDataError
from ingest.split import STRATEGIES, SplitConfig, temporal_split
from ingest.tables import Dataset, IdCodes, Interactions

SPAN_DIR = re.compile(r"^span-(\d+)$")
SHARD_ROWS = 250_000
PREPARED_VERSION = 3  # bump when the prepared layout or columns change
MANIFEST = "manifest.json"
REPORT = "ingest_report.json"

# Column order and types of the prepared Parquet files (and thus of the tf.Examples).
SCHEMA = pa.schema([
    ("user_id", pa.string()), ("item_id", pa.string()), ("rating", pa.float32()),
    ("timestamp", pa.int64()), ("user_age", pa.int64()), ("user_gender", pa.string()),
    ("user_occupation", pa.string()), ("item_genres", pa.list_(pa.string())),
    ("item_year", pa.int64()), ("span", pa.int64()),
])
CONTINUOUS_SPLIT = SplitConfig("newest_span")  # the default split of increments


@dataclasses.dataclass
class PreparedSpan:
    span: int
    path: str
    reused: bool
    report: dict


def source_fingerprint(source_dir: str, split: SplitConfig) -> str:
    """Hash of the file names, sizes and modification times, plus the split settings."""
    h = hashlib.sha256(json.dumps([PREPARED_VERSION, dataclasses.asdict(split)]).encode())
    for name in sorted(os.listdir(source_dir)):
        p = os.path.join(source_dir, name)
        if os.path.isfile(p):
            st = os.stat(p)
            h.update(f"{name}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()[:20]


def read_manifests(output_dir: str) -> Dict[int, dict]:
    """``{span: manifest}`` of complete spans under ``output_dir``."""
    spans = {}
    if os.path.isdir(output_dir):
        for name in os.listdir(output_dir):
            m = SPAN_DIR.match(name)
            manifest = os.path.join(output_dir, name, MANIFEST)
            if m and os.path.isfile(manifest):
                with open(manifest) as f:
                    spans[int(m.group(1))] = json.load(f)
    return spans


def existing_spans(output_dir: str) -> Dict[int, str]:
    """``{span: fingerprint}`` of complete spans under ``output_dir``."""
    return {s: m["fingerprint"] for s, m in read_manifests(output_dir).items()}


def raw_spans(data_dir: str) -> List[Tuple[int, str]]:
    """``[(span, folder)]`` of the ``span-N`` increments in ``data_dir``, oldest first."""
    return sorted((int(m.group(1)), os.path.join(data_dir, n))
                  for n in os.listdir(data_dir) if (m := SPAN_DIR.match(n))
                  and os.path.isdir(os.path.join(data_dir, n)))


def default_split(data_dir: str, strategy: Optional[str] = None,
                  eval_fraction: float = 0.2) -> SplitConfig:
    """``strategy``, or by default global time for increments and per user otherwise."""
    if strategy is None:
        increments = os.path.isdir(data_dir) and raw_spans(data_dir)
        strategy = CONTINUOUS_SPLIT.strategy if increments else SplitConfig.strategy
    return SplitConfig(strategy, eval_fraction)


def changed_spans(previous: Dict[str, str], current: Dict[str, str]) -> List[int]:
    """Increments recorded in ``previous`` that are now different or gone."""
    return sorted(int(s) for s, fp in previous.items() if current.get(s) != fp)


def prepare(data_dir: str, output_dir: str, split: Optional[SplitConfig] = None,
            max_bad_fraction: float = 0.01, log=print) -> List[PreparedSpan]:
    """Prepares the newest span of ``data_dir``; returns it in a one-item list.

    ``split`` defaults to the newest-span split for increments and to per-user
    otherwise (``ingest/split.py``).
    """
    data_dir = os.path.abspath(data_dir)
    if not os.path.isdir(data_dir):
        raise InputDataError(f"--data-dir {data_dir}: not a directory")
    increments = raw_spans(data_dir)
    manifests = read_manifests(output_dir)
    split = split or default_split(data_dir)
    if increments:
        span = increments[-1][0]
        sources = {str(s): source_fingerprint(src, split) for s, src in increments}
        fp = hashlib.sha256(json.dumps(sorted(sources.items())).encode()).hexdigest()[:20]
        older = [s for s in manifests if s <= span and "sources" in manifests[s]]
        changed = changed_spans(manifests[max(older)]["sources"], sources) if older else []
    else:
        fp = source_fingerprint(data_dir, split)
        same = [s for s, m in manifests.items() if m["fingerprint"] == fp]
        span = max(same) if same else max(manifests, default=0) + 1
        increments, sources, changed = [(span, data_dir)], None, []
    path = os.path.join(output_dir, f"span-{span}")
    if manifests.get(span, {}).get("fingerprint") == fp:
        with open(os.path.join(path, REPORT)) as f:
            report = json.load(f)
        log(f"[ingest] span {span}: unchanged source {data_dir}, reusing {path}")
        return [PreparedSpan(span, path, True, report)]
    if changed:
        log(f"[ingest] WARNING: span(s) {', '.join(map(str, changed))} changed after they "
            f"were prepared; the Trainer will see a changed past and retrain from scratch")
    report = _prepare_span(increments, path, fp, sources, changed, split, max_bad_fraction,
                           log)
    return [PreparedSpan(span, path, False, report)]


def merge_increments(parts: Sequence[Tuple[int, Dataset]]) -> Tuple[Dataset, np.ndarray]:
    """One data set of several increments, and the span of each of its rows.

    Codes are re-assigned over all increments; a later increment's feature row of a
    user or item replaces an earlier one.
    """
    if len(parts) == 1:
        span, ds = parts[0]
        return ds, np.full(len(ds.interactions), span, np.int64)
    users, items = IdCodes(), IdCodes()
    cols: Dict[str, list] = {"user": [], "item": [], "rating": [], "timestamp": [], "span": []}
    user_features, item_features = {}, {}
    for span, ds in parts:
        data = ds.interactions
        u = np.array([users.code(x) for x in data.user_ids], np.int32)
        i = np.array([items.code(x) for x in data.item_ids], np.int32)
        cols["user"].append(u[data.user] if len(u) else data.user)
        cols["item"].append(i[data.item] if len(i) else data.item)
        cols["rating"].append(data.rating)
        cols["timestamp"].append(data.timestamp)
        cols["span"].append(np.full(len(data), span, np.int64))
        user_features.update(ds.users)
        item_features.update(ds.items)
    c = {k: np.concatenate(v) for k, v in cols.items()}
    merged = Interactions(c["user"], c["item"], c["rating"], c["timestamp"], users.ids,
                          items.ids)
    return Dataset(parts[-1][1].name, merged, user_features, item_features), c["span"]


def _prepare_span(increments: Sequence[Tuple[int, str]], path: str, fingerprint: str,
                  sources: Optional[Dict[str, str]], changed: List[int], split: SplitConfig,
                  max_bad_fraction: float, log) -> dict:
    start = time.time()
    drops = DropReport(max_bad_fraction=max_bad_fraction)
    parts, formats = [], []
    for span, source in increments:
        fmt = detect_format(source)
        log(f"[ingest] reading {source} as {fmt}")
        parts.append((span, read_dataset(source, drops, fmt, log=log)))
        formats.append(fmt)
    ds, row_span = merge_increments(parts)
    log(f"[ingest] read {drops.rows_read:,} rows in {time.time() - start:.1f}s; splitting "
        f"and writing Parquet")
    train_rows, eval_rows = temporal_split(ds.interactions, split, row_span)
    # Rows are written in a fixed random order, not by user: training reads them with a
    # bounded shuffle buffer, which cannot mix a file sorted by user.
    rng = np.random.default_rng(0)
    train_rows, eval_rows = rng.permutation(train_rows), rng.permutation(eval_rows)
    tmp = f"{path}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    columns = _feature_columns(ds)
    for name, rows in (("train", train_rows), ("eval", eval_rows)):
        _write_split(os.path.join(tmp, name), ds.interactions, row_span, rows, columns)
    source = increments[-1][1] if sources is None else os.path.dirname(increments[-1][1])
    report = {
        "source": source, "format": formats[-1], "fingerprint": fingerprint,
        "spans": [s for s, _ in increments] if sources is not None else None,
        "changed_spans": changed,
        "input": drops.to_dict(),
        "missing_user_features": _count_missing(ds.interactions.user_ids, ds.users),
        "missing_item_features": _count_missing(ds.interactions.item_ids, ds.items),
        "split": {**dataclasses.asdict(split),
                  **split_stats(ds.interactions, train_rows, eval_rows)},
        "users": len(ds.interactions.user_ids), "items": len(ds.interactions.item_ids),
        "seconds": round(time.time() - start, 2),
    }
    with open(os.path.join(tmp, REPORT), "w") as f:
        json.dump(report, f, indent=2, sort_keys=True)
    with open(os.path.join(tmp, MANIFEST), "w") as f:
        json.dump({"fingerprint": fingerprint, "version": PREPARED_VERSION,
                   **({"sources": sources} if sources is not None else {})}, f)
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)
    s = report["split"]
    log(f"[ingest] {drops.summary()}; train {s['train_rows']} rows, eval {s['eval_rows']} "
        f"rows ({s['eval_users']} users, {s['eval_cold_users']} cold); "
        f"{report['seconds']}s -> {path}")
    for reason, examples in drops.examples.items():
        log(f"[ingest]   dropped ({reason}), e.g. {examples[0]}")
    return report


def _count_missing(ids: Sequence[str], table: dict) -> Optional[int]:
    return None if not table else sum(1 for i in ids if i not in table)


def split_stats(data: Interactions, train_rows: np.ndarray, eval_rows: np.ndarray) -> dict:
    train_users = np.unique(data.user[train_rows])
    eval_users = np.unique(data.user[eval_rows])
    train_items = np.unique(data.item[train_rows])
    eval_items = np.unique(data.item[eval_rows])
    return {
        "train_rows": int(len(train_rows)), "eval_rows": int(len(eval_rows)),
        "train_users": int(len(train_users)), "eval_users": int(len(eval_users)),
        "eval_cold_users": int(len(np.setdiff1d(eval_users, train_users))),
        "eval_cold_items": int(len(np.setdiff1d(eval_items, train_items))),
        "train_max_timestamp": int(data.timestamp[train_rows].max()) if len(train_rows) else None,
        "eval_min_timestamp": int(data.timestamp[eval_rows].min()) if len(eval_rows) else None,
    }


def _feature_columns(ds: Dataset) -> Dict[str, pa.Array]:
    """Per-user and per-item feature arrays, indexed by code, for ``take``."""
    users, items = ds.user_feature_rows(), ds.item_feature_rows()
    return {
        "user_id": pa.array(ds.interactions.user_ids, pa.string()),
        "item_id": pa.array(ds.interactions.item_ids, pa.string()),
        "user_age": pa.array([u.age for u in users], pa.int64()),
        "user_gender": pa.array([u.gender for u in users], pa.string()),
        "user_occupation": pa.array([u.occupation for u in users], pa.string()),
        "item_genres": pa.array([list(i.genres) for i in items], pa.list_(pa.string())),
        "item_year": pa.array([i.year for i in items], pa.int64()),
    }


def _write_split(directory: str, data: Interactions, row_span: np.ndarray, rows: np.ndarray,
                 columns: Dict[str, pa.Array]) -> None:
    os.makedirs(directory, exist_ok=True)
    for shard, lo in enumerate(range(0, max(len(rows), 1), SHARD_ROWS)):
        idx = rows[lo:lo + SHARD_ROWS]
        u = pa.array(data.user[idx])
        i = pa.array(data.item[idx])
        table = pa.table({
            "user_id": columns["user_id"].take(u), "item_id": columns["item_id"].take(i),
            "rating": pa.array(data.rating[idx], pa.float32()),
            "timestamp": pa.array(data.timestamp[idx], pa.int64()),
            "user_age": columns["user_age"].take(u),
            "user_gender": columns["user_gender"].take(u),
            "user_occupation": columns["user_occupation"].take(u),
            "item_genres": columns["item_genres"].take(i),
            "item_year": columns["item_year"].take(i),
            "span": pa.array(row_span[idx], pa.int64()),
        }, schema=SCHEMA)
        pq.write_table(table, os.path.join(directory, f"part-{shard:05d}.parquet"))


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", required=True)
    p.add_argument("--output-dir", required=True)
    p.add_argument("--split", choices=STRATEGIES, default=None,
                   help="default: newest_span for span-N increments, else per_user")
    p.add_argument("--eval-fraction", type=float, default=0.2)
    p.add_argument("--max-bad-fraction", type=float, default=0.01)
    a = p.parse_args(argv)
    prepare(a.data_dir, a.output_dir, default_split(a.data_dir, a.split, a.eval_fraction),
            a.max_bad_fraction)
    return 0


if __name__ == "__main__":
    sys.exit(main())
