"""What a served version was built from, so that an unchanged rerun pushes nothing.

``assets.extra/model_fingerprint.json`` (TensorFlow Serving ignores it) holds a digest
of the data (SequenceGen's per-span row digests), one of the Trainer and Transform
settings and, in a compressed model, one of the compression settings. The Pusher
(``components/pusher``) compares a candidate's with the served version's; the run
summary compares the Trainer's with it when nothing was pushed.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Optional, Sequence

import tensorflow as tf

FINGERPRINT_FILE = os.path.join("assets.extra", "model_fingerprint.json")


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def model_fingerprint(spans: dict, settings: dict) -> dict:
    """``spans``: SequenceGen's ``spans.json``; ``settings``: JSON-able settings."""
    return {"data": _digest(spans.get("spans", {})), "settings": _digest(settings),
            "spans": sorted(spans.get("spans", {}), key=int)}


def with_compression(fingerprint: dict, settings: dict) -> dict:
    """The fingerprint of this model compressed with ``settings``."""
    return {**fingerprint, "compression": _digest(settings)}


def write_fingerprint(export_dir: str, fingerprint: dict) -> None:
    path = os.path.join(export_dir, FINGERPRINT_FILE)
    tf.io.gfile.makedirs(os.path.dirname(path))
    with tf.io.gfile.GFile(path, "w") as f:
        json.dump(fingerprint, f, indent=2, sort_keys=True)


def read_fingerprint(export_dir: str) -> Optional[dict]:
    path = os.path.join(export_dir, FINGERPRINT_FILE)
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)


def weights_digest(export_dir: str) -> str:
    """SHA-256 over the files of ``variables/``, in name order."""
    h = hashlib.sha256()
    directory = os.path.join(export_dir, "variables")
    for name in sorted(tf.io.gfile.listdir(directory)):
        h.update(name.encode())
        with tf.io.gfile.GFile(os.path.join(directory, name), "rb") as f:
            h.update(f.read())
    return h.hexdigest()


def newest_version_dir(base: str) -> Optional[str]:
    """The version TensorFlow Serving serves from ``base`` (highest integer name with a
    ``saved_model.pb``), or None if there is none yet."""
    if not base or not tf.io.gfile.isdir(base):
        return None
    versions = [int(d.rstrip("/")) for d in tf.io.gfile.listdir(base) if d.rstrip("/").isdigit()
                and tf.io.gfile.exists(os.path.join(base, d.rstrip("/"), "saved_model.pb"))]
    return os.path.join(base, str(max(versions))) if versions else None


def unchanged_reason(candidate_dir: str, served_dir: Optional[str],
                     keys: Sequence[str] = ("data", "settings", "compression")
                     ) -> Optional[str]:
    """Why ``candidate_dir`` need not replace ``served_dir``, or None if it should.

    ``keys``: the fingerprint entries that must match (a Trainer's model has no
    ``compression`` entry; compare it on data and settings only).
    """
    if not served_dir or not tf.io.gfile.exists(os.path.join(candidate_dir, "saved_model.pb")):
        return None
    version = os.path.basename(served_dir.rstrip("/"))
    new, old = read_fingerprint(candidate_dir), read_fingerprint(served_dir)
    if new is not None and old is not None and all(new.get(k) == old.get(k) for k in keys):
        return (f"nothing new to push: the data (spans {', '.join(new['spans']) or '-'}) "
                f"and the settings are those of served version {version}")
    if weights_digest(candidate_dir) == weights_digest(served_dir):
        return f"nothing new to push: the model is identical to served version {version}"
    return None
