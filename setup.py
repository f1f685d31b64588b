"""Installable package for the two-tower recommender TFX pipeline.

Install with ``scripts/setup_env.sh`` (or ``make venv``): TFX 1.16's metadata caps
Python below 3.11 although every wheel it needs ships for cp311, so pip must run with
``--ignore-requires-python`` and ``-c constraints.txt``.
"""
from setuptools import find_packages, setup

setup(
    name="twotower-recsys",
    version="0.1.0",
    description="TFX pipeline: ingestion, tf.Transform on Beam, two-tower retrieval, "
    "gating, compression and push to TensorFlow Serving.",
    python_requires=">=3.11,<3.12",
    packages=find_packages(include=["components*", "trainer*", "transform*", "serving*", "ingest*", "runner*",
                                    "evaluation*", "layout*"]),
    py_modules=["pipeline", "project_env"],
    package_data={"ingest": ["schema.pbtxt"]},
    install_requires=[
        "tfx[kfp]==1.16.0",
        "apache-beam[gcp]==2.59.0",
        "tensorflow==2.16.2",
        "tf-keras==2.16.0",
        "tensorflow-transform==1.16.0",
        "tensorflow-model-optimization==0.8.0",
        "tensorflow-recommenders==0.7.3",
        "tensorflow-serving-api==2.16.1",
        "pyarrow==10.0.1",
        "numpy==1.26.4",
        "matplotlib==3.10.3",
    ],
    extras_require={"test": ["pytest==8.3.4", "kubernetes-validate==1.37.0",
                             "import-linter==2.17"]},
)
