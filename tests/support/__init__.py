"""What the tests share: the repository's root, the tiny run (``tests.support.tiny``), stand-ins for outside services
(``gcs_emulator``, ``fake_gcloud``), generated data (``fake_ilsvrc``), the notebook runner and fixture files."""

import hashlib
import pathlib

# The repository (a str: it goes into cwd=, PYTHONPATH and f-strings); the commands under test run here.
ROOT = str(pathlib.Path(__file__).resolve().parents[2])


def tree_digest(folder: pathlib.Path) -> dict[str, str]:
  """{relative path: sha256} of every file under ``folder``: 'nothing was moved or changed' made checkable."""
  return {
    str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()
  }
