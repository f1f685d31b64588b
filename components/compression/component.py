"""ModelCompressor: TF-MOT pruning, distillation and int8, gated on recall.

It tries each method below, exports each through the Trainer's own export path
(``serving.savedmodel.export`` with ``int8=True``: int8 per-row embedding tables,
int8 per-channel kernels and an int8 candidate index, dequantized by core ops),
measures each on the evaluator's held-out split the way the evaluator does (train
history in the query, train items left out), and keeps the smallest whose relative
recall drop at ``gate_k`` is within ``max_recall_drop``:

1. The Trainer's towers, fine-tuned for ``fine_tune_epochs`` with the query tower's
   Dense layers wrapped in ``tfmot.sparsity.keras.prune_low_magnitude``
   (polynomial schedule up to ``target_sparsity``), then int8.
2. With ``student_divisor`` >= 2: a student whose served widths are divided by it,
   started as the teacher projected onto the principal directions of its candidate
   embeddings and distilled from the Trainer's towers for ``distill_epochs``
   (``distill.py``), then the same pruning fine-tune and int8.

Size on disk (whole directory, gzipped, and the learned weights alone, without the
per-user state tables that both models share), recall@K and latency per query batch
of every candidate go to ``compression.json`` (``tried``). The chosen model is blessed only
if the evaluator blessed the original and its recall drop is within tolerance.
Warm-up requests (``assets.extra/tf_serving_warmup_requests``) ship with the model.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
import time
from typing import Any, Dict, List, Optional

import tensorflow as tf
import tensorflow_model_optimization as tfmot
import tensorflow_transform as tft
from tensorflow_model_optimization.python.core.sparsity.keras import pruning_wrapper
from absl import logging
from tfx import types
from tfx.dsl.components.base import base_component, base_executor, executor_spec
from tfx.types import artifact_utils, standard_artifacts
from tfx.types.component_spec import ChannelParameter, ExecutionParameter

from components.compression.distill import (DistillationModel, init_student_from_teacher,
                                            student_config)
from components.retrieval_evaluator.component import serving_dir, write_blessing
from components.sequence_gen.component import split_pattern
from evaluation.model_eval import evaluate_saved_model
from evaluation.split_data import load_split_from_examples
from serving.savedmodel.export import embed_catalog, weight_bytes
from trainer import data as D
from trainer.config import TrainerConfig
from serving.savedmodel.fingerprint import read_fingerprint, with_compression, write_fingerprint
from trainer.model import SequenceRetrievalModel, build_towers
from trainer.optim import make_optimizer
from trainer.task import (TOWERS_CHECKPOINT, TOWERS_DIR, TOWERS_SPEC, export,
                          load_training_data, read_history, towers_checkpoint, training_model)
from transform import features as F
from transform.config import TransformConfig

REPORT_FILE = "compression.json"
METHOD = "magnitude-pruning+int8-per-row"
ORIGINAL_METHOD = "original (float32)"


def directory_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def gzipped_bytes(path: str) -> int:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=9) as tar:
        tar.add(path, arcname=".")
    return buf.tell()


def _prune(tower, schedule) -> None:
    """Wraps each Dense layer of ``tower.mlp`` (the layer objects keep their weights)."""
    layers = [tfmot.sparsity.keras.prune_low_magnitude(l, pruning_schedule=schedule)
              if isinstance(l, tf.keras.layers.Dense) else l for l in tower.mlp.layers]
    tower.mlp = tf.keras.Sequential(layers, name="mlp_pruned")


def _strip(tower) -> None:
    layers = [l.layer if isinstance(l, pruning_wrapper.PruneLowMagnitude) else l
              for l in tower.mlp.layers]
    tower.mlp = tf.keras.Sequential(layers, name="mlp")


def sparsity(tower) -> float:
    kernels = [l.kernel.numpy() for l in tower.mlp.layers
               if isinstance(l, tf.keras.layers.Dense)]
    return float(sum((k == 0).sum() for k in kernels) / sum(k.size for k in kernels))


def choose(candidates: List[Dict[str, Any]]) -> Dict[str, Any]:
    """The smallest candidate within the recall tolerance; if none is, the one that
    lost the least recall (it will not be blessed)."""
    if not candidates:
        raise ValueError("no compressed candidates to choose from")
    within = [c for c in candidates if c["within_tolerance"]]
    if within:
        return min(within, key=lambda c: c["size_bytes"])
    return min(candidates, key=lambda c: c["recall_drop_relative"])


class _Teacher:
    """The Trainer's model, rebuilt from its checkpoint, and its training data."""

    def __init__(self, model_uri: str, spec: dict, graph: tft.TFTransformOutput,
                 train: List[str]) -> None:
        self.model_uri, self.spec, self.graph, self.train = model_uri, spec, graph, train
        self.cfg = TrainerConfig.from_custom_config(spec)
        self.xcfg = TransformConfig.from_custom_config(spec)
        self.sizes, self.catalog, self.num_windows = load_training_data(
            train, graph, self.cfg, self.xcfg)
        self.history = read_history(train, graph, self.cfg)
        self.batch = min(self.cfg.batch_size, max(8, self.num_windows // 4))
        self.steps_per_epoch = max(1, self.num_windows // self.batch)
        self.feature_spec = D.window_spec(self.cfg.max_history)
        self.sample = next(iter(D.make_dataset(train, self.feature_spec, 8)))

    @classmethod
    def load(cls, model_uri: str, graph: tft.TFTransformOutput, sequences: str) -> "_Teacher":
        with tf.io.gfile.GFile(os.path.join(model_uri, TOWERS_DIR, TOWERS_SPEC)) as f:
            spec = json.load(f)
        return cls(model_uri, spec, graph, [split_pattern(sequences, "train")])

    def build(self, cfg: TrainerConfig):
        """Fresh, built ``(query, candidate, encoder)`` of the teacher's vocabulary sizes
        and ``cfg``'s widths."""
        towers = build_towers(self.sizes, cfg)
        self.model(*towers, cfg=cfg).compute_loss(self.sample)  # creates the variables
        return towers

    def towers(self):
        """A new copy of the teacher's towers with the trained weights."""
        towers = self.build(self.cfg)
        towers_checkpoint(*towers).read(os.path.join(
            self.model_uri, TOWERS_DIR, TOWERS_CHECKPOINT)).assert_existing_objects_matched()
        return towers

    def model(self, query, candidate, encoder,
              cfg: Optional[TrainerConfig] = None) -> SequenceRetrievalModel:
        """The Trainer's own training model around the towers."""
        return training_model(query, candidate, encoder, cfg or self.cfg, self.sizes,
                              self.catalog)

    def dataset(self) -> tf.data.Dataset:
        return D.make_dataset(self.train, self.feature_spec, self.batch,
                              min(self.cfg.shuffle_buffer, self.num_windows), self.cfg.seed)


class ModelCompressorSpec(types.ComponentSpec):
    PARAMETERS = {
        "target_sparsity": ExecutionParameter(type=float),
        "fine_tune_epochs": ExecutionParameter(type=int),
        "learning_rate": ExecutionParameter(type=float),
        "gate_k": ExecutionParameter(type=int),
        "max_recall_drop": ExecutionParameter(type=float),
        "model_name": ExecutionParameter(type=str),
        "student_divisor": ExecutionParameter(type=int),
        "distill_epochs": ExecutionParameter(type=int),
        "distill_alpha": ExecutionParameter(type=float),
    }
    INPUTS = {
        "model": ChannelParameter(type=standard_artifacts.Model),
        "model_blessing": ChannelParameter(type=standard_artifacts.ModelBlessing),
        "examples": ChannelParameter(type=standard_artifacts.Examples),
        "sequences": ChannelParameter(type=standard_artifacts.Examples),
        "transform_graph": ChannelParameter(type=standard_artifacts.TransformGraph),
    }
    OUTPUTS = {
        "compressed_model": ChannelParameter(type=standard_artifacts.Model),
        "blessing": ChannelParameter(type=standard_artifacts.ModelBlessing),
        "report": ChannelParameter(type=standard_artifacts.ModelEvaluation),
    }


class Executor(base_executor.BaseExecutor):
    def Do(self, input_dict: Dict[str, List[types.Artifact]],
           output_dict: Dict[str, List[types.Artifact]], exec_properties: Dict[str, Any]) -> None:
        get = lambda d, k: artifact_utils.get_single_instance(d[k])  # noqa: E731
        model, original_blessing = get(input_dict, "model"), get(input_dict, "model_blessing")
        out_model, blessing = get(output_dict, "compressed_model"), get(output_dict, "blessing")
        report_artifact = get(output_dict, "report")
        gate_k = int(exec_properties["gate_k"])
        max_drop = float(exec_properties["max_recall_drop"])
        report: Dict[str, Any] = {"method": METHOD, "gate_k": gate_k, "max_recall_drop": max_drop}

        if original_blessing.get_int_custom_property("blessed") != 1:
            report.update(blessed=False, reason="the evaluator did not bless the original")
            logging.warning("ModelCompressor: %s; nothing compressed", report["reason"])
            write_blessing(blessing, False, out_model)
            self._write_report(report_artifact, report)
            return

        graph = tft.TFTransformOutput(get(input_dict, "transform_graph").uri)
        teacher = _Teacher.load(model.uri, graph, get(input_dict, "sequences").uri)
        split = self._eval_split(get(input_dict, "examples").uri, graph)
        ks = sorted({10, gate_k})
        original = self._measure(serving_dir(model), split, ks, ORIGINAL_METHOD, None)
        tried = [original]
        fingerprint = read_fingerprint(serving_dir(model))
        if fingerprint is not None:  # the compressed model also depends on these settings
            fingerprint = with_compression(fingerprint, dict(exec_properties))
        staging = os.path.join(out_model.uri, "candidates")
        for method, build in self._candidates(teacher, exec_properties):
            start = time.time()
            # Same initial weights and shuffles whatever ran before in this process
            # (the Trainer in a local run), so a candidate's result is reproducible.
            tf.keras.utils.set_random_seed(teacher.cfg.seed)
            query, candidate, encoder, details = build()
            path = os.path.join(staging, method.replace("+", "_"))
            self._export(query, candidate, encoder, teacher, graph, path,
                         exec_properties["model_name"], fingerprint)
            entry = self._measure(path, split, ks, method, original, gate_k)
            entry.update(details, seconds=round(time.time() - start, 1),
                         within_tolerance=entry["recall_drop_relative"] <= max_drop, path=path)
            logging.info("ModelCompressor tried %s: %d bytes (%.2fx), recall@%d drop %.2f%%",
                         method, entry["size_bytes"], entry["size_ratio"], gate_k,
                         100 * entry["recall_drop_relative"])
            tried.append(entry)

        chosen = choose(tried[1:])
        shutil.move(chosen.pop("path"), os.path.join(out_model.uri, "Format-Serving"))
        shutil.rmtree(staging, ignore_errors=True)
        for entry in tried:
            entry.pop("path", None)
            entry["chosen"] = entry is chosen
        report.update(self._summary(original, chosen, gate_k), tried=tried)
        report["blessed"] = chosen["within_tolerance"]
        if not report["blessed"]:
            logging.warning("ModelCompressor did NOT bless: relative recall@%d drop %.2f%% "
                            "exceeds %.2f%%", gate_k, 100 * chosen["recall_drop_relative"],
                            100 * max_drop)
        write_blessing(blessing, report["blessed"], out_model)
        self._write_report(report_artifact, report)
        logging.info("ModelCompressor: %s", json.dumps(report))

    def _candidates(self, teacher: "_Teacher", props: Dict[str, Any]):
        """``(method, build)`` pairs; ``build()`` returns trained, pruned towers."""
        yield METHOD, lambda: self._prune_fine_tune(*teacher.towers(), teacher, props,
                                                    teacher.model)
        divisor = int(props.get("student_divisor", 0))
        if divisor >= 2:
            yield f"distilled-student(1/{divisor})+{METHOD}", \
                lambda: self._distill(teacher, divisor, props)

    def _distill(self, teacher: "_Teacher", divisor: int, props: Dict[str, Any]):
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
        epochs = (int(props.get("distill_epochs", 0)) if projected else 0) or \
            teacher.cfg.epochs
        model = make(query, candidate, encoder)
        model.compile(optimizer=make_optimizer(cfg.optimizer, cfg.learning_rate))
        history = model.fit(teacher.dataset(), epochs=epochs, verbose=2)
        query, candidate, encoder, details = self._prune_fine_tune(query, candidate, encoder,
                                                                   teacher, props, make)
        details.update(distill_epochs=epochs, distill_alpha=alpha, projected_init=projected,
                       distill_loss=[float(x) for x in history.history.get("loss", [])],
                       student={"id_embedding_dim": cfg.id_embedding_dim,
                                "output_dim": cfg.output_dim,
                                "tower_layers": list(cfg.tower_layers)})
        return query, candidate, encoder, details

    @staticmethod
    def _prune_fine_tune(query, candidate, encoder, teacher: "_Teacher", props: Dict[str, Any],
                         make):
        """TF-MOT magnitude pruning of the query tower's Dense layers during a fine-tune;
        ``make(query, candidate, encoder)`` builds the training model around the towers."""
        epochs = int(props["fine_tune_epochs"])
        steps = max(1, epochs * teacher.steps_per_epoch)
        schedule = tfmot.sparsity.keras.PolynomialDecay(
            initial_sparsity=0.0, final_sparsity=float(props["target_sparsity"]),
            begin_step=0, end_step=max(1, int(0.8 * steps)), frequency=max(1, steps // 20))
        _prune(query, schedule)
        model = make(query, candidate, encoder)
        model.compute_loss(teacher.sample)  # builds the pruning wrappers
        # Keras's Adam, as for the student (see distill.student_config).
        model.compile(optimizer=make_optimizer("adam", float(props["learning_rate"])))
        history = model.fit(teacher.dataset(), epochs=epochs, verbose=2,
                            callbacks=[tfmot.sparsity.keras.UpdatePruningStep()])
        _strip(query)
        return query, candidate, encoder, {
            "sparsity": round(sparsity(query), 4),
            "fine_tune_loss": [float(x) for x in history.history.get("loss", [])]}

    @staticmethod
    def _export(query, candidate, encoder, teacher: "_Teacher",
                graph: tft.TFTransformOutput, export_dir: str, model_name: str,
                fingerprint: Optional[dict]) -> None:
        export(export_dir, query, candidate, encoder, graph, teacher.catalog, teacher.history,
               teacher.cfg, int8=True, model_name=model_name)
        if fingerprint is not None:
            write_fingerprint(export_dir, fingerprint)

    @staticmethod
    def _eval_split(examples: str, graph: tft.TFTransformOutput):
        catalog = [x.decode() if isinstance(x, bytes) else x
                   for x in graph.vocabulary_by_name(F.ITEM_VOCAB)]
        return load_split_from_examples(examples, catalog)

    @staticmethod
    def _measure(path: str, split, ks: List[int], method: str,
                 original: Optional[Dict[str, Any]], gate_k: int = 50) -> Dict[str, Any]:
        """Size, recall@K and latency of one SavedModel on the held-out split; with
        ``original``, also its size ratio and relative recall drop at ``gate_k``."""
        metrics = evaluate_saved_model(path, split, ks)
        entry = {"method": method, "size_bytes": directory_bytes(path),
                 "gzip_bytes": gzipped_bytes(path), "weight_bytes": weight_bytes(path),
                 "latency_ms_per_batch": metrics["latency_ms_per_batch"],
                 **{f"recall@{k}": metrics[f"recall@{k}"] for k in ks}}
        if original is not None:
            r0, r1 = original[f"recall@{gate_k}"], entry[f"recall@{gate_k}"]
            entry["size_ratio"] = original["size_bytes"] / entry["size_bytes"]
            entry["weight_size_ratio"] = original["weight_bytes"] / entry["weight_bytes"]
            entry["recall_drop_relative"] = (r0 - r1) / r0 if r0 else 0.0
        return entry

    @staticmethod
    def _summary(original: Dict[str, Any], chosen: Dict[str, Any], k: int) -> Dict[str, Any]:
        """The chosen model against the original, in ``run_summary.json``'s terms."""
        summary = {
            "method": chosen["method"],
            "original_bytes": original["size_bytes"], "compressed_bytes": chosen["size_bytes"],
            "original_gzip_bytes": original["gzip_bytes"],
            "compressed_gzip_bytes": chosen["gzip_bytes"],
            "size_ratio": chosen["size_ratio"],
            # The learned weights alone: the per-user state tables are the same data in
            # both models and bound the whole-directory ratio.
            "original_weight_bytes": original["weight_bytes"],
            "compressed_weight_bytes": chosen["weight_bytes"],
            "weight_size_ratio": chosen["weight_size_ratio"],
            "gzip_size_ratio": original["gzip_bytes"] / chosen["gzip_bytes"],
            "recall_drop_relative": chosen["recall_drop_relative"],
            "latency_ms_per_batch_original": original["latency_ms_per_batch"],
            "latency_ms_per_batch_compressed": chosen["latency_ms_per_batch"],
        }
        for key in sorted({10, k}):
            summary[f"recall@{key}_original"] = original[f"recall@{key}"]
            summary[f"recall@{key}_compressed"] = chosen[f"recall@{key}"]
        for key in ("sparsity", "fine_tune_loss", "seconds"):
            if key in chosen:
                summary[key] = chosen[key]
        return summary

    @staticmethod
    def _write_report(artifact: types.Artifact, report: Dict[str, Any]) -> None:
        with open(os.path.join(artifact.uri, REPORT_FILE), "w") as f:
            json.dump(report, f, indent=2)


class ModelCompressor(base_component.BaseComponent):
    """Prunes, fine-tunes and int8-quantizes a blessed two-tower model."""

    SPEC_CLASS = ModelCompressorSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)

    def __init__(self, model, model_blessing, examples, sequences, transform_graph,
                 target_sparsity: float = 0.3, fine_tune_epochs: int = 1,
                 learning_rate: float = 0.0001, gate_k: int = 50,
                 max_recall_drop: float = 0.02, model_name: str = "recommender",
                 student_divisor: int = 2, distill_epochs: int = 5,
                 distill_alpha: float = 0.5):
        super().__init__(spec=ModelCompressorSpec(
            model=model, model_blessing=model_blessing, examples=examples,
            sequences=sequences, transform_graph=transform_graph,
            target_sparsity=target_sparsity, fine_tune_epochs=fine_tune_epochs,
            learning_rate=learning_rate, gate_k=gate_k, max_recall_drop=max_recall_drop,
            model_name=model_name, student_divisor=student_divisor,
            distill_epochs=distill_epochs, distill_alpha=distill_alpha,
            compressed_model=types.Channel(type=standard_artifacts.Model),
            blessing=types.Channel(type=standard_artifacts.ModelBlessing),
            report=types.Channel(type=standard_artifacts.ModelEvaluation)))
