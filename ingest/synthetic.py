"""Built-in synthetic data: the pipeline's default input.

The generator plants structure that a good retrieval model can recover and a
popularity model cannot:

* ``num_topics`` latent topics. Each item belongs to one topic; each user has a
  sparse Dirichlet mixture over topics.
* Item popularity follows a power law (Zipf exponent ``zipf_exponent``) within
  and across topics, so popularity is a strong but beatable baseline.
* Side features carry signal: an item's genres and release year depend on its
  topic, a user's age, gender and occupation on the user's main topic.
* Each interaction comes from the user's topic mixture with probability
  ``1 - noise`` and from global popularity otherwise.

It writes the generic layout (``interactions.csv``, ``users.csv``, ``items.csv``)
in user chunks, so memory is bounded by the catalog and one chunk, not by the
number of interactions. Output is a pure function of the config (seed included).
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Callable, List, Optional, TextIO

import numpy as np

GENRES = ("Action", "Adventure", "Animation", "Children", "Comedy", "Crime", "Documentary",
          "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance",
          "Sci-Fi", "Thriller", "War", "Western")
OCCUPATIONS = ("student", "engineer", "artist", "educator", "healthcare", "sales",
               "retired", "writer", "scientist", "other")
START_TIMESTAMP = 1_577_836_800  # 2020-01-01T00:00:00Z
ONE_YEAR = 365 * 86_400


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    num_interactions: int = 100_000
    num_users: int = 0  # 0: num_interactions // 50
    num_items: int = 0  # 0: about 3 * sqrt(num_interactions) * 2, at least 200
    num_topics: int = 32
    zipf_exponent: float = 0.8
    topic_concentration: float = 0.1  # Dirichlet alpha: small = users focus on few topics
    noise: float = 0.15  # share of interactions drawn from global popularity
    users_per_chunk: int = 5_000
    seed: int = 42

    def __post_init__(self) -> None:
        if self.num_interactions < 1000:
            raise ValueError(f"num_interactions must be at least 1000, got "
                             f"{self.num_interactions}")
        if not 0.0 <= self.noise <= 1.0:
            raise ValueError(f"noise must be in [0, 1], got {self.noise}")

    @property
    def users(self) -> int:
        return self.num_users or max(100, self.num_interactions // 50)

    @property
    def items(self) -> int:
        return self.num_items or max(200, int(6 * np.sqrt(self.num_interactions)))


@dataclasses.dataclass
class _World:
    item_topic: np.ndarray  # [num_items] int
    item_pop: np.ndarray  # [num_items] float, global popularity, sums to 1
    topic_items: List[np.ndarray]  # per topic, item ids
    topic_cdf: List[np.ndarray]  # per topic, cumulative popularity within topic
    global_cdf: np.ndarray  # [num_items]


def _build_world(cfg: SyntheticConfig, rng: np.random.Generator) -> _World:
    n = cfg.items
    item_topic = rng.integers(0, cfg.num_topics, size=n)
    ranks = rng.permutation(n) + 1  # popularity rank independent of topic
    pop = ranks.astype(np.float64) ** (-cfg.zipf_exponent)
    pop /= pop.sum()
    topic_items, topic_cdf = [], []
    for t in range(cfg.num_topics):
        members = np.flatnonzero(item_topic == t)
        if len(members) == 0:  # keep every topic non-empty
            members = np.array([t % n])
        p = pop[members] / pop[members].sum()
        topic_items.append(members)
        topic_cdf.append(np.cumsum(p))
    return _World(item_topic, pop, topic_items, topic_cdf, np.cumsum(pop))


def generate(output_dir: str, cfg: SyntheticConfig = SyntheticConfig(),
             log: Optional[Callable[[str], None]] = None, log_every: float = 10.0) -> dict:
    """Writes the data set to ``output_dir`` and returns a small summary dict.

    ``log``, if given, receives a progress line at most every ``log_every`` seconds.
    """
    os.makedirs(output_dir, exist_ok=True)
    rng = np.random.default_rng(cfg.seed)
    world = _build_world(cfg, rng)
    _write_items(os.path.join(output_dir, "items.csv"), cfg, world, rng)
    # Per-topic user traits: mean age, P(gender=F), occupation distribution.
    topic_age = rng.uniform(18, 60, cfg.num_topics)
    topic_female = rng.uniform(0.15, 0.85, cfg.num_topics)
    topic_occ = rng.dirichlet(np.full(len(OCCUPATIONS), 0.3), cfg.num_topics)
    # Interactions per user: heavy-tailed, scaled so the total is num_interactions.
    activity = rng.lognormal(0.0, 0.8, cfg.users)
    counts = np.maximum(5, np.round(activity / activity.sum() * cfg.num_interactions))
    counts = counts.astype(np.int64)
    written = 0
    with open(os.path.join(output_dir, "interactions.csv"), "w") as inter, \
            open(os.path.join(output_dir, "users.csv"), "w") as users:
        inter.write("user_id,item_id,rating,timestamp\n")
        users.write("user_id,age,gender,occupation\n")
        began = last = time.time()
        for start in range(0, cfg.users, cfg.users_per_chunk):
            stop = min(cfg.users, start + cfg.users_per_chunk)
            written += _write_user_chunk(inter, users, start, stop, counts[start:stop], cfg,
                                         world, rng, topic_age, topic_female, topic_occ)
            if log and time.time() - last >= log_every and stop < cfg.users:
                last = time.time()
                log(f"[data] generated {written:,} interactions ({stop:,}/{cfg.users:,} "
                    f"users, {written / (last - began):,.0f} rows/s)")
    return {"interactions": written, "users": cfg.users, "items": cfg.items,
            "topics": cfg.num_topics, "seed": cfg.seed}


def _write_items(path: str, cfg: SyntheticConfig, world: _World,
                 rng: np.random.Generator) -> None:
    topic_genres = rng.integers(0, len(GENRES), size=(cfg.num_topics, 2))
    topic_year = rng.integers(1960, 2020, size=cfg.num_topics)
    lines = ["item_id,genres,year"]
    for i in range(cfg.items):
        t = world.item_topic[i]
        genres = {GENRES[topic_genres[t, 0]]}
        if rng.random() < 0.6:
            genres.add(GENRES[topic_genres[t, 1]])
        if rng.random() < 0.2:
            genres.add(GENRES[rng.integers(len(GENRES))])
        year = int(np.clip(topic_year[t] + rng.normal(0, 6), 1920, 2020))
        lines.append(f"i{i},{'|'.join(sorted(genres))},{year}")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def _write_user_chunk(inter: TextIO, users: TextIO, start: int, stop: int,
                      counts: np.ndarray, cfg: SyntheticConfig, world: _World,
                      rng: np.random.Generator, topic_age: np.ndarray,
                      topic_female: np.ndarray, topic_occ: np.ndarray) -> int:
    n_users = stop - start
    mix = rng.dirichlet(np.full(cfg.num_topics, cfg.topic_concentration), n_users)
    main = mix.argmax(axis=1)
    ages = np.clip(np.round(topic_age[main] + rng.normal(0, 7, n_users)), 13, 80).astype(int)
    female = rng.random(n_users) < topic_female[main]
    occ_u = np.array([rng.choice(len(OCCUPATIONS), p=topic_occ[t]) for t in main])
    users.write("".join(
        f"u{start + j},{ages[j]},{'F' if female[j] else 'M'},{OCCUPATIONS[occ_u[j]]}\n"
        for j in range(n_users)))

    owner, item = _sample_items(counts, mix, cfg, world, rng)

    # Each user is active from a random start for a heavy-tailed span of time.
    user_start = START_TIMESTAMP + rng.integers(0, ONE_YEAR, n_users)
    gaps = rng.exponential(3_600.0, len(owner)).astype(np.int64) + 1
    csum = np.cumsum(gaps)
    user_first = np.searchsorted(owner, np.arange(n_users))
    base = np.concatenate([[0], csum])[user_first]
    ts = user_start[owner] + (csum - base[owner])
    rating = np.clip(np.round(rng.normal(3.6, 1.0, len(owner))), 1, 5).astype(int)
    inter.write("".join(f"u{start + o},i{i},{r},{t}\n"
                        for o, i, r, t in zip(owner.tolist(), item.tolist(),
                                              rating.tolist(), ts.tolist())))
    return len(owner)


def _sample_items(counts: np.ndarray, mix: np.ndarray, cfg: SyntheticConfig, world: _World,
                  rng: np.random.Generator):
    """Draws ``counts[u]`` distinct items per user; returns (owner, item), grouped by owner.

    Draws come from the user's topics (or global popularity, with probability
    ``noise``). A heavy user can exhaust a small topic, so users still short after a
    round draw again; the last round draws from global popularity only.
    """
    n_users = len(counts)
    mix_cdf = np.cumsum(mix, axis=1)
    owner = np.zeros(0, np.int64)
    item = np.zeros(0, np.int64)
    for round_ in range(4):
        have = np.bincount(owner, minlength=n_users)
        need = np.maximum(counts - have, 0)
        if not need.any():
            break
        new_owner = np.repeat(np.arange(n_users), 2 * need)
        noise = 1.0 if round_ == 3 else cfg.noise
        from_global = rng.random(len(new_owner)) < noise
        topic = (rng.random(len(new_owner))[:, None] > mix_cdf[new_owner]).sum(axis=1)
        topic = np.minimum(topic, cfg.num_topics - 1)
        new_item = np.empty(len(new_owner), dtype=np.int64)
        for t in np.unique(topic):
            sel = np.flatnonzero((topic == t) & ~from_global)
            pos = np.searchsorted(world.topic_cdf[t], rng.random(len(sel)), side="right")
            new_item[sel] = world.topic_items[t][np.minimum(pos, len(world.topic_items[t]) - 1)]
        sel = np.flatnonzero(from_global)
        new_item[sel] = np.minimum(np.searchsorted(world.global_cdf, rng.random(len(sel)),
                                                   side="right"), cfg.items - 1)
        owner = np.concatenate([owner, new_owner])
        item = np.concatenate([item, new_item])
        # Keep the first draw of each (user, item), grouped by user in draw order.
        _, first = np.unique(owner * cfg.items + item, return_index=True)
        first = first[np.lexsort((first, owner[first]))]
        owner, item = owner[first], item[first]
        rank = np.arange(len(owner)) - np.searchsorted(owner, owner)
        keep = rank < counts[owner]
        owner, item = owner[keep], item[keep]
    return owner, item
