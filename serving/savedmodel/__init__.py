"""The serving SavedModel: signatures, candidate index, lookup and history tables, warm-up.

One package, used by both the Trainer (float model) and the ModelCompressor (int8
model), so the served contract (``../shared/CONTRACTS.md``) has one implementation:

* ``export``: the one export path (``export_serving_model``) and the weight-size measure;
* ``module``: ``RetrievalModule`` and the signature names;
* ``tower``: the query tower's forward pass in core ops, float32 or int8;
* ``index``: the candidate index, float32 or int8;
* ``history``: the per-user history and exclusion tables;
* ``features``: raw tf.Example features through the Transform graph, vocabulary tables;
* ``quantize``: int8 helpers;
* ``warmup``: TensorFlow Serving's warm-up requests.
"""
