"""evaluation/model_eval.py: what the evaluator sends a model's recommend_given_history."""
import numpy as np
import pytest
import tensorflow as tf

from evaluation.model_eval import evaluate_saved_model
from evaluation.split_data import build_split

DAY = 86400
A = lambda *xs: np.array(xs, dtype=object)  # noqa: E731


def _gap_model(path):
    """A SavedModel whose recommend_given_history answers e first after a gap of more
    than a day since the history, b first otherwise."""
    module = tf.Module()

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string),
                                  tf.TensorSpec([None, None], tf.string),
                                  tf.TensorSpec([None, None], tf.string),
                                  tf.TensorSpec([None], tf.float32)])
    def recommend_given_history(user_id, history_item_ids, exclude_item_ids,
                                days_since_history):
        away = (days_since_history > 1.0)[:, tf.newaxis]
        ids = tf.where(away, tf.constant([["e", "b"]]), tf.constant([["b", "e"]]))
        return {"item_ids": ids, "scores": tf.broadcast_to(tf.constant([[2.0, 1.0]]),
                                                           tf.shape(ids))}

    tf.saved_model.save(module, str(path),
                        signatures={"recommend_given_history": recommend_given_history})
    return str(path)


def test_the_model_is_asked_as_of_each_users_return(tmp_path):
    # u0 is back 9 days after their last train item and takes e; u1 goes on within the
    # hour and takes b. Both get their item first only if told their own gap.
    split = build_split(A("u0", "u0", "u1"), A("a", "b", "e"), A("u0", "u1"), A("e", "b"),
                        catalog=["a", "b", "e"], train_times=np.array([0, 1, 1]) * DAY + 1,
                        eval_times=np.array([10 * DAY + 1, DAY + 3600]))
    result = evaluate_saved_model(_gap_model(tmp_path / "m"), split, [1])
    assert result["recall@1"] == pytest.approx(1.0)
    # Without eval times the evaluator cannot tell: no gap, so u0 gets b and misses.
    no_times = build_split(A("u0", "u0", "u1"), A("a", "b", "e"), A("u0", "u1"),
                           A("e", "b"), catalog=["a", "b", "e"],
                           train_times=np.array([0, 1, 1]) * DAY + 1)
    assert evaluate_saved_model(str(tmp_path / "m"), no_times, [1])["recall@1"] == \
        pytest.approx(0.5)
