"""Choosing a candidate on the validation slice, and the verdict on the gate's split.

The choice and the verdict use different data on purpose: a choice made on the
split that also judges it picks the candidate whose noise there happened to be
favourable, and the verdict then overstates it.
"""
from __future__ import annotations

from typing import Any, Dict, List

from components.compression.measure import split_key
from components.compression.report import EVAL, VALIDATION, summary


def ranking(candidates: List[Dict[str, Any]], on: str = EVAL) -> List[Dict[str, Any]]:
    """The candidates the choice on split ``on`` (``EVAL`` or ``VALIDATION``) may take,
    first choice first: those within the recall tolerance there, smallest first; if
    none is, the one that lost the least recall there."""
    if not candidates:
        raise ValueError("no compressed candidates to choose from")
    if on not in (EVAL, VALIDATION):
        raise ValueError(f"choose on {EVAL!r} or {VALIDATION!r}, got {on!r}")
    within = [c for c in candidates if c[split_key(on, "within_tolerance")]]
    if within:
        return sorted(within, key=lambda c: c["size_bytes"])
    return [min(candidates, key=lambda c: c[split_key(on, "recall_drop_relative")])]


def choose(candidates: List[Dict[str, Any]], on: str = EVAL) -> Dict[str, Any]:
    """The smallest candidate within the recall tolerance on split ``on``; if none is,
    the one that lost the least recall there."""
    return ranking(candidates, on)[0]


def decide(original: Dict[str, Any], candidates: List[Dict[str, Any]], gate_k: int,
           on: str) -> Dict[str, Any]:
    """Chooses on split ``on``, marks each entry's ``chosen``, and returns the
    report's decision keys: the chosen model against the original (``summary``),
    ``chosen_on``, what the eval split alone would have chosen, ``tried``,
    ``fell_back_from`` and ``blessed`` (the chosen model's drop on the gate's eval
    split is within tolerance, whatever the slice said).

    If the first choice fails the verdict, the next candidate the slice also found
    within tolerance (the next larger, i.e. less compressed) is judged, and so on:
    a smaller model that the slice misjudged must not keep a blessed original from
    being served when a larger compressed one would pass. The order comes from the
    slice and sizes alone, so the eval split still only says yes or no; it never
    picks among candidates by their recall there.
    """
    order = ranking(candidates, on)
    refused = []
    for chosen in order:
        if chosen["within_tolerance"]:
            break
        refused.append(chosen["method"])
    else:
        chosen, refused = order[0], refused[:0]  # none passes: report the first choice
    tried = [original, *candidates]
    for entry in tried:
        entry["chosen"] = entry is chosen
    return {**summary(original, chosen, gate_k), "chosen_on": on,
            "eval_split_would_choose": choose(candidates, EVAL)["method"],
            "fell_back_from": refused, "tried": tried,
            "blessed": bool(chosen["within_tolerance"])}
