"""Process-wide settings that must be in place before TensorFlow is imported.

TFRS 0.7 and TF-MOT 0.8 need Keras 2, so the whole project runs on ``tf_keras``.
Every entry point imports this module first; users never set the variable.
"""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import warnings

# google-api-core warns on every import about Python 3.11's end of life in 2027.
_PY_EOL = "You are using a Python version"
warnings.filterwarnings("ignore", message=_PY_EOL, category=FutureWarning)
# Beam's worker processes inherit this through the environment.
os.environ.setdefault("PYTHONWARNINGS", f"ignore:{_PY_EOL}:FutureWarning")
