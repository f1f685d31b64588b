"""The serving SavedModel: signatures, candidate index, lookup and history tables, warm-up.

One package, used by both the Trainer (float model) and the ModelCompressor (int8
model), so the served contract (``../shared/CONTRACTS.md``) has one implementation:

* ``module``: ``RetrievalModule`` and the signature names;
* ``index``: the candidate index, float or int8;
* ``features``: raw-feature lookups (the Transform graph, or its core-ops query side);
* ``quantize``: int8 helpers and the int8 copy of a trained tower;
* ``warmup``: TensorFlow Serving's warm-up requests.
"""
