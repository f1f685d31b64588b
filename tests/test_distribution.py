"""Two replicas train the same model as one process: MirroredStrategy over two logical
CPUs, on MovieLens 100K windows. Also the mixed-precision policy's scope and the
batch-size check (trainer/strategy.py)."""
import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from tests.ml100k_windows import CFG, FULL, HALVES, SAMPLED, USERS, WINDOWS, build_model
from trainer import strategy as S
from trainer.task import train_and_export, training_batch_size
from transform import features as F

# Two logical CPUs must be declared before TensorFlow starts its runtime, which no test
# module does at import (pytest imports every module before running any test).
try:
    tf.config.set_logical_device_configuration(
        tf.config.list_physical_devices("CPU")[0],
        [tf.config.LogicalDeviceConfiguration()] * 2)
except RuntimeError:  # already started: two_replicas() fails and says so
    pass


@pytest.fixture(scope="module")
def two_replicas():
    devices = tf.config.list_logical_devices("CPU")
    if len(devices) < 2:
        pytest.fail("TensorFlow started before this module could split the CPU in two")
    return tf.distribute.MirroredStrategy([d.name for d in devices[:2]])


def _pair(cfg, strategy):
    """A one-process model and a copy with the same weights under ``strategy``."""
    tf.keras.utils.set_random_seed(0)
    one = build_model(cfg)
    with strategy.scope():
        two = build_model(cfg)
    two.set_weights(one.get_weights())
    return one, two


def _per_replica(strategy):
    """Replica r gets half r of the global batch."""
    return strategy.experimental_distribute_values_from_function(
        lambda ctx: {k: tf.constant(v) for k, v in HALVES[ctx.replica_id_in_sync_group].items()})


def test_the_halves_differ_so_the_test_can_fail():
    targets = [int((h[F.WINDOW_ITEMS][:, 1:] >= 0).sum()) for h in HALVES]
    assert targets == [33, 27]
    items = [set(h[F.WINDOW_ITEMS][:, 1:][h[F.WINDOW_ITEMS][:, 1:] >= 0]) for h in HALVES]
    # Targets only one half holds: a replica sees them only through the all-gather.
    assert len(items[0] - items[1]) > 10 and len(items[1] - items[0]) > 10


@pytest.mark.parametrize("cfg", [FULL, SAMPLED], ids=["full", "sampled"])
def test_two_replicas_give_one_process_loss_and_gradients(cfg, two_replicas):
    one, two = _pair(cfg, two_replicas)
    assert one.full_softmax == (cfg is FULL)
    with tf.GradientTape() as tape:
        loss = one.compute_loss(WINDOWS)
    grads = [tf.convert_to_tensor(g) for g in tape.gradient(loss, one.trainable_variables)]

    @tf.function
    def step(features):
        with tf.GradientTape() as tape:
            share = two.compute_loss(features)
        g = tape.gradient(share, two.trainable_variables)
        return share, [tf.convert_to_tensor(x) for x in g]

    shares, replica_grads = two_replicas.run(step, args=(_per_replica(two_replicas),))
    total = two_replicas.reduce("SUM", shares, axis=None)
    # Keras sums the replicas' gradients and logged losses.
    summed = [two_replicas.reduce("SUM", g, axis=None) for g in replica_grads]
    assert float(total) == pytest.approx(float(loss), rel=1e-5)
    for v, a, b in zip(one.trainable_variables, grads, summed):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-4, atol=1e-7, err_msg=v.name)
    # Each half alone (what a replica used to see) gives another loss.
    alone = float(one.compute_loss(HALVES[0]))
    assert abs(alone - float(loss)) > 0.05


def test_every_replica_samples_the_one_process_negatives(two_replicas):
    one, two = _pair(SAMPLED, two_replicas)
    _, negatives = one.logits(*one.positions(WINDOWS))

    @tf.function
    def draw(features):
        return two.logits(*two.positions(features))[1]

    per_replica = two_replicas.experimental_local_results(
        two_replicas.run(draw, args=(_per_replica(two_replicas),)))
    for replica_negatives in per_replica:
        np.testing.assert_array_equal(replica_negatives.numpy(), negatives.numpy())
    # They come from both halves' targets.
    targets = [set(h[F.WINDOW_ITEMS][:, 1:][h[F.WINDOW_ITEMS][:, 1:] >= 0]) for h in HALVES]
    drawn = set(negatives.numpy())
    assert drawn - targets[0] and drawn - targets[1]


@pytest.mark.parametrize("cfg", [FULL, SAMPLED], ids=["full", "sampled"])
def test_one_keras_step_on_two_replicas_is_one_process_step(cfg, two_replicas):
    """Through ``fit``: Keras splits the global batch, sums the logged losses and the
    gradients; the L2 term (``cfg.l2``) counts once."""
    one, two = _pair(cfg, two_replicas)
    one.compile(optimizer=tf.keras.optimizers.SGD(1.0))
    with two_replicas.scope():
        two.compile(optimizer=tf.keras.optimizers.SGD(1.0))
    data = tf.data.Dataset.from_tensor_slices(WINDOWS).batch(USERS)
    before = one.get_weights()
    logs = [m.fit(data, epochs=1, verbose=0).history for m in (one, two)]
    for key in ("loss", "regularization_loss"):
        assert logs[1][key][0] == pytest.approx(logs[0][key][0], rel=1e-5), key
    assert logs[0]["regularization_loss"][0] > 0
    moved = 0.0
    for a, b, start in zip(one.get_weights(), two.get_weights(), before):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6)
        moved = max(moved, float(np.abs(a - start).max()))
    assert moved > 1e-3


def test_batch_size_must_divide_by_the_replicas(two_replicas):
    with pytest.raises(ValueError, match="batch_size 65 does not divide by the 2 replicas "
                                         "of MirroredStrategy"):
        S.check_batch_size(65, two_replicas)
    with pytest.raises(ValueError, match="batch_size 65 does not divide"):
        training_batch_size(65, 100_000, two_replicas)
    assert training_batch_size(64, 100_000, two_replicas) == 64
    # Small data: a quarter of 38 windows is 9, rounded down to 8 for two replicas.
    assert training_batch_size(64, 38, two_replicas) == 8
    one = tf.distribute.OneDeviceStrategy("/cpu:0")
    assert training_batch_size(64, 38, one) == 9
    S.check_batch_size(65, one)


def test_mixed_precision_ends_with_the_training(tmp_path):
    policy = lambda: tf.keras.mixed_precision.global_policy().name  # noqa: E731
    assert policy() == "float32"
    with S.training_strategy(gpus=["/physical_device:GPU:0"]) as strategy:
        assert policy() == "mixed_float16"
        assert S.strategy_name(strategy) == "OneDeviceStrategy"
    assert policy() == "float32"
    with S.training_strategy(gpus=[]):
        assert policy() == "float32"
    # The Trainer's own entry point restores it when training fails, too.
    with pytest.raises(FileNotFoundError, match="no SequenceGen examples"):
        train_and_export([str(tmp_path / "none" / "*")], [], None, CFG, None,
                         str(tmp_path / "model"), str(tmp_path / "run"),
                         gpus=["/physical_device:GPU:0"])
    assert policy() == "float32"


def test_a_step_under_mixed_precision_scales_the_loss(caplog):
    """``mixed_float16`` wraps the optimizer in a LossScaleOptimizer, whose
    ``apply_gradients`` expects a scaled loss and unscaled gradients (TFRS's own step
    skips both, and Keras then warns). The attention encoder's towers cover the mean's."""
    previous = tf.keras.mixed_precision.global_policy()
    tf.keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        tf.keras.utils.set_random_seed(0)
        model = build_model(dataclasses.replace(FULL, encoder="attention"))
        model.compile(optimizer=tf.keras.optimizers.SGD(1.0))
        assert hasattr(model.optimizer, "get_scaled_loss")
        before = model.get_weights()
        # Dynamic loss scaling skips the steps whose scaled gradients overflow float16
        # while it halves its scale from 2 ** 15: 20 steps leave some to apply.
        loss = model.fit(tf.data.Dataset.from_tensor_slices(WINDOWS).batch(USERS).repeat(20),
                         verbose=0).history["loss"][0]
    finally:
        tf.keras.mixed_precision.set_global_policy(previous)
    assert np.isfinite(loss)
    assert not [r for r in caplog.records if "LossScaleOptimizer" in r.getMessage()]
    assert any(np.abs(a - b).max() > 1e-3 for a, b in zip(model.get_weights(), before))
