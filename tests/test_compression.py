"""Compression pieces: int8 quantization, the int8 tower, the core-ops query features."""
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_transform as tft

from components.compression.component import choose
from components.compression.distill import DistillationModel, student_config
from components.compression.quantize import dequantize_rows, quantize_columns, quantize_rows
from components.compression.serving import Int8Index, LookupQueryFeatures, QuantizedTower
from tests.test_trainer_model import CANDIDATE_FEATURES, CFG, QUERY_FEATURES, SIZES, _batch
from trainer.config import TrainerConfig
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


PROB = np.array([0.4, 0.3, 0.2, 0.05, 0.03, 0.01, 0.01], np.float32)


def _logits(query, candidate, batch):
    q = query({f: batch[f] for f in QUERY_FEATURES}).numpy()
    c = candidate({f: batch[f] for f in CANDIDATE_FEATURES}).numpy()
    # Same as the Trainer's: q_i . c_j / T - log p(item_j), items 0..3 in this batch.
    return q @ c.T / CFG.temperature - np.log(PROB[[0, 1, 2, 3]])[None, :]


def _log_softmax(x):
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


def test_distillation_loss_mixes_labels_and_teacher_distribution():
    teacher_q, teacher_c = build_towers(SIZES, CFG)
    student_q, student_c = build_towers(SIZES, CFG)
    batch = _batch()
    t, s = _logits(teacher_q, teacher_c, batch), _logits(student_q, student_c, batch)
    hard = -np.trace(_log_softmax(s))  # labels: each row's own item (the diagonal)
    soft = -(np.exp(_log_softmax(t)) * _log_softmax(s)).sum()  # teacher's soft targets
    for alpha in (1.0, 0.0, 0.3):
        model = DistillationModel(student_q, student_c, teacher_q, teacher_c, CFG, PROB, alpha)
        assert float(model.compute_loss(batch)) == pytest.approx(
            alpha * hard + (1 - alpha) * soft, rel=1e-4)
    # The teacher is frozen: only the student's weights train.
    assert not teacher_q.trainable and not teacher_c.trainable
    assert {id(v) for v in model.trainable_variables} == \
        {id(v) for v in student_q.trainable_variables + student_c.trainable_variables}


def test_student_config_divides_widths():
    teacher = TrainerConfig(id_embedding_dim=64, output_dim=64, tower_layers=(256, 16))
    student = student_config(teacher, 2)
    assert (student.id_embedding_dim, student.output_dim, student.tower_layers) == \
        (32, 32, (128, 8))
    assert student_config(teacher, 4).tower_layers == (64, 8)  # never narrower than 8
    assert student.temperature == teacher.temperature and student.epochs == teacher.epochs
    assert teacher.optimizer == "lazy_adam" and student.optimizer == "adam"
    with pytest.raises(ValueError, match="divisor 1"):
        student_config(teacher, 1)


def _candidate(method, size, drop, within):
    return {"method": method, "size_bytes": size, "recall_drop_relative": drop,
            "within_tolerance": within}


def test_choose_takes_the_smallest_model_within_tolerance():
    a = _candidate("pruned", 390, -0.005, True)
    b = _candidate("student", 280, 0.015, True)
    c = _candidate("tiny", 150, 0.09, False)
    assert choose([a, b, c]) is b
    assert choose([a, c]) is a
    # None within tolerance: the least damaged one, which the caller will not bless.
    assert choose([_candidate("x", 100, 0.05, False), c])["method"] == "x"
    with pytest.raises(ValueError):
        choose([])


def test_int8_index_saves_int8_only_and_dequantizes_once_after_loading(tmp_path):
    cands = np.random.default_rng(1).normal(size=(50, 4)).astype(np.float32)
    index = Int8Index(cands)

    class M(tf.Module):
        def __init__(self):
            super().__init__()
            self.index = index

        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32)])
        def scores(self, q):
            return self.index.scores(q)

    tf.saved_model.save(M(), str(tmp_path))
    saved = tf.train.load_checkpoint(str(tmp_path / "variables" / "variables"))
    shapes = saved.get_variable_to_shape_map()
    [cache] = [k for k in shapes if k.startswith("index/cache/")]
    assert shapes[cache] == [0, 4]  # the float copy is not on disk
    loaded = tf.saved_model.load(str(tmp_path))
    q = np.random.default_rng(2).normal(size=(3, 4)).astype(np.float32)
    first = loaded.scores(tf.constant(q)).numpy()
    assert loaded.index.cache.numpy().shape == (50, 4)  # filled by the first call
    np.testing.assert_allclose(first, q @ cands.T, atol=0.05)
    np.testing.assert_allclose(loaded.scores(tf.constant(q)).numpy(), first, rtol=1e-6)


def test_measure_takes_the_drop_at_the_gate_k_even_below_10(monkeypatch, tmp_path):
    from components.compression import component
    fake = {"recall@5": 0.2, "recall@10": 0.4, "latency_ms_per_batch": 1.0}
    monkeypatch.setattr(component, "evaluate_saved_model", lambda *a: dict(fake))
    original = {"recall@5": 0.25, "recall@10": 0.4, "size_bytes": 1000}
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "w").write_bytes(b"x" * 100)
    entry = component.Executor._measure(str(tmp_path / "m"), None, [5, 10], "m", original, 5)
    # Gate K = 5: (0.25 - 0.2) / 0.25 = 0.2, not the 0 that recall@10 would give.
    assert entry["recall_drop_relative"] == pytest.approx(0.2)
    assert entry["size_ratio"] == pytest.approx(10.0)
