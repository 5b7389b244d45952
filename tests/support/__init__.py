"""What the tests share: the repository's root, the tiny run (``tests.support.tiny``), stand-ins for outside services
(``gcs_emulator``, ``fake_gcloud``), generated data (``fake_ilsvrc``), the notebook runner and fixture files."""

import hashlib
import pathlib

# The repository (a str: it goes into cwd=, PYTHONPATH and f-strings); the commands under test run here.
ROOT = str(pathlib.Path(__file__).resolve().parents[2])

# LLVM's -O0 for XLA's CPU code in the tests (conftest.py says why); cli_env(optimized=True) leaves it out.
FAST_COMPILE = "--xla_backend_optimization_level=0"


def tree_digest(folder: pathlib.Path) -> dict[str, str]:
  """{relative path: sha256} of every file under ``folder``: 'nothing was moved or changed' made checkable."""
  return {
    str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()
  }
