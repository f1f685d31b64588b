"""Typed hyperparameters of the two-tower model, passed through Trainer's ``custom_config``."""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional, Tuple

from transform.config import config_section

OPTIMIZER_NAMES = ("lazy_adam", "adam")


@dataclasses.dataclass(frozen=True)
class TrainerConfig:
    """Model, loss and training settings.

    ``tower_layers`` are the hidden widths of each tower's MLP (its depth is their
    count); both towers end in a linear ``output_dim`` layer and L2 normalisation.
    """

    id_embedding_dim: int = 64
    feature_embedding_dim: int = 8
    tower_layers: Tuple[int, ...] = (256,)
    output_dim: int = 64
    dropout: float = 0.1
    l2: float = 0.0
    temperature: float = 0.05
    logq_correction: bool = True
    mixed_negatives: int = 0  # extra uniformly sampled catalog items per batch
    remove_accidental_hits: bool = True
    learning_rate: float = 0.002
    # "lazy_adam" updates only the embedding rows a batch looked up (trainer/optim.py);
    # "adam" is Keras's Adam, whose every step touches every row of the ID tables.
    optimizer: str = "lazy_adam"
    batch_size: int = 1024
    epochs: int = 8
    shuffle_buffer: int = 100_000
    top_k: int = 100
    seed: int = 42

    def __post_init__(self) -> None:
        if self.top_k < 100:
            raise ValueError(f"top_k must be >= 100 (serving contract), got {self.top_k}")
        for name in ("id_embedding_dim", "feature_embedding_dim", "output_dim", "batch_size",
                     "epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.optimizer not in OPTIMIZER_NAMES:
            raise ValueError(f"optimizer must be one of {OPTIMIZER_NAMES}, got {self.optimizer!r}")
        if self.mixed_negatives < 0:
            raise ValueError(f"mixed_negatives must be >= 0, got {self.mixed_negatives}")

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
