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
from serving.savedmodel.export import export_serving_model
from serving.savedmodel.fingerprint import model_fingerprint, write_fingerprint
from serving.savedmodel.index import IndexConfig
from serving.savedmodel.history import UserHistory, read_user_history
from serving.savedmodel.warmup import MODEL_NAME
from trainer import warmstart
from trainer.model import SequenceRetrievalModel, build_towers, query_categorical, time_inputs
from trainer.optim import make_optimizer
import layout
from trainer.strategy import check_batch_size, is_chief, strategy_name, training_strategy
from transform import features as F
from transform.config import TransformConfig

HISTORY_FILE = layout.TRAINING_HISTORY_FILE
TOWERS_DIR = "towers"  # beside Format-Serving in the Model artifact; read by compression
TOWERS_SPEC = "spec.json"
TOWERS_CHECKPOINT = "towers"


def towers_checkpoint(query_tower, candidate_tower, encoder) -> tf.train.Checkpoint:
    return tf.train.Checkpoint(query=query_tower, candidate=candidate_tower, encoder=encoder)


def save_towers(model_uri: str, query_tower, candidate_tower, encoder, sizes: Dict[str, int],
                cfg: TrainerConfig, xcfg: TransformConfig) -> None:
    """The trained weights and the settings that rebuild the towers (for compression)."""
    directory = os.path.join(model_uri, TOWERS_DIR)
    tf.io.gfile.makedirs(directory)
    towers_checkpoint(query_tower, candidate_tower, encoder).write(
        os.path.join(directory, TOWERS_CHECKPOINT))
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

    One line: epoch, step, training windows per second since the last line, the loss.
    """

    def __init__(self, batch_size: int, steps_per_epoch: Optional[int], epochs: int,
                 interval: float = 30.0, prefix: str = "[trainer]",
                 unit: str = "windows") -> None:
        super().__init__()
        # Keras hands this callback the logs as tensors instead of converting them to
        # numpy after every batch, which stalled each step (about 0.5 s per epoch of 16
        # steps on ML-100K); they are read only when a line is printed.
        self._supports_tf_logs = True
        self.batch_size, self.steps_per_epoch, self.epochs = batch_size, steps_per_epoch, epochs
        self.interval, self.prefix, self.unit = interval, prefix, unit
        self._epoch = 0
        self._mark_time, self._mark_step, self._step = 0.0, 0, 0

    def _line(self, logs: Optional[dict], end: str = "") -> str:
        now = time.time()
        rate = (self._step - self._mark_step) * self.batch_size / max(now - self._mark_time,
                                                                      1e-6)
        self._mark_time, self._mark_step = now, self._step
        total = f"/{self.steps_per_epoch}" if self.steps_per_epoch else ""
        losses = ", ".join(f"{k} {float(v):.4f}" for k, v in (logs or {}).items()
                           if k in ("loss", "val_loss"))
        return (f"{self.prefix} epoch {self._epoch + 1}/{self.epochs}, step {self._step}"
                f"{total}{end}: {rate:,.0f} {self.unit}/s" + (f", {losses}" if losses else ""))

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


def load_training_data(train_patterns: Sequence[str], tft_output: tft.TFTransformOutput,
                       cfg: TrainerConfig, xcfg: TransformConfig):
    """``(sizes, catalog, number of training windows)`` from SequenceGen's output."""
    D.check_window_length(train_patterns, cfg.max_history)
    sizes = vocabulary_sizes(tft_output, xcfg)
    genre_width = int(tft_output.transformed_feature_spec()[D.CANDIDATE_FEATURES[1]].shape[0])
    catalog = D.build_catalog(train_patterns[0], tft_output.vocabulary_size_by_name(F.USER_VOCAB),
                              tft_output.vocabulary_size_by_name(F.ITEM_VOCAB), genre_width,
                              D.unknown_user_row(sizes))
    return sizes, catalog, D.count_records(train_patterns)


def training_model(query_tower, candidate_tower, encoder, cfg: TrainerConfig, sizes,
                   catalog: D.Catalog) -> SequenceRetrievalModel:
    return SequenceRetrievalModel(query_tower, candidate_tower, encoder, cfg,
                                  item_sampling_probability(catalog, sizes[D.ITEM_ID]),
                                  catalog.item_features(), catalog.user_features(),
                                  catalog.reference_time)


def export(export_dir: str, query_tower, candidate_tower, encoder,
           tft_output: tft.TFTransformOutput, catalog: D.Catalog, history: UserHistory,
           cfg: TrainerConfig, int8: bool = False, model_name: str = MODEL_NAME) -> None:
    """The serving SavedModel (``serving.savedmodel``) of trained towers: the Trainer's
    float one, or the compressor's int8 one."""
    export_serving_model(export_dir, query_tower, candidate_tower, encoder, tft_output,
                         catalog.item_features(), catalog.user_features(),
                         catalog.item_counts, history, cfg.top_k, cfg.max_history, int8=int8,
                         model_name=model_name, index_config=index_config(cfg))


def index_config(cfg: TrainerConfig) -> IndexConfig:
    """The served index's settings (the Trainer's and the compressor's export alike)."""
    return IndexConfig(partitioned_min_items=cfg.ann_min_items, lists=cfg.ann_lists,
                       probes=cfg.ann_probes, target_recall=cfg.ann_target_recall,
                       max_probes=cfg.ann_max_probes, seed=cfg.seed)


def read_history(train_patterns: Sequence[str], tft_output: tft.TFTransformOutput,
                 cfg: TrainerConfig) -> UserHistory:
    """The served history and exclusion tables, from SequenceGen's ``history`` split."""
    return read_user_history(D.sibling_split(train_patterns[0], D.HISTORY_SPLIT),
                             tft_output.vocabulary_size_by_name(F.ITEM_VOCAB), cfg.max_history)


def fingerprint_settings(cfg: TrainerConfig, xcfg: TransformConfig) -> dict:
    """The settings a served model depends on; where it finds its base and whether this
    run was forced to retrain do not count."""
    trainer = {k: v for k, v in cfg.to_custom_config()["trainer"].items()
               if k not in ("full_retrain", "warm_start_dir")}
    return {"trainer": trainer, **xcfg.to_custom_config()}


def read_sequence_spans(train_patterns: Sequence[str]) -> dict:
    """SequenceGen's ``spans.json`` (every span's rows and digest), or an empty summary
    for sequences from before it."""
    path = os.path.join(D.artifact_root(train_patterns[0]), F.SPANS_FILE)
    if not tf.io.gfile.exists(path):
        return {"spans": {}, "newest_span": 0, "train_last_time": None}
    return warmstart.read_spans(path)


def build_variables(towers, sizes: Dict[str, int], cfg: TrainerConfig,
                    genre_width: int) -> None:
    """Creates the towers' variables with one dummy example."""
    query, candidate, encoder = towers
    one = tf.zeros([1], tf.int64)
    candidate({D.ITEM_ID: one, D.CANDIDATE_FEATURES[1]: tf.zeros([1, genre_width]),
               D.CANDIDATE_FEATURES[2]: one})
    encoded = encoder(tf.zeros([1, 2, cfg.output_dim]), tf.ones([1, 2], tf.bool))
    query({**{f: one for f in query_categorical(sizes, cfg)}, D.HISTORY: encoded[:, -1],
           **{f: tf.zeros([1, 1]) for f in time_inputs(cfg)}})


def warm_start_towers(towers, plan: warmstart.Plan, sizes: Dict[str, int],
                      cfg: TrainerConfig, xcfg: TransformConfig,
                      tft_output: tft.TFTransformOutput, genre_width: int) -> dict:
    """Loads the base model's towers and carries their weights into ``towers``."""
    with tf.io.gfile.GFile(os.path.join(plan.towers_dir, TOWERS_SPEC)) as f:
        base_sizes = json.load(f)["sizes"]
    base = build_towers(base_sizes, cfg)
    build_variables(base, base_sizes, cfg, genre_width)
    towers_checkpoint(*base).read(os.path.join(
        plan.towers_dir, TOWERS_CHECKPOINT)).assert_existing_objects_matched()
    build_variables(towers, sizes, cfg, genre_width)
    return warmstart.carry_towers(
        base, towers, warmstart.read_vocabularies(
            os.path.join(plan.towers_dir, warmstart.VOCABULARY_DIR)),
        warmstart.current_vocabularies(tft_output), xcfg)


def training_batch_size(batch_size: int, windows: float,
                        strategy: tf.distribute.Strategy) -> int:
    """The global batch: ``batch_size``, which must divide by the replicas, or on data
    of fewer than four such batches a quarter of the ``windows`` (at least 8), rounded
    down to a multiple of the replicas."""
    check_batch_size(batch_size, strategy)
    replicas = strategy.num_replicas_in_sync
    small = max(8, int(windows) // 4)
    if small >= batch_size:
        return batch_size
    return max(replicas, small - small % replicas)


def train_and_export(train_patterns: Sequence[str], eval_patterns: Sequence[str],
                     tft_output: tft.TFTransformOutput, cfg: TrainerConfig,
                     xcfg: TransformConfig, serving_model_dir: str, run_dir: str,
                     max_steps: Optional[int] = None, base_model: Optional[str] = None,
                     gpus: Optional[Sequence] = None) -> dict:
    """Trains, then writes the SavedModel (chief only) and returns the training history.

    ``train_patterns`` / ``eval_patterns``: SequenceGen's window splits. ``max_steps``:
    train for exactly this many batches (one epoch, the input repeated as needed,
    validation on at most 50 batches) instead of ``cfg.epochs`` full passes.
    ``base_model``: the previous model's serving directory (TFX's warm-start input);
    without it, the newest towers under ``cfg.warm_start_dir``, if any
    (``trainer/warmstart.py``). ``gpus``: the visible GPUs (default: TensorFlow's
    list); with any, training runs in ``mixed_float16``, and the process's earlier
    Keras policy is back when this returns or raises.
    """
    if max_steps is not None and max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}")
    run_start = time.time()
    tf.keras.utils.set_random_seed(cfg.seed)
    with training_strategy(gpus) as strategy:
        return _train_and_export(strategy, run_start, train_patterns, eval_patterns,
                                 tft_output, cfg, xcfg, serving_model_dir, run_dir,
                                 max_steps, base_model)


def _train_and_export(strategy: tf.distribute.Strategy, run_start: float,
                      train_patterns: Sequence[str], eval_patterns: Sequence[str],
                      tft_output: tft.TFTransformOutput, cfg: TrainerConfig,
                      xcfg: TransformConfig, serving_model_dir: str, run_dir: str,
                      max_steps: Optional[int], base_model: Optional[str]) -> dict:
    check_batch_size(cfg.batch_size, strategy)  # before reading any data
    catalog_start = time.time()
    sizes, catalog, num_windows = load_training_data(train_patterns, tft_output, cfg, xcfg)
    catalog_seconds = time.time() - catalog_start
    num_users, num_items = catalog.num_users, catalog.num_items
    logging.info("catalog: %d users, %d items, %d train interactions in %d windows; strategy "
                 "%s with %d replicas", num_users, num_items, catalog.num_examples, num_windows,
                 strategy_name(strategy), strategy.num_replicas_in_sync)
    worker = os.environ.get("TF_CONFIG") and json.loads(os.environ["TF_CONFIG"]).get("task", {})
    prefix = f"[trainer worker {worker.get('index', 0)}]" if worker else "[trainer]"
    spans = read_sequence_spans(train_patterns)
    plan = warmstart.plan(cfg, xcfg, spans, base_model, TOWERS_DIR)
    print(f"{prefix} mode {plan.mode}: {plan.reason}", flush=True)
    genre_width = int(tft_output.transformed_feature_spec()[D.CANDIDATE_FEATURES[1]].shape[0])

    with strategy.scope():
        query_tower, candidate_tower, encoder = towers = build_towers(sizes, cfg)
        model = training_model(query_tower, candidate_tower, encoder, cfg, sizes, catalog)
        model.compile(optimizer=make_optimizer(cfg.optimizer, cfg.learning_rate))
        carried = (warm_start_towers(towers, plan, sizes, cfg, xcfg, tft_output, genre_width)
                   if plan.warm else {})
    spec = D.window_spec(cfg.max_history)
    keep, selected = None, {"new_windows": num_windows, "old_windows": 0,
                            "new_targets": catalog.num_examples, "old_targets": 0}
    replay = 0.0
    if plan.warm:
        is_new = lambda f: warmstart.is_new(f, plan)  # noqa: E731
        selected = D.count_windows(train_patterns, spec, is_new)
        replay = min(1.0, cfg.replay_ratio * selected["new_windows"]
                     / max(1, selected["old_windows"]))
        keep = lambda f: tf.logical_or(  # noqa: E731
            is_new(f), tf.random.uniform(tf.shape(is_new(f))) < replay)
    train_windows = selected["new_windows"] + replay * selected["old_windows"]
    batch = training_batch_size(cfg.batch_size, train_windows, strategy)
    if plan.warm and max_steps is None:
        max_steps = cfg.warm_steps or (
            int(np.ceil(plan.epochs(cfg) * train_windows / batch))
            if selected["new_windows"] else 0)
    train_ds = _distributed(D.make_dataset(train_patterns, spec, batch,
                                           min(cfg.shuffle_buffer, num_windows), cfg.seed,
                                           keep=keep))
    eval_ds = _distributed(D.make_dataset(eval_patterns, spec, batch))
    # Validation loss about five times per run: each pass costs as much as a third of
    # an epoch on small data, and the loss curve needs no more points than that.
    epochs, fit_args = cfg.epochs, {"validation_freq": max(1, cfg.epochs // 5)}
    if max_steps is not None:
        epochs, train_ds = 1, train_ds.repeat()
        fit_args = {"steps_per_epoch": max_steps,
                    "validation_steps": max(1, min(50, D.count_records(eval_patterns)
                                                   // batch))}
        eval_ds = eval_ds.repeat()
    steps_per_epoch = max_steps if max_steps is not None else num_windows // batch
    examples = selected["new_targets"] + int(replay * selected["old_targets"])
    what = (f"{selected['new_windows']:,} new windows + {replay:.0%} of "
            f"{selected['old_windows']:,} earlier ones (warm run {plan.warm_runs} since "
            f"training from scratch" + ("" if cfg.warm_steps else
                                        f": {plan.epochs(cfg)} passes") + ")"
            if plan.warm else f"{num_windows:,} windows")
    print(f"{prefix} {catalog.num_examples:,} train interactions, {num_items:,} items, "
          f"{num_users:,} users; training on {what} of {cfg.max_history} ({examples:,} "
          f"targets); {cfg.encoder} encoder, {'full' if model.full_softmax else 'sampled'} "
          f"softmax; batch {batch}, {steps_per_epoch} steps x {epochs} epochs", flush=True)
    start = time.time()
    history = {}
    if steps_per_epoch or not plan.warm:
        history = model.fit(train_ds, validation_data=eval_ds, epochs=epochs, verbose=0,
                            callbacks=[ProgressLogger(batch, steps_per_epoch, epochs,
                                                      prefix=prefix)], **fit_args).history
    else:
        print(f"{prefix} no interaction is newer than the base model's: its weights are "
              f"exported as they are", flush=True)
    train_seconds = time.time() - start
    steps = steps_per_epoch * epochs
    trained_windows = steps * batch
    # Every train interaction is one target per pass over the windows.
    trained_examples = int(trained_windows * examples / max(1, train_windows))

    chief = is_chief()
    # Every worker saves (the save runs collectives), but only the chief keeps its copy.
    target = serving_model_dir if chief else tempfile.mkdtemp(prefix="worker_model_")
    export(target, query_tower, candidate_tower, encoder, tft_output, catalog,
           read_history(train_patterns, tft_output, cfg), cfg)
    summary = {
        "loss": [float(x) for x in history.get("loss", [])],
        "val_loss": [float(x) for x in history.get("val_loss", [])],
        # Keras validates after epochs freq, 2 freq, ... (1-based).
        "val_epochs": list(range(fit_args["validation_freq"], epochs + 1,
                                 fit_args["validation_freq"])) if max_steps is None else [1],
        "train_seconds": round(train_seconds, 2),
        "train_examples": int(catalog.num_examples), "train_windows": int(num_windows),
        "examples_per_second": round(trained_examples / max(train_seconds, 1e-9), 1),
        "trained_examples": trained_examples, "trained_windows": int(trained_windows),
        "batch_size": int(batch),
        "max_steps": max_steps, "catalog_seconds": round(catalog_seconds, 2),
        "num_users": num_users, "num_items": num_items,
        "softmax": "full" if model.full_softmax else "sampled",
        "replicas": strategy.num_replicas_in_sync, "strategy": strategy_name(strategy),
        "config": cfg.to_custom_config()["trainer"],
        "training": {"mode": plan.mode, "base_model": plan.base_model,
                     "examples": examples, "steps": int(steps),
                     "seconds": round(time.time() - run_start, 2), "reason": plan.reason,
                     "train_seconds": round(train_seconds, 2),
                     "new_windows": selected["new_windows"],
                     "replay_windows": int(round(replay * selected["old_windows"])),
                     "carried_rows": carried, "spans": sorted(spans["spans"], key=int),
                     "warm_runs": plan.warm_runs},
    }
    if chief:
        write_fingerprint(serving_model_dir, model_fingerprint(spans, fingerprint_settings(
            cfg, xcfg)))
        model_uri = os.path.dirname(serving_model_dir.rstrip("/"))
        save_towers(model_uri, query_tower, candidate_tower, encoder, sizes, cfg, xcfg)
        towers_dir = os.path.join(model_uri, TOWERS_DIR)
        warmstart.save_warm_start_files(towers_dir, tft_output, spans, plan.warm_runs)
        if cfg.warm_start_dir:
            summary["training"]["published"] = warmstart.publish(towers_dir,
                                                                 cfg.warm_start_dir)
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
                               max_steps=getattr(fn_args, "train_steps", None) or None,
                               base_model=getattr(fn_args, "base_model", None))
    logging.info("trained %d examples in %.1fs (%.0f examples/s); final loss %.4f",
                 summary["trained_examples"], summary["train_seconds"],
                 summary["examples_per_second"],
                 summary["loss"][-1] if summary["loss"] else float("nan"))
