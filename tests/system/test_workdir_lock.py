"""One writer per workdir: the lease, its takeover rules, and a second run refused through the command line."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from alexnet_jax import workdir_lock
from tests.support import ROOT
from tests.support.tiny import TINY_FLAGS, cli_env


def final_state(workdir):
  """The newest checkpoint of a CLI run, restored with the run's own saved config on one device."""
  from alexnet_jax import checkpoint, evaluate, parallel, train

  ckpt = checkpoint.Checkpointer(str(workdir / "checkpoints"), max_to_keep=10)
  _, saved = ckpt.read_config()
  ckpt.close()
  mesh = parallel.create_mesh(1, jax.devices()[:1])
  return jax.device_get(train.load_checkpoint(evaluate.config_from_json(saved), workdir, mesh=mesh)[1])


def write_lease(workdir, **holder):
  (workdir / workdir_lock.LOCK_FILE).write_text(json.dumps({"started": "then", "heartbeat": time.time(), **holder}))


def test_a_live_holder_is_named_and_a_released_lease_is_gone(tmp_path):
  first = workdir_lock.WorkdirLock(str(tmp_path))
  first.acquire()
  with pytest.raises(workdir_lock.WorkdirLockedError, match=f"in use by another run \\(pid {os.getpid()} on host"):
    workdir_lock.WorkdirLock(str(tmp_path)).acquire()
  first.release()
  assert not (tmp_path / workdir_lock.LOCK_FILE).exists()
  second = workdir_lock.WorkdirLock(str(tmp_path))
  second.acquire()
  second.release()


def test_a_lease_whose_holder_is_gone_is_taken_over(tmp_path, caplog):
  done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
  dead_pid = int(done.stdout)  # a process of this host that has exited
  write_lease(tmp_path, host=socket.gethostname(), pid=dead_pid)
  lock = workdir_lock.WorkdirLock(str(tmp_path))
  lock.acquire()
  assert json.loads((tmp_path / workdir_lock.LOCK_FILE).read_text())["pid"] == os.getpid()
  lock.release()
  # Our own pid, but a process that started at another time: the pid was reused, the holder is gone.
  write_lease(tmp_path, host=socket.gethostname(), pid=os.getpid(), start_ticks=1)
  lock = workdir_lock.WorkdirLock(str(tmp_path))
  lock.acquire()
  lock.release()
  assert "Taking over the workdir lease of a run that is gone" in caplog.text


def test_another_hosts_lease_holds_until_its_heartbeat_expires(tmp_path):
  write_lease(tmp_path, host="some-other-host", pid=1)
  with pytest.raises(workdir_lock.WorkdirLockedError, match="pid 1 on host some-other-host"):
    workdir_lock.WorkdirLock(str(tmp_path), expire_seconds=600).acquire()
  write_lease(tmp_path, host="some-other-host", pid=1, heartbeat=time.time() - 700)
  lock = workdir_lock.WorkdirLock(str(tmp_path), expire_seconds=600)
  lock.acquire()
  lock.release()


def test_the_holder_refreshes_its_heartbeat(tmp_path):
  lock = workdir_lock.WorkdirLock(str(tmp_path), heartbeat_seconds=0.2)
  lock.acquire()
  first = json.loads((tmp_path / workdir_lock.LOCK_FILE).read_text())["heartbeat"]
  time.sleep(1.0)
  assert json.loads((tmp_path / workdir_lock.LOCK_FILE).read_text())["heartbeat"] > first
  lock.release()


@pytest.mark.slow
def test_a_second_run_on_a_live_workdir_exits_at_once_and_the_first_is_undisturbed(tmp_path):
  # The first run is held still while the second starts (below): 300 steps leave it steps to train after.
  cmd = [sys.executable, "-m", "alexnet_jax.main", "--config=configs/synthetic.py", *TINY_FLAGS,
         "--config.num_train_steps=300", "--config.checkpoint_every_steps=100",
         "--config.log_every_steps=100"]  # fmt: skip
  first = subprocess.Popen(
    [*cmd, f"--workdir={tmp_path / 'w'}"], cwd=ROOT, env=cli_env(), stderr=subprocess.PIPE, text=True
  )
  log = []
  for line in first.stderr:
    log.append(line)
    if "] [100] " in line:  # the first run is training
      break
  # The first run holds still (SIGSTOP: alive, holding its lock) while the second starts, so that a slow start-up
  # on a busy machine cannot outlast it (it once finished its 1,500 steps first); it goes on unchanged after.
  first.send_signal(signal.SIGSTOP)
  try:
    t0 = time.time()
    second = subprocess.run(
      [*cmd, f"--workdir={tmp_path / 'w'}"], cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=300
    )
  finally:
    first.send_signal(signal.SIGCONT)
  assert second.returncode == 1, second.stderr[-2000:]
  assert f"is in use by another run (pid {first.pid} on host {socket.gethostname()}" in second.stderr
  assert time.time() - t0 < 60 and "Traceback" not in second.stderr
  log += first.stderr.readlines()
  assert first.wait(timeout=900) == 0, "".join(log[-30:])
  unbroken = subprocess.run(
    [*cmd, f"--workdir={tmp_path / 'u'}"], cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=900
  )
  assert unbroken.returncode == 0, unbroken.stderr[-2000:]
  a, b = final_state(tmp_path / "w"), final_state(tmp_path / "u")
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(x, y)  # bit for bit
  assert not (tmp_path / "w" / workdir_lock.LOCK_FILE).exists()  # released at the end
