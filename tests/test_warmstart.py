"""Warm start: rows carried by token, the decision to warm-start or retrain, new windows."""
import dataclasses
import json

import numpy as np
import pytest
import tensorflow as tf

from trainer import data as D
from trainer import warmstart as W
from trainer.config import TrainerConfig
from trainer.model import build_towers
from trainer.task import build_variables
from transform import features as F
from transform.config import TransformConfig

CFG = TrainerConfig(id_embedding_dim=4, feature_embedding_dim=3, tower_layers=(8,),
                    output_dim=4, dropout=0.0)
XCFG = TransformConfig(genre_buckets=6, year_buckets=3)
GENDER, OCCUPATION = F.transformed_name(F.USER_GENDER), F.transformed_name(F.USER_OCCUPATION)
AGE, YEAR = F.transformed_name(F.USER_AGE), F.transformed_name(F.ITEM_YEAR)


def test_carry_rows_follows_tokens_through_a_reordered_grown_vocabulary():
    base = np.arange(4 * 2, dtype=np.float32).reshape(4, 2)  # a b c + 1 OOV row
    fresh = -np.ones((6, 2), np.float32)  # c d a b e + 1 OOV row
    out = W.carry_rows(base, [b"a", b"b", b"c"], fresh, [b"c", b"d", b"a", b"b", b"e"], 1)
    np.testing.assert_array_equal(out, [
        base[2],  # c
        fresh[1],  # d: new, keeps its fresh row
        base[0], base[1],  # a, b
        fresh[4],  # e: new
        base[3],  # the out-of-vocabulary row, by position
    ])


def _sizes(vocabs):
    return {D.ITEM_ID: len(vocabs[F.ITEM_VOCAB]) + 1, D.USER_ID: len(vocabs[F.USER_VOCAB]) + 1,
            GENDER: len(vocabs[F.GENDER_VOCAB]) + 1,
            OCCUPATION: len(vocabs[F.OCCUPATION_VOCAB]) + 1, AGE: F.NUM_AGE_BUCKETS,
            YEAR: XCFG.year_buckets + 1}


def _towers(vocabs, seed):
    tf.keras.utils.set_random_seed(seed)
    towers = build_towers(_sizes(vocabs), CFG)
    build_variables(towers, _sizes(vocabs), CFG, XCFG.genre_buckets)
    return towers


def _item(vocabs, item, genres, year=1):
    multi_hot = np.zeros((1, XCFG.genre_buckets), np.float32)
    for g in genres:
        multi_hot[0, vocabs[F.GENRE_VOCAB].index(g)] = 1.0
    return {D.ITEM_ID: tf.constant([vocabs[F.ITEM_VOCAB].index(item)], tf.int64),
            D.CANDIDATE_FEATURES[1]: tf.constant(multi_hot),
            D.CANDIDATE_FEATURES[2]: tf.constant([year], tf.int64)}


def _user(vocabs, gender, occupation, history):
    return {AGE: tf.constant([2], tf.int64),
            GENDER: tf.constant([vocabs[F.GENDER_VOCAB].index(gender)], tf.int64),
            OCCUPATION: tf.constant([vocabs[F.OCCUPATION_VOCAB].index(occupation)], tf.int64),
            D.HISTORY: history, F.QUERY_AGE: tf.constant([[1.5]]),
            F.QUERY_GAP: tf.constant([[0.5]])}


def test_carried_towers_give_old_items_and_users_the_same_vectors():
    base_vocabs = {F.ITEM_VOCAB: [b"a", b"b", b"c"], F.USER_VOCAB: [b"u1"],
                   F.GENRE_VOCAB: [b"Drama", b"Comedy"], F.GENDER_VOCAB: [b"M", b"F"],
                   F.OCCUPATION_VOCAB: [b"x"]}
    # Transform re-sorts by frequency and adds what it saw since.
    new_vocabs = {F.ITEM_VOCAB: [b"c", b"d", b"a", b"b", b"e"], F.USER_VOCAB: [b"u2", b"u1"],
                  F.GENRE_VOCAB: [b"Comedy", b"Action", b"Drama"],
                  F.GENDER_VOCAB: [b"F", b"M"], F.OCCUPATION_VOCAB: [b"y", b"x"]}
    base, new = _towers(base_vocabs, 1), _towers(new_vocabs, 2)
    stats = W.carry_towers(base, new, base_vocabs, new_vocabs, XCFG)
    assert stats[D.ITEM_ID] == {"kept": 3, "new": 2}
    assert stats[D.CANDIDATE_FEATURES[1]] == {"kept": 2, "new": 1}
    for item, genres in ((b"a", [b"Drama"]), (b"c", [b"Comedy", b"Drama"])):
        np.testing.assert_allclose(new[1](_item(new_vocabs, item, genres)),
                                   base[1](_item(base_vocabs, item, genres)), atol=1e-6)
    history = tf.constant([[0.1, -0.2, 0.3, 0.4]])
    np.testing.assert_allclose(new[0](_user(new_vocabs, b"F", b"x", history)),
                               base[0](_user(base_vocabs, b"F", b"x", history)), atol=1e-6)
    # A new item's ID row is fresh, not any old item's.
    d = new[1].embeddings[D.ITEM_ID].embeddings.numpy()[1]
    assert not any(np.allclose(d, row) for row in base[1].embeddings[D.ITEM_ID].embeddings.numpy())


def _spans(**rows):
    return {"spans": {s[1:]: {"rows": n, "digest": f"{n:016x}", "first_time": 0,
                              "last_time": 1} for s, n in rows.items()},
            "newest_span": max(int(s[1:]) for s in rows), "train_last_time": 100}


def test_changed_past_names_the_span():
    base = _spans(s1=10, s2=5)
    assert W.changed_past(base, _spans(s1=10, s2=5, s3=7)) == []  # only new spans: fine
    edited = _spans(s1=10, s2=5, s3=7)
    edited["spans"]["2"]["digest"] = "ffff"
    [message] = W.changed_past(base, edited)
    assert message.startswith("span 2 changed: 5 rows")
    assert W.changed_past(base, _spans(s1=9, s2=5)) == [
        f"span 1 changed: 10 rows (digest {10:016x}) -> 9 rows (digest {9:016x})"]
    assert W.changed_past(base, _spans(s2=5, s3=1)) == ["span 1 (10 rows) is gone"]


def _base_model(tmp_path, cfg=CFG, spans=None):
    """A Trainer Model artifact's layout: Format-Serving plus towers/ with the files a
    warm start reads."""
    towers = tmp_path / "model" / "towers"
    towers.mkdir(parents=True)
    (tmp_path / "model" / "Format-Serving").mkdir()
    (towers / "spec.json").write_text(json.dumps(
        {"sizes": {}, **cfg.to_custom_config(), **XCFG.to_custom_config()}))
    (towers / W.SPANS_FILE).write_text(json.dumps(spans or _spans(s1=10)))
    return str(tmp_path / "model" / "Format-Serving")


@pytest.mark.parametrize("cfg, spans, mode, reason", [
    (CFG, _spans(s1=10, s2=4), W.WARM_START, "warm start from"),
    (dataclasses.replace(CFG, full_retrain=True), _spans(s1=10), W.FULL,
     "full retrain requested"),
    (dataclasses.replace(CFG, output_dim=8), _spans(s1=10), W.FULL,
     "the model config changed: output_dim: 4 -> 8"),
    (CFG, _spans(s1=11, s2=4), W.FULL, "the past changed"),
])
def test_plan_warm_starts_only_when_nothing_forbids_it(tmp_path, cfg, spans, mode, reason):
    base = _base_model(tmp_path)
    p = W.plan(cfg, XCFG, spans, base, "towers")
    assert p.mode == mode and p.reason.startswith(reason), p.reason
    assert p.base_model == base
    if p.warm:
        assert (p.newest_span, p.train_last_time) == (1, 100)


def test_the_first_warm_run_after_a_training_from_scratch_trains_longer(tmp_path):
    """The count of warm runs travels with the towers; the first one after a from-scratch
    base takes ``first_warm_epochs`` passes, later ones ``warm_epochs``."""
    cfg = dataclasses.replace(CFG, warm_epochs=5, first_warm_epochs=15)
    base = _base_model(tmp_path)  # written by a full training: no warm_runs key
    first = W.plan(cfg, XCFG, _spans(s1=10, s2=4), base, "towers")
    assert (first.warm_runs, first.epochs(cfg)) == (1, 15)
    towers = tmp_path / "model" / "towers"
    (towers / W.SPANS_FILE).write_text(json.dumps({**_spans(s1=10, s2=4),
                                                   "warm_runs": first.warm_runs}))
    second = W.plan(cfg, XCFG, _spans(s1=10, s2=4, s3=2), base, "towers")
    assert (second.warm_runs, second.epochs(cfg)) == (2, 5)
    full = W.plan(dataclasses.replace(cfg, full_retrain=True), XCFG,
                  _spans(s1=10, s2=4, s3=2), base, "towers")
    assert full.warm_runs == 0  # the count starts again after a training from scratch


def test_plan_without_a_base_and_from_a_published_folder(tmp_path):
    assert W.plan(CFG, XCFG, _spans(s1=1), None, "towers").reason == \
        "no earlier model to warm-start from"
    base = _base_model(tmp_path)
    warm_dir = str(tmp_path / "warm")
    first = W.publish(str(tmp_path / "model" / "towers"), warm_dir)
    second = W.publish(str(tmp_path / "model" / "towers"), warm_dir)
    assert W.newest_published(warm_dir) == second != first
    cfg = dataclasses.replace(CFG, warm_start_dir=warm_dir)
    p = W.plan(cfg, XCFG, _spans(s1=10, s2=3), None, "towers")
    assert p.warm and p.base_model == second and p.towers_dir == second
    assert W.plan(cfg, XCFG, _spans(s1=10), base, "towers").base_model == base  # Resolver first


def test_new_windows_are_newer_spans_or_the_base_models_eval_window():
    p = W.Plan(W.WARM_START, "", newest_span=2, train_last_time=100)
    features = {F.WINDOW_SPAN: tf.constant([[1], [2], [2], [3]], tf.int64),
                F.WINDOW_TIME: tf.constant([[50], [100], [101], [60]], tf.int64)}
    # span 1 old; span 2 up to the base's last train time old, after it (the base's eval
    # window) new; span 3 new.
    assert W.is_new(features, p).numpy().tolist() == [False, False, True, True]


def test_a_random_selection_keeps_each_window_whole(tmp_path):
    """``keep`` draws random numbers (the replay sample): one draw per window, so every
    feature of a kept window stays together."""
    path = str(tmp_path / "w.gz")
    with tf.io.TFRecordWriter(path, options="GZIP") as w:
        for i in range(200):
            w.write(tf.train.Example(features=tf.train.Features(feature={
                F.WINDOW_USER: tf.train.Feature(int64_list=tf.train.Int64List(value=[i])),
                F.WINDOW_ITEMS: tf.train.Feature(int64_list=tf.train.Int64List(
                    value=[i, i + 1, i + 2])),
                F.WINDOW_SPAN: tf.train.Feature(int64_list=tf.train.Int64List(value=[i % 2])),
            })).SerializeToString())
    ds = D.make_dataset([path], D.window_spec(2), 16, shuffle_buffer=50, seed=1,
                        keep=lambda f: tf.logical_or(
                            tf.reshape(f[F.WINDOW_SPAN] > 0, [-1]),
                            tf.random.uniform([tf.shape(f[F.WINDOW_SPAN])[0]]) < 0.3))
    seen = []
    for batch in ds:
        users = batch[F.WINDOW_USER].numpy()[:, 0]
        assert len(users) == 16  # whole batches when training
        np.testing.assert_array_equal(batch[F.WINDOW_ITEMS].numpy()[:, 0], users)
        seen += users.tolist()
    odd = [u for u in seen if u % 2]
    assert len(odd) >= 90 and 5 < len(seen) - len(odd) < 60  # all new, about 30% of old
