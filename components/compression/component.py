"""ModelCompressor: TF-MOT magnitude pruning during a short fine-tune, then int8.

1. Rebuilds both towers from the Trainer's weights and fine-tunes them for
   ``fine_tune_epochs`` with the query tower's Dense layers wrapped in
   ``tfmot.sparsity.keras.prune_low_magnitude`` (polynomial schedule up to
   ``target_sparsity``).
2. Exports the same four signatures with int8 per-row embedding tables, int8
   per-channel kernels and an int8 candidate index, all dequantized by core ops.
3. Measures size on disk (plain and gzipped), recall@K and latency per query batch
   of both models on the evaluator's held-out split, writes ``compression.json``,
   and blesses the compressed model only if the evaluator blessed the original and
   the relative recall drop at ``gate_k`` is within ``max_recall_drop``.

Warm-up requests (``assets.extra/tf_serving_warmup_requests``) ship with the model.
"""
from __future__ import annotations

import io
import json
import os
import tarfile
import time
from typing import Any, Dict, List

import numpy as np
import tensorflow as tf
import tensorflow_model_optimization as tfmot
import tensorflow_transform as tft
from tensorflow_model_optimization.python.core.sparsity.keras import pruning_wrapper
from absl import logging
from tfx import types
from tfx.dsl.components.base import base_component, base_executor, executor_spec
from tfx.types import artifact_utils, standard_artifacts
from tfx.types.component_spec import ChannelParameter, ExecutionParameter

from components.compression.serving import Int8Index, LookupQueryFeatures, QuantizedTower
from components.compression.warmup import write_warmup_requests
from components.retrieval_evaluator.component import serving_dir, write_blessing
from evaluation.model_eval import evaluate_saved_model
from evaluation.split_data import load_split_from_examples
from trainer import data as D
from trainer.config import TrainerConfig
from trainer.export import RetrievalModule, TransformQueryFeatures, embed_catalog
from trainer.model import TwoTowerModel, build_towers
from trainer.task import TOWERS_DIR, TOWERS_SPEC, item_sampling_probability
from transform import features as F
from transform.config import TransformConfig

REPORT_FILE = "compression.json"
METHOD = "magnitude-pruning+int8-per-row"


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


class ModelCompressorSpec(types.ComponentSpec):
    PARAMETERS = {
        "target_sparsity": ExecutionParameter(type=float),
        "fine_tune_epochs": ExecutionParameter(type=int),
        "learning_rate": ExecutionParameter(type=float),
        "gate_k": ExecutionParameter(type=int),
        "max_recall_drop": ExecutionParameter(type=float),
        "model_name": ExecutionParameter(type=str),
    }
    INPUTS = {
        "model": ChannelParameter(type=standard_artifacts.Model),
        "model_blessing": ChannelParameter(type=standard_artifacts.ModelBlessing),
        "examples": ChannelParameter(type=standard_artifacts.Examples),
        "transformed_examples": ChannelParameter(type=standard_artifacts.Examples),
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
        report: Dict[str, Any] = {"method": METHOD, "gate_k": gate_k}
        export_dir = os.path.join(out_model.uri, "Format-Serving")

        if original_blessing.get_int_custom_property("blessed") != 1:
            report.update(blessed=False, reason="the evaluator did not bless the original")
            logging.warning("ModelCompressor: %s; nothing compressed", report["reason"])
            write_blessing(blessing, False, out_model)
            self._write_report(report_artifact, report)
            return

        graph = tft.TFTransformOutput(get(input_dict, "transform_graph").uri)
        transformed = get(input_dict, "transformed_examples").uri
        start = time.time()
        query, candidate, catalog = self._fine_tune(model.uri, graph, transformed,
                                                    exec_properties, report)
        report["fine_tune_seconds"] = round(time.time() - start, 1)
        module = RetrievalModule(
            QuantizedTower(query), Int8Index(embed_catalog(candidate, catalog.item_features())),
            graph.vocabulary_file_by_name(F.ITEM_VOCAB),
            graph.vocabulary_file_by_name(F.USER_VOCAB), catalog.user_features(),
            catalog.item_counts,
            self._example_features(graph, TransformConfig.from_custom_config(
                self._spec(model.uri))),
            graph.raw_feature_spec(),
            TrainerConfig.from_custom_config(self._spec(model.uri)).top_k)
        tf.saved_model.save(module, export_dir, signatures=module.signatures())
        write_warmup_requests(export_dir, exec_properties["model_name"],
                              [u for u in graph.vocabulary_by_name(F.USER_VOCAB)[:8]])

        self._measure(serving_dir(model), export_dir, get(input_dict, "examples").uri, graph,
                      gate_k, report)
        drop = report["recall_drop_relative"]
        report["blessed"] = drop <= float(exec_properties["max_recall_drop"])
        report["max_recall_drop"] = float(exec_properties["max_recall_drop"])
        if not report["blessed"]:
            logging.warning("ModelCompressor did NOT bless: relative recall@%d drop %.2f%% "
                            "exceeds %.2f%%", gate_k, 100 * drop,
                            100 * report["max_recall_drop"])
        write_blessing(blessing, report["blessed"], out_model)
        self._write_report(report_artifact, report)
        logging.info("ModelCompressor: %s", json.dumps(report))

    @staticmethod
    def _example_features(graph: tft.TFTransformOutput, xcfg: TransformConfig):
        if xcfg.num_oov_buckets == 1:
            return LookupQueryFeatures({v: graph.vocabulary_file_by_name(v) for v in (
                F.USER_VOCAB, F.GENDER_VOCAB, F.OCCUPATION_VOCAB)})
        return TransformQueryFeatures(graph.transform_features_layer())

    @staticmethod
    def _spec(model_uri: str) -> dict:
        with tf.io.gfile.GFile(os.path.join(model_uri, TOWERS_DIR, TOWERS_SPEC)) as f:
            return json.load(f)

    def _fine_tune(self, model_uri: str, graph: tft.TFTransformOutput, transformed: str,
                   props: Dict[str, Any], report: Dict[str, Any]):
        spec = self._spec(model_uri)
        cfg, xcfg = TrainerConfig.from_custom_config(spec), TransformConfig.from_custom_config(spec)
        feature_spec = D.model_feature_spec(graph.transformed_feature_spec())
        train = [os.path.join(transformed, "Split-train", "*")]
        catalog = D.build_catalog(train, feature_spec,
                                  graph.vocabulary_size_by_name(F.USER_VOCAB),
                                  graph.vocabulary_size_by_name(F.ITEM_VOCAB),
                                  int(feature_spec[D.CANDIDATE_FEATURES[1]].shape[0]))
        query, candidate = build_towers(spec["sizes"], cfg)
        sample = next(iter(D.make_dataset(train, feature_spec, 8)))
        query({f: sample[f] for f in D.QUERY_FEATURES})
        candidate({f: sample[f] for f in D.CANDIDATE_FEATURES})
        query.load_weights(os.path.join(model_uri, TOWERS_DIR, "query"))
        candidate.load_weights(os.path.join(model_uri, TOWERS_DIR, "candidate"))

        batch = min(cfg.batch_size, max(32, catalog.num_examples // 4))
        ds = D.make_dataset(train, feature_spec, batch, min(cfg.shuffle_buffer,
                                                            catalog.num_examples), cfg.seed)
        epochs = int(props["fine_tune_epochs"])
        steps = max(1, epochs * (catalog.num_examples // batch))
        schedule = tfmot.sparsity.keras.PolynomialDecay(
            initial_sparsity=0.0, final_sparsity=float(props["target_sparsity"]),
            begin_step=0, end_step=max(1, int(0.8 * steps)), frequency=max(1, steps // 20))
        _prune(query, schedule)
        query({f: sample[f] for f in D.QUERY_FEATURES})  # builds the pruning wrappers
        model = TwoTowerModel(query, candidate, cfg,
                              item_sampling_probability(catalog, spec["sizes"][D.ITEM_ID]),
                              catalog.item_features())
        model.compile(optimizer=tf.keras.optimizers.Adam(float(props["learning_rate"])))
        history = model.fit(ds, epochs=epochs, verbose=2,
                            callbacks=[tfmot.sparsity.keras.UpdatePruningStep()])
        _strip(query)
        report["sparsity"] = round(sparsity(query), 4)
        report["fine_tune_loss"] = [float(x) for x in history.history.get("loss", [])]
        return query, candidate, catalog

    @staticmethod
    def _measure(original: str, compressed: str, examples: str, graph: tft.TFTransformOutput,
                 k: int, report: Dict[str, Any]) -> None:
        catalog = [x.decode() if isinstance(x, bytes) else x
                   for x in graph.vocabulary_by_name(F.ITEM_VOCAB)]
        split = load_split_from_examples(examples, catalog)
        ks = sorted({10, k})
        before = evaluate_saved_model(original, split, ks)
        after = evaluate_saved_model(compressed, split, ks)
        size = {"original_bytes": directory_bytes(original),
                "compressed_bytes": directory_bytes(compressed),
                "original_gzip_bytes": gzipped_bytes(original),
                "compressed_gzip_bytes": gzipped_bytes(compressed)}
        r0, r1 = before[f"recall@{k}"], after[f"recall@{k}"]
        report.update(size)
        report.update({
            "size_ratio": size["original_bytes"] / size["compressed_bytes"],
            "gzip_size_ratio": size["original_gzip_bytes"] / size["compressed_gzip_bytes"],
            f"recall@{k}_original": r0, f"recall@{k}_compressed": r1,
            "recall@10_original": before["recall@10"],
            "recall@10_compressed": after["recall@10"],
            "recall_drop_relative": (r0 - r1) / r0 if r0 else 0.0,
            "latency_ms_per_batch_original": before["latency_ms_per_batch"],
            "latency_ms_per_batch_compressed": after["latency_ms_per_batch"],
        })

    @staticmethod
    def _write_report(artifact: types.Artifact, report: Dict[str, Any]) -> None:
        with open(os.path.join(artifact.uri, REPORT_FILE), "w") as f:
            json.dump(report, f, indent=2)


class ModelCompressor(base_component.BaseComponent):
    """Prunes, fine-tunes and int8-quantizes a blessed two-tower model."""

    SPEC_CLASS = ModelCompressorSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)

    def __init__(self, model, model_blessing, examples, transformed_examples, transform_graph,
                 target_sparsity: float = 0.3, fine_tune_epochs: int = 1,
                 learning_rate: float = 0.0001, gate_k: int = 50,
                 max_recall_drop: float = 0.02, model_name: str = "recommender"):
        super().__init__(spec=ModelCompressorSpec(
            model=model, model_blessing=model_blessing, examples=examples,
            transformed_examples=transformed_examples, transform_graph=transform_graph,
            target_sparsity=target_sparsity, fine_tune_epochs=fine_tune_epochs,
            learning_rate=learning_rate, gate_k=gate_k, max_recall_drop=max_recall_drop,
            model_name=model_name,
            compressed_model=types.Channel(type=standard_artifacts.Model),
            blessing=types.Channel(type=standard_artifacts.ModelBlessing),
            report=types.Channel(type=standard_artifacts.ModelEvaluation)))
