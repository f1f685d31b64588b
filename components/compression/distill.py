"""Knowledge distillation of the two-tower model into a narrower student.

Int8 storage makes every weight one byte (plus a float scale per row), so beyond
about 3.8x the only way to a smaller serving model is fewer weights. The candidate
index dominates them, ``[items, output_dim]``: halving the output width halves it. The student
learns from the labels (the Trainer's next-item softmax) and from the teacher's
distribution over the same candidates (Hinton et al., 2015), which carries more than
the one positive per position.
"""
from __future__ import annotations

import dataclasses
from typing import Dict

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs

from trainer.config import TrainerConfig
from trainer.model import SequenceRetrievalModel


def student_config(teacher: TrainerConfig, divisor: int) -> TrainerConfig:
    """The teacher's settings with the served widths divided by ``divisor``: the output
    width (the candidate index is ``[items, output_dim]``, most of the served weights)
    and, when the query tower has one, the user-ID embedding. The candidate tower's
    item embedding and the hidden layers stay: they are not served, or small, and a
    32-wide model trained from scratch matched the 64-wide one on MovieLens 100K
    (recall@50 0.381 both) while a student narrowed everywhere lost 1.2-3.2%."""
    if divisor < 2:
        raise ValueError(f"a student must be narrower than its teacher: divisor {divisor} < 2")
    narrow = lambda w: max(8, w // divisor)  # noqa: E731
    # Keras's Adam, not the Trainer's lazy one: on MovieLens 100K the same teacher's
    # student lost 2.08% recall@50 with lazy updates and 0.07-0.38% with Adam's (whose
    # decayed momentum keeps moving rows the batch did not look up).
    return dataclasses.replace(
        teacher, output_dim=narrow(teacher.output_dim),
        id_embedding_dim=(narrow(teacher.id_embedding_dim) if teacher.use_user_id
                          else teacher.id_embedding_dim), optimizer="adam")


class DistillationModel(tfrs.Model):
    """A student trained on ``alpha * labels + (1 - alpha) * teacher``.

    Both are the Trainer's next-item softmax at every valid position, over the same
    candidates (the whole catalog, or the same sampled negatives); the soft targets
    are the frozen teacher's softmax over them.
    """

    def __init__(self, student: SequenceRetrievalModel, teacher: SequenceRetrievalModel,
                 alpha: float) -> None:
        super().__init__()
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        if student.full_softmax != teacher.full_softmax:
            raise ValueError("student and teacher must use the same softmax")
        self.student, self.teacher, self.alpha = student, teacher, alpha
        self.teacher.trainable = False

    @tf.autograph.experimental.do_not_convert
    def compute_loss(self, features: Dict[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        positions = self.student.positions(features, training)
        logits, negatives = self.student.logits(*positions)
        targets = positions[1]
        labels = targets if self.student.full_softmax else tf.zeros_like(targets)
        hard = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
        t_logits, _ = self.teacher.logits(*self.teacher.positions(features, False),
                                          negatives=negatives)
        soft = tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(
            tf.stop_gradient(tf.nn.softmax(t_logits)), logits))
        return self.alpha * hard + (1.0 - self.alpha) * soft


def principal_directions(embeddings: np.ndarray, width: int) -> np.ndarray:
    """``[d, width]`` orthonormal directions that keep most of the candidate
    embeddings' dot products: the top right singular vectors of ``[items, d]``."""
    _, _, vt = np.linalg.svd(np.asarray(embeddings, np.float64), full_matrices=False)
    return vt[:width].T.astype(np.float32)


def init_student_from_teacher(teacher_towers, student_towers,
                              embeddings: np.ndarray) -> bool:
    """Starts the student as the teacher projected onto ``principal_directions``.

    Every weight whose shape the two share is copied. The output layers map into the
    ``k`` kept directions ``P [d, k]``: ``W' = W P`` and ``b' = b P``. The query tower
    reads the encoded history, now ``k`` wide, whose teacher counterpart is about
    ``h' P^T``, so its first layer's history rows become ``P^T W_h``. Only the mean
    encoder (no weights of its own) is projected; returns False, leaving the student
    as built, when the history encoder has weights.
    """
    (tq, tc, te), (sq, sc, se) = teacher_towers, student_towers
    if te.weights or se.weights:
        return False
    k = int(sc.mlp.layers[-1].kernel.shape[1])
    p = principal_directions(embeddings, k)
    for t_tower, s_tower in ((tq, sq), (tc, sc)):
        t_dense = [l for l in t_tower.mlp.layers if isinstance(l, tf.keras.layers.Dense)]
        s_dense = [l for l in s_tower.mlp.layers if isinstance(l, tf.keras.layers.Dense)]
        for name, layer in t_tower.embeddings.items():
            s_tower.embeddings[name].set_weights(layer.get_weights())
        for name, layer in t_tower.projections.items():
            s_tower.projections[name].set_weights(layer.get_weights())
        for t_layer, s_layer in zip(t_dense[1:-1], s_dense[1:-1]):
            s_layer.set_weights(t_layer.get_weights())
        kernel, bias = t_dense[-1].get_weights()
        if len(t_dense) == 1:  # no hidden layer: the output layer reads the history too
            raise ValueError("projecting a tower without hidden layers is not supported")
        s_dense[-1].set_weights([kernel @ p, bias @ p])
        first_kernel, first_bias = t_dense[0].get_weights()
        if t_tower._passthrough:  # the history: the last rows of the first layer
            d = p.shape[0]
            first_kernel = np.concatenate([first_kernel[:-d], p.T @ first_kernel[-d:]])
        s_dense[0].set_weights([first_kernel, first_bias])
    return True
