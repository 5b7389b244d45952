"""`python -m alexnet_jax.benchmark` prints one JSON row (the arithmetic: tests/unit/test_benchmark.py), and with
`--input_only` one per input path."""

import json
import os
import subprocess
import sys

from alexnet_jax import model as M
from tests.support import ROOT
from tests.support.tiny import cli_env


def test_command_line_prints_json(tmp_path):
  out = subprocess.run(
    [sys.executable, "-m", "alexnet_jax.benchmark", "--model=owt", "--width=0.125", "--batch_size=4", "--steps=1"]
    + ["--windows=1", "--dtype=bfloat16", "--layers"],
    cwd=ROOT,
    env=cli_env(fast_compile=True),
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert out.returncode == 0, out.stderr[-2000:]
  row = json.loads(out.stdout.strip().splitlines()[-1])
  assert (
    row["model"] == "owt" and row["dtype"] == "bfloat16" and set(row["forward_flops_per_layer"]) == set(M.LAYER_NAMES)
  )


def test_input_only_prints_every_path_side_by_side(tmp_path):
  """`benchmark --input_only`: one row per path and thread count, the ratios made of those rows, the rates recorded
  for `aot`; the service rows say whether their batches fit in one epoch (here 13 batches of 16 against 200 images:
  12 an epoch), and a warning says how many images would."""
  rates = tmp_path / "input_rates.json"
  out = subprocess.run(
    [sys.executable, "-m", "alexnet_jax.benchmark", "--input_only", "--input_images=200", "--batch_size=16"],
    cwd=ROOT,
    env={**cli_env(fast_compile=True), "ALEXNET_JAX_INPUT_RATES": str(rates)},
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert out.returncode == 0, out.stderr[-3000:]
  rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
  inputs = {(r["pipeline"], r["threads"]): r for r in rows if r["what"] == "input"}
  cores = os.cpu_count()
  expected = {(p, t) for p in ("jpeg", "pixels", "pixels_tfrecord") for t in {1, cores}}
  expected |= {("service_1", 1), ("service_2", 1), ("floor", 1), ("pixels device part", 0)}
  assert set(inputs) == expected
  assert all(r["images_per_sec"] > 0 for r in inputs.values())
  ratios = next(r for r in rows if r["what"] == "input_ratios")
  per_core = lambda key: inputs[key]["images_per_sec_per_core"]
  assert ratios["pixels_to_floor"] == per_core(("pixels", 1)) / per_core(("floor", 1))
  assert ratios["pixels_to_jpeg_per_core"] == per_core(("pixels", 1)) / per_core(("jpeg", 1))
  assert ratios["service_2_to_service_1"] == inputs["service_2", 1]["images_per_sec"] / per_core(("service_1", 1))
  for workers in (1, 2):
    row = inputs[f"service_{workers}", 1]
    assert row["workers"] == workers and row["batches_per_epoch"] == 200 // 16 and row["within_one_epoch"] is False
  assert "warning: the service rows time 13 batches of 16 (3 of warm-up) across 2 epochs of 12" in out.stderr
  assert "give --input_images=210." in out.stderr  # the arithmetic: tests/unit/test_benchmark.py
  recorded = next(r for r in rows if r["what"] == "input_rates_recorded")
  assert recorded["path"] == str(rates) and rates.exists()


def test_bad_input_is_one_error_line_naming_the_benchmarks_own_flags(tmp_path):
  """A batch of 0, a batch larger than the generated set, and a set stored smaller than the paper's 227x227 crops:
  one `error:` line each (exit 1, no traceback), naming the benchmark's flags rather than a training config's; a
  flag below its bound is a bad command line (exit 2, one line, not absl's FATAL and usage text)."""
  from alexnet_jax.data import embedded, prepare

  embedded.generate(str(tmp_path / "raw"), train_per_class=2, val_per_class=1, size=96, seed=1)
  prepare.prepare(str(tmp_path / "raw"), str(tmp_path / "small"), image_size=76)
  cases = {
    "--batch_size=0": "error: --batch_size must be positive, got 0",
    "--input_only --batch_size=0": "error: --batch_size must be positive, got 0",
    "--input_only --input_images=5": "error: flag --input_images=5: 5 is not integer >= 100",  # absl's, exit 2
    "--input_only --input_images=105 --batch_size=128": "error: --batch_size=128 is more than the 100 images "
    "--input_images=105 makes",
    f"--input_only --data_dir={tmp_path / 'small'}": "stores 76x76 images; --input_only times the paper's 227x227 "
    "crops: prepare the set with --image_size=256",
  }
  for args, said in cases.items():
    out = subprocess.run(
      [sys.executable, "-m", "alexnet_jax.benchmark", *args.split()],
      cwd=ROOT,
      env=cli_env(),
      capture_output=True,
      text=True,
      timeout=300,
    )
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    code = 2 if "flag --" in said else 1  # a flag's own bound: a bad command line
    assert out.returncode == code and len(errors) == 1 and "Traceback" not in out.stderr, (args, out.stderr[-2000:])
    assert said in errors[0], (args, errors)
