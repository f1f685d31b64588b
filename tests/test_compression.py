"""Compression pieces: int8 quantization, the int8 tower, the core-ops query features."""
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_transform as tft

from components.compression.quantize import dequantize_rows, quantize_columns, quantize_rows
from components.compression.serving import Int8Index, LookupQueryFeatures, QuantizedTower
from tests.test_trainer_model import CFG, QUERY_FEATURES, SIZES, _batch
from trainer.export import TransformQueryFeatures, _raw_serving_spec
from trainer.model import build_towers
from transform import features as F


def test_quantize_rows_by_hand():
    w = np.array([[1.0, -0.5, 0.0], [0.0, 0.0, 0.0], [0.2, 0.1, -0.4]], np.float32)
    q, scale = quantize_rows(w)
    # Row 0: scale 1/127, -0.5 * 127 = -63.5 rounds to -64. Row 1: zero row keeps scale 1.
    assert q.dtype == np.int8
    assert q[0].tolist() == [127, -64, 0] and q[1].tolist() == [0, 0, 0]
    np.testing.assert_allclose(scale, [1 / 127, 1.0, 0.4 / 127], rtol=1e-6)
    back = dequantize_rows(tf.constant(q), tf.constant(scale), tf.constant([0, 2])).numpy()
    np.testing.assert_allclose(back, w[[0, 2]], atol=np.max(scale[[0, 2]]) / 2 + 1e-7)
    qc, sc = quantize_columns(w)
    assert qc.shape == (3, 3) and sc.shape == (3,)


def test_int8_tower_and_index_match_float_ones():
    query, candidate = build_towers(SIZES, CFG)
    batch = _batch()
    q_float = query({f: batch[f] for f in QUERY_FEATURES}).numpy()
    q_int8 = QuantizedTower(query)({f: batch[f] for f in QUERY_FEATURES}).numpy()
    cosine = (q_float * q_int8).sum(axis=1)
    assert (cosine > 0.999).all(), cosine
    cands = np.random.default_rng(0).normal(size=(20, 3)).astype(np.float32)
    exact = q_float @ cands.T
    approx = Int8Index(cands).scores(tf.constant(q_float)).numpy()
    np.testing.assert_allclose(approx, exact, atol=0.02)


@pytest.mark.e2e
def test_lookup_query_features_equal_the_transform_graph(small_pipeline):
    root, summary, _ = small_pipeline
    graph = tft.TFTransformOutput(summary["records"]["Transform"].uris()["transform_graph"])
    spec = _raw_serving_spec(graph.raw_feature_spec())
    rows = [(b"u0", 30, b"F", b"engineer"), (b"u5", -1, b"unknown", b"other"),
            (b"never-seen", 70, b"X", b"astronaut"), (b"u7", 17, b"M", b"student")]
    examples = []
    for user, age, gender, occupation in rows:
        feature = {
            F.USER_ID: tf.train.Feature(bytes_list=tf.train.BytesList(value=[user])),
            F.USER_AGE: tf.train.Feature(int64_list=tf.train.Int64List(value=[age])),
            F.USER_GENDER: tf.train.Feature(bytes_list=tf.train.BytesList(value=[gender])),
            F.USER_OCCUPATION: tf.train.Feature(
                bytes_list=tf.train.BytesList(value=[occupation]))}
        examples.append(tf.train.Example(
            features=tf.train.Features(feature=feature)).SerializeToString())
    raw = tf.io.parse_example(tf.constant(examples), spec)
    expected = TransformQueryFeatures(graph.transform_features_layer())(raw)
    lookup = LookupQueryFeatures({v: graph.vocabulary_file_by_name(v) for v in (
        F.USER_VOCAB, F.GENDER_VOCAB, F.OCCUPATION_VOCAB)})(raw)
    for name in QUERY_FEATURES:
        assert lookup[name].numpy().tolist() == expected[name].numpy().tolist(), name
