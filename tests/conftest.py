"""Shared test helpers. MovieLens 100K is read from ../shared, never copied here."""
import os
import pathlib

import project_env  # noqa: F401  (TF_USE_LEGACY_KERAS before any TensorFlow import)

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
ML100K_DIR = os.environ.get("ML100K_DIR",
                            str(REPO_ROOT.parent / "shared" / "data" / "ml-100k"))


def write(path: pathlib.Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
