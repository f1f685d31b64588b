"""Quality benchmark: the served model as a client sees it, against popularity, ItemKNN, EASE.

The pipeline's own evaluator scores the model on the pipeline's internal split through
``recommend_given_history``, told which history to use and which items to leave out.
A client does neither. So this
benchmark holds data back *before* the pipeline runs (``evaluation/holdout.py``):

1. reads the data set with the project's readers; holds out a fixed-seed 10% of users
   entirely (cold users) and, of the others, the last 20% of each user's interactions
   by time (the test window, ties at the boundary included, as ``ingest.split``);
2. writes the rest, the *given* data, as a generic ``interactions.csv`` with
   ``users.csv`` / ``items.csv`` under the pipeline root, and runs the whole local
   pipeline on it once per ``--seed`` (the Trainer's seed; one pipeline root each);
3. scores the *pushed* model (falling back, loudly, to the compressor's or the
   Trainer's output when nothing was pushed) through ``serving_default`` with no
   exclusion list, for every test-window user: recall@10/20/50/100, NDCG@10,
   coverage@10 over the given catalog, and ``seen_fraction@10/@100``, the share of
   returned items the user already has in the given data;
4. scores popularity, ItemKNN and EASE fitted on all given data, each user's given
   items excluded;
5. cold users: their first 80% by time go to ``recommend_from_history`` as the
   request's history, scored on their last 20%, against popularity and EASE fold-in;
6. prints a table per seed and the mean [min–max] over seeds, the pipeline's wall
   time and component timings, and writes one JSON file.

    .venv/bin/python bench/quality.py --data-dir ../shared/data/ml-100k --seed 42 --seed 43
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import project_env  # noqa: F401,E402

import argparse  # noqa: E402
import csv  # noqa: E402
import dataclasses  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import time  # noqa: E402
from typing import Dict, List, Optional, Sequence, Tuple  # noqa: E402

import numpy as np  # noqa: E402

from bench.common import machine, table, write_json  # noqa: E402

KS = (10, 20, 50, 100)
SHOWN = ("recall@10", "recall@20", "recall@50", "recall@100", "ndcg@10", "coverage@10",
         "seen_fraction@10", "seen_fraction@100")
SYNTHETIC = "synthetic"  # --data-dir value for the built-in synthetic data
SERVING_DEFAULT = "serving_default"  # CONTRACTS.md "Served model"
FROM_HISTORY = "recommend_from_history"
PROTOCOL_VERSION = 1  # bump when the held-out data or the given files change
PROTOCOL_FILE = "protocol.json"


@dataclasses.dataclass(frozen=True)
class BenchOptions:
    """Everything one data set's benchmark depends on besides the data."""

    seeds: Tuple[int, ...] = (42,)
    test_fraction: float = 0.2
    cold_user_fraction: float = 0.1
    holdout_seed: int = 0
    split: str = "per_user"  # the pipeline's own internal split of the given data
    trainer_overrides: Tuple[Tuple[str, object], ...] = ()
    ease_l2: float = 300.0
    itemknn_neighbours: int = 100
    batch_size: int = 256
    enable_cache: bool = False


# ------------------------------------------------------------------ given data


def write_given_data(ds, rows: np.ndarray, directory: str) -> str:
    """Writes ``rows`` of ``ds`` in the generic layout (README "Data formats"), atomically.

    Only users and items that occur in ``rows`` get a feature row, so nothing about a
    held-out user reaches the pipeline.
    """
    data = ds.interactions
    tmp = f"{directory}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    order = np.sort(rows)
    with open(os.path.join(tmp, "interactions.csv"), "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["user_id", "item_id", "rating", "timestamp"])
        for r in order:
            w.writerow([data.user_ids[data.user[r]], data.item_ids[data.item[r]],
                        f"{float(data.rating[r]):g}", int(data.timestamp[r])])
    users = [data.user_ids[u] for u in np.unique(data.user[order])]
    items = [data.item_ids[i] for i in np.unique(data.item[order])]
    _write_features(os.path.join(tmp, "users.csv"), ["user_id", "age", "gender", "occupation"],
                    [[u, f.age, f.gender, f.occupation] for u in users
                     if (f := ds.users.get(u)) is not None])
    _write_features(os.path.join(tmp, "items.csv"), ["item_id", "genres", "year"],
                    [[i, "|".join(f.genres), f.year] for i in items
                     if (f := ds.items.get(i)) is not None])
    shutil.rmtree(directory, ignore_errors=True)
    os.replace(tmp, directory)
    return directory


def _write_features(path: str, header: List[str], rows: List[list]) -> None:
    if not rows:  # the format has no such features: the reader then writes "unknown"
        return
    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)


def protocol_key(source_dir: str, opts: BenchOptions) -> str:
    """Changes when the source files or the hold-out settings do, and only then."""
    from ingest.prepare import source_fingerprint
    from ingest.split import SplitConfig
    parts = [PROTOCOL_VERSION, os.path.abspath(source_dir),
             source_fingerprint(source_dir, SplitConfig()), opts.test_fraction,
             opts.cold_user_fraction, opts.holdout_seed]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:12]


def ensure_given_data(ds, holdout, source_dir: str, out_root: str, opts: BenchOptions) -> str:
    """The given data's folder; reused unchanged (same mtimes) so the pipeline's prepare
    step and cache see the same input on every run of the same protocol."""
    directory = os.path.join(out_root, f"given-{protocol_key(source_dir, opts)}")
    if os.path.isfile(os.path.join(directory, PROTOCOL_FILE)):
        return directory
    write_given_data(ds, holdout.given_rows, directory)
    with open(os.path.join(directory, PROTOCOL_FILE), "w") as f:
        json.dump({"source": os.path.abspath(source_dir), "version": PROTOCOL_VERSION,
                   "test_fraction": opts.test_fraction, "holdout_seed": opts.holdout_seed,
                   "cold_user_fraction": opts.cold_user_fraction}, f, indent=2)
    return directory


def ensure_ignored(root: str) -> None:
    """Keeps derived data (MovieLens' licence forbids copies in the repo) out of git."""
    os.makedirs(root, exist_ok=True)
    path = os.path.join(root, ".gitignore")
    if not os.path.isfile(path):
        with open(path, "w") as f:
            f.write("# derived benchmark data: never commit\n*\n")


def read_source(data_dir: Optional[str], out_root: str):
    """``(dataset, source dir)`` through the project's readers; synthetic data is generated."""
    from ingest.readers import read_dataset
    from ingest.report import DropReport
    source = data_dir
    if source is None:
        from ingest import synthetic
        from runner import local
        source = local.ensure_synthetic_data(os.path.join(out_root, "raw"),
                                             synthetic.SyntheticConfig())
    report = DropReport()
    ds = read_dataset(source, report)
    if report.rows_dropped:
        print(f"[bench] {source}: dropped {report.rows_dropped} rows {dict(report.dropped)}")
    return ds, source


# --------------------------------------------------------------------- scoring


def score_baselines(warm, cold, opts: BenchOptions) -> Dict[str, Dict[str, dict]]:
    """Popularity, ItemKNN and EASE fitted on all given data (``warm.train``).

    ``warm`` ranks test-window users with their given items excluded; ``cold`` ranks
    held-out users from their history vector (fold-in), history items excluded.
    """
    from evaluation import baselines
    from evaluation.holdout import fold_in_ranking, popularity_ranking, score_ranker
    k = max(KS)
    pop = baselines.popularity_scores(warm.train)
    t = time.time()
    ease = baselines.ease_weights(warm.train, l2=opts.ease_l2)
    ease_seconds = time.time() - t
    t = time.time()
    knn = baselines.itemknn_weights(warm.train, neighbours=opts.itemknn_neighbours)
    knn_seconds = time.time() - t
    rankers = {"popularity": (lambda x: popularity_ranking(pop, x, k), 0.0),
               "itemknn": (lambda x: fold_in_ranking(knn, x, k), knn_seconds),
               "ease": (lambda x: fold_in_ranking(ease, x, k), ease_seconds)}
    out: Dict[str, Dict[str, dict]] = {"warm": {}, "cold": {}}
    for name, (rank, fit_seconds) in rankers.items():
        for scenario, split in (("warm", warm), ("cold", cold)):
            if scenario == "cold" and name == "itemknn":
                continue  # the protocol compares cold users with popularity and EASE only
            if scenario == "cold" and not _has_targets(split):
                continue
            t = time.time()
            out[scenario][name] = score_ranker(rank, split, KS)
            out[scenario][name]["seconds"] = round(time.time() - t + fit_seconds, 2)
    return out


def _has_targets(split) -> bool:
    return bool((split.relevant_counts() > 0).any())


def served_model_dir(summary: dict, root: str) -> Tuple[str, str]:
    """``(SavedModel dir, source)``: the pushed version, else the best unpushed fallback."""
    pushed = summary.get("pushed_version_dir")
    if summary.get("pushed") and pushed and _is_saved_model(pushed):
        return pushed, "pushed"
    from runner import local
    reason = summary.get("push_skipped_reason") or "; ".join(
        summary.get("gate", {}).get("failed", [])) or "no reason recorded"
    for component, key, label in (("ModelCompressor", "compressed_model", "compressor"),
                                  ("Trainer", "model", "trainer")):
        try:
            uri = local.component_record(root, component).uris().get(key)
        except KeyError:
            continue
        path = os.path.join(uri, "Format-Serving") if uri else ""
        if _is_saved_model(path):
            print("\n" + "!" * 78 + f"\n!! NOTHING WAS PUSHED ({reason}).\n!! Scoring the "
                  f"{label}'s output instead: {path}\n" + "!" * 78, flush=True)
            return path, f"{label} (NOT pushed)"
    raise FileNotFoundError(f"{root}: nothing was pushed ({reason}) and neither the "
                            f"compressor nor the Trainer left a SavedModel")


def _is_saved_model(path: str) -> bool:
    return bool(path) and os.path.isfile(os.path.join(path, "saved_model.pb"))


def score_model(model_dir: str, warm, cold, history: Dict[str, List[str]],
                opts: BenchOptions) -> Dict[str, dict]:
    """The model's signatures exactly as a client calls them; cold scenario if it can."""
    import tensorflow as tf
    from evaluation.holdout import score_signature
    signatures = tf.saved_model.load(model_dir).signatures
    t = time.time()
    out = {"warm": score_signature(signatures[SERVING_DEFAULT], warm, KS,
                                   batch_size=opts.batch_size)}
    out["warm"]["seconds"] = round(time.time() - t, 2)
    if FROM_HISTORY not in signatures:
        out["cold"] = {"unavailable": f"the model has no {FROM_HISTORY!r} signature "
                                      f"(has: {sorted(signatures)})"}
    elif not _has_targets(cold):
        out["cold"] = {"unavailable": "no cold user has a test window"}
    else:
        t = time.time()
        out["cold"] = score_signature(signatures[FROM_HISTORY], cold, KS, history=history,
                                      batch_size=opts.batch_size)
        out["cold"]["seconds"] = round(time.time() - t, 2)
    return out


# -------------------------------------------------------------------- pipeline


def component_table(run: dict, history: dict) -> str:
    """Wall time and peak memory per step, from ``local.run``'s result."""
    timings = run["run_summary"].get("timings", {})
    seconds, peak = timings.get("component_seconds", {}), timings.get("peak_memory_mb", {})
    rows = [[name, f"{s:.1f}", f"{peak[name]:,.0f}" if name in peak else ""]
            for name, s in seconds.items()]
    text = table(rows, ["step", "seconds", "peak MB"])
    if "train_seconds" not in history:
        return text
    return (text + f"\ntraining: {history['train_seconds']:.1f}s for "
            f"{history.get('trained_examples', 0):,} examples "
            f"({history.get('examples_per_second', 0):,.0f} examples/s)")


def _training_history(root: str) -> dict:
    from runner import local
    try:
        directory = local.component_record(root, "Trainer").uris().get("model_run", "")
    except KeyError:
        return {}
    path = os.path.join(directory, "training_history.json")
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


def run_seed(given_dir: str, root: str, seed: int, opts: BenchOptions) -> dict:
    """One pipeline run on the given data with the Trainer's ``seed``; its served model."""
    from ingest.split import SplitConfig
    from runner import local
    from trainer.config import TrainerConfig
    load_before = os.getloadavg()[0]
    start = time.time()
    run = local.run(local.LocalRunOptions(
        pipeline_root=root, data_dir=given_dir, split=SplitConfig(opts.split),
        trainer=TrainerConfig(**{**dict(opts.trainer_overrides), "seed": seed}),
        enable_cache=opts.enable_cache))
    model_dir, source = served_model_dir(run["run_summary"], root)
    return {"seed": seed, "pipeline_root": root, "run": run, "model_dir": model_dir,
            "model_source": source, "pipeline_seconds": round(time.time() - start, 1),
            "load_at_start": load_before, "training": _training_history(root)}


# ---------------------------------------------------------------------- output


def metric_rows(results: Dict[str, dict]) -> List[list]:
    """One table row per method; ``unavailable`` entries say so instead of numbers."""
    rows = []
    for name, r in results.items():
        if "unavailable" in r:
            rows.append([name, f"unavailable: {r['unavailable']}"] + [""] * (len(SHOWN) - 1))
        else:
            rows.append([name] + [r.get(s) for s in SHOWN])
    return rows


def _labelled(baselines: Dict[str, Dict[str, dict]], scenario: str) -> Dict[str, dict]:
    """Cold-user EASE scores a history it was not fitted on: say so in the table."""
    return {("ease fold-in" if scenario == "cold" and k == "ease" else k): v
            for k, v in baselines[scenario].items()}


def print_baselines(baselines: Dict[str, Dict[str, dict]]) -> None:
    """Before any pipeline run, so a failed run still leaves the baselines on the console."""
    for scenario, what in (("warm", "test-window users, given items excluded"),
                           ("cold", "held-out users from their history, history excluded")):
        print(f"Baselines on {what}:")
        print(table(metric_rows(_labelled(baselines, scenario)), ["method", *SHOWN]))


def print_seed(seed_run: dict, baselines: Dict[str, Dict[str, dict]], sizes: dict) -> None:
    model = seed_run["model"]
    label = f"two-tower [{seed_run['model_source']}]"
    print(f"\n=== seed {seed_run['seed']}: {seed_run['model_dir']} ({seed_run['model_source']})")
    print(f"Warm users: {sizes['test_users']} test-window users, {SERVING_DEFAULT} as served "
          f"(no exclusion list); baselines exclude the user's given items")
    print(table(metric_rows({f"{label} {SERVING_DEFAULT}": model["warm"],
                             **baselines["warm"]}), ["method", *SHOWN]))
    print(f"Cold users: {sizes['cold_users_with_test']} held-out users, first "
          f"interactions sent as history; EASE/popularity exclude the history")
    print(table(metric_rows({f"{label} {FROM_HISTORY}": model["cold"],
                             **_labelled(baselines, "cold")}), ["method", *SHOWN]))
    ev = seed_run["run"]["run_summary"].get("evaluation", {})
    if ev:
        print("pipeline's own evaluator (its internal split, recommend_given_history): "
              + ", ".join(f"{k} {ev[k]:.4f}" for k in ("recall@10", "recall@50", "ndcg@10",
                                                       "coverage@10") if k in ev))
    print(component_table(seed_run["run"], seed_run["training"]))
    print(f"whole pipeline run {seed_run['pipeline_seconds']:.1f}s (load "
          f"{seed_run['load_at_start']:.2f} at start); report: {seed_run['run'].get('report')}")


def aggregate_models(seed_runs: List[dict]) -> Dict[str, dict]:
    """Mean and min–max per metric over seeds, per scenario the model could be scored on."""
    from evaluation.holdout import aggregate
    out = {}
    for scenario in ("warm", "cold"):
        scored = [s["model"][scenario] for s in seed_runs
                  if "unavailable" not in s["model"][scenario]]
        out[scenario] = aggregate(scored) if scored else {
            "unavailable": seed_runs[0]["model"][scenario]["unavailable"]}
    return out


def print_aggregate(agg: Dict[str, dict], baselines: Dict[str, Dict[str, dict]],
                    seeds: Sequence[int]) -> None:
    print(f"\n=== aggregate over seeds {', '.join(map(str, seeds))}: mean [min–max]")
    for scenario, signature in (("warm", SERVING_DEFAULT), ("cold", FROM_HISTORY)):
        rows = [[f"two-tower {signature}"] + _spread_cells(agg[scenario])]
        rows += metric_rows(_labelled(baselines, scenario))
        print(f"{scenario} users")
        print(table(rows, ["method", *SHOWN]))


def _spread_cells(stats: dict) -> List[str]:
    if "unavailable" in stats:
        return [f"unavailable: {stats['unavailable']}"] + [""] * (len(SHOWN) - 1)
    return [f"{stats[s]['mean']:.4f} [{stats[s]['min']:.4f}–{stats[s]['max']:.4f}]"
            if s in stats else "" for s in SHOWN]


def _seed_record(s: dict) -> dict:
    """The JSON part of one seed's run (the pipeline's full result is too big to repeat)."""
    run = s["run"]
    return {"seed": s["seed"], "pipeline_root": s["pipeline_root"],
            "model_dir": s["model_dir"], "model_source": s["model_source"],
            "pushed": bool(run["run_summary"].get("pushed")),
            "two_tower": s["model"],
            "pipeline_evaluation": run["run_summary"].get("evaluation"),
            "blessed": run["run_summary"].get("blessed"),
            "compression": run["run_summary"].get("compression"),
            "training": s["training"], "pipeline_seconds": s["pipeline_seconds"],
            "component_seconds": run.get("component_seconds"),
            "timings": run["run_summary"].get("timings"), "load_at_start": s["load_at_start"],
            "report": run.get("report")}


# ----------------------------------------------------------------------- main


def bench_data_set(data_dir: Optional[str], out_root: str, opts: BenchOptions) -> dict:
    """The whole protocol on one data set: hold out, run per seed, score, print."""
    from evaluation.holdout import histories, holdout_split, to_split
    ds, source = read_source(data_dir, out_root)
    holdout = holdout_split(ds.interactions, opts.test_fraction, opts.cold_user_fraction,
                            opts.holdout_seed)
    sizes = holdout.sizes(ds.interactions)
    given_dir = ensure_given_data(ds, holdout, source, out_root, opts)
    data = ds.interactions
    warm = to_split(data, holdout.given_rows, holdout.test_rows)
    cold = to_split(data, holdout.cold_history_rows, holdout.cold_test_rows, warm.item_ids)
    sizes["catalog_items"] = len(warm.item_ids)
    print(f"\nData: {source} ({ds.name}); protocol: {json.dumps(sizes)}; given data: {given_dir}")
    baselines = score_baselines(warm, cold, opts)
    print_baselines(baselines)
    history = histories(data, holdout.cold_history_rows)
    seed_runs = []
    for seed in opts.seeds:
        s = run_seed(given_dir, os.path.join(out_root, f"seed-{seed}"), seed, opts)
        s["model"] = score_model(s["model_dir"], warm, cold, history, opts)
        print_seed(s, baselines, sizes)
        seed_runs.append(s)
    agg = aggregate_models(seed_runs)
    print_aggregate(agg, baselines, opts.seeds)
    return {"data_dir": data_dir, "source": source, "format": ds.name, "given_dir": given_dir,
            "protocol": {"test_fraction": opts.test_fraction,
                         "cold_user_fraction": opts.cold_user_fraction,
                         "holdout_seed": opts.holdout_seed, "pipeline_split": opts.split,
                         "ks": list(KS), **sizes},
            "baselines": baselines, "seeds": [_seed_record(s) for s in seed_runs],
            "aggregate": {"two_tower": agg}}


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", action="append",
                   help=f"a data directory, or '{SYNTHETIC}' for the built-in data; repeat "
                        f"for several (default: {SYNTHETIC})")
    p.add_argument("--seed", type=int, action="append",
                   help="the Trainer's seed; repeat for one pipeline run each (default: 42)")
    p.add_argument("--pipeline-root", default="pipeline_output/bench-quality",
                   help="derived data and one pipeline root per seed (and data set) go here")
    p.add_argument("--test-fraction", type=float, default=0.2,
                   help="each warm user's last share of interactions held out")
    p.add_argument("--cold-user-fraction", type=float, default=0.1,
                   help="share of users held out entirely")
    p.add_argument("--holdout-seed", type=int, default=0, help="which users are cold")
    p.add_argument("--split", default="per_user", choices=["per_user", "global_time"],
                   help="the pipeline's own internal split of the given data")
    p.add_argument("--trainer-config", default="{}",
                   help="JSON overrides of TrainerConfig, e.g. '{\"epochs\": 8}'")
    p.add_argument("--ease-l2", type=float, default=300.0)
    p.add_argument("--itemknn-neighbours", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=256, help="users per signature call")
    p.add_argument("--cache", action="store_true",
                   help="reuse cached components (default: run everything, for timings)")
    p.add_argument("--json-out", help="default: <pipeline-root>/bench_quality.json")
    return p.parse_args(argv)


def options(a: argparse.Namespace) -> BenchOptions:
    overrides = json.loads(a.trainer_config)
    if not isinstance(overrides, dict):
        raise ValueError(f"--trainer-config must be a JSON object, got {a.trainer_config!r}")
    if "seed" in overrides:
        raise ValueError(f"--trainer-config sets seed {overrides['seed']!r}; use --seed")
    return BenchOptions(
        seeds=tuple(dict.fromkeys(a.seed or [42])), test_fraction=a.test_fraction,
        cold_user_fraction=a.cold_user_fraction, holdout_seed=a.holdout_seed, split=a.split,
        trainer_overrides=tuple(sorted(overrides.items())), ease_l2=a.ease_l2,
        itemknn_neighbours=a.itemknn_neighbours, batch_size=a.batch_size,
        enable_cache=a.cache)


def main(argv: Optional[Sequence[str]] = None) -> int:
    a = parse_args(argv)
    opts = options(a)
    data_dirs = a.data_dir or [SYNTHETIC]
    base = os.path.abspath(a.pipeline_root)
    ensure_ignored(base)
    runs = []
    for d in data_dirs:
        data_dir = None if d == SYNTHETIC else os.path.abspath(d)
        out_root = base if len(data_dirs) == 1 else os.path.join(
            base, SYNTHETIC if data_dir is None else os.path.basename(data_dir.rstrip("/")))
        runs.append(bench_data_set(data_dir, out_root, opts))
    out = a.json_out or os.path.join(base, "bench_quality.json")
    # One data set keeps a flat layout; several go under "runs".
    payload = dict(runs[0]) if len(runs) == 1 else {"runs": runs}
    payload["machine"] = machine()
    print(f"JSON: {write_json(out, payload)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
