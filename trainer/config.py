"""Typed hyperparameters of the two-tower model, passed through Trainer's ``custom_config``."""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional, Tuple

from transform.config import config_section

OPTIMIZER_NAMES = ("lazy_adam", "adam")


ENCODERS = ("mean", "attention")


@dataclasses.dataclass(frozen=True)
class TrainerConfig:
    """Model, loss and training settings.

    The query tower encodes the user's last ``max_history`` items (``encoder``: a
    causal mean, or causal self-attention blocks plus the mean) and, optionally, the
    user-ID embedding and the demographics; its MLP has the hidden widths
    ``tower_layers``. Both towers end in a linear ``output_dim`` layer and L2
    normalisation. ``batch_size`` counts training windows, each of ``max_history``
    positions.
    """

    id_embedding_dim: int = 64
    feature_embedding_dim: int = 8
    tower_layers: Tuple[int, ...] = (256,)
    output_dim: int = 64
    encoder: str = "mean"
    attention_blocks: int = 2
    attention_heads: int = 2
    use_user_id: bool = False  # without it, model size does not grow with the users
    use_user_features: bool = True
    # Chance that a training position sees a user feature (and the user ID) as unknown,
    # which trains the out-of-vocabulary rows that new users are answered from.
    feature_dropout: float = 0.1
    # Chance that a training position's query sees an empty history, so the tower also
    # learns to answer from the user features alone: a new user described only by
    # them (``serve_tf_examples``), or one whose history says little about now.
    history_dropout: float = 0.1
    # The query's age input (transform.features.QUERY_AGE): each training position is
    # told how long before the newest train interaction it happened, and serving asks
    # as of "now" (age 0): the "example age" of YouTube's recommender. Off: it did not
    # move the global-time gate on MovieLens 100K, and on data whose users are each
    # active for a short time it identifies the users of a period and costs recall on
    # a per-user split (docs/model.md, "Time inputs").
    query_age: bool = False
    # The query's gap input (transform.features.QUERY_GAP): how long since the history's
    # newest item. A user back after weeks wants what is new, not more of what they
    # rated before the gap; training positions learn the difference from the real gaps.
    query_gap: bool = True
    max_history: int = 50  # N: items per training window and in the served history
    exclusion_cap: int = 1000  # served model's excluded items per user, newest first
    dropout: float = 0.1
    l2: float = 0.0
    temperature: float = 0.05
    # Full softmax over the catalog up to this many items; beyond it, a sampled
    # softmax over ``num_negatives`` of the batch's targets with the log-Q correction.
    full_softmax_max_items: int = 20_000
    num_negatives: int = 4096
    logq_correction: bool = True  # sampled softmax only
    remove_accidental_hits: bool = True  # sampled softmax only
    learning_rate: float = 0.002
    # "lazy_adam" updates only the embedding rows a batch looked up (trainer/optim.py);
    # "adam" is Keras's Adam, whose every step touches every row of the ID tables.
    optimizer: str = "lazy_adam"
    batch_size: int = 64
    epochs: int = 20
    shuffle_buffer: int = 100_000
    top_k: int = 100
    # The served candidate index (serving.savedmodel.index.IndexConfig): catalogs of
    # ann_min_items items or more get a partitioned index of ann_lists balanced lists
    # (0: about 4 sqrt(items)); smaller ones are scored in full. The export probes the
    # fewest lists (8, 16, ... up to ann_max_probes) whose recall@top_k against brute
    # force on sampled stored users reaches ann_target_recall; with ann_target_recall
    # 0, exactly ann_probes.
    ann_min_items: int = 250_000
    ann_lists: int = 0
    ann_probes: int = 128
    ann_target_recall: float = 0.95
    ann_max_probes: int = 1024
    seed: int = 42
    # Continuous training (trainer/warmstart.py): start from the previous run's model and
    # train on the windows it never saw plus ``replay_ratio`` times as many earlier
    # ones, for ``warm_steps`` batches (0: ``warm_epochs`` passes over that set, or
    # ``first_warm_epochs`` when the base model was trained from scratch: it weighs all
    # history alike, and the first increment moves it furthest towards the recency-
    # weighted mix of new and replayed windows; on ML-100K 5 passes there left it 6-27%
    # below a from-scratch retrain, 15 passes above it).
    warm_start: bool = True
    full_retrain: bool = False  # this run only: train from scratch and say so
    warm_steps: int = 0
    warm_epochs: int = 5
    first_warm_epochs: int = 15
    replay_ratio: float = 1.0
    # Kubeflow: where the Trainer publishes its towers for the next run and finds the
    # previous run's (a folder on the model volume); "" = the Resolver's base_model only.
    warm_start_dir: str = ""

    def __post_init__(self) -> None:
        if self.top_k < 100:
            raise ValueError(f"top_k must be >= 100 (serving contract), got {self.top_k}")
        for name in ("id_embedding_dim", "feature_embedding_dim", "output_dim", "batch_size",
                     "epochs", "max_history", "exclusion_cap", "attention_blocks",
                     "attention_heads", "num_negatives", "ann_min_items", "ann_probes",
                     "ann_max_probes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.ann_target_recall <= 1.0:
            raise ValueError(f"ann_target_recall must be in [0, 1] (0: exactly ann_probes), "
                             f"got {self.ann_target_recall}")
        if self.ann_lists < 0:
            raise ValueError(f"ann_lists must be >= 0 (0: automatic), got {self.ann_lists}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if (self.warm_steps < 0 or self.warm_epochs < 1 or self.first_warm_epochs < 1
                or self.replay_ratio < 0):
            raise ValueError(f"warm_steps must be >= 0, warm_epochs and first_warm_epochs "
                             f">= 1 and replay_ratio >= 0, got {self.warm_steps}, "
                             f"{self.warm_epochs}, {self.first_warm_epochs} and "
                             f"{self.replay_ratio}")
        for name in ("dropout", "feature_dropout", "history_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.optimizer not in OPTIMIZER_NAMES:
            raise ValueError(f"optimizer must be one of {OPTIMIZER_NAMES}, got {self.optimizer!r}")
        if self.encoder not in ENCODERS:
            raise ValueError(f"encoder must be one of {ENCODERS}, got {self.encoder!r}")
        if self.encoder == "attention" and self.output_dim % self.attention_heads:
            raise ValueError(f"output_dim {self.output_dim} must divide by attention_heads "
                             f"{self.attention_heads}")

    def to_custom_config(self) -> dict:
        d = dataclasses.asdict(self)
        d["tower_layers"] = list(self.tower_layers)
        return {"trainer": d}

    @classmethod
    def from_custom_config(cls, custom_config: Optional[Mapping[str, Any]]) -> "TrainerConfig":
        values = config_section(cls, custom_config, "trainer")
        if "tower_layers" in values:
            values["tower_layers"] = tuple(int(w) for w in values["tower_layers"])
        return cls(**values)
