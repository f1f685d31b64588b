"""Raw item ID <-> catalog index, compact enough for a catalog of millions.

Two ``StaticHashTable``s over the vocabulary (index -> ID for answers, ID -> index for
request items) cost about 55 bytes per item each in the serving process: 1.1 GB at 10M
items, more than the int8 index itself. Here the IDs are one concatenated string with
offsets, and ID -> index is a binary search in the sorted 64-bit fingerprints of the
IDs, confirmed against the stored ID (so an unknown ID can never match): about
``len(id) + 16`` bytes per item. Core ops only (``StringToHashBucketFast``,
``LowerBound``, ``Substr``). The string and the fingerprints are only read whole and
the offsets and order only gathered: a variable read whole after a gather is copied
on every read (copy-on-read).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import tensorflow as tf

HASH_BUCKETS = 2**63 - 1  # Fingerprint64 modulo this: effectively the 64-bit hash


def read_lines(path: str) -> list:
    """A vocabulary file's entries as ``TextFileInitializer(WHOLE_LINE)`` reads them."""
    with tf.io.gfile.GFile(path, "rb") as f:
        return [line[:-1] if line.endswith(b"\n") else line for line in f]


def _hashes(ids: Sequence[bytes], buckets: int) -> np.ndarray:
    out = [tf.strings.to_hash_bucket_fast(tf.constant(ids[lo:lo + (1 << 20)], tf.string),
                                          buckets).numpy()
           for lo in range(0, len(ids), 1 << 20)]
    return np.concatenate(out) if out else np.zeros(0, np.int64)


class ItemIds(tf.Module):
    """``ids[i]`` is the raw ID of catalog index ``i``.

    ``hash_buckets`` is for tests: few buckets force IDs to share a hash, which
    ``index`` resolves by checking every ID with the same hash (the most any hash has,
    known at export).
    """

    def __init__(self, ids: Sequence[bytes], hash_buckets: int = HASH_BUCKETS) -> None:
        super().__init__(name="item_ids")
        if not len(ids):
            raise ValueError("got an empty catalog")
        lengths = np.fromiter((len(i) for i in ids), np.int64, len(ids))
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        offset_type = np.int32 if offsets[-1] < 2**31 else np.int64
        self.blob = tf.Variable(b"".join(ids), trainable=False)
        self.offsets = tf.Variable(offsets.astype(offset_type), trainable=False)
        hashes = _hashes(ids, hash_buckets)
        order = np.argsort(hashes, kind="stable")
        self.sorted_hashes = tf.Variable(hashes[order], trainable=False)
        self.order = tf.Variable(order.astype(np.int32), trainable=False)
        _, runs = np.unique(hashes, return_counts=True)
        self.same_hash = int(runs.max())
        self.hash_buckets = hash_buckets
        self.num_items = len(ids)

    def ids(self, index: tf.Tensor) -> tf.Tensor:
        """Catalog indices (any shape, int64) -> raw IDs; "" for -1."""
        at = tf.maximum(index, 0)
        start, end = tf.gather(self.offsets, at), tf.gather(self.offsets, at + 1)
        raw = tf.strings.substr(self.blob, start, end - start)
        return tf.where(index >= 0, raw, "")

    def index(self, raw: tf.Tensor) -> tf.Tensor:
        """Raw IDs (any shape) -> int64 catalog indices; -1 for "" and unknown IDs."""
        flat = tf.reshape(raw, [-1])
        hashes = tf.strings.to_hash_bucket_fast(flat, self.hash_buckets)
        first = tf.searchsorted(self.sorted_hashes, hashes, side="left", out_type=tf.int64)
        out = tf.fill(tf.shape(flat), tf.constant(-1, tf.int64))
        for j in range(self.same_hash):
            at = tf.minimum(first + j, self.num_items - 1)
            candidate = tf.cast(tf.gather(self.order, at), tf.int64)
            # The stored ID decides: a neighbour with another hash cannot match it.
            match = tf.equal(self.ids(candidate), flat)
            out = tf.where(tf.logical_and(out < 0, match), candidate, out)
        out = tf.where(tf.equal(flat, ""), tf.constant(-1, tf.int64), out)
        return tf.reshape(out, tf.shape(raw, out_type=tf.int64))
