"""Choosing a candidate on the validation slice, and the verdict on the gate's split.

The choice and the verdict use different data on purpose: a choice made on the
split that also judges it picks the candidate whose noise there happened to be
favourable, and the verdict then overstates it.
"""
from __future__ import annotations

from typing import Any, Dict, List

from components.compression.measure import split_key
from components.compression.report import EVAL, VALIDATION, summary


def choose(candidates: List[Dict[str, Any]], on: str = EVAL) -> Dict[str, Any]:
    """The smallest candidate within the recall tolerance on split ``on`` (``EVAL`` or
    ``VALIDATION``); if none is, the one that lost the least recall there."""
    if not candidates:
        raise ValueError("no compressed candidates to choose from")
    if on not in (EVAL, VALIDATION):
        raise ValueError(f"choose on {EVAL!r} or {VALIDATION!r}, got {on!r}")
    within = [c for c in candidates if c[split_key(on, "within_tolerance")]]
    if within:
        return min(within, key=lambda c: c["size_bytes"])
    return min(candidates, key=lambda c: c[split_key(on, "recall_drop_relative")])


def decide(original: Dict[str, Any], candidates: List[Dict[str, Any]], gate_k: int,
           on: str) -> Dict[str, Any]:
    """Chooses on split ``on``, marks each entry's ``chosen``, and returns the
    report's decision keys: the chosen model against the original (``summary``),
    ``chosen_on``, what the eval split alone would have chosen, ``tried`` and
    ``blessed`` (the chosen model's drop on the gate's eval split is within tolerance,
    whatever the slice said)."""
    chosen = choose(candidates, on)
    tried = [original, *candidates]
    for entry in tried:
        entry["chosen"] = entry is chosen
    return {**summary(original, chosen, gate_k), "chosen_on": on,
            "eval_split_would_choose": choose(candidates, EVAL)["method"],
            "tried": tried, "blessed": bool(chosen["within_tolerance"])}
