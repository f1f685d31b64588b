"""Trainer on a Kubeflow TFJob: the executor (``executor.py``) stages the inputs and
collects the model; ``tfjob.py`` submits, adopts, watches and deletes the job."""
