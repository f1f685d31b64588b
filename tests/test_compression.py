"""Compression pieces: int8 quantization, the serving tower (float and int8), distillation."""
import numpy as np
import pytest
import tensorflow as tf

from components.compression.component import choose
from components.compression.distill import DistillationModel, student_config
from serving.savedmodel.index import Int8Index
from serving.savedmodel.quantize import dequantize_rows, quantize_columns, quantize_rows
from serving.savedmodel.tower import ServingTower
from tests.test_trainer_model import CATALOG, QUERY_FEATURES, WINDOWS, _model
from trainer.config import TrainerConfig
from trainer.data import HISTORY
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


def test_serving_towers_match_the_keras_tower():
    tf.keras.utils.set_random_seed(0)  # the same random tower whatever ran before
    model = _model()
    query, candidate = model.query_tower, model.candidate_tower
    feats = {f: np.array([0, 1, 2, 1]) for f in QUERY_FEATURES}
    feats[HISTORY] = np.random.default_rng(3).normal(size=(4, 4)).astype(np.float32)
    # The time inputs, log(1 + days): 0, a day, a week, a year.
    feats[F.QUERY_AGE] = feats[F.QUERY_GAP] = np.log1p([[0.0], [1.0], [7.0], [365.0]]).astype(
        np.float32)
    q_float = query(feats).numpy()
    np.testing.assert_allclose(ServingTower(query)(feats).numpy(), q_float, atol=1e-6)
    items = {f: v[:4] for f, v in CATALOG.items()}
    c_float = candidate(items).numpy()
    np.testing.assert_allclose(ServingTower(candidate)(items).numpy(), c_float, atol=1e-6)
    q_int8 = ServingTower(query, int8=True)(feats).numpy()
    # A random tower can switch every ReLU off for an input: then both give the zero
    # vector (seen with seed 12); every other row keeps its direction through int8.
    live = np.linalg.norm(q_float, axis=1) > 0
    np.testing.assert_array_equal(q_int8[~live], 0.0)
    cosine = (q_float * q_int8).sum(axis=1)[live]
    assert live.sum() >= 3 and (cosine > 0.999).all(), cosine
    cands = np.random.default_rng(0).normal(size=(20, 4)).astype(np.float32)
    exact = q_float @ cands.T
    approx = Int8Index(cands).scores(tf.constant(q_float)).numpy()
    np.testing.assert_allclose(approx, exact, atol=0.02)


def test_distillation_loss_mixes_labels_and_teacher_distribution():
    teacher, student = _model(), _model()
    t_logits, _ = teacher.logits(*teacher.positions(WINDOWS))
    s_logits, _ = student.logits(*student.positions(WINDOWS))
    targets = student.positions(WINDOWS)[1].numpy()
    log_s = tf.nn.log_softmax(s_logits).numpy()
    # Full softmax: labels are the target items; soft targets the teacher's softmax.
    hard = -log_s[np.arange(len(targets)), targets].mean()
    soft = -(tf.nn.softmax(t_logits).numpy() * log_s).sum(axis=1).mean()
    for alpha in (1.0, 0.0, 0.3):
        model = DistillationModel(student, teacher, alpha)
        assert float(model.compute_loss(WINDOWS)) == pytest.approx(
            alpha * hard + (1 - alpha) * soft, rel=1e-4)
    # The teacher is frozen: only the student's weights train.
    assert not teacher.trainable
    assert {id(v) for v in model.trainable_variables} == \
        {id(v) for v in student.trainable_variables}


def test_student_config_divides_the_served_widths():
    teacher = TrainerConfig(id_embedding_dim=64, output_dim=64, tower_layers=(256, 16))
    student = student_config(teacher, 2)
    # The output width (the candidate index) halves; the unserved item-ID embedding and
    # the hidden layers stay.
    assert (student.id_embedding_dim, student.output_dim, student.tower_layers) == \
        (64, 32, (256, 16))
    assert student_config(teacher, 16).output_dim == 8  # never narrower than 8
    # With a user-ID embedding in the query tower, that is served and halves too.
    with_id = TrainerConfig(id_embedding_dim=64, use_user_id=True)
    assert student_config(with_id, 2).id_embedding_dim == 32
    assert student.temperature == teacher.temperature and student.epochs == teacher.epochs
    assert teacher.optimizer == "lazy_adam" and student.optimizer == "adam"
    with pytest.raises(ValueError, match="divisor 1"):
        student_config(teacher, 1)


def test_each_training_phase_stops_at_the_step_cap():
    """Epochs of MovieLens-sized data run whole; at a million items the cap ends a phase
    (a real Keras fit: the optimizer counts the batches it took)."""
    from types import SimpleNamespace
    from components.compression.candidates import fit, phase_steps
    assert phase_steps(5, 15, 1000) == 75 and phase_steps(5, 3244, 1000) == 1000
    assert phase_steps(1, 3244, 0) == 3244 and phase_steps(1, 0, 10) == 1
    x = np.arange(40, dtype=np.float32).reshape(-1, 1)
    teacher = SimpleNamespace(steps_per_epoch=10, dataset=lambda: tf.data.Dataset
                              .from_tensor_slices((x, x)).batch(4))
    for cap, steps, epochs in ((0, 30, 3), (1000, 30, 3), (7, 7, 1)):
        model = tf.keras.Sequential([tf.keras.layers.Dense(1)])
        model.compile(optimizer="sgd", loss="mse")
        history, ran = fit(model, teacher, 3, {"max_train_steps": cap})
        assert ran == steps == int(model.optimizer.iterations.numpy())
        assert len(history.history["loss"]) == epochs


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


def test_projected_student_with_every_direction_is_the_teacher():
    # Kept directions P [d, d] are a rotation: q P . c P = q . c, and the history the
    # query tower reads, h P, meets first-layer rows P^T W_h, so h P P^T W_h = h W_h.
    # The student must then score exactly as the teacher.
    from components.compression.distill import init_student_from_teacher
    from serving.savedmodel.export import embed_catalog
    teacher, student = _model(), _model()
    t_logits, _ = teacher.logits(*teacher.positions(WINDOWS))
    student.logits(*student.positions(WINDOWS))  # builds the student's variables
    towers = lambda m: (m.query_tower, m.candidate_tower, m.encoder)  # noqa: E731
    assert init_student_from_teacher(towers(teacher), towers(student),
                                     embed_catalog(teacher.candidate_tower, CATALOG))
    s_logits, _ = student.logits(*student.positions(WINDOWS))
    np.testing.assert_allclose(s_logits.numpy(), t_logits.numpy(), atol=1e-4)


def test_projected_student_keeps_the_principal_directions():
    from components.compression.distill import principal_directions
    rng = np.random.default_rng(0)
    # Points spread along the first two axes, barely along the third.
    x = rng.normal(size=(200, 3)) * np.array([3.0, 2.0, 0.01])
    p = principal_directions(x, 2)
    assert p.shape == (3, 2)
    np.testing.assert_allclose(p.T @ p, np.eye(2), atol=1e-5)
    assert abs(p[2]).max() < 0.01  # the third axis is dropped
