"""Timeline benchmark: scheduled runs on growing data, warm-started against from scratch.

A data set (MovieLens 100K by default) is cut by global time: the first 50% of
interactions are span 1, four increments of 10% are spans 2-5, and the final 10% is
never given to the pipeline. For each mode (``warm``: the default continuous
training; ``full``: ``--full-retrain``) one pipeline root receives one span per run,
as a data producer would drop them (``<raw>/span-N/``), and:

* each run's served model (the newest pushed version, what clients get) is scored
  through ``serving_default`` exactly as a client calls it, on the *next* window
  (span k + 1, the final 10% after run 5), for every user the pipeline already knew;
* EASE fitted on all data given so far is scored on the same window;
* users first seen in span k: their recall in the next window; items first seen in
  span k - 1 >= 2 (run k's eval window is span k, so these are the items it trains on
  for the first time): how many appear in the top 100 of any user the pipeline knows;
* after run 5, the warm root runs once more on unchanged data: nothing may be pushed.

    .venv/bin/python bench/timeline.py --data-dir ../shared/data/ml-100k
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import project_env  # noqa: F401,E402

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from typing import Dict, List, Optional, Sequence  # noqa: E402

import numpy as np  # noqa: E402

from bench.common import machine, table, write_json  # noqa: E402

KS = (10, 50, 100)
CUTS = (0.5, 0.6, 0.7, 0.8, 0.9)  # span k = rows in [CUTS[k-1], CUTS[k]); the rest held out
MODES = ("warm", "full")


def span_rows(timestamp: np.ndarray, cuts: Sequence[float] = CUTS) -> List[np.ndarray]:
    """Row indices of spans 1..len(cuts) and of the held-out final window, by global time
    (ties broken by row order, so every row lands in exactly one window)."""
    order = np.lexsort((np.arange(len(timestamp)), timestamp))
    bounds = [0] + [int(round(c * len(order))) for c in cuts] + [len(order)]
    return [np.sort(order[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]


def first_window(codes: np.ndarray, windows: List[np.ndarray]) -> Dict[int, int]:
    """``{code: index of the first window it appears in}``."""
    first: Dict[int, int] = {}
    for w, rows in enumerate(windows):
        for c in np.unique(codes[rows]):
            first.setdefault(int(c), w)
    return first


def window_split(data, known: np.ndarray, target: np.ndarray):
    """``known`` rows as train and ``target`` rows as the window to predict, scored for
    the users the pipeline knew: a client asks for them by ID (a user first seen in
    the window gets the cold-start answer, the same from every method)."""
    from evaluation.holdout import to_split
    from evaluation.split_data import only_users
    split = to_split(data, known, target)
    known_ids = {data.user_ids[u] for u in np.unique(data.user[known])}
    return only_users(split, np.array([u in known_ids for u in split.user_ids]))


def score_served(model_dir: str, data, known: np.ndarray, target: np.ndarray,
                 new_users: set, new_items: set) -> dict:
    """The served model through ``serving_default``, as a client calls it."""
    import tensorflow as tf
    from evaluation.holdout import score_signature, signature_batches
    split = window_split(data, known, target)
    fn = tf.saved_model.load(model_dir).signatures["serving_default"]
    result = score_signature(fn, split, KS)
    # New users' recall and new items' exposure.
    known_users = sorted({data.user_ids[u] for u in np.unique(data.user[known])})
    shown, hits_new_users, rel_new_users = set(), 0, 0
    new_user_ids = {data.user_ids[u] for u in new_users}
    for rows, ranked in signature_batches(fn, split):
        for r, items in zip(rows, ranked):
            if split.user_ids[r] in new_user_ids:
                relevant = set(split.eval[r].indices.tolist())
                hits_new_users += len(relevant & set(items[:50]))
                rel_new_users += len(relevant) + int(split.eval_cold_items[r])
    result["new_users_scored_recall@50"] = hits_new_users / rel_new_users if rel_new_users \
        else None
    # New items' exposure: any user the pipeline knows may ask, not only those scored.
    new_item_ids = {data.item_ids[i] for i in new_items}
    for start in range(0, len(known_users), 256):
        batch = np.array([u.encode() for u in known_users[start:start + 256]], dtype=bytes)
        for row in fn(user_id=batch)["item_ids"].numpy():
            shown.update(x.decode() for x in row[:100] if x.decode() in new_item_ids)
    result["new_items"] = len(new_item_ids)
    result["new_items_in_someones_top100"] = len(shown)
    return result


def score_baselines(data, known: np.ndarray, target: np.ndarray,
                    l2: float = 300.0) -> Dict[str, dict]:
    """EASE and popularity fitted on all data given so far, each user's items excluded."""
    from evaluation import baselines
    from evaluation.holdout import fold_in_ranking, popularity_ranking, score_ranker
    split = window_split(data, known, target)
    weights = baselines.ease_weights(split.train, l2=l2)
    pop = baselines.popularity_scores(split.train)
    return {"ease": score_ranker(lambda x: fold_in_ranking(weights, x, max(KS)), split, KS),
            "popularity": score_ranker(lambda x: popularity_ranking(pop, x, max(KS)), split,
                                       KS)}


def trainer_seconds(run: dict) -> Optional[float]:
    return run["run_summary"].get("timings", {}).get("component_seconds", {}).get("Trainer")


def run_step(mode: str, step: int, raw: str, root: str, seed: int, epochs: int) -> dict:
    from runner import local
    from trainer.config import TrainerConfig
    start = time.time()
    run = local.run(local.LocalRunOptions(
        pipeline_root=root, data_dir=raw, write_report=False,
        trainer=TrainerConfig(seed=seed, epochs=epochs, full_retrain=(mode == "full"))))
    s = run["run_summary"]
    return {"mode": mode, "step": step, "seconds": round(time.time() - start, 1),
            "trainer_seconds": trainer_seconds(run), "training": s.get("training"),
            "blessed": s["blessed"], "pushed": s["pushed"],
            "push_skipped_reason": s.get("push_skipped_reason"),
            "pushed_version_dir": s.get("pushed_version_dir"),
            "evaluation": s["evaluation"], "served_baseline": s["baseline"].get("served"),
            "compression": {k: s["compression"].get(k) for k in
                            ("method", "size_ratio", "recall_drop_relative", "blessed")}}


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", default="../shared/data/ml-100k")
    p.add_argument("--out", default="pipeline_output/bench-timeline")
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--epochs", type=int, default=20, help="from-scratch epochs")
    p.add_argument("--json-out", default=None)
    a = p.parse_args(argv)
    from bench.quality import ensure_ignored, read_source, served_model_dir, write_given_data
    from serving.savedmodel.fingerprint import newest_version_dir
    out = os.path.abspath(a.out)
    ensure_ignored(out)
    ds, source = read_source(os.path.abspath(a.data_dir), out)
    data = ds.interactions
    windows = span_rows(data.timestamp)
    first_user, first_item = first_window(data.user, windows), first_window(data.item, windows)
    print(f"[timeline] {source}: {len(data):,} interactions; windows "
          f"{[len(w) for w in windows]} (spans 1-{len(CUTS)}, then the held-out window)")
    steps: List[dict] = []
    for mode in a.modes:
        raw, root = os.path.join(out, mode, "raw"), os.path.join(out, mode, "root")
        for step in range(1, len(CUTS) + 1):
            span_dir = os.path.join(raw, f"span-{step}")
            if not os.path.isdir(span_dir):
                write_given_data(ds, windows[step - 1], span_dir)
            print(f"\n[timeline] {mode} run {step}: span {step} dropped in {raw}", flush=True)
            r = run_step(mode, step, raw, root, a.seed, a.epochs)
            served, scored = newest_version_dir(os.path.join(root, "serving")), "served"
            if served is None:  # nothing served yet: score the run's best model, loudly
                served, scored = served_model_dir(
                    {"push_skipped_reason": r["push_skipped_reason"]}, root)
            known = np.concatenate(windows[:step])
            target = windows[step]
            new_users = {u for u, w in first_user.items() if w == step - 1}
            # Items run k trains on for the first time: span k is its eval window.
            # (none at run 2: span 1 is the initial load, not new items).
            new_items = {i for i, w in first_item.items() if w == step - 2 >= 1}
            r["served_version"], r["scored_model_source"] = served, scored
            r["next_window"] = score_served(served, data, known, target, new_users, new_items)
            r["baselines_next_window"] = score_baselines(data, known, target)
            print(f"[timeline] {mode} run {step}: Trainer {r['trainer_seconds']}s, run "
                  f"{r['seconds']}s, {r['training']['mode'] if r['training'] else '?'}; "
                  f"next window recall@50 {r['next_window']['recall@50']:.4f} (EASE "
                  f"{r['baselines_next_window']['ease']['recall@50']:.4f}, popularity "
                  f"{r['baselines_next_window']['popularity']['recall@50']:.4f}); pushed "
                  f"{r['pushed']}",
                  flush=True)
            steps.append(r)
        if mode == "warm":
            print(f"\n[timeline] warm run {len(CUTS)} again on unchanged data", flush=True)
            again = run_step(mode, len(CUTS), raw, root, a.seed, a.epochs)
            again["rerun"] = True
            steps.append(again)
            print(f"[timeline] rerun: pushed {again['pushed']} "
                  f"({again['push_skipped_reason']})", flush=True)
    rows = []
    for r in steps:
        if r.get("rerun"):
            rows.append([r["mode"], f"{r['step']} (rerun)", r["trainer_seconds"], r["seconds"],
                         "", "", "", "", "", "", f"pushed {r['pushed']}: {r['push_skipped_reason']}"])
            continue
        n = r["next_window"]
        rows.append([r["mode"], r["step"], r["trainer_seconds"], r["seconds"],
                     f"{n['recall@10']:.4f}", f"{n['recall@50']:.4f}", f"{n['ndcg@10']:.4f}",
                     f"{r['baselines_next_window']['ease']['recall@50']:.4f}",
                     f"{r['baselines_next_window']['popularity']['recall@50']:.4f}",
                     f"{n['new_items_in_someones_top100']}/{n['new_items']}",
                     f"{r['training']['mode']}, pushed {r['pushed']}, scored "
                     f"{r['scored_model_source']}" if r["training"] else ""])
    print("\n" + table(rows, ["mode", "step", "Trainer s", "run s", "recall@10", "recall@50",
                              "NDCG@10", "EASE r@50", "pop r@50", "new items shown",
                              "notes"]))
    by = {(r["mode"], r["step"]): r for r in steps if not r.get("rerun")}
    for step in range(1, len(CUTS) + 1):
        w, f = by.get(("warm", step)), by.get(("full", step))
        if w and f and w["trainer_seconds"] and f["trainer_seconds"]:
            print(f"step {step}: warm Trainer {w['trainer_seconds'] / f['trainer_seconds']:.0%} "
                  f"of from-scratch; recall@50 {w['next_window']['recall@50']:.4f} vs "
                  f"{f['next_window']['recall@50']:.4f} ("
                  f"{w['next_window']['recall@50'] / f['next_window']['recall@50'] - 1:+.1%})")
    path = write_json(a.json_out or os.path.join(out, "timeline.json"),
                      {"source": source, "windows": [len(w) for w in windows], "cuts": CUTS,
                       "seed": a.seed, "steps": steps, "machine": machine()})
    print(f"JSON: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
