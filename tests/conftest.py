"""Shared test helpers. MovieLens 100K is read from ../shared, never copied here."""
import os
import pathlib
import shutil

import project_env  # noqa: F401  (TF_USE_LEGACY_KERAS before any TensorFlow import)

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
ML100K_DIR = os.environ.get("ML100K_DIR",
                            str(REPO_ROOT.parent / "shared" / "data" / "ml-100k"))


def write(path: pathlib.Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


# A small synthetic run of the whole local pipeline, shared by the e2e tests.
import glob  # noqa: E402

import pytest  # noqa: E402

# Big enough for the model to clear the gate (beat popularity at recall@50).
SMALL_SYNTHETIC = dict(num_interactions=20_000, seed=3)
SMALL_TRAINER = dict(epochs=10, batch_size=32, tower_layers=(64,), output_dim=32,
                     id_embedding_dim=32)


@pytest.fixture(scope="session")
def small_pipeline(tmp_path_factory):
    """``(pipeline_root, run summary)`` of one LocalDagRunner run on synthetic data."""
    from ingest import synthetic
    from runner import local
    from trainer.config import TrainerConfig
    root = str(tmp_path_factory.mktemp("pipeline"))
    opts = local.LocalRunOptions(pipeline_root=root,
                                 synthetic=synthetic.SyntheticConfig(**SMALL_SYNTHETIC),
                                 trainer=TrainerConfig(**SMALL_TRAINER),
                                 # 400 users make recall@50 noisy: +-3% between two
                                 # equally good models. MovieLens runs use the 2% default.
                                 max_compression_recall_drop=0.05)
    summary = local.run(opts)
    summary["records"] = {name: _record(root, name) for name in summary["components"]}
    if summary.get("report"):
        summary["first_report"] = str(tmp_path_factory.mktemp("first-run") / "report.html")
        shutil.copyfile(summary["report"], summary["first_report"])
    # The whole root as the first run left it (3-5 MB): tests that run the pipeline
    # again in it (``rerun_pipeline``) get it back before and after, so no test sees
    # another's reruns, whatever order they run in.
    summary["snapshot"] = str(tmp_path_factory.mktemp("first-run-root") / "root")
    shutil.copytree(root, summary["snapshot"], symlinks=True)
    return root, summary, opts


def artifact(cls, uri: str, **props):
    """A TFX artifact of type ``cls`` at ``uri``, with attributes ``props`` (e.g. span)."""
    a = cls()
    a.uri = uri
    for k, v in props.items():
        setattr(a, k, v)
    return a


def _restore(root: str, snapshot: str) -> None:
    shutil.rmtree(root)
    shutil.copytree(snapshot, root, symlinks=True)


@pytest.fixture
def rerun_pipeline(small_pipeline):
    """``small_pipeline`` for a test that runs the pipeline again in its root: the
    root is the first run's before the test and again after it. (The root's path
    stays the same, so the rerun's cache hits are the first run's.)"""
    root, summary, opts = small_pipeline
    _restore(root, summary["snapshot"])
    yield small_pipeline
    _restore(root, summary["snapshot"])


def _record(root: str, component: str):
    from runner import local
    return local.component_record(root, component)


def component_outputs(root: str, component: str) -> dict:
    """``{output key: uri}`` of the last execution of ``component`` under ``root``."""
    return _record(root, component).uris()


def serving_model_dir(summary: dict) -> str:
    """The Trainer's SavedModel from the first run of ``small_pipeline``."""
    model = summary["records"]["Trainer"].uris()["model"]
    [path] = glob.glob(f"{model}/Format-Serving")
    return path
