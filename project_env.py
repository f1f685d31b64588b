"""Process-wide settings that must be in place before TensorFlow is imported.

TFRS 0.7 and TF-MOT 0.8 need Keras 2, so the whole project runs on ``tf_keras``.
Every entry point imports this module first; users never set the variable.

A quiet console on a CPU machine: TensorFlow 2.16's wheel registers its CUDA
plugins twice while it loads and logs three ``E ... Unable to register cuFFT
(cuDNN, cuBLAS) factory`` lines in every process, GPU or not (tensorflow#62075).
They are not errors, so those three messages, and nothing else, are dropped from
standard error while ``tensorflow`` is first imported; every other line of that
time (a real error included) passes through as it is written. Child Python
processes (Beam's workers, the servers and workers tests start) get the same
through ``envhooks/sitecustomize.py`` on their ``PYTHONPATH``.
"""
import importlib.abc
import importlib.machinery
import os
import re
import sys
import threading
import warnings

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
# INFO and WARNING from TensorFlow's C++ (oneDNN notes, "Could not find cuda drivers",
# "TF-TRT Warning: Could not find TensorRT"); errors are kept.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Warnings about our pinned dependencies that a user cannot act on: google-api-core on
# Python 3.11's end of life in 2027, aiplatform on google-cloud-storage < 3 (pinned by
# TFX 1.16).
_IGNORED_WARNINGS = ("You are using a Python version",
                     "Support for google-cloud-storage < 3.0.0 will be removed")
for _message in _IGNORED_WARNINGS:
    warnings.filterwarnings("ignore", message=re.escape(_message), category=FutureWarning)
# Beam's worker processes inherit these through the environment.
os.environ["PYTHONWARNINGS"] = ",".join(
    [w for w in os.environ.get("PYTHONWARNINGS", "").split(",") if w]
    + [f"ignore:{m}:FutureWarning" for m in _IGNORED_WARNINGS
       if f"ignore:{m}:FutureWarning" not in os.environ.get("PYTHONWARNINGS", "")])

CUDA_REGISTRATION = re.compile(
    rb"cuda_(fft|dnn|blas)\.cc:\d+\] Unable to register cu(FFT|DNN|BLAS) factory: "
    rb"Attempting to register factory for plugin cu(FFT|DNN|BLAS) when one has already "
    rb"been registered")


class _FilteredStderr:
    """Routes file descriptor 2 through a pipe; a thread writes every line but the
    CUDA registration messages on to the real standard error as it arrives."""

    def __enter__(self):
        sys.stderr.flush()
        self._saved = os.dup(2)
        read, write = os.pipe()
        os.dup2(write, 2)
        os.close(write)
        self._thread = threading.Thread(target=self._forward, args=(read,), daemon=True)
        self._thread.start()
        return self

    def _forward(self, read: int) -> None:
        with os.fdopen(read, "rb") as lines:
            for line in lines:
                if not CUDA_REGISTRATION.search(line):
                    os.write(self._saved, line)

    def __exit__(self, *exc) -> None:
        sys.stderr.flush()
        os.dup2(self._saved, 2)  # closes the pipe's last write end: the thread ends
        self._thread.join(10)
        os.close(self._saved)


class _QuietLoader(importlib.abc.Loader):
    def __init__(self, loader) -> None:
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        with _FilteredStderr():
            self._loader.exec_module(module)

    def __getattr__(self, name):
        return getattr(self._loader, name)


class _QuietTensorFlowFinder(importlib.abc.MetaPathFinder):
    """Finds ``tensorflow`` as usual and loads it through :class:`_QuietLoader`."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow" or name in sys.modules:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


def install_quiet_tensorflow_import() -> None:
    if "tensorflow" not in sys.modules and not any(
            isinstance(f, _QuietTensorFlowFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietTensorFlowFinder())


if os.environ.get("TWOTOWER_VERBOSE_TF_IMPORT") != "1":
    install_quiet_tensorflow_import()
    _HOOKS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "envhooks")
    if os.path.isdir(_HOOKS) and _HOOKS not in os.environ.get("PYTHONPATH", "").split(
            os.pathsep):
        os.environ["PYTHONPATH"] = os.pathsep.join(
            [p for p in (_HOOKS, os.environ.get("PYTHONPATH", "")) if p])
