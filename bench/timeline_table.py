"""The timeline benchmark's runs side by side: warm against from scratch, over seeds.

Reads the JSON files ``bench/timeline.py --json-out`` wrote (any mix of modes and
seeds) and prints, as Markdown:

1. per seed and step: Trainer and whole-run seconds, warm / from scratch, and the
   served model's recall@10, recall@50 and NDCG@10 on the next window;
2. per step over the seeds: the warm Trainer's share of the from-scratch Trainer's
   time, and warm recall@50 relative to from scratch (each seed's, their mean, and
   the from-scratch runs' own spread across seeds, i.e. the noise the 2% bound sits in).

    .venv/bin/python bench/timeline_table.py bench/results/timeline_ml100k_seed4[23]_*.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from typing import Dict, List, Optional, Sequence, Tuple

Key = Tuple[int, str, int]  # seed, mode, step


def load(paths: Sequence[str]) -> Dict[Key, dict]:
    runs: Dict[Key, dict] = {}
    for path in paths:
        with open(path) as f:
            doc = json.load(f)
        for r in doc["steps"]:
            if not r.get("rerun"):
                runs[(int(doc["seed"]), r["mode"], int(r["step"]))] = r
    return runs


def _pair(w: Optional[dict], f: Optional[dict], get, fmt: str) -> str:
    cell = lambda r: "—" if r is None or get(r) is None else format(get(r), fmt)  # noqa: E731
    return f"{cell(w)} / {cell(f)}"


def step_table(runs: Dict[Key, dict]) -> str:
    seeds = sorted({s for s, _, _ in runs})
    steps = sorted({t for _, _, t in runs})
    lines = ["| seed | step | Trainer s warm / full | run s warm / full | recall@10 warm / full "
             "| recall@50 warm / full | NDCG@10 warm / full | pushed warm / full |",
             "|---|---|---|---|---|---|---|---|"]
    for seed in seeds:
        for step in steps:
            w, f = runs.get((seed, "warm", step)), runs.get((seed, "full", step))
            nxt = lambda key: (lambda r: r["next_window"][key])  # noqa: E731
            pushed = lambda r: "yes" if r["pushed"] else "no"  # noqa: E731
            lines.append(
                f"| {seed} | {step} | {_pair(w, f, lambda r: r['trainer_seconds'], '.1f')} "
                f"| {_pair(w, f, lambda r: r['seconds'], '.0f')} "
                f"| {_pair(w, f, nxt('recall@10'), '.4f')} "
                f"| {_pair(w, f, nxt('recall@50'), '.4f')} "
                f"| {_pair(w, f, nxt('ndcg@10'), '.4f')} | {_pair(w, f, pushed, 's')} |")
    return "\n".join(lines)


def comparison(runs: Dict[Key, dict]) -> Tuple[str, List[dict]]:
    """Per step from 2 on (step 1 is the same first training in both modes)."""
    seeds = sorted({s for s, _, _ in runs})
    steps = sorted({t for _, _, t in runs if t > 1})
    lines = ["| step | warm Trainer / full, per seed | recall@50 warm vs full, per seed "
             "| mean of seeds | full runs' spread across seeds |",
             "|---|---|---|---|---|"]
    out = []
    for step in steps:
        ratios, gains, full_r50 = [], [], []
        for seed in seeds:
            w, f = runs.get((seed, "warm", step)), runs.get((seed, "full", step))
            if f is not None:
                full_r50.append(f["next_window"]["recall@50"])
            if w is None or f is None:
                continue
            if w["trainer_seconds"] and f["trainer_seconds"]:
                ratios.append(w["trainer_seconds"] / f["trainer_seconds"])
            gains.append(w["next_window"]["recall@50"] / f["next_window"]["recall@50"] - 1)
        spread = (max(full_r50) / min(full_r50) - 1) if len(full_r50) > 1 else None
        mean_gain = statistics.mean(gains) if gains else None
        out.append({"step": step, "trainer_ratios": ratios, "recall50_relative": gains,
                    "mean_recall50_relative": mean_gain, "full_spread": spread})
        lines.append(
            f"| {step} | {', '.join(f'{x:.0%}' for x in ratios) or '—'} "
            f"| {', '.join(f'{x:+.1%}' for x in gains) or '—'} "
            f"| {'—' if mean_gain is None else f'{mean_gain:+.1%}'} "
            f"| {'—' if spread is None else f'{spread:.1%}'} |")
    return "\n".join(lines), out


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("json", nargs="+", help="bench/timeline.py --json-out files")
    a = p.parse_args(argv)
    runs = load(a.json)
    print(step_table(runs))
    print()
    print(comparison(runs)[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
