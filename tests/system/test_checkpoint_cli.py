"""Issue 20's case through the command line: a resume with a changed model width is refused, every checkpoint kept
(the in-process side: tests/unit/test_checkpoint.py)."""

import subprocess
import sys

import pytest

from tests.support import ROOT, tree_digest
from tests.support.tiny import TINY_FLAGS, cli_env


@pytest.mark.slow
def test_the_issue_command_line_refuses_a_changed_width_and_keeps_the_run(tmp_path):
  """Issue 20's exact case through the CLI: steps 3, 6, 9 at width 0.125, rerun at 0.25 without
  --allow_config_change: exit 1, one error line naming model.width, every checkpoint where it was."""
  base = [sys.executable, "-m", "alexnet_jax.main", "--config=configs/synthetic.py", f"--workdir={tmp_path}"]
  base += [*TINY_FLAGS, "--config.checkpoint_every_steps=3"]
  first = subprocess.run(
    [*base, "--config.num_train_steps=9"], env=cli_env(fast_compile=True), cwd=ROOT, capture_output=True, text=True
  )
  assert first.returncode == 0, first.stderr[-2000:]
  before = tree_digest(tmp_path / "checkpoints")
  again = [*base, "--config.num_train_steps=12", "--config.model.width=0.25"]
  for extra in ([], ["--allow_config_change"]):
    out = subprocess.run([*again, *extra], env=cli_env(fast_compile=True), cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 1, out.stderr[-2000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and ("model.width: 0.125 -> 0.25" if not extra else "does not fit") in errors[0]
    assert "Traceback" not in out.stderr and "Event loop is closed" not in out.stderr
    assert tree_digest(tmp_path / "checkpoints") == before and not (tmp_path / "checkpoints_corrupt").exists()
