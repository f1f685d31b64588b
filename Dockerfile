# Pipeline image: every Kubeflow step (runner/kfp_entrypoint.py), the Beam workers
# of Dataflow/portable runners, and the TFJob workers (trainer/tfjob_entry.py).
#
#   TAG=$(.venv/bin/python pipeline.py image-tag --registry ghcr.io/acme)
#   docker build -t "$TAG" . && docker push "$TAG"
#   .venv/bin/python pipeline.py compile --image "$TAG"
#
# The base image is the TFX release that constraints.txt pins (tfx==1.16.0): it
# already holds TensorFlow 2.16, TFX, tf.Transform, TFDV, Beam and the KFP SDK at
# the versions this project was tested with, so only the project's own extra
# libraries are installed, at their constraints.txt pins.
FROM tensorflow/tfx:1.16.0

WORKDIR /pipeline
ENV PYTHONPATH=/pipeline \
    PYTHONUNBUFFERED=1 \
    TF_USE_LEGACY_KERAS=1 \
    TF_CPP_MIN_LOG_LEVEL=2

COPY constraints.txt setup.py ./
RUN python -m pip install --no-cache-dir --ignore-requires-python -c constraints.txt \
        tensorflow-recommenders==0.7.3 \
        tensorflow-model-optimization==0.8.0 \
        tf-keras==2.16.0 \
        tensorflow-serving-api==2.16.1 \
        kubernetes==26.1.0 \
        matplotlib==3.10.3

# The project's code: pipeline.py, project_env.py and the packages it imports
# (.dockerignore keeps out tests, data, outputs and the virtual environment).
COPY . /pipeline
RUN python -m pip install --no-cache-dir --no-deps --ignore-requires-python . \
    && python -c "import pipeline, runner.kfp_entrypoint, components.tfjob_trainer.executor, trainer.tfjob_entry"

# Kubeflow sets the command of every step explicitly; this default makes
# `docker run IMAGE --executor_class_path ...` behave the same way.
ENTRYPOINT ["python", "-m", "runner.kfp_entrypoint"]
