"""What the tests share: the repository's root, the tiny run (``tests.support.tiny``), stand-ins for outside services
(``gcs_emulator``, ``fake_gcloud``), generated data (``fake_ilsvrc``), the notebook runner and fixture files."""

import hashlib
import pathlib

# The repository (a str: it goes into cwd=, PYTHONPATH and f-strings); the commands under test run here.
ROOT = str(pathlib.Path(__file__).resolve().parents[2])

# XLA flags of the test processes themselves (tests/conftest.py), not of the commands they start (tiny.cli_env strips
# them, unless asked): compile fast, run slower. The unit level compiles many tiny programs and runs each a few times:
# XLA's CPU compiles were 81% of its CPU time. Measured on this 2-core machine (benchmarks/RESULTS.md, "The test
# suite's time, a third time"): the unit level 877 s -> 576 s; a tiny run's compiles on 8 devices 30 s -> 11 s; but a
# tiny step 10 ms -> 30 ms, so the 800-step demo run went 191 s -> 272 s, and full-size evaluations slow down too.
FAST_COMPILE_FLAGS = ["--xla_backend_optimization_level=0", "--xla_llvm_disable_expensive_passes=true"]


def tree_digest(folder: pathlib.Path) -> dict[str, str]:
  """{relative path: sha256} of every file under ``folder``: 'nothing was moved or changed' made checkable."""
  return {
    str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()
  }
