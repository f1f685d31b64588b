"""ModelCompressor: TF-MOT pruning, distillation and int8, gated on recall.

The executor builds each candidate (``candidates.py``: a pruned teacher and a
distilled student, both int8 through the Trainer's own export path), measures it
and the original (``measure.py``: size on disk, recall@K through
``recommend_given_history``, latency) and keeps the smallest whose relative recall
drop at ``gate_k`` is within ``max_recall_drop`` **on the validation slice**
(``validation.py``: sampled train users' newest train interactions, never the eval
split; ``select.py``). The verdict is the gate's: the chosen model is blessed only if
the evaluator blessed the original and its drop on the evaluator's eval split is
within tolerance; a refused choice falls back to the next candidate the slice found
within tolerance. ``report.py`` writes both splits' figures to ``compression.json``.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from typing import Any, Dict, List

import tensorflow as tf
import tensorflow_transform as tft
from absl import logging
from tfx import types
from tfx.dsl.components.base import base_component, base_executor, executor_spec
from tfx.types import artifact_utils, standard_artifacts
from tfx.types.component_spec import ChannelParameter, ExecutionParameter

from components.compression.candidates import METHOD, candidates, export_candidate
from components.compression.measure import directory_bytes, gzipped_bytes, measure  # noqa: F401
from components.compression.report import (EVAL, REPORT_FILE, VALIDATION,  # noqa: F401
                                            console_line, tried_line, write_report)
from components.compression.select import choose, decide  # noqa: F401
from components.compression.teacher import Teacher
from components.compression.validation import ValidationConfig, describe, load_validation_split
from components.retrieval_evaluator.component import serving_dir, write_blessing
from evaluation.sampling import DEFAULT_MAX_USERS, DEFAULT_SEED, sample_eval_users
from evaluation.split_data import load_split_from_examples
from serving.savedmodel.fingerprint import read_fingerprint, with_compression
from transform import features as F

# REPORT_FILE, choose and directory_bytes are imported from here by the tests.
ORIGINAL_METHOD = "original (float32)"
_VALIDATION = ValidationConfig()


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
        # Batches per training phase at most (candidates.phase_steps; 0: no cap).
        "max_train_steps": ExecutionParameter(type=int, optional=True),
        # The validation slice the choice is made on (validation.ValidationConfig).
        "validation_max_users": ExecutionParameter(type=int, optional=True),
        "validation_target_fraction": ExecutionParameter(type=float, optional=True),
        "validation_seed": ExecutionParameter(type=int, optional=True),
        # The evaluator's sample of eval users (evaluation.sampling), for the verdict.
        "max_eval_users": ExecutionParameter(type=int, optional=True),
        "eval_sample_seed": ExecutionParameter(type=int, optional=True),
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
        report_dir = get(output_dict, "report").uri
        gate_k = int(exec_properties["gate_k"])
        max_drop = float(exec_properties["max_recall_drop"])
        report: Dict[str, Any] = {"method": METHOD, "gate_k": gate_k, "max_recall_drop": max_drop}

        if original_blessing.get_int_custom_property("blessed") != 1:
            report.update(blessed=False, reason="the evaluator did not bless the original")
            logging.warning("ModelCompressor: %s; nothing compressed", report["reason"])
            write_blessing(blessing, False, out_model)
            write_report(report_dir, report)
            return

        graph = tft.TFTransformOutput(get(input_dict, "transform_graph").uri)
        teacher = Teacher.load(model.uri, graph, get(input_dict, "sequences").uri)
        catalog = [x.decode() if isinstance(x, bytes) else x
                   for x in graph.vocabulary_by_name(F.ITEM_VOCAB)]
        examples = get(input_dict, "examples").uri
        split = load_split_from_examples(examples, catalog)
        # The same eval users as the evaluator's (all up to its cap, then its sample).
        max_users, seed = (exec_properties.get(k) for k in ("max_eval_users",
                                                             "eval_sample_seed"))
        users, population = sample_eval_users(
            split, DEFAULT_MAX_USERS if max_users is None else int(max_users),
            DEFAULT_SEED if seed is None else int(seed))
        report["eval_users"] = {"users": int(len(users)), "population": int(population)}
        start, cfg = time.time(), ValidationConfig.from_properties(exec_properties)
        held = load_validation_split(examples, catalog, cfg)  # None if it is empty
        slice_seconds = time.time() - start
        ks = sorted({10, gate_k})
        original = measure(serving_dir(model), ORIGINAL_METHOD, split, held, ks,
                           users=users)
        tried = [original]
        fingerprint = read_fingerprint(serving_dir(model))
        if fingerprint is not None:  # the compressed model also depends on these settings
            fingerprint = with_compression(fingerprint, dict(exec_properties))
        staging = os.path.join(out_model.uri, "candidates")
        for method, build in candidates(teacher, exec_properties):
            start = time.time()
            # Same initial weights and shuffles whatever ran before in this process
            # (the Trainer in a local run), so a candidate's result is reproducible.
            tf.keras.utils.set_random_seed(teacher.cfg.seed)
            query, candidate, encoder, details = build()
            path = os.path.join(staging, method.replace("+", "_"))
            export_candidate(query, candidate, encoder, teacher, graph, path,
                             exec_properties["model_name"], fingerprint)
            entry = measure(path, method, split, held, ks, original, gate_k, max_drop, users)
            entry.update(details, seconds=round(time.time() - start, 1), path=path)
            logging.info("%s", tried_line(entry, gate_k))
            tried.append(entry)

        report.update(decide(original, tried[1:], gate_k,
                             VALIDATION if held is not None else EVAL))
        [chosen] = [e for e in tried if e["chosen"]]
        shutil.move(chosen["path"], os.path.join(out_model.uri, "Format-Serving"))
        shutil.rmtree(staging, ignore_errors=True)
        for entry in tried:
            entry.pop("path", None)
        if held is not None:
            # The slice's seconds: cutting it and scoring every model on it.
            report[VALIDATION] = describe(held, cfg, slice_seconds + sum(
                e[f"{VALIDATION}_seconds"] for e in tried))
        write_blessing(blessing, report["blessed"], out_model)
        write_report(report_dir, report)
        (logging.info if report["blessed"] else logging.warning)("%s", console_line(report))
        logging.debug("ModelCompressor: %s", json.dumps(report))  # all of it is in the file


class ModelCompressor(base_component.BaseComponent):
    """Prunes, fine-tunes and int8-quantizes a blessed two-tower model."""

    SPEC_CLASS = ModelCompressorSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)

    def __init__(self, model, model_blessing, examples, sequences, transform_graph,
                 target_sparsity: float = 0.3, fine_tune_epochs: int = 1,
                 learning_rate: float = 0.0001, gate_k: int = 50,
                 max_recall_drop: float = 0.02, model_name: str = "recommender",
                 student_divisor: int = 2, distill_epochs: int = 5,
                 distill_alpha: float = 0.5, max_train_steps: int = 1000,
                 validation_max_users: int = _VALIDATION.max_users,
                 validation_target_fraction: float = _VALIDATION.target_fraction,
                 validation_seed: int = _VALIDATION.seed,
                 max_eval_users: int = DEFAULT_MAX_USERS,
                 eval_sample_seed: int = DEFAULT_SEED):
        super().__init__(spec=ModelCompressorSpec(
            model=model, model_blessing=model_blessing, examples=examples,
            sequences=sequences, transform_graph=transform_graph,
            target_sparsity=target_sparsity, fine_tune_epochs=fine_tune_epochs,
            learning_rate=learning_rate, gate_k=gate_k, max_recall_drop=max_recall_drop,
            model_name=model_name, student_divisor=student_divisor,
            distill_epochs=distill_epochs, distill_alpha=distill_alpha,
            max_train_steps=max_train_steps, validation_max_users=validation_max_users,
            validation_target_fraction=validation_target_fraction,
            validation_seed=validation_seed, max_eval_users=max_eval_users,
            eval_sample_seed=eval_sample_seed,
            compressed_model=types.Channel(type=standard_artifacts.Model),
            blessing=types.Channel(type=standard_artifacts.ModelBlessing),
            report=types.Channel(type=standard_artifacts.ModelEvaluation)))
