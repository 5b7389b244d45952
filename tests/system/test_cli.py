"""The command line, end to end, in real subprocesses (as a user or a scheduler runs it)."""

import json
import os
import re
import signal
import subprocess
import sys

import pytest

from tests.support import ROOT
from tests.support.tiny import TINY_FLAGS, cli_env

pytestmark = pytest.mark.slow

TINY = [*TINY_FLAGS, "--config.checkpoint_every_steps=2"]


def train_cli(workdir, *args, devices=8):
  """A tiny run of a few steps: XLA's fast-compile flags (tiny.cli_env; the resume test below 149 s -> 118 s)."""
  cmd = [sys.executable, "-m", "alexnet_jax.main", "--config=configs/synthetic.py", f"--workdir={workdir}", *args]
  env = cli_env(devices, fast_compile=True)
  return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_train_then_resume_then_resume_on_one_device_then_evaluate(tmp_path):
  first = train_cli(tmp_path, *TINY, "--config.num_train_steps=2")
  assert first.returncode == 0, first.stderr[-3000:]
  second = train_cli(tmp_path, *TINY, "--config.num_train_steps=4")
  assert second.returncode == 0, second.stderr[-3000:]
  assert "Resuming from the checkpoint at step 2 (next step: 3)" in second.stderr
  third = train_cli(tmp_path, *TINY, "--config.num_train_steps=6", devices=1)  # 8-device checkpoint, 1 device
  assert third.returncode == 0, third.stderr[-3000:]
  assert "Resuming from the checkpoint at step 4 (next step: 5)" in third.stderr
  assert "Mesh {'data': 1, 'model': 1}" in third.stderr
  rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows if "train_loss" in r] == [1, 2, 3, 4, 5, 6]
  out = subprocess.run(
    [sys.executable, "-m", "alexnet_jax.evaluate", f"--workdir={tmp_path}", "--crops=10"],
    cwd=ROOT, env=cli_env(fast_compile=True), capture_output=True, text=True, timeout=600,
  )  # fmt: skip
  assert out.returncode == 0, out.stderr[-3000:]
  result = json.loads((tmp_path / "eval" / "step6_10crop.json").read_text())
  assert (result["step"], result["crops"], result["num_examples"]) == (6, 10, 20)
  assert "/orbax/" not in second.stderr and "checkpoint_manager.py" not in second.stderr  # orbax chatter filtered
  for banner in ("oneDNN custom operations", "absl::InitializeLog", "This TensorFlow binary is optimized"):
    assert banner not in first.stderr, first.stderr[
      :2000
    ]  # TensorFlow's start-up banners (alexnet_jax/native/banners.py)


def test_native_banners_are_filtered_and_every_other_line_kept(capfd):
  from alexnet_jax.native import banners

  with banners.filtered_native_stderr():
    os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n")
    os.write(2, b"I0000 00:00:1 9 port.cc:153] oneDNN custom operations are on. You may see ...\n")
    os.write(2, b"E0000 a real error from a native library\n")
    print("a Python warning", file=sys.stderr)
  err = capfd.readouterr().err
  assert sorted(err.splitlines()) == ["E0000 a real error from a native library", "a Python warning"]


DAMAGED_SHARD_AFTER_JAX = """
import os, sys
import jax

jax.devices()  # as in training: jax starts first (and `import jax` sets TF_CPP_MIN_LOG_LEVEL=1 unless it is set)
from alexnet_jax.native import tensorflow_devices

tensorflow_devices.hide_accelerators_from_tensorflow()
import tensorflow as tf

path = os.path.join(sys.argv[1], "x.tfrecord")
with tf.io.TFRecordWriter(path) as w:
  for i in range(3):
    w.write(b"record %d " % i * 100)
blob = bytearray(open(path, "rb").read())
blob[len(blob) // 2] ^= 1
open(path, "wb").write(bytes(blob))
try:
  list(tf.data.TFRecordDataset(path))
except tf.errors.DataLossError:
  print("caught")
"""


def test_tensorflow_warnings_stay_off_in_a_process_that_started_jax_first(tmp_path):
  """A damaged shard during training printed TensorFlow's "Local rendezvous is aborting with status: DATA_LOSS"
  above our own one-line error: jax had set the level first. A level the user sets is still theirs."""
  run = [sys.executable, "-c", DAMAGED_SHARD_AFTER_JAX, str(tmp_path)]
  env = {k: v for k, v in cli_env().items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # as a user's shell has it
  quiet = subprocess.run(run, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert quiet.stdout.strip() == "caught", quiet.stderr[-2000:]
  assert "rendezvous" not in quiet.stderr and "DATA_LOSS" not in quiet.stderr, quiet.stderr[-2000:]
  loud = subprocess.run(
    run, cwd=ROOT, env={**env, "TF_CPP_MIN_LOG_LEVEL": "0"}, capture_output=True, text=True, timeout=300
  )
  assert loud.stdout.strip() == "caught" and "Local rendezvous is aborting" in loud.stderr, loud.stderr[-2000:]


def test_unknown_config_key_on_the_command_line(tmp_path):
  out = train_cli(tmp_path, "--config.model.widht=0.5")
  assert out.returncode == 2
  assert "unknown config key(s): model.widht (did you mean model.width?)" in out.stderr
  assert "Traceback" not in out.stderr


@pytest.mark.parametrize(
  "module, args, says",
  [
    ("alexnet_jax.main", ["--config=configs/synthetic.py", "--workdir=W", "--config.num_train_steps=abc"], "abc"),
    ("alexnet_jax.main", ["--config=configs/synthetic.py", "--workdir=W", "--config.batch_size=8.5"], "8.5"),
    ("alexnet_jax.main", ["--config=configs/synthetic.py"], "--workdir must have a value"),
    ("alexnet_jax.main", ["--config=configs/nope.py", "--workdir=W"], "No such file or directory: 'configs/nope.py'"),
    ("alexnet_jax.main", ["--config=configs/synthetic.py", "--workdir=W", "stray"], "unexpected arguments: ['stray']"),
    (  # a config file's get_config raised: its own message, not ml_collections' traceback around it
      "alexnet_jax.main",
      ["--config=configs/large_batch.py:128k", "--workdir=W"],
      "ValueError: configs/large_batch.py:128k: the variants are 8k, 16k, 32k, 64k, paper_net",
    ),
    ("alexnet_jax.evaluate", ["--workdir=W", "--crops=3"], "--crops must be 1 or 10"),
    ("alexnet_jax.prepare", ["--input_dir=S", "--output_dir=D", "--image_size=big"], "--image_size=big"),
  ],
)
def test_every_bad_command_line_exits_2_with_one_error_line(tmp_path, module, args, says):
  args = [a.replace("=W", f"={tmp_path / 'W'}") for a in args]
  out = subprocess.run(
    [sys.executable, "-m", module, *args], cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=300
  )
  assert out.returncode == 2, out.stderr[-2000:]
  errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and says in errors[0] and "Traceback" not in out.stderr, out.stderr[-2000:]
  assert not (tmp_path / "W").exists()  # nothing created for a command that was refused


def test_non_finite_loss_exits_with_a_message(tmp_path):
  out = train_cli(
    tmp_path,
    *TINY,
    "--config.num_train_steps=4",
    "--config.checkpoint_every_steps=1",
    "--config.optimizer.learning_rate=1e30",
  )
  assert out.returncode == 1
  assert "NaN/inf" in out.stderr and "last good checkpoint (step 1) is intact" in out.stderr
  assert out.stderr.count("last good checkpoint") == 1  # one `error:` line, not also a log line


def test_demo_recipe_learns_through_the_command_line(tmp_path):
  """generate -> prepare -> train configs/demo.py -> evaluate --crops=10, each by its command; error << chance."""
  run = lambda *cmd: subprocess.run(  # one CPU device: faster than 8 fake ones
    [sys.executable, "-m", *cmd], cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=900
  )
  out = run("alexnet_jax.shapes", f"--output_dir={tmp_path}/raw", "--train_per_class=200", "--val_per_class=20")
  assert out.returncode == 0, out.stderr[-2000:]
  out = run("alexnet_jax.prepare", f"--input_dir={tmp_path}/raw", f"--output_dir={tmp_path}/data", "--image_size=76")
  assert out.returncode == 0, out.stderr[-2000:]
  assert "train: 2000, val: 200" in out.stdout
  out = run(
    "alexnet_jax.main",
    "--config=configs/demo.py",
    f"--workdir={tmp_path}/run",
    f"--config.data.dir={tmp_path}/data",
    "--config.num_train_steps=800",
    "--config.schedule.name=constant",
    "--config.log_every_steps=100",
  )
  assert out.returncode == 0, out.stderr[-3000:]
  assert "at chance" not in out.stderr  # the collapse detector stays silent on a recipe that learns
  out = run("alexnet_jax.evaluate", f"--workdir={tmp_path}/run", "--crops=10")
  assert out.returncode == 0, out.stderr[-3000:]
  result = json.loads((tmp_path / "run" / "eval" / "step800_10crop.json").read_text())
  assert set(result) >= {"step", "crops", "num_examples", "top1_error", "top5_error"}
  assert result["num_examples"] == 200 and result["crops"] == 10
  # Chance is 0.9 and 0.5; on 200 images a top-1 error of 0.8 is 5 standard deviations below chance. Measured
  # 0.71 / 10-crop on 2026-11-30 (pillow 13.0, numpy 2.4.6, jax 0.10.2: the same bits before and after that day's
  # changes; an earlier stack measured below 0.7): the bound says "learns", not how well.
  assert result["top1_error"] < 0.8 and result["top5_error"] < 0.25, result


def test_make_demo_runs_whole_then_a_second_time_reuses_its_data_and_run(tmp_path):
  """`make demo`'s own command (alexnet_jax.demo: generate, prepare, train, 10-crop evaluation, the summary), with 2
  training steps; the README promises that a second `make demo` reuses the data and the finished run, and says so."""
  demo = lambda: subprocess.run(  # the same command both times
    [sys.executable, "-m", "alexnet_jax.demo", f"--workdir={tmp_path}/run", f"--data_root={tmp_path}/data"]
    + ["--num_train_steps=2"],
    cwd=ROOT,
    env=cli_env(fast_compile=True),
    capture_output=True,
    text=True,
    timeout=900,
  )
  first = demo()
  assert first.returncode == 0, first.stderr[-3000:]
  assert re.search(r"\(10 classes, generated and prepared in \d+ s\)", first.stdout), first.stdout
  assert re.search(r"trained: +step 2 of the paper's network at width 0\.25, 67x67 crops \(\d+ s\)", first.stdout)
  ten = re.search(r"10-crop: +top-1 error ([\d.]+)%.*, (\d+) validation images", first.stdout)
  assert ten and int(ten.group(2)) == 1000, first.stdout
  eval_json = tmp_path / "run" / "eval" / "step2_10crop.json"
  assert json.loads(eval_json.read_text())["crops"] == 10 and str(eval_json) in first.stdout
  second = demo()
  assert second.returncode == 0, second.stderr[-3000:]
  assert "made by an earlier run, reused" in second.stdout, second.stdout
  assert "step 2 of the paper's network" in second.stdout
  assert f"(by an earlier run; delete {tmp_path / 'run'} to train again)" in second.stdout
  assert "generating" not in second.stderr and "preparing" not in second.stderr
  assert f"top-1 error {ten.group(1)}%" in second.stdout  # the same finished run evaluated again


def signalled_run(workdir, *args, when: list[str]):
  """Start a tiny training run; one SIGTERM when a log line contains ``when[0]``, the next at ``when[1]``, ..."""
  cmd = [
    sys.executable,
    "-m",
    "alexnet_jax.main",
    "--config=configs/synthetic.py",
    f"--workdir={workdir}",
    *TINY,
    *args,
  ]
  proc = subprocess.Popen(cmd, cwd=ROOT, env=cli_env(8, fast_compile=True), stderr=subprocess.PIPE, text=True)
  log, triggers = [], list(when)
  for line in proc.stderr:
    log.append(line)
    if triggers and triggers[0] in line:
      proc.send_signal(signal.SIGTERM)
      triggers.pop(0)
  return proc.wait(timeout=600), "".join(log)


def test_sigterm_during_setup_stops_cleanly_before_training(tmp_path):
  code, log = signalled_run(tmp_path, "--config.num_train_steps=5", when=["Data source:"])
  assert code == 75, log[-3000:]
  assert "Stopped before training step 1 after SIGTERM" in log and "Traceback" not in log
  assert not (tmp_path / "lock.json").exists()  # the lease is released


def test_sigterm_during_the_final_evaluation_still_ends_as_finished(tmp_path):
  code, log = signalled_run(
    tmp_path, "--config.num_train_steps=2", "--config.data.num_eval_examples=3000", when=["] [2] epoch="]
  )
  assert code == 0, log[-3000:]  # the run had finished: not "stopped early" (75)
  assert "Finished at step 2" in log and "Stopped at step" not in log
  assert "2" in os.listdir(tmp_path / "checkpoints")


def test_a_second_sigterm_stops_at_once_without_saving(tmp_path):
  """The first SIGTERM lands in a long evaluation (a step that will not end soon); the second one stops the run."""
  code, log = signalled_run(
    tmp_path,
    "--config.num_train_steps=1000",
    "--config.eval_every_steps=3",
    "--config.data.num_eval_examples=5000",
    when=["] [3] epoch=", "SIGTERM received"],
  )
  assert code == -signal.SIGTERM, log[-3000:]
  assert "Second SIGTERM: stopping now, without saving" in log and "Stopped at step" not in log
