"""The dress rehearsal of the ImageNet run, command by command as the README gives it: a fake ILSVRC-2012 in the
official layout is prepared, ``configs/paper.py`` trains on it at full width on 8 (fake) devices, is interrupted by
SIGTERM, resumes, and is evaluated with the paper's 10 crops."""

import json
import math
import signal
import subprocess
import sys

import pytest

from tests.support import ROOT
from tests.support.fake_ilsvrc import make_fake_ilsvrc2012
from tests.support.tiny import cli_env

# Full size takes ~10 GB with 8 fake devices: the full-size tests share one xdist worker (make test: --dist loadgroup).
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("full_size")]


def run(*args, devices=None, timeout=900):
  return subprocess.run(
    [sys.executable, "-m", *args], cwd=ROOT, env=cli_env(devices), capture_output=True, text=True, timeout=timeout
  )


def test_imagenet_path_rehearsed_end_to_end(tmp_path):
  src, dst, workdir = tmp_path / "SRC", tmp_path / "DST", tmp_path / "DIR"
  counts = make_fake_ilsvrc2012(str(src), per_class=2, num_val=50)

  # prepare, as the README says (plus the flag for a validation tar that holds 50 of the 50,000 images)
  out = run("alexnet_jax.prepare", f"--input_dir={src}", f"--output_dir={dst}")
  assert out.returncode == 1 and "--allow_partial_val" in out.stderr  # an incomplete tar is never taken silently
  out = run("alexnet_jax.prepare", f"--input_dir={src}", f"--output_dir={dst}", "--allow_partial_val")
  assert out.returncode == 0, out.stderr[-3000:]
  assert f"train: {counts['train']}, val: {counts['val']}; 0 bad files" in out.stdout  # CMYK/PNG/grey converted
  meta = json.loads((dst / "alexnet_prepared.json").read_text())
  assert len(meta["classes"]) == 1000 and meta["image_size"] == 256

  # configs/paper.py with only --config.data.dir (plus small sizes): full width, 8 devices, interrupted by SIGTERM
  train = [
    sys.executable, "-m", "alexnet_jax.main", "--config=configs/paper.py", f"--workdir={workdir}",
    f"--config.data.dir={dst}",
    "--config.batch_size=8", "--config.num_train_steps=4", "--config.log_every_steps=1",
    "--config.checkpoint_every_steps=1000",
  ]  # fmt: skip
  proc = subprocess.Popen(train, cwd=ROOT, env=cli_env(8), stderr=subprocess.PIPE, text=True)
  log = []
  for line in proc.stderr:
    log.append(line)
    if "] [2] epoch=" in line:  # step 2 logged: interrupt the run as a scheduler would
      proc.send_signal(signal.SIGTERM)
  assert proc.wait(timeout=900) == 75, "".join(log[-40:])
  log = "".join(log)
  assert "Data source: prepared" in log
  assert "Stopped at step" in log
  saved = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
  assert saved and saved[-1] in (2, 3)

  resumed = subprocess.run(train, cwd=ROOT, env=cli_env(8), capture_output=True, text=True, timeout=900)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f"Resuming from the checkpoint at step {saved[-1]}" in resumed.stderr
  manifest = json.loads((workdir / "run.json").read_text())
  assert manifest["num_params"] == 60_965_224 and manifest["num_devices"] == 8
  assert manifest["resumed_from_step"] == saved[-1]
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert sorted(r["step"] for r in rows if "train_loss" in r)[-1] == 4
  assert [r["eval_num_examples"] for r in rows if "eval_num_examples" in r] == [50]

  # evaluate with the paper's 10 crops: every validation image counted once (a small batch: 128 x 10 crops at full
  # size needs ~12 GB)
  out = run("alexnet_jax.evaluate", f"--workdir={workdir}", "--crops=10", "--batch_size=16", devices=8)
  assert out.returncode == 0, out.stderr[-3000:]
  result = json.loads((workdir / "eval" / "step4_10crop.json").read_text())
  assert (result["step"], result["crops"], result["num_examples"]) == (4, 10, 50)
  assert result["data_source"] == "prepared"
  # Each of the 50 images is counted once with weight one (padding never counted): the errors are whole numbers of
  # images out of 50, top-5 no worse than top-1; the loss, a mean of -log of a probability, is finite and positive.
  wrong1, wrong5 = result["top1_error"] * 50, result["top5_error"] * 50
  assert wrong1 == pytest.approx(round(wrong1), abs=1e-4) and wrong5 == pytest.approx(round(wrong5), abs=1e-4), result
  assert 0 <= round(wrong5) <= round(wrong1) <= 50, result
  assert 0 < result["loss"] < math.inf, result
