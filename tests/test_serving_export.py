"""The exported models answer in a process that imports nothing but TensorFlow, and
never return what a user already interacted with."""
import collections
import glob
import os

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.conftest import serving_model_dir
from tests.tf_only_client import query_in_tensorflow_only_process

pytestmark = pytest.mark.e2e
USERS = [f"u{i}" for i in range(0, 40)]


def _interactions(root):
    """``(train item counts, {user: items of train and eval})`` of the prepared span."""
    [span] = glob.glob(os.path.join(root, "prepared", "*", "span-1"))
    seen, counts = collections.defaultdict(set), collections.Counter()
    for split in ("train", "eval"):
        table = pq.read_table(os.path.join(span, split), columns=["user_id", "item_id"])
        for user, item in zip(table.column("user_id").to_pylist(),
                              table.column("item_id").to_pylist()):
            seen[user].add(item)
            if split == "train":
                counts[item] += 1
    return counts, seen


@pytest.fixture(scope="module", params=["trained", "pushed"])
def answers(request, small_pipeline):
    """The Trainer's model and the compressed model the Pusher pushed, both checked."""
    root, summary, _ = small_pipeline
    model_dir = serving_model_dir(summary) if request.param == "trained" else \
        summary["run_summary"]["pushed_version_dir"]
    counts, seen = _interactions(root)
    users = [u for u in USERS if u in seen]
    # A request history of three items none of the users has seen much of.
    history = [i for i, _ in counts.most_common()][40:43]
    return query_in_tensorflow_only_process(model_dir, users, history), users, seen, history


def test_only_tensorflow_was_needed(answers):
    got = answers[0]
    assert got["loaded"] == []
    assert set(got["signatures"]) == {"serving_default", "serve_tf_examples",
                                      "recommend_excluding", "recommend_from_history",
                                      "recommend_given_history", "recommend_exact"}
    assert got["inputs"] == {"user_id": ["string", [None]]}
    assert got["history_inputs"] == {"user_id": ["string", [None]],
                                     "history_item_ids": ["string", [None, None]]}


def test_a_small_catalog_is_scored_in_full(answers):
    # Brute force below IndexConfig.partitioned_min_items: the index gives the exact answer.
    got = answers[0]
    assert got["exact_items"] == got["items"]


def test_contract_shapes_dtypes_and_order(answers):
    got = answers[0]
    assert got["item_dtype"] == "string" and got["score_dtype"] == "float32"
    items, scores = got["items"], np.array(got["scores"])
    assert scores.shape[1] == 100 and all(len(r) == 100 for r in items)
    assert (np.diff(scores, axis=1) <= 1e-6).all()  # highest first
    assert all(len(set(r)) == 100 for r in items)  # distinct items


def test_no_served_item_is_one_the_user_interacted_with(answers):
    got, users, seen, _ = answers
    for user, row in zip(users, got["items"]):
        assert not set(row) & seen[user], user
    assert not set(got["example_items"]) & seen[users[0]]


def test_unknown_user_gets_popular_items(answers, small_pipeline):
    root, _, _ = small_pipeline
    counts, _ = _interactions(root)
    top = [i for i, _ in counts.most_common(10)]
    cold = answers[0]["items"][-1]
    assert cold[0] == top[0] and set(cold[:5]) <= set(top)
    assert answers[0]["items"][0] != cold  # a known user gets a personal list


def test_request_history_personalises_and_is_left_out(answers):
    got, users, seen, history = answers
    new_user, known = got["from_history"]
    # A new user with three items gets a list of its own, not the popularity list,
    # without those items; the unknown "not-an-item" ID was ignored.
    assert new_user != got["items"][-1] and not set(new_user) & set(history)
    assert not set(known) & (set(history) | seen[users[0]])
    # The given-history signature leaves out exactly what it is told to.
    assert not set(got["given_history"]) & set(history)


def test_recommend_excluding_leaves_out_the_listed_item(answers):
    got = answers[0]
    first = got["items"][0][0]
    assert first not in got["excluded_items"]
    assert got["excluded_items"][0] == got["items"][0][1]


def test_a_new_user_described_by_features_beats_popularity(small_pipeline):
    """``serve_tf_examples`` for users the model never saw (new IDs), each described
    only by an eval user's age, gender and occupation, scored on that user's eval
    items: the query tower's answer from the features (trained by feature_dropout and
    history_dropout) against the popularity list the model would otherwise give.

    The margin is small by construction: on this synthetic data the features carry
    little of a user's taste (popularity within the user's occupation or gender has a
    lower recall@50 than overall popularity, 0.185 and 0.196 against 0.200). One run
    here: 0.2035 against 0.1955. MovieLens 100K's held-out users: docs/model.md."""
    import tensorflow as tf
    from evaluation.metrics import evaluate_rankings
    root, summary, _ = small_pipeline
    [span] = glob.glob(os.path.join(root, "prepared", "*", "span-1"))
    table = pq.read_table(os.path.join(span, "eval")).to_pylist()
    profile, truth = {}, collections.defaultdict(set)
    for row in table:
        profile[row["user_id"]] = row
        truth[row["user_id"]].add(row["item_id"])
    users = sorted(truth)

    def example(user):
        p = profile[user]
        f = tf.train.Feature
        return tf.train.Example(features=tf.train.Features(feature={
            "user_id": f(bytes_list=tf.train.BytesList(value=[f"new-{user}".encode()])),
            "user_age": f(int64_list=tf.train.Int64List(value=[p["user_age"]])),
            "user_gender": f(bytes_list=tf.train.BytesList(value=[p["user_gender"].encode()])),
            "user_occupation": f(bytes_list=tf.train.BytesList(
                value=[p["user_occupation"].encode()])),
        })).SerializeToString()

    model = tf.saved_model.load(summary["run_summary"]["pushed_version_dir"])
    out = model.signatures["serve_tf_examples"](
        examples=tf.constant([example(u) for u in users]))["item_ids"].numpy()
    answered = {u: [i.decode() for i in row] for u, row in zip(users, out)}
    counts, _ = _interactions(root)
    popular = [i for i, _ in counts.most_common(100)]
    assert len({tuple(r[:10]) for r in answered.values()}) > 1  # not one list for all
    relevant = [truth[u] for u in users]
    model_recall = evaluate_rankings([answered[u] for u in users], relevant, [50],
                                     len(counts))["recall@50"]
    pop_recall = evaluate_rankings([popular] * len(users), relevant, [50],
                                   len(counts))["recall@50"]
    assert model_recall > pop_recall, (model_recall, pop_recall)
