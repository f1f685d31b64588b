"""A CPU run prints no error-looking line that is not an error, and hides no real one."""
import os
import subprocess
import sys

from tests.conftest import REPO_ROOT

CUFFT = ("2026-12-03 12:37:24.940887: E external/local_xla/xla/stream_executor/cuda/"
         "cuda_fft.cc:479] Unable to register cuFFT factory: Attempting to register factory "
         "for plugin cuFFT when one has already been registered")


def _python(code: str, hooks: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if not hooks:  # as a process outside the project: no envhooks on PYTHONPATH
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in env.get("PYTHONPATH", "").split(os.pathsep) if "envhooks" not in p)
    return subprocess.run([sys.executable, "-c", code], cwd=str(REPO_ROOT), env=env,
                          capture_output=True, text=True, timeout=300)


def test_importing_the_stack_prints_nothing_to_stderr():
    """TensorFlow's CUDA registration lines, the TF-TRT warning and the dependency
    FutureWarnings are gone, in this process and in a child Python process (as Beam's
    workers are); without project_env the same import prints them."""
    r = _python("import project_env, subprocess, sys, tensorflow, tfx.v1, "
                "tensorflow_transform, tensorflow_recommenders\n"
                "from tfx.orchestration.kubeflow.v2 import kubeflow_v2_dag_runner\n"
                "c = subprocess.run([sys.executable, '-c', 'import tensorflow, tfx.v1'], "
                "capture_output=True, text=True)\n"
                "sys.stderr.write(c.stderr); print('child', c.returncode)")
    assert r.returncode == 0 and "child 0" in r.stdout, r.stderr
    assert r.stderr == ""
    bare = _python("import tensorflow", hooks=False)
    assert "Unable to register cuFFT factory" in bare.stderr  # the control


def test_a_real_error_line_still_shows_while_tensorflow_loads():
    r = _python("import os, project_env\n"
                "with project_env._FilteredStderr():\n"
                f"    os.write(2, {CUFFT!r}.encode() + b'\\n')\n"
                "    os.write(2, b'E0000 a real error\\n')\n"
                "    print('python error text', file=__import__('sys').stderr)\n")
    assert r.returncode == 0
    assert r.stderr.splitlines() == ["E0000 a real error", "python error text"]
