"""Chaos: a run killed with SIGKILL at random moments (many of them inside a save) and resumed each time ends exactly
as an unbroken run; a full disk stops with one clear error and keeps every committed checkpoint.

The other faults have tests beside the code they exercise: two runs on one workdir (test_workdir_lock.py), flipped
bytes in a checkpoint (test_train.py), damaged shards (test_data.py), SIGTERM at every stage (test_cli.py), a lost
process (test_scale.py), a read-only or mistyped workdir (test_train.py).
"""

import os
import random
import re
import shutil
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from alexnet_jax import checkpoint, evaluate, train
from tests.support import ROOT
from tests.support.tiny import TINY_FLAGS, cli_env

pytestmark = pytest.mark.slow

STEPS = 60
FLAGS = [*TINY_FLAGS, f"--config.num_train_steps={STEPS}", "--config.checkpoint_every_steps=1"]


def command(workdir, *extra):
  return [sys.executable, "-m", "alexnet_jax.main", "--config=configs/synthetic.py", f"--workdir={workdir}", *extra]


def final_params(workdir):
  """(step, parameters) of the newest checkpoint, restored with the config saved beside it."""
  ckpt = checkpoint.Checkpointer(str(workdir / "checkpoints"), max_to_keep=10**9)
  try:
    _, saved = ckpt.read_config()
  finally:
    ckpt.close()
  step, state, _ = train.load_checkpoint(evaluate.config_from_json(saved), str(workdir))
  return step, jax.device_get(state["params"])


def test_random_kills_during_training_and_saves_then_resume_end_bitwise_like_an_unbroken_run(tmp_path):
  unbroken = subprocess.run(
    command(tmp_path / "unbroken", *FLAGS), cwd=ROOT, env=cli_env(8, fast_compile=True), capture_output=True
  )
  assert unbroken.returncode == 0, unbroken.stderr.decode()[-3000:]

  rng, workdir = random.Random(0), tmp_path / "chaos"
  kills, mid_save = 0, 0
  while kills < 4:
    proc = subprocess.Popen(
      command(workdir, *FLAGS), cwd=ROOT, env=cli_env(8, fast_compile=True), stderr=subprocess.PIPE, text=True
    )
    for line in proc.stderr:  # wait until it trains, then kill at a random moment (a save runs at every step)
      if "] [" in line and "epoch=" in line:
        break
    time.sleep(rng.uniform(0.0, 1.5))
    if proc.poll() is not None:  # it finished first: nothing was killed
      break
    proc.kill()
    proc.wait()
    kills += 1
    mid_save += any(".orbax-checkpoint-tmp" in name for name in os.listdir(workdir / "checkpoints"))
  done = subprocess.run(command(workdir, *FLAGS), cwd=ROOT, env=cli_env(8, fast_compile=True), capture_output=True)
  assert done.returncode == 0, done.stderr.decode()[-3000:]

  step_a, a = final_params(tmp_path / "unbroken")
  step_b, b = final_params(workdir)
  assert step_a == step_b == STEPS and kills >= 2
  # The case under test: a kill inside a save leaves an uncommitted step folder, never read (a save runs every step).
  assert mid_save >= 1, f"none of {kills} kills landed inside a save: the resume from a half-written step is untested"
  assert all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))
  print(f"{kills} kills with SIGKILL, {mid_save} of them inside a save; resumed run bitwise equal")


@pytest.fixture
def small_disk(tmp_path):
  """A 7 MB tmpfs: room for two checkpoints of the tiny network, not three. Needs permission to mount: outside CI a
  refused mount skips the test (with the reason); in CI (``CI`` set: ``.ci/run`` runs as root) it fails, so the
  disk-full case can never drop out of CI unnoticed."""
  mount = tmp_path / "disk"
  mount.mkdir()
  try:
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=7m", "tmpfs", str(mount)], capture_output=True)
    refused = made.stderr.decode().strip() if made.returncode != 0 else None
  except OSError as e:  # no mount program at all
    refused = str(e)
  if refused is not None:
    reason = f"cannot mount a small tmpfs here ({refused or 'no message'}): the disk-full case needs one"
    if os.environ.get("CI", "").lower() not in ("", "0", "false"):
      pytest.fail(f"{reason}. CI (CI={os.environ['CI']!r}) must run this test as root, with permission to mount")
    pytest.skip(reason)
  yield mount
  subprocess.run(["umount", str(mount)], check=False)


def test_a_full_disk_stops_with_one_clear_error_and_keeps_the_committed_steps(small_disk, tmp_path):
  workdir = small_disk / "run"
  out = subprocess.run(
    command(workdir, *FLAGS, "--config.keep_checkpoints=100"),
    cwd=ROOT,
    env=cli_env(8, fast_compile=True),
    capture_output=True,
    text=True,
  )
  assert out.returncode == 1, out.stderr[-3000:]
  # orbax's threads print tracebacks around it, and may leave their indentation before it on the same line
  errors = re.findall(r"(?m)(?:^|\s)(error: .*)$", out.stderr)
  assert len(errors) == 1 and "no space left to write a checkpoint" in errors[0], out.stderr[-3000:]
  committed = sorted(int(p) for p in os.listdir(workdir / "checkpoints") if p.isdigit())
  assert committed and f"the last committed step ({committed[-1]}) is intact" in errors[0]
  # Moved to a disk with room, the run resumes from that step (its fingerprints verified) and finishes.
  moved = tmp_path / "moved"
  shutil.copytree(workdir, moved, ignore=shutil.ignore_patterns("*.orbax-checkpoint-tmp*", "lock.json"))
  env = cli_env(8, fast_compile=True)
  resumed = subprocess.run(command(moved, *FLAGS, "--config.keep_checkpoints=100"), cwd=ROOT, env=env,
                           capture_output=True, text=True)  # fmt: skip
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f"Resuming from the checkpoint at step {committed[-1]}" in resumed.stderr
