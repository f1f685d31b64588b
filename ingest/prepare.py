"""Turns a raw data directory into ExampleGen's input: ``span-N/{train,eval}/*.parquet``.

One span is one snapshot of all interactions up to that point. ExampleGen's input
patterns use ``span-{SPAN}`` and so always read the newest span; a scheduled run
picks up new data as soon as a new span folder lands. When the raw directory itself
holds ``span-N`` folders, each one is prepared as span N. Otherwise the raw directory
is one snapshot: an unchanged snapshot maps to the span already written (so the
pipeline's cache hits), a changed one becomes the next span.

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
from typing import Dict, List, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ingest.readers import detect_format, read_dataset
from ingest.report import DropReport
from ingest.split import SplitConfig, temporal_split
from ingest.tables import Dataset, Interactions

SPAN_DIR = re.compile(r"^span-(\d+)$")
SHARD_ROWS = 250_000
PREPARED_VERSION = 2  # bump when the prepared layout or columns change
MANIFEST = "manifest.json"
REPORT = "ingest_report.json"

# Column order and types of the prepared Parquet files (and thus of the tf.Examples).
SCHEMA = pa.schema([
    ("user_id", pa.string()), ("item_id", pa.string()), ("rating", pa.float32()),
    ("timestamp", pa.int64()), ("user_age", pa.int64()), ("user_gender", pa.string()),
    ("user_occupation", pa.string()), ("item_genres", pa.list_(pa.string())),
    ("item_year", pa.int64()),
])


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


def existing_spans(output_dir: str) -> Dict[int, str]:
    """``{span: fingerprint}`` of complete spans under ``output_dir``."""
    spans = {}
    if os.path.isdir(output_dir):
        for name in os.listdir(output_dir):
            m = SPAN_DIR.match(name)
            manifest = os.path.join(output_dir, name, MANIFEST)
            if m and os.path.isfile(manifest):
                with open(manifest) as f:
                    spans[int(m.group(1))] = json.load(f)["fingerprint"]
    return spans


def prepare(data_dir: str, output_dir: str, split: SplitConfig = SplitConfig(),
            max_bad_fraction: float = 0.01, log=print) -> List[PreparedSpan]:
    """Prepares every span of ``data_dir``; returns them, newest last."""
    data_dir = os.path.abspath(data_dir)
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"--data-dir {data_dir}: not a directory")
    span_dirs = sorted((int(m.group(1)), os.path.join(data_dir, n))
                       for n in os.listdir(data_dir) if (m := SPAN_DIR.match(n))
                       and os.path.isdir(os.path.join(data_dir, n)))
    known = existing_spans(output_dir)
    if span_dirs:
        plan = [(span, src) for span, src in span_dirs]
    else:
        fp = source_fingerprint(data_dir, split)
        same = [s for s, f in known.items() if f == fp]
        plan = [(max(same) if same else max(known, default=0) + 1, data_dir)]
    results = []
    for span, src in plan:
        fp = source_fingerprint(src, split)
        path = os.path.join(output_dir, f"span-{span}")
        if known.get(span) == fp:
            with open(os.path.join(path, REPORT)) as f:
                results.append(PreparedSpan(span, path, True, json.load(f)))
            log(f"[ingest] span {span}: unchanged source {src}, reusing {path}")
            continue
        report = _prepare_span(src, path, fp, split, max_bad_fraction, log)
        results.append(PreparedSpan(span, path, False, report))
    return results


def _prepare_span(source: str, path: str, fingerprint: str, split: SplitConfig,
                  max_bad_fraction: float, log) -> dict:
    start = time.time()
    fmt = detect_format(source)
    drops = DropReport(max_bad_fraction=max_bad_fraction)
    log(f"[ingest] reading {source} as {fmt}")
    ds = read_dataset(source, drops, fmt, log=log)
    log(f"[ingest] read {drops.rows_read:,} rows in {time.time() - start:.1f}s; splitting "
        f"and writing Parquet")
    train_rows, eval_rows = temporal_split(ds.interactions, split)
    # Rows are written in a fixed random order, not by user: training reads them with a
    # bounded shuffle buffer, which cannot mix a file sorted by user.
    rng = np.random.default_rng(0)
    train_rows, eval_rows = rng.permutation(train_rows), rng.permutation(eval_rows)
    tmp = f"{path}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    columns = _feature_columns(ds)
    for name, rows in (("train", train_rows), ("eval", eval_rows)):
        _write_split(os.path.join(tmp, name), ds.interactions, rows, columns)
    report = {
        "source": source, "format": fmt, "fingerprint": fingerprint,
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
        json.dump({"fingerprint": fingerprint, "version": PREPARED_VERSION}, f)
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


def _write_split(directory: str, data: Interactions, rows: np.ndarray,
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
        }, schema=SCHEMA)
        pq.write_table(table, os.path.join(directory, f"part-{shard:05d}.parquet"))


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", required=True)
    p.add_argument("--output-dir", required=True)
    p.add_argument("--split", choices=["per_user", "global_time"], default="per_user")
    p.add_argument("--eval-fraction", type=float, default=0.2)
    p.add_argument("--max-bad-fraction", type=float, default=0.01)
    a = p.parse_args(argv)
    prepare(a.data_dir, a.output_dir, SplitConfig(a.split, a.eval_fraction),
            a.max_bad_fraction)
    return 0


if __name__ == "__main__":
    sys.exit(main())
