"""The partitioned candidate index: balanced lists, and the index's search and
brute-force scores against NumPy; the compact item-ID maps."""
import numpy as np
import pytest
import tensorflow as tf

from serving.savedmodel.index import IndexConfig, auto_lists
from serving.savedmodel.item_ids import ItemIds
from serving.savedmodel.ivf import PartitionedIndex
from serving.savedmodel.partition import balanced_assign, partition_catalog
from serving.savedmodel.quantize import quantize_rows


def clustered(n, d=16, topics=40, seed=0):
    """Unit rows around ``topics`` random directions (what trained item vectors look
    like far more than uniform noise does)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((topics, d))
    x = centres[rng.integers(0, topics, n)] + 0.35 * rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


# -- partition ----------------------------------------------------------------------
def test_balanced_assign_spills_the_farthest_rows_to_their_next_list():
    # Four rows, two lists of room 2; every row prefers list 0. Scores to list 0:
    # rows 0..3 = 0.9, 0.8, 0.7, 0.6, so rows 0 and 1 keep it and rows 2, 3 spill.
    choices = np.array([[0, 1]] * 4)
    scores = np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.6, 0.4]], np.float32)
    x = np.eye(2, dtype=np.float32)[[0, 0, 0, 0]]
    out = balanced_assign(choices, scores, x, np.eye(2, dtype=np.float32), capacity=2)
    assert out.tolist() == [0, 0, 1, 1]
    with pytest.raises(ValueError, match="cannot hold"):
        balanced_assign(choices, scores, x, np.eye(2, dtype=np.float32), capacity=1)


@pytest.mark.parametrize("lists", [16, 300])  # flat, and two-level (> FLAT_MAX_LISTS)
def test_partition_holds_every_item_once_within_the_cap(lists):
    x = clustered(6000, seed=1)
    p = partition_catalog(x, lists, seed=3, slack=0.05)
    items = p.items[p.items >= 0]
    assert np.array_equal(np.sort(items), np.arange(len(x)))  # each item exactly once
    assert np.array_equal(p.items.reshape(-1)[p.position], np.arange(len(x)))
    assert p.list_size == int(np.ceil(len(x) / lists * 1.05))
    assert lists <= p.num_lists <= lists + int(round(np.sqrt(lists)))
    # Centroids are the normalised means of their lists.
    first = p.items[0][p.items[0] >= 0]
    mean = x[first].mean(axis=0)
    np.testing.assert_allclose(p.centroids[0], mean / np.linalg.norm(mean), atol=1e-5)
    again = partition_catalog(x, lists, seed=3, slack=0.05)
    assert np.array_equal(again.items, p.items)  # fixed seed, same lists


def test_auto_lists_is_about_four_square_roots():
    assert auto_lists(1_000_000) == 4096 and auto_lists(10_000_000) == 16384
    assert IndexConfig(lists=0).num_lists(50) == 32 and IndexConfig(lists=64).num_lists(10) == 10


def test_index_exact_is_brute_force_and_search_leaves_out_items():
    x = clustered(2000, seed=6)
    index = PartitionedIndex(x, partition_catalog(x, 20, seed=0), probes=4)
    q, scale = quantize_rows(x)
    rows = q * scale[:, None]
    query = rows[[5, 900]] / np.linalg.norm(rows[[5, 900]], axis=1, keepdims=True)
    left_out = np.array([[5, 6, -1], [900, -1, -1]])
    exact_values, exact_items = index.exact(tf.constant(query), tf.constant(left_out), 50)
    scores = query @ rows.T
    scores[0, [5, 6]] = scores[1, 900] = -np.inf
    want = np.argsort(-scores, axis=1)[:, :50]
    assert exact_items.numpy().tolist() == want.tolist()
    np.testing.assert_allclose(exact_values, np.take_along_axis(scores, want, 1), rtol=1e-5)
    values, items = index.search(tf.constant(query), tf.constant(left_out), 50)
    assert not {5, 6} & set(items.numpy()[0]) and 900 not in items.numpy()[1]
    assert (np.diff(values.numpy(), axis=1) <= 0).all()
    # Every item returned is scored as brute force scores it; most of its top 50 found.
    np.testing.assert_allclose(values, np.take_along_axis(scores, items.numpy(), 1),
                               rtol=1e-5)
    assert np.mean([len(set(a) & set(b)) / 50 for a, b in zip(items.numpy(), want)]) > 0.8


# -- item IDs -------------------------------------------------------------------------
@pytest.mark.parametrize("buckets", [2**63 - 1, 3])  # 3 buckets: every hash is shared
def test_item_ids_map_both_ways_and_reject_unknown_ids(buckets):
    ids = [b"a", b"bb", b"item-3", "\u00e9t\u00e9".encode(), b"x" * 40]
    table = ItemIds(ids, hash_buckets=buckets)
    assert table.same_hash == (1 if buckets > 3 else max(np.bincount(
        tf.strings.to_hash_bucket_fast(ids, 3).numpy())))
    got = table.index(tf.constant([[b"bb", b"", b"zz"],
                                   [b"x" * 40, b"a", "\u00e9t\u00e9".encode()]]))
    assert got.numpy().tolist() == [[1, -1, -1], [4, 0, 3]]
    assert table.ids(tf.constant([2, -1, 4], tf.int64)).numpy().tolist() == \
        [b"item-3", b"", b"x" * 40]
