"""The exported model answers in a process that imports nothing but TensorFlow."""
import os

import numpy as np
import pytest

from tests.conftest import serving_model_dir
from tests.tf_only_client import query_in_tensorflow_only_process

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module", params=["trained", "pushed"])
def answers(request, small_pipeline):
    """The Trainer's model and the compressed model the Pusher pushed, both checked."""
    root, summary, _ = small_pipeline
    model_dir = serving_model_dir(summary) if request.param == "trained" else \
        summary["run_summary"]["pushed_version_dir"]
    return query_in_tensorflow_only_process(model_dir, "u0")


def test_only_tensorflow_was_needed(answers):
    assert answers["loaded"] == []
    assert set(answers["signatures"]) == {"serving_default", "serve_tf_examples",
                                          "recommend_excluding"}
    assert answers["inputs"] == {"user_id": ["string", [None]]}


def test_contract_shapes_dtypes_and_order(answers):
    assert answers["item_dtype"] == "string" and answers["score_dtype"] == "float32"
    items, scores = answers["items"], np.array(answers["scores"])
    assert scores.shape == (2, 100) and [len(r) for r in items] == [100, 100]
    assert (np.diff(scores, axis=1) <= 1e-6).all()  # highest first
    assert len(set(items[0])) == 100  # distinct items


def test_unknown_user_gets_popular_items(answers, small_pipeline):
    root, _, _ = small_pipeline
    import glob
    import pyarrow.parquet as pq
    [span] = glob.glob(os.path.join(root, "prepared", "*", "span-1"))
    train = pq.read_table(os.path.join(span, "train")).column("item_id").to_pylist()
    counts = {}
    for item in train:
        counts[item] = counts.get(item, 0) + 1
    top = sorted(counts, key=lambda i: -counts[i])[:10]
    cold = answers["items"][1]
    assert cold[0] == top[0]
    assert set(cold[:5]) <= set(top)
    assert answers["items"][0] != cold  # a known user gets a personal list


def test_other_signatures_answer(answers):
    assert len(answers["example_items"]) == 100
    first = answers["items"][0][0]
    assert first not in answers["excluded_items"]
    assert answers["excluded_items"][0] == answers["items"][0][1]
