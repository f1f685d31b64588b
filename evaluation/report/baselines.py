"""Baselines the evaluator does not compute: ItemKNN and EASE on the prepared split."""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

MAX_ITEMS_FOR_ITEM_BASELINES = 5000  # ItemKNN/EASE need a dense items x items matrix


def item_baselines(span_dir: str, ks: Sequence[int]) -> Tuple[Dict[str, dict], List[str]]:
    """``({"itemknn": metrics, "ease": metrics}, notes)``; skipped for large catalogs."""
    from evaluation.baselines import evaluate_baseline
    from evaluation.split_data import load_split
    split = load_split(span_dir)
    if len(split.item_ids) > MAX_ITEMS_FOR_ITEM_BASELINES:
        return {}, [f"ItemKNN and EASE skipped: {len(split.item_ids):,} catalog items "
                    f"(dense item-item matrices above {MAX_ITEMS_FOR_ITEM_BASELINES:,})"]
    return {"itemknn": evaluate_baseline(split, "itemknn", ks),
            "ease": evaluate_baseline(split, "ease", ks, l2=300.0)}, []
