"""The Trainer's ``run_fn``: train the two-tower model and export the serving model."""
from __future__ import annotations

import project_env  # noqa: F401  (Keras 2 before TensorFlow loads)

import json
import os
import shutil
import tempfile
import time
from typing import Dict, Optional, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft
from absl import logging

from trainer import data as D
from trainer.config import TrainerConfig
from trainer.export import RetrievalModule, TransformQueryFeatures, embed_catalog
from trainer.model import TwoTowerModel, build_towers
from trainer.optim import make_optimizer
from trainer.strategy import choose_strategy, is_chief, strategy_name
from transform import features as F
from transform.config import TransformConfig

HISTORY_FILE = "training_history.json"
TOWERS_DIR = "towers"  # beside Format-Serving in the Model artifact; read by compression
TOWERS_SPEC = "spec.json"


def save_towers(model_uri: str, query_tower, candidate_tower, sizes: Dict[str, int],
                cfg: TrainerConfig, xcfg: TransformConfig) -> None:
    """Keras weights and the settings that rebuild both towers (for fine-tuning)."""
    directory = os.path.join(model_uri, TOWERS_DIR)
    tf.io.gfile.makedirs(directory)
    query_tower.save_weights(os.path.join(directory, "query"))
    candidate_tower.save_weights(os.path.join(directory, "candidate"))
    with tf.io.gfile.GFile(os.path.join(directory, TOWERS_SPEC), "w") as f:
        json.dump({"sizes": sizes, **cfg.to_custom_config(), **xcfg.to_custom_config()}, f)


def vocabulary_sizes(tft_output: tft.TFTransformOutput, xcfg: TransformConfig) -> Dict[str, int]:
    """Index range of every categorical model input, OOV buckets included."""
    oov = xcfg.num_oov_buckets
    size = tft_output.vocabulary_size_by_name
    return {
        D.USER_ID: size(F.USER_VOCAB) + oov,
        D.ITEM_ID: size(F.ITEM_VOCAB) + oov,
        F.transformed_name(F.USER_AGE): F.NUM_AGE_BUCKETS,
        F.transformed_name(F.USER_GENDER): size(F.GENDER_VOCAB) + 1,
        F.transformed_name(F.USER_OCCUPATION): size(F.OCCUPATION_VOCAB) + 1,
        F.transformed_name(F.ITEM_YEAR): xcfg.year_buckets + 1,
    }


def item_sampling_probability(catalog: D.Catalog, num_buckets: int) -> np.ndarray:
    """Share of train interactions per item index; OOV buckets share the remainder."""
    counts = np.zeros(num_buckets, np.float64)
    counts[:catalog.num_items] = catalog.item_counts
    rest = max(1, catalog.num_examples - int(catalog.item_counts.sum()))
    counts[catalog.num_items:] = rest / max(1, num_buckets - catalog.num_items)
    return (counts / max(1, catalog.num_examples)).astype(np.float32)


class ProgressLogger(tf.keras.callbacks.Callback):
    """Prints training progress every ``interval`` seconds and at each epoch's end.

    One line: epoch, step, examples per second since the last line, and the loss.
    """

    def __init__(self, batch_size: int, steps_per_epoch: Optional[int], epochs: int,
                 interval: float = 30.0, prefix: str = "[trainer]") -> None:
        super().__init__()
        self.batch_size, self.steps_per_epoch, self.epochs = batch_size, steps_per_epoch, epochs
        self.interval, self.prefix = interval, prefix
        self._epoch = 0
        self._mark_time, self._mark_step, self._step = 0.0, 0, 0

    def _line(self, logs: Optional[dict], end: str = "") -> str:
        now = time.time()
        rate = (self._step - self._mark_step) * self.batch_size / max(now - self._mark_time,
                                                                      1e-6)
        self._mark_time, self._mark_step = now, self._step
        total = f"/{self.steps_per_epoch}" if self.steps_per_epoch else ""
        losses = ", ".join(f"{k} {v:.4f}" for k, v in (logs or {}).items()
                           if k in ("loss", "val_loss"))
        return (f"{self.prefix} epoch {self._epoch + 1}/{self.epochs}, step {self._step}"
                f"{total}{end}: {rate:,.0f} examples/s" + (f", {losses}" if losses else ""))

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        self._epoch, self._step, self._mark_step = epoch, 0, 0
        self._mark_time = time.time()

    def on_train_batch_end(self, batch: int, logs=None) -> None:
        self._step = batch + 1
        if time.time() - self._mark_time >= self.interval:
            print(self._line(logs), flush=True)

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        print(self._line(logs, " (epoch done)"), flush=True)


def _distributed(ds: tf.data.Dataset) -> tf.data.Dataset:
    options = tf.data.Options()
    # Few input files: shard by element so every worker gets data.
    options.experimental_distribute.auto_shard_policy = \
        tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options)


def train_and_export(train_patterns: Sequence[str], eval_patterns: Sequence[str],
                     tft_output: tft.TFTransformOutput, cfg: TrainerConfig,
                     xcfg: TransformConfig, serving_model_dir: str, run_dir: str,
                     max_steps: Optional[int] = None) -> dict:
    """Trains, then writes the SavedModel (chief only) and returns the training history.

    ``max_steps``: train for exactly this many batches (one epoch, the input repeated as
    needed, validation on at most 50 batches) instead of ``cfg.epochs`` full passes.
    """
    if max_steps is not None and max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}")
    tf.keras.utils.set_random_seed(cfg.seed)
    strategy = choose_strategy()
    spec = D.model_feature_spec(tft_output.transformed_feature_spec())
    sizes = vocabulary_sizes(tft_output, xcfg)
    num_users = tft_output.vocabulary_size_by_name(F.USER_VOCAB)
    num_items = tft_output.vocabulary_size_by_name(F.ITEM_VOCAB)
    genre_width = int(spec[D.CANDIDATE_FEATURES[1]].shape[0])
    catalog_start = time.time()
    catalog = D.build_catalog(train_patterns, spec, num_users, num_items, genre_width)
    catalog_seconds = time.time() - catalog_start
    logging.info("catalog: %d users, %d items, %d train examples; strategy %s with %d "
                 "replicas", num_users, num_items, catalog.num_examples,
                 strategy_name(strategy), strategy.num_replicas_in_sync)

    with strategy.scope():
        query_tower, candidate_tower = build_towers(sizes, cfg)
        model = TwoTowerModel(query_tower, candidate_tower, cfg,
                              item_sampling_probability(catalog, sizes[D.ITEM_ID]),
                              catalog.item_features())
        model.compile(optimizer=make_optimizer(cfg.optimizer, cfg.learning_rate))
    batch = min(cfg.batch_size, max(32, catalog.num_examples // 4))
    train_ds = _distributed(D.make_dataset(train_patterns, spec, batch,
                                           min(cfg.shuffle_buffer, catalog.num_examples),
                                           cfg.seed))
    eval_ds = _distributed(D.make_dataset(eval_patterns, spec, batch))
    epochs, fit_args = cfg.epochs, {}
    if max_steps is not None:
        epochs, train_ds = 1, train_ds.repeat()
        fit_args = {"steps_per_epoch": max_steps, "validation_steps": 50}
        eval_ds = eval_ds.repeat()
    steps_per_epoch = max_steps or catalog.num_examples // batch
    worker = os.environ.get("TF_CONFIG") and json.loads(os.environ["TF_CONFIG"]).get("task", {})
    prefix = f"[trainer worker {worker.get('index', 0)}]" if worker else "[trainer]"
    print(f"{prefix} {catalog.num_examples:,} train examples, {num_items:,} items, "
          f"{num_users:,} users; batch {batch}, {steps_per_epoch} steps x {epochs} epochs",
          flush=True)
    start = time.time()
    history = model.fit(train_ds, validation_data=eval_ds, epochs=epochs, verbose=0,
                        callbacks=[ProgressLogger(batch, steps_per_epoch, epochs,
                                                  prefix=prefix)], **fit_args)
    train_seconds = time.time() - start
    trained_examples = (max_steps * batch if max_steps is not None
                        else catalog.num_examples * cfg.epochs)

    candidates = embed_catalog(candidate_tower, catalog.item_features())
    module = RetrievalModule(
        query_tower, candidates, tft_output.vocabulary_file_by_name(F.ITEM_VOCAB),
        tft_output.vocabulary_file_by_name(F.USER_VOCAB), catalog.user_features(),
        catalog.item_counts, TransformQueryFeatures(tft_output.transform_features_layer()),
        tft_output.raw_feature_spec(), cfg.top_k)
    chief = is_chief()
    # Every worker saves (the save runs collectives), but only the chief keeps its copy.
    target = serving_model_dir if chief else tempfile.mkdtemp(prefix="worker_model_")
    tf.saved_model.save(module, target, signatures=module.signatures())
    summary = {
        "loss": [float(x) for x in history.history.get("loss", [])],
        "val_loss": [float(x) for x in history.history.get("val_loss", [])],
        "train_seconds": round(train_seconds, 2),
        "train_examples": int(catalog.num_examples),
        "examples_per_second": round(trained_examples / train_seconds, 1),
        "trained_examples": int(trained_examples), "batch_size": int(batch),
        "max_steps": max_steps, "catalog_seconds": round(catalog_seconds, 2),
        "num_users": num_users, "num_items": num_items,
        "replicas": strategy.num_replicas_in_sync, "strategy": strategy_name(strategy),
        "config": cfg.to_custom_config()["trainer"],
    }
    if chief:
        save_towers(os.path.dirname(serving_model_dir.rstrip("/")), query_tower,
                    candidate_tower, sizes, cfg, xcfg)
        tf.io.gfile.makedirs(run_dir)
        with tf.io.gfile.GFile(os.path.join(run_dir, HISTORY_FILE), "w") as f:
            json.dump(summary, f, indent=2)
    else:
        shutil.rmtree(target, ignore_errors=True)
    return summary


def run_fn(fn_args) -> None:
    """TFX Trainer entry point (``trainer.task.run_fn``)."""
    cfg = TrainerConfig.from_custom_config(fn_args.custom_config)
    xcfg = TransformConfig.from_custom_config(fn_args.custom_config)
    tft_output = tft.TFTransformOutput(fn_args.transform_graph_path)
    # TrainArgs(num_steps=N) trains for N batches; without it, cfg.epochs full passes.
    summary = train_and_export(fn_args.train_files, fn_args.eval_files, tft_output, cfg, xcfg,
                               fn_args.serving_model_dir, fn_args.model_run_dir,
                               max_steps=getattr(fn_args, "train_steps", None) or None)
    logging.info("trained %d examples in %.1fs (%.0f examples/s); final loss %.4f",
                 summary["trained_examples"], summary["train_seconds"],
                 summary["examples_per_second"],
                 summary["loss"][-1] if summary["loss"] else float("nan"))
