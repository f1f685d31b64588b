"""The Trainer's model, rebuilt from its checkpoint, and its training data: what
every compressed candidate starts from and fine-tunes on."""
from __future__ import annotations

import json
import os
from typing import List, Optional

import tensorflow as tf
import tensorflow_transform as tft

from components.sequence_gen.component import split_pattern
from trainer import data as D
from trainer.config import TrainerConfig
from trainer.model import SequenceRetrievalModel, build_towers
from trainer.task import (TOWERS_CHECKPOINT, TOWERS_DIR, TOWERS_SPEC, load_training_data,
                          read_history, towers_checkpoint, training_model)
from transform.config import TransformConfig


class Teacher:
    """The Trainer's towers (``towers()``), settings and training windows."""

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
    def load(cls, model_uri: str, graph: tft.TFTransformOutput, sequences: str) -> "Teacher":
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
