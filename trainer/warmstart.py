"""Warm start: this run's towers begin from the previous run's, carried over by token.

Where the previous run's model comes from:

* locally, TFX's ``base_model``: a Resolver hands the Trainer the newest Model the
  Trainer produced, whose ``towers/`` folder holds the checkpoint;
* on Kubeflow, where TFX compiles a Resolver into a Vertex-only step, the Trainer
  itself publishes its ``towers/`` folder under ``TrainerConfig.warm_start_dir`` (on
  the model volume) and the next run reads the newest one there.

From there the code path is the same. Transform's vocabularies are ordered by
frequency and grow between runs, so embedding rows are carried by token
(``tf.keras.utils.warmstart_embedding_matrix``): old users, items, genres, genders and
occupations keep their rows, new ones get fresh rows, the out-of-vocabulary rows keep
theirs. The history encoder and both MLPs carry over as they are.

The optimizer starts fresh. Its slots hang off the old vocabulary's rows and would
need the same remapping, and Adam's moment estimates and step count describe the end
of the previous run's schedule on the previous data; a fresh Adam over a few hundred
steps of new and replayed windows is what a short fine-tune wants.

A run trains from scratch, and says why, when there is nothing to warm-start from,
when ``full_retrain`` is set, when a setting that shapes the model changed, or when
the past changed: a span the base model trained on now holds other rows (``spans.json``
digests from SequenceGen differ).
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Dict, List, Optional, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft

from trainer import data as D
from trainer.config import TrainerConfig
from transform import features as F
from transform.config import TransformConfig

WARM_START, FULL = "warm_start", "full"
VOCABULARY_DIR = "vocabularies"
SPANS_FILE = F.SPANS_FILE  # the base model's SequenceGen summary, beside its checkpoint
KEEP_PUBLISHED = 3
# Settings that shape the weights or what they mean; the rest (epochs, learning rate,
# batch size, ...) may change between warm runs.
MODEL_FIELDS = ("id_embedding_dim", "feature_embedding_dim", "tower_layers", "output_dim",
                "encoder", "attention_blocks", "attention_heads", "use_user_id",
                "use_user_features", "query_age", "query_gap", "max_history", "temperature")
TRANSFORM_FIELDS = ("num_oov_buckets", "genre_buckets", "year_buckets")
# Vocabulary of each embedding table (or projection kernel) indexed by a vocabulary,
# and how many out-of-vocabulary rows follow the vocabulary's own.
GENRES = F.transformed_name(F.ITEM_GENRES)
VOCABULARIES = {D.ITEM_ID: F.ITEM_VOCAB, D.USER_ID: F.USER_VOCAB, GENRES: F.GENRE_VOCAB,
                F.transformed_name(F.USER_GENDER): F.GENDER_VOCAB,
                F.transformed_name(F.USER_OCCUPATION): F.OCCUPATION_VOCAB}


@dataclasses.dataclass
class Plan:
    """What this run trains: ``mode`` warm_start or full, and ``reason`` in words."""

    mode: str
    reason: str
    base_model: Optional[str] = None  # where the base came from, for run_summary.json
    towers_dir: Optional[str] = None  # its towers/ folder
    newest_span: int = 0  # the base trained on spans up to this one ...
    train_last_time: Optional[int] = None  # ... and on train rows up to this time
    base_warm_runs: int = 0  # warm runs since the base's last training from scratch

    @property
    def warm_runs(self) -> int:
        """This run's count of warm runs since the last training from scratch."""
        return self.base_warm_runs + 1 if self.warm else 0

    def epochs(self, cfg: TrainerConfig) -> int:
        """Passes over the new and replayed windows: more on the first warm run after a
        training from scratch (``TrainerConfig.first_warm_epochs``)."""
        return cfg.first_warm_epochs if self.base_warm_runs == 0 else cfg.warm_epochs

    @property
    def warm(self) -> bool:
        return self.mode == WARM_START


def towers_dir_of(base_model: Optional[str], towers_name: str) -> Optional[str]:
    """The ``towers/`` folder beside a Resolver's ``base_model`` (its Format-Serving)."""
    if not base_model:
        return None
    return os.path.join(os.path.dirname(base_model.rstrip("/")), towers_name)


def newest_published(warm_start_dir: str) -> Optional[str]:
    """The newest complete version under ``warm_start_dir``, or None."""
    if not warm_start_dir or not tf.io.gfile.isdir(warm_start_dir):
        return None
    versions = sorted((int(d.rstrip("/")) for d in tf.io.gfile.listdir(warm_start_dir)
                       if d.rstrip("/").isdigit()), reverse=True)
    for v in versions:
        path = os.path.join(warm_start_dir, str(v))
        if tf.io.gfile.exists(os.path.join(path, SPANS_FILE)):
            return path
    return None


def publish(towers_dir: str, warm_start_dir: str) -> str:
    """Copies ``towers_dir`` to ``warm_start_dir/<unix ms>/``; the version appears only
    when complete (written under a temporary name, renamed last). Keeps the newest 3."""
    tf.io.gfile.makedirs(warm_start_dir)
    existing = [int(d.rstrip("/")) for d in tf.io.gfile.listdir(warm_start_dir)
                if d.rstrip("/").isdigit()]
    version = str(max([int(time.time() * 1000)] + [v + 1 for v in existing]))
    tmp = os.path.join(warm_start_dir, f".tmp-{version}")
    for root, _, files in tf.io.gfile.walk(towers_dir):
        rel = os.path.relpath(root, towers_dir)
        tf.io.gfile.makedirs(os.path.join(tmp, rel))
        for name in files:
            tf.io.gfile.copy(os.path.join(root, name), os.path.join(tmp, rel, name),
                             overwrite=True)
    final = os.path.join(warm_start_dir, version)
    tf.io.gfile.rename(tmp, final)
    old = sorted((d.rstrip("/") for d in tf.io.gfile.listdir(warm_start_dir)
                  if d.rstrip("/").isdigit()), key=int)[:-KEEP_PUBLISHED]
    for d in old:
        tf.io.gfile.rmtree(os.path.join(warm_start_dir, d))
    return final


def save_warm_start_files(towers_dir: str, tft_output: tft.TFTransformOutput,
                          spans: dict, warm_runs: int = 0) -> None:
    """What the next run needs besides the checkpoint: this run's vocabularies, the
    spans it trained on, and its count of warm runs since a training from scratch."""
    vocab_dir = os.path.join(towers_dir, VOCABULARY_DIR)
    tf.io.gfile.makedirs(vocab_dir)
    for name in set(VOCABULARIES.values()):
        tf.io.gfile.copy(tft_output.vocabulary_file_by_name(name),
                         os.path.join(vocab_dir, name), overwrite=True)
    with tf.io.gfile.GFile(os.path.join(towers_dir, SPANS_FILE), "w") as f:
        json.dump({**spans, "warm_runs": warm_runs}, f, indent=2, sort_keys=True)


def read_vocabulary(path: str) -> List[bytes]:
    with tf.io.gfile.GFile(path, "rb") as f:
        return [line.rstrip(b"\n") for line in f]


def read_spans(path: str) -> dict:
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)


def config_changes(base_spec: dict, cfg: TrainerConfig, xcfg: TransformConfig) -> List[str]:
    """``["field: old -> new", ...]`` for every model-shaping setting that changed."""
    now = {**cfg.to_custom_config()["trainer"], **xcfg.to_custom_config()["transform"]}
    before = {**base_spec.get("trainer", {}), **base_spec.get("transform", {})}
    return [f"{k}: {before.get(k)!r} -> {now[k]!r}" for k in MODEL_FIELDS + TRANSFORM_FIELDS
            if before.get(k) != now[k]]


def changed_past(base: dict, current: dict) -> List[str]:
    """Spans the base model trained on whose rows are now different or gone."""
    out = []
    for span, b in sorted(base.get("spans", {}).items(), key=lambda kv: int(kv[0])):
        c = current.get("spans", {}).get(span)
        if c is None:
            out.append(f"span {span} ({b['rows']} rows) is gone")
        elif (c["rows"], c["digest"]) != (b["rows"], b["digest"]):
            out.append(f"span {span} changed: {b['rows']} rows (digest {b['digest']}) -> "
                       f"{c['rows']} rows (digest {c['digest']})")
    return out


def plan(cfg: TrainerConfig, xcfg: TransformConfig, spans: dict,
         base_model: Optional[str], towers_name: str) -> Plan:
    """Warm start from ``base_model`` (the Resolver's) or the newest published towers,
    unless one of the reasons for a full retrain holds."""
    towers = towers_dir_of(base_model, towers_name)
    source = base_model
    if towers is None and cfg.warm_start_dir:
        towers = source = newest_published(cfg.warm_start_dir)
    if cfg.full_retrain:
        return Plan(FULL, "full retrain requested (--full-retrain)", source)
    if not cfg.warm_start:
        return Plan(FULL, "warm start is off (TrainerConfig.warm_start)", source)
    if towers is None:
        return Plan(FULL, "no earlier model to warm-start from")
    spans_path = os.path.join(towers, SPANS_FILE)
    if not tf.io.gfile.exists(spans_path):
        return Plan(FULL, f"the earlier model {source} has no {SPANS_FILE} (it predates warm "
                    f"starts)", source)
    with tf.io.gfile.GFile(os.path.join(towers, "spec.json")) as f:
        changes = config_changes(json.load(f), cfg, xcfg)
    if changes:
        return Plan(FULL, "the model config changed: " + "; ".join(changes), source)
    base_spans = read_spans(spans_path)
    past = changed_past(base_spans, spans)
    if past:
        return Plan(FULL, "the past changed, so a warm start would train on a mix: "
                    + "; ".join(past), source)
    return Plan(WARM_START, f"warm start from {source}", source, towers,
                int(base_spans.get("newest_span", 0)), base_spans.get("train_last_time"),
                int(base_spans.get("warm_runs", 0)))


def carry_rows(base: np.ndarray, base_tokens: Sequence[bytes], fresh: np.ndarray,
               new_tokens: Sequence[bytes], num_oov: int) -> np.ndarray:
    """A table for ``new_tokens`` (+ ``num_oov`` rows, + unused padding rows) whose rows
    are the base's where the token was known, else ``fresh``'s.

    ``base`` / ``fresh``: ``[vocabulary + num_oov (+ padding), d]``. Out-of-vocabulary
    rows are carried by position.
    """
    vb, vn = len(base_tokens), len(new_tokens)
    if base.shape[1:] != fresh.shape[1:]:
        raise ValueError(f"row width changed: {base.shape} -> {fresh.shape}")
    out = np.array(fresh, copy=True)
    if vb and vn:
        out[:vn] = tf.keras.utils.warmstart_embedding_matrix(
            base_vocabulary=list(base_tokens), new_vocabulary=list(new_tokens),
            base_embeddings=base[:vb],
            new_embeddings_initializer=tf.keras.initializers.Constant(fresh[:vn])).numpy()
    k = max(0, min(num_oov, base.shape[0] - vb, out.shape[0] - vn))
    out[vn:vn + k] = base[vb:vb + k]
    return out


def _oov_rows(feature: str, xcfg: TransformConfig) -> int:
    return xcfg.num_oov_buckets if feature in (D.ITEM_ID, D.USER_ID) else 1


def carry_towers(base_towers, new_towers, base_vocabs: Dict[str, List[bytes]],
                 new_vocabs: Dict[str, List[bytes]], xcfg: TransformConfig) -> Dict[str, dict]:
    """Assigns the base towers' weights to the new ones (both built); rows of
    vocabulary-indexed tables by token. Returns ``{table: {"kept", "new"}}`` row counts."""
    stats = {}

    def table(feature, base_var, new_var):
        name = VOCABULARIES[feature]
        old, new = base_vocabs[name], new_vocabs[name]
        new_var.assign(carry_rows(base_var.numpy(), old, new_var.numpy(), new,
                                  _oov_rows(feature, xcfg)))
        kept = len(set(old) & set(new))
        stats[feature] = {"kept": kept, "new": len(new) - kept}

    def same(base_var, new_var):
        if tuple(base_var.shape) != tuple(new_var.shape):
            raise ValueError(f"{new_var.name}: shape {base_var.shape} -> {new_var.shape}")
        new_var.assign(base_var)

    for base, new in zip(base_towers[:2], new_towers[:2]):
        for feature, layer in new.embeddings.items():
            source = base.embeddings[feature].embeddings
            if feature in VOCABULARIES:
                table(feature, source, layer.embeddings)
            else:
                same(source, layer.embeddings)
        for feature, layer in new.projections.items():
            if feature in VOCABULARIES:  # the genre multi-hot: one kernel row per genre
                table(feature, base.projections[feature].kernel, layer.kernel)
            else:
                same(base.projections[feature].kernel, layer.kernel)
        for b, n in zip(base.mlp.weights, new.mlp.weights):
            same(b, n)
    for b, n in zip(base_towers[2].weights, new_towers[2].weights):
        same(b, n)
    return stats


def read_vocabularies(directory: str) -> Dict[str, List[bytes]]:
    return {name: read_vocabulary(os.path.join(directory, name))
            for name in set(VOCABULARIES.values())}


def current_vocabularies(tft_output: tft.TFTransformOutput) -> Dict[str, List[bytes]]:
    return {name: read_vocabulary(tft_output.vocabulary_file_by_name(name))
            for name in set(VOCABULARIES.values())}


def is_new(features: Dict[str, tf.Tensor], p: Plan) -> tf.Tensor:
    """``[batch]`` bool: windows with a target the base model never trained on (a newer
    span, or a train row newer than the base's train rows, i.e. its eval window)."""
    span = tf.reshape(features[F.WINDOW_SPAN], [-1])
    newest = tf.reshape(features[F.WINDOW_TIME], [-1])
    last = p.train_last_time if p.train_last_time is not None else np.iinfo(np.int64).max
    return tf.logical_or(span > p.newest_span, newest > last)
