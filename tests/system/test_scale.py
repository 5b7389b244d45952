"""Scaling out: several processes (launch/local.py, CPU collectives over gloo) and the paper's two-GPU split
(mesh.model=2) compute what one process with data parallelism computes."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from alexnet_jax import evaluate, parallel, train
from alexnet_jax.data import format
from tests.support import ROOT
from tests.support.tiny import TINY_FLAGS, cli_env, tiny_config

TINY = [*TINY_FLAGS, "--config.checkpoint_every_steps=3"]


def _train_cmd(workdir, *args):
  return [sys.executable, "-m", "alexnet_jax.main", "--config=configs/synthetic.py", f"--workdir={workdir}", *args]


def _launch_cmd(*args, processes=2, devices=4, grace=300, extra=()):
  launcher = [sys.executable, "launch/local.py", f"--num_processes={processes}", f"--devices_per_process={devices}"]
  return [*launcher, f"--grace_secs={grace}", *extra, "--", *args]


# The tiny runs below compile much and run a few steps: XLA's fast-compile flags (tiny.cli_env). Measured: this
# module's two longest tests 209 s -> 175 s, 313 -> 238 s of CPU (benchmarks/RESULTS.md).
def one_process(workdir, *args):
  out = subprocess.run(
    _train_cmd(workdir, *args), cwd=ROOT, env=cli_env(8, fast_compile=True), capture_output=True, text=True, timeout=900
  )
  assert out.returncode == 0, out.stderr[-3000:]
  return out.stderr


def launched(cmd, *, devices=4):
  """``cmd`` in 2 processes of ``devices`` devices each (launch/local.py): their output, once both exited 0."""
  out = subprocess.run(
    _launch_cmd(*cmd, devices=devices),
    cwd=ROOT,
    env=cli_env(fast_compile=True),
    capture_output=True,
    text=True,
    timeout=900,
  )
  assert out.returncode == 0, out.stdout[-4000:]
  return out.stdout


def two_processes(workdir, *args):
  return launched(_train_cmd(workdir, *args))


def rows(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def logged(workdir, key="train_loss"):
  return {r["step"]: r[key] for r in rows(workdir) if key in r}


def final_params(workdir):
  with open(os.path.join(workdir, "run.json")) as f:
    saved = json.load(f)["config"]
  _, state, _ = train.load_checkpoint(evaluate.config_from_json(saved), workdir)
  return jax.device_get(state["params"])


def assert_same_run(a, b, steps, rtol=2e-5):
  """Same losses and gradient norms at every step, same parameters at the end (to float summation order: the
  gradient all-reduce adds in a different order on a different layout)."""
  for key in ("train_loss", "train_grad_norm"):
    la, lb = logged(a, key), logged(b, key)
    assert sorted(la) == sorted(lb) == list(steps), (la, lb)
    np.testing.assert_allclose([la[s] for s in steps], [lb[s] for s in steps], rtol=rtol, err_msg=key)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6), final_params(a), final_params(b))


@pytest.mark.slow
def test_two_processes_train_like_one_and_checkpoints_cross_over(tmp_path):
  one, two = str(tmp_path / "one"), str(tmp_path / "two")
  log = two_processes(two, *TINY, "--config.num_train_steps=3")
  assert "[process 0] " in log and "[process 1] " in log
  assert re.search(r"\[process 1\] .*\[process 1/2\] .*Mesh \{'data': 8, 'model': 1\} over 8 devices in 2 process", log)
  assert "[launch] exit statuses: process 0: status 0, process 1: status 0" in log
  one_process(one, *TINY, "--config.num_train_steps=3")
  assert_same_run(one, two, steps=[1, 2, 3])  # a 2-process checkpoint restored in 1 process, too
  assert os.listdir(os.path.join(two, "tensorboard")) and not os.path.exists(os.path.join(two, "tensorboard", "1"))

  # Cross over: the 2-process checkpoint continues in 1 process, the 1-process checkpoint in 2 processes.
  assert "Resuming from the checkpoint at step 3" in one_process(two, *TINY, "--config.num_train_steps=6")
  assert "Resuming from the checkpoint at step 3" in two_processes(one, *TINY, "--config.num_train_steps=6")
  assert_same_run(one, two, steps=[1, 2, 3, 4, 5, 6])
  assert [r["eval_num_examples"] for r in rows(one) if "eval_num_examples" in r] == [
    20,
    20,
  ]  # every example once, with 2 processes as with 1


@pytest.mark.slow
def test_a_lost_process_ends_the_other_and_the_job_resumes(tmp_path):
  workdir = str(tmp_path / "w")
  args = [*TINY, "--config.num_train_steps=100000", "--config.log_every_steps=5", "--heartbeat_timeout_seconds=10"]
  proc = subprocess.Popen(
    _launch_cmd(*_train_cmd(workdir, *args)),
    cwd=ROOT,
    env=cli_env(fast_compile=True),
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
  )
  lines, pids = [], {}
  try:
    for line in proc.stdout:  # wait until both train and a checkpoint exists
      lines.append(line)
      if m := re.match(r"\[launch\] process (\d): pid (\d+)", line):
        pids[int(m.group(1))] = int(m.group(2))
      if "[process 0]" in line and re.search(r"\] \[(1[0-9])\] .*train_loss", line):
        break
    os.kill(pids[1], signal.SIGKILL)
    killed = time.monotonic()
    lines += proc.stdout.readlines()
    proc.wait(timeout=300)
  finally:
    proc.kill()
  waited = time.monotonic() - killed
  log = "".join(lines)
  assert proc.returncode != 0
  assert "process 1: signal SIGKILL" in log
  assert "JAX distributed service detected fatal errors" in log and "another task died" in log, log[-3000:]
  assert "still running after" not in log  # process 0 ended by itself, not by the launcher
  assert waited < 120, waited
  steps = sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit())
  assert steps and steps[-1] >= 3

  # The same command again (what launch/restart.sh does) resumes from the last checkpoint.
  resumed = two_processes(workdir, *args[:-3], f"--config.num_train_steps={steps[-1] + 1}")
  assert f"Resuming from the checkpoint at step {steps[-1]}" in resumed


@pytest.mark.slow
def test_a_one_shard_set_trains_in_two_processes(tmp_path):
  """Issue 20 item 6, as reported: a prepared set of one training shard (under 1,024 images: prepare's default
  --examples_per_shard) trained by 2 processes of 1 device each. Both used to exit 1 ("larger than the training set
  share of a process (0 images)"). Now each reads half of the shard: 40 images in batches of 8 are 5 steps an epoch,
  and the final evaluation counts all 20 validation images once."""
  run = lambda *cmd: subprocess.run(
    [sys.executable, "-m", *cmd], cwd=ROOT, env=cli_env(fast_compile=True), capture_output=True, text=True, timeout=600
  )
  out = run(
    "alexnet_jax.shapes", f"--output_dir={tmp_path}/raw", "--train_per_class=4", "--val_per_class=2", "--size=80"
  )
  assert out.returncode == 0, out.stderr[-2000:]
  out = run("alexnet_jax.prepare", f"--input_dir={tmp_path}/raw", f"--output_dir={tmp_path}/data", "--image_size=76")
  assert out.returncode == 0, out.stderr[-2000:]
  with open(tmp_path / "data" / format.METADATA) as f:
    assert len(json.load(f)["splits"]["train"]["files"]) == 1
  workdir = str(tmp_path / "run")
  train_cmd = [
    *(sys.executable, "-m", "alexnet_jax.main", "--config=configs/demo.py", f"--workdir={workdir}"),
    *(f"--config.data.dir={tmp_path}/data", "--config.batch_size=8", "--config.eval_batch_size=8"),
    *("--config.model.width=0.125", "--config.num_train_steps=6", "--config.log_every_steps=1"),
  ]
  assert "[launch] exit statuses: process 0: status 0, process 1: status 0" in launched(train_cmd, devices=1)
  assert logged(workdir, "epoch") == {s: s / 5 for s in range(1, 7)}  # floor(40 / 8) steps an epoch
  assert [r["eval_num_examples"] for r in rows(workdir) if "eval_num_examples" in r] == [20]
  # evaluate runs under the same launcher (it had no --coordinator_address: exit 2), every image counted once.
  evaluate_cmd = [sys.executable, "-m", "alexnet_jax.evaluate", f"--workdir={workdir}", "--crops=10", "--batch_size=8"]
  launched(evaluate_cmd, devices=1)
  with open(os.path.join(workdir, "eval", "step6_10crop.json")) as f:
    assert json.load(f)["num_examples"] == 20


def test_model_axis_trains_like_data_parallel(tmp_path):
  """mesh.model=2 (each device one group of conv2/4/5 and half of every layer) computes what mesh.model=1 does."""
  runs = {}
  for model_axis, impl in ((1, "auto"), (2, "grouped"), (2, "split")):  # auto: 'split' on CPU
    overrides = {"mesh.model": model_axis, "model.conv_impl": impl, "num_train_steps": 3, "checkpoint_every_steps": 3}
    workdir = str(tmp_path / f"model{model_axis}_{impl}")
    train.train_and_evaluate(tiny_config(**overrides), workdir)
    runs[model_axis, impl] = workdir
  assert_same_run(runs[1, "auto"], runs[2, "grouped"], steps=[1, 2, 3])
  assert_same_run(runs[1, "auto"], runs[2, "split"], steps=[1, 2, 3])

  # Where the parameters live: every conv layer's output channels and fc6/fc8's columns and fc7's rows are split.
  config = tiny_config(**{"mesh.model": 2})
  mesh = parallel.create_mesh(2)
  assert train.conv_impls(config) == ("split", "patches")  # on CPU; ('grouped', 'conv') on GPU/TPU
  plan = train.plan_state(config, mesh)
  specs = {k: v["kernel"].spec for k, v in plan.shardings["params"].items()}
  assert specs["conv2"] == jax.sharding.PartitionSpec(None, None, None, "model")
  assert specs["fc7"] == jax.sharding.PartitionSpec("model", None)
  per_device = parallel.bytes_per_device(plan.abstract["params"], plan.shardings["params"])
  total = parallel.bytes_per_device(
    plan.abstract["params"], train.plan_state(config, parallel.create_mesh(1)).shardings["params"]
  )
  assert 0.5 <= per_device / total < 0.52, (per_device, total)  # half, plus the replicated fc7 bias


def test_model_axis_must_divide_the_channels():
  config = tiny_config(**{"mesh.model": 4, "model.width": 0.0625})
  with pytest.raises(ValueError, match="does not divide dimension"):
    train.plan_state(config, parallel.create_mesh(4))


def test_an_odd_class_count_under_the_split_names_num_classes_not_the_width():
  config = tiny_config(**{"mesh.model": 2, "model.num_classes": 11})
  with pytest.raises(ValueError, match=r"does not divide dimension 11 of .*fc8.*model\.num_classes") as e:
    train.plan_state(config, parallel.create_mesh(2))
  assert "model.width does not change it" in str(e.value)


def test_launcher_dry_run_names_every_process():
  out = subprocess.run(
    _launch_cmd("python", "-m", "alexnet_jax.main", "--workdir=/tmp/x", processes=3, extra=["--dry_run", "--port=99"]),
    cwd=ROOT,
    capture_output=True,
    text=True,
  )
  assert out.returncode == 0, out.stderr
  for i in range(3):
    assert f"# process {i}\n" in out.stdout
    assert f"--workdir=/tmp/x --coordinator_address=localhost:99 --num_processes=3 --process_id={i}" in out.stdout
  assert "--xla_force_host_platform_device_count=4" in out.stdout


def test_local_launcher_commands():
  sys.path.insert(0, os.path.join(ROOT, "launch"))
  try:
    import local
  finally:
    sys.path.pop(0)
  cmds = local.process_commands(["train"], 3, 1234, 4, {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
  assert [c[0] for c in cmds] == [
    ["train", "--coordinator_address=localhost:1234", "--num_processes=3", f"--process_id={i}"] for i in range(3)
  ]
  assert all("--xla_force_host_platform_device_count=4" in env["XLA_FLAGS"] for _, env in cmds)
  assert all("device_count=8" not in env["XLA_FLAGS"] for _, env in cmds)
