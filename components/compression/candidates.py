"""Building the compressed candidates: TF-MOT pruning during a fine-tune, a distilled
student, and the int8 export through the Trainer's own export path.

1. The Trainer's towers, fine-tuned for ``fine_tune_epochs`` with the query tower's
   Dense layers wrapped in ``tfmot.sparsity.keras.prune_low_magnitude`` (polynomial
   schedule up to ``target_sparsity``), then int8.
2. With ``student_divisor`` >= 2: a student whose served widths are divided by it,
   started as the teacher projected onto the principal directions of its candidate
   embeddings and distilled from the Trainer's towers for ``distill_epochs``
   (``distill.py``), then the same pruning fine-tune and int8.

Each training phase stops after ``max_train_steps`` batches (0: no cap). The epochs
above are those of MovieLens-sized data, tens of batches each; at a million items one
epoch is thousands of batches, and the compressor would outlast the Trainer.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Iterator, Optional, Tuple

import tensorflow as tf
import tensorflow_model_optimization as tfmot
import tensorflow_transform as tft
from tensorflow_model_optimization.python.core.sparsity.keras import pruning_wrapper

from components.compression.distill import (DistillationModel, init_student_from_teacher,
                                            student_config)
from components.compression.teacher import Teacher
from serving.savedmodel.export import embed_catalog
from serving.savedmodel.fingerprint import write_fingerprint
from trainer.optim import make_optimizer
from trainer.task import export

METHOD = "magnitude-pruning+int8-per-row"
# ``build()`` returns ``(query, candidate, encoder, details)``: trained towers and
# what ``compression.json`` records of how they were made.
Build = Callable[[], Tuple[Any, Any, Any, Dict[str, Any]]]


def prune(tower, schedule) -> None:
    """Wraps each Dense layer of ``tower.mlp`` (the layer objects keep their weights)."""
    layers = [tfmot.sparsity.keras.prune_low_magnitude(l, pruning_schedule=schedule)
              if isinstance(l, tf.keras.layers.Dense) else l for l in tower.mlp.layers]
    tower.mlp = tf.keras.Sequential(layers, name="mlp_pruned")


def strip(tower) -> None:
    layers = [l.layer if isinstance(l, pruning_wrapper.PruneLowMagnitude) else l
              for l in tower.mlp.layers]
    tower.mlp = tf.keras.Sequential(layers, name="mlp")


def sparsity(tower) -> float:
    kernels = [l.kernel.numpy() for l in tower.mlp.layers
               if isinstance(l, tf.keras.layers.Dense)]
    return float(sum((k == 0).sum() for k in kernels) / sum(k.size for k in kernels))


def step_cap(props: Dict[str, Any]) -> int:
    return int(props.get("max_train_steps") or 0)


def phase_steps(epochs: int, steps_per_epoch: int, cap: int) -> int:
    """Batches a training phase runs: ``epochs`` passes, at most ``cap`` (0: no cap)."""
    steps = max(1, epochs * steps_per_epoch)
    return min(steps, cap) if cap > 0 else steps


def fit(model, teacher: Teacher, epochs: int, props: Dict[str, Any], **kwargs):
    """``model.fit`` for ``epochs`` passes over the teacher's windows, or for
    ``max_train_steps`` batches of them if that is fewer; returns (history, batches)."""
    steps = phase_steps(epochs, teacher.steps_per_epoch, step_cap(props))
    if steps == max(1, epochs * teacher.steps_per_epoch):
        return model.fit(teacher.dataset(), epochs=epochs, verbose=2, **kwargs), steps
    return model.fit(teacher.dataset().repeat(), epochs=1, steps_per_epoch=steps, verbose=2,
                     **kwargs), steps


def candidates(teacher: Teacher, props: Dict[str, Any]) -> Iterator[Tuple[str, Build]]:
    """``(method, build)`` pairs in the order they are tried."""
    yield METHOD, lambda: prune_fine_tune(*teacher.towers(), teacher, props, teacher.model)
    divisor = int(props.get("student_divisor", 0))
    if divisor >= 2:
        yield f"distilled-student(1/{divisor})+{METHOD}", \
            lambda: distill(teacher, divisor, props)


def distill(teacher: Teacher, divisor: int, props: Dict[str, Any]):
    cfg = student_config(teacher.cfg, divisor)
    teacher_towers = teacher.towers()
    frozen = teacher.model(*teacher_towers)
    query, candidate, encoder = teacher.build(cfg)
    projected = init_student_from_teacher(
        teacher_towers, (query, candidate, encoder),
        embed_catalog(teacher_towers[1], teacher.catalog.item_features()))
    alpha = float(props.get("distill_alpha", 0.5))
    make = lambda q, c, e: DistillationModel(teacher.model(q, c, e, cfg=cfg),  # noqa: E731
                                             frozen, alpha)
    # A projected student starts next to the teacher and needs a few epochs (5 on
    # MovieLens 100K: -1.5 to +0.7% recall@50); one trained from scratch needs the
    # Trainer's.
    epochs = (int(props.get("distill_epochs", 0)) if projected else 0) or teacher.cfg.epochs
    model = make(query, candidate, encoder)
    model.compile(optimizer=make_optimizer(cfg.optimizer, cfg.learning_rate))
    history, steps = fit(model, teacher, epochs, props)
    query, candidate, encoder, details = prune_fine_tune(query, candidate, encoder,
                                                         teacher, props, make)
    details.update(distill_epochs=epochs, distill_steps=steps, distill_alpha=alpha, projected_init=projected,
                   distill_loss=[float(x) for x in history.history.get("loss", [])],
                   student={"id_embedding_dim": cfg.id_embedding_dim,
                            "output_dim": cfg.output_dim,
                            "tower_layers": list(cfg.tower_layers)})
    return query, candidate, encoder, details


def prune_fine_tune(query, candidate, encoder, teacher: Teacher, props: Dict[str, Any],
                    make):
    """TF-MOT magnitude pruning of the query tower's Dense layers during a fine-tune;
    ``make(query, candidate, encoder)`` builds the training model around the towers."""
    epochs = int(props["fine_tune_epochs"])
    steps = phase_steps(epochs, teacher.steps_per_epoch, step_cap(props))
    schedule = tfmot.sparsity.keras.PolynomialDecay(
        initial_sparsity=0.0, final_sparsity=float(props["target_sparsity"]),
        begin_step=0, end_step=max(1, int(0.8 * steps)), frequency=max(1, steps // 20))
    prune(query, schedule)
    model = make(query, candidate, encoder)
    model.compute_loss(teacher.sample)  # builds the pruning wrappers
    # Keras's Adam, as for the student (see distill.student_config).
    model.compile(optimizer=make_optimizer("adam", float(props["learning_rate"])))
    history, steps = fit(model, teacher, epochs, props,
                         callbacks=[tfmot.sparsity.keras.UpdatePruningStep()])
    strip(query)
    return query, candidate, encoder, {
        "sparsity": round(sparsity(query), 4), "fine_tune_steps": steps,
        "fine_tune_loss": [float(x) for x in history.history.get("loss", [])]}


def export_candidate(query, candidate, encoder, teacher: Teacher,
                     graph: tft.TFTransformOutput, export_dir: str, model_name: str,
                     fingerprint: Optional[dict]) -> None:
    """The Trainer's serving SavedModel with int8 weights, and the compressed
    model's fingerprint."""
    export(export_dir, query, candidate, encoder, graph, teacher.catalog, teacher.history,
           teacher.cfg, int8=True, model_name=model_name)
    if fingerprint is not None:
        write_fingerprint(export_dir, fingerprint)
