"""Typed settings of the ``preprocessing_fn``, passed through Transform's ``custom_config``."""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional


def config_section(cls, custom_config: Optional[Mapping[str, Any]], key: str) -> dict:
    """``custom_config[key]`` as keyword arguments of dataclass ``cls``; unknown keys raise."""
    values = dict((custom_config or {}).get(key, {}))
    unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise ValueError(f"unknown {key} settings: {sorted(unknown)}")
    return values


@dataclasses.dataclass(frozen=True)
class TransformConfig:
    """Vocabulary and bucketing settings.

    IDs seen fewer than ``*_frequency_threshold`` times in train share the
    ``num_oov_buckets`` out-of-vocabulary buckets with IDs never seen in train.
    """

    user_frequency_threshold: int = 1
    item_frequency_threshold: int = 1
    num_oov_buckets: int = 1
    genre_buckets: int = 32  # multi-hot width: top genre_buckets - 1 genres + 1 OOV
    year_buckets: int = 10  # quantile buckets of known release years (+1 for unknown)

    def __post_init__(self) -> None:
        for name in ("user_frequency_threshold", "item_frequency_threshold",
                     "num_oov_buckets", "genre_buckets", "year_buckets"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.genre_buckets < 2:
            raise ValueError(f"genre_buckets must be >= 2, got {self.genre_buckets}")

    def to_custom_config(self) -> dict:
        return {"transform": dataclasses.asdict(self)}

    @classmethod
    def from_custom_config(cls, custom_config: Optional[Mapping[str, Any]]) -> "TransformConfig":
        return cls(**config_section(cls, custom_config, "transform"))
