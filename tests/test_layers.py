"""The import layering of .importlinter holds (import-linter, run on the source tree)."""
import ast
import os
import pathlib
import subprocess
import sys

from tests.conftest import REPO_ROOT

LINT = os.path.join(os.path.dirname(sys.executable), "lint-imports")


def _lint(config: str) -> subprocess.CompletedProcess:
    return subprocess.run([LINT, "--config", config, "--no-cache"], cwd=str(REPO_ROOT),
                          capture_output=True, text=True, timeout=300)


def test_the_layers_hold():
    r = _lint(".importlinter")
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "Contracts: 1 kept, 0 broken." in r.stdout


def test_a_reversed_layering_is_reported_broken(tmp_path):
    """The control: the same packages in the opposite order break the contract, so
    the check above reads real imports."""
    config = (REPO_ROOT / ".importlinter").read_text()
    head, _, layers = config.partition("layers =\n")
    reversed_layers = "\n".join(reversed([l for l in layers.splitlines() if l.strip()]))
    path = tmp_path / "reversed.ini"
    path.write_text(head + "layers =\n" + reversed_layers + "\n")
    r = _lint(str(path))
    assert r.returncode != 0 and "BROKEN" in r.stdout


def test_only_the_runner_imports_pipeline():
    """pipeline.py is a single module above runner/, outside import-linter's packages."""
    offenders = []
    for path in pathlib.Path(REPO_ROOT).glob("*/**/*.py"):
        top = path.relative_to(REPO_ROOT).parts[0]
        if top in ("runner", "tests", "bench", "scripts", "envhooks") or top.startswith("."):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module] if isinstance(node, ast.ImportFrom) else [])
            if "pipeline" in names:
                offenders.append(str(path.relative_to(REPO_ROOT)))
    assert offenders == []
