"""The request path's TensorProto conversions agree with TensorFlow's own helpers."""
import numpy as np
import pytest
import tensorflow as tf

from serving.tensors import to_ndarray, to_tensor_proto


@pytest.mark.parametrize("array", [
    np.array([[b"i1", b"i2"], [b"", b"\xff"]], dtype=object),
    np.array([], dtype=object).reshape(0, 100),
    np.array([[0.5, -1.0, 3.25]], dtype=np.float32),
    np.arange(6, dtype=np.int64).reshape(2, 3),
    np.array([True, False]),  # not on the fast path: falls back to tf.make_tensor_proto
])
def test_round_trip_matches_tensorflow(array):
    proto = to_tensor_proto(array)
    assert proto.dtype == tf.make_tensor_proto(array).dtype
    np.testing.assert_array_equal(tf.make_ndarray(proto), array)
    np.testing.assert_array_equal(to_ndarray(proto), array)
    assert to_ndarray(proto).shape == array.shape


def test_strings_from_clients_and_malformed_protos():
    proto = tf.make_tensor_proto(["u1", "u2", "u3"], dtype=tf.string)
    assert to_ndarray(proto).tolist() == [b"u1", b"u2", b"u3"]
    bad = tf.make_tensor_proto(np.zeros(4, np.float32))
    bad.tensor_content = b"\x00" * 3  # not a whole number of floats
    with pytest.raises((ValueError, TypeError)):
        to_ndarray(bad)
