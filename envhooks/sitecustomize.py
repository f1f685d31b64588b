"""Run by every child Python process of the project (``project_env`` puts this folder
on ``PYTHONPATH``): the same environment and quiet TensorFlow import as its parent."""
import importlib.util
import os
import sys

_path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                     "project_env.py")
if "project_env" not in sys.modules and os.path.isfile(_path):
    _spec = importlib.util.spec_from_file_location("project_env", _path)
    _module = importlib.util.module_from_spec(_spec)
    sys.modules["project_env"] = _module
    _spec.loader.exec_module(_module)
