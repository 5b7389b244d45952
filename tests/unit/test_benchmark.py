"""The benchmark's arithmetic (not its speed): FLOPs per layer, MFU, the per-device memory of a layout, and one row of
real output from a tiny network."""

import os
import sys

import pytest
from flax import nnx

from alexnet_jax import benchmark
from alexnet_jax import model as M
from tests.support import ROOT


def test_flops_per_layer_by_hand():
  paper = nnx.eval_shape(lambda: M.AlexNet("paper", rngs=nnx.Rngs(0)))
  flops = benchmark.layer_flops(paper)
  # 2 x output positions x (kernel area x input channels per group) x output channels
  assert flops["conv1"] == 2 * 55 * 55 * 11 * 11 * 3 * 96
  assert flops["conv2"] == 2 * 27 * 27 * 5 * 5 * 48 * 256  # two groups: 48 input channels each
  assert flops["conv3"] == 2 * 13 * 13 * 3 * 3 * 256 * 384
  assert flops["conv5"] == 2 * 13 * 13 * 3 * 3 * 192 * 256
  assert flops["fc6"] == 2 * 6 * 6 * 256 * 4096
  assert 3 * sum(flops.values()) == 4_346_440_896  # forward + backward per image, as RESULTS.md quotes
  owt = benchmark.layer_flops(nnx.eval_shape(lambda: M.AlexNet("owt", rngs=nnx.Rngs(0))))
  assert owt["conv1"] == 2 * 55 * 55 * 11 * 11 * 3 * 64 and owt["conv2"] == 2 * 27 * 27 * 5 * 5 * 64 * 192


@pytest.mark.parametrize("mesh_model", [1, 2])
def test_rows_from_a_tiny_network(mesh_model):
  row = benchmark.bench_train_step(
    "paper", 16, "float32", 1, 1, 0.125, "auto", 100.0, False, mesh_model=mesh_model, memory_only=mesh_model == 2
  )
  if mesh_model == 1:
    assert row["what"] == "train_step" and row["images_per_sec"] > 0
    assert row["ms_per_step"] == pytest.approx(16 / row["images_per_sec"] * 1e3)
    assert row["mfu"] == pytest.approx(row["tflops_per_sec"] / 100.0)
    assert row["tflops_per_sec"] == pytest.approx(row["flops_per_image"] * row["images_per_sec"] / 1e12)
    assert row["conv1_impl"] == "patches" and row["conv_impl"] == "split"  # the CPU defaults
  else:
    assert row["what"] == "train_step_memory" and row["mesh"] == {"data": 4, "model": 2}
    full = benchmark.bench_train_step("paper", 16, "float32", 1, 1, 0.125, "auto", None, False, memory_only=True)
    assert 0.5 <= row["param_bytes_per_device"] / full["param_bytes_per_device"] < 0.52
    assert row["temp_bytes_per_device"] > 0


def test_the_early_dynamics_study_runs_valid_commands_and_reads_them_right():
  """benchmarks/early_dynamics.py (issue 13's study): every variant's command parses and validates as main takes it,
  each spells out every choice under study, and 'left chance' is three log windows in a row 0.1 below ln(C)."""
  sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
  import early_dynamics as study

  runs = study.commands("/data", "/out", 300, [0, 1], list(study.VARIANTS))
  assert len(runs) == 2 * len(study.VARIANTS) and len({workdir for _, _, workdir, _ in runs}) == len(runs)
  study.check(runs)
  for name, _, _, cmd in runs:
    assert all(any(a.startswith(f) for a in cmd) for f in ("--config.model.init=", "--config.model.lrn_per_column=")), (
      name
    )
  name, seed, workdir, cmd = runs[0]
  with pytest.raises(SystemExit, match=r"model\.lrn_per_colum"):
    study.check([(name, seed, workdir, [*cmd, "--config.model.lrn_per_colum=True"])])
  steps = [10, 20, 30, 40, 50, 60]
  assert study.left_chance(steps, [2.4, 2.1, 2.3, 2.1, 2.0, 1.9], chance=2.3026) == 40
  assert study.left_chance(steps, [2.4, 2.1, 2.1, 2.3, 2.1, 2.1], chance=2.3026) is None


def test_the_large_batch_study_runs_valid_commands_and_judges_them_right():
  """benchmarks/large_batch_study.py (issue 23): both recipes' commands parse and validate, at the same epochs and
  scale, LARS at an effective batch of 1,024 by accumulation; the verdict compares the large-batch mean with SGD's
  within the larger of the two seed differences."""
  sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
  import early_dynamics
  import large_batch_study as study

  runs = study.commands("/data", "/out", 8.0, [0, 1], 0.25, 67, list(study.RECIPES))
  assert len(runs) == 4 and len({workdir for _, _, workdir, _ in runs}) == 4
  early_dynamics.check(runs)
  for name, _, _, cmd in runs:
    assert "--config.num_epochs=8.0" in cmd and "--config.model.width=0.25" in cmd, name
  lars = next(cmd for name, _, _, cmd in runs if name == "lars_1024")
  assert "--config.batch_size=1024" in lars and "--config.optimizer.accumulation_steps=8" in lars

  def rows(lars_errors, sgd_errors):
    return [{"recipe": "lars_1024", "error": e, "rc": 0} for e in lars_errors] + [
      {"recipe": "sgd_128", "error": e, "rc": 0} for e in sgd_errors
    ]

  assert "IS within 0.100" in study.verdict(rows([0.50, 0.60], [0.52, 0.55]))  # means 0.55 vs 0.535
  assert "NOT within 0.030" in study.verdict(rows([0.80, 0.81], [0.55, 0.58]))
  assert study.verdict(rows([0.8], [0.5, 0.6])).startswith("no verdict")


def test_the_service_rows_warning_says_what_fits_the_timed_batches_in_one_epoch():
  """3 warm-up batches and the timed ones in one epoch (one job of the service): no warning; otherwise how many
  epochs they span and what fits them: for a generated set the --input_images that makes enough images (it makes
  input_images // classes per class, so rounded up to whole classes), for the user's own set its size, and fewer
  --steps only where an epoch holds the 10 batches --input_only times at least."""
  assert benchmark.service_epochs_warning(13, 16, 10) is None  # 3 + 10 batches of an epoch of 13
  warning = benchmark.service_epochs_warning(12, 16, 10, generated_classes=10)  # 200 images: 12 batches of 16
  assert warning.startswith("warning: the service rows time 13 batches of 16 (3 of warm-up) across 2 epochs of 12")
  assert "give --input_images=210." in warning  # 13 x 16 = 208 -> 21 a class; 208 would make 200 again
  assert "a --data_dir of at least 4224 training images" in benchmark.service_epochs_warning(15, 128, 30)
  assert "across 3 epochs of 15 batches" in benchmark.service_epochs_warning(15, 128, 30)  # docs/data.md's first run
  assert benchmark.service_epochs_warning(40, 128, 60).endswith("training images, or --steps=37.")
