"""LazyAdam: Adam's update on the rows a batch looked up, nothing on the others."""
import numpy as np
import pytest
import tensorflow as tf

from trainer.optim import LazyAdam, make_optimizer


def _sparse_step(opt, var, indices, values):
    grad = tf.IndexedSlices(tf.constant(values, tf.float32), tf.constant(indices, tf.int64),
                            tf.constant(var.shape, tf.int64))
    opt.apply_gradients([(grad, var)])


def _adam_rows(w, m, v, g, step, lr=0.1, b1=0.9, b2=0.999, eps=1e-7):
    """Adam worked out in NumPy for the rows of a dense gradient ``g``."""
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    alpha = lr * np.sqrt(1 - b2 ** step) / (1 - b1 ** step)
    return w - alpha * m / (np.sqrt(v) + eps), m, v


def test_touched_rows_follow_adam_and_untouched_rows_do_not_move():
    start = np.arange(12, dtype=np.float32).reshape(4, 3) / 10
    lazy, dense = tf.Variable(start), tf.Variable(start)
    opt_lazy, opt_dense = LazyAdam(0.1), tf.keras.optimizers.Adam(0.1)
    # Step 1: rows 0 and 2, row 0 looked up twice (its gradients add up).
    g1 = [[1.0, -2.0, 0.5], [0.5, 0.5, 0.5], [-1.0, 1.0, 3.0]]
    for opt, var in ((opt_lazy, lazy), (opt_dense, dense)):
        _sparse_step(opt, var, [0, 0, 2], g1)
    full1 = np.zeros((4, 3), np.float32)
    full1[0] = np.add(g1[0], g1[1])
    full1[2] = g1[2]
    want, m, v = _adam_rows(start, 0.0, 0.0, full1, 1)
    # From zero moments both optimizers make the same first step.
    np.testing.assert_allclose(lazy.numpy(), want, rtol=1e-5)
    np.testing.assert_allclose(dense.numpy(), want, rtol=1e-5)
    # Step 2: only row 1. Keras's Adam still moves rows 0 and 2 (decayed momentum);
    # the lazy one leaves them, and their moments, as they were.
    before = lazy.numpy().copy()
    g2 = [[2.0, 0.0, -1.0]]
    for opt, var in ((opt_lazy, lazy), (opt_dense, dense)):
        _sparse_step(opt, var, [1], g2)
    after = lazy.numpy()
    np.testing.assert_array_equal(after[[0, 2, 3]], before[[0, 2, 3]])
    assert not np.allclose(dense.numpy()[[0, 2]], before[[0, 2]])
    row1, _, _ = _adam_rows(before[1], m[1], v[1], np.array(g2[0]), 2)
    np.testing.assert_allclose(after[1], row1, rtol=1e-5)


def test_dense_gradients_get_kerass_adam_update():
    start = np.ones((2, 2), np.float32)
    lazy, dense = tf.Variable(start), tf.Variable(start)
    g = tf.constant([[0.3, -0.1], [0.0, 2.0]])
    LazyAdam(0.05).apply_gradients([(g, lazy)])
    tf.keras.optimizers.Adam(0.05).apply_gradients([(g, dense)])
    np.testing.assert_allclose(lazy.numpy(), dense.numpy(), rtol=1e-6)


def test_amsgrad_is_refused():
    with pytest.raises(ValueError, match="amsgrad"):
        LazyAdam(0.1, amsgrad=True)


def test_make_optimizer_names():
    assert type(make_optimizer("lazy_adam", 0.1)) is LazyAdam
    assert type(make_optimizer("adam", 0.1)) is tf.keras.optimizers.Adam
    with pytest.raises(ValueError, match="unknown optimizer"):
        make_optimizer("sgd", 0.1)
