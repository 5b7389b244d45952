"""What tests/conftest.py and the Makefile rely on from pytest-xdist: under ``--dist loadgroup`` the tests of one
``xdist_group`` run in one worker (the full-size tests, ~10 GB each, through theirs: tests/docs/test_readme.py,
tests/system/test_rehearsal.py), whatever else runs beside them. pytest 9.2 with pytest-xdist 3.8.0 silently broke
that (pytest-xdist issue #1386); this is the check that does not depend on knowing which versions break it."""

import os
import subprocess
import sys

GROUPED = """
import os, pytest
pytestmark = [pytest.mark.xdist_group("heavy")]
def record(name):
  with open(os.environ["WHERE"], "a") as f:
    f.write(f"{name} {os.environ['PYTEST_XDIST_WORKER']}\\n")
def test_plain():
  record("plain")
@pytest.mark.parametrize("p", ["a", "b", "c"])
def test_parametrized(p):
  record(p)
"""
OTHER = """
import time
def test_other_1():
  time.sleep(0.5)
def test_other_2():
  time.sleep(0.5)
"""


def test_loadgroup_runs_a_group_in_one_worker(tmp_path):
  (tmp_path / "test_grouped.py").write_text(GROUPED)
  (tmp_path / "test_other.py").write_text(OTHER)
  env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
  env["WHERE"] = str(tmp_path / "where.txt")
  out = subprocess.run(
    [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "2", "--dist", "loadgroup", str(tmp_path)],
    cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
  )  # fmt: skip
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  workers = dict(line.split() for line in (tmp_path / "where.txt").read_text().splitlines())
  assert sorted(workers) == ["a", "b", "c", "plain"]
  assert len(set(workers.values())) == 1, f"one xdist_group ran in several workers: {workers}"
