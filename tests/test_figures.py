"""A trained run, used: ``inference.Predictor`` (the run's own preprocessing, checked against ``evaluate``) and the
paper's figures as PNGs (``python -m alexnet_jax.figures``)."""

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from alexnet_jax import evaluate, prepare, shapes, train
from alexnet_jax.inference import Predictor
from tests.conftest import cli_env, tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """A few steps of the paper's network (1/8 width) on a small prepared shapes set: a real workdir."""
  root = tmp_path_factory.mktemp("figures")
  shapes.generate(str(root / "raw"), train_per_class=6, val_per_class=2, size=80, seed=3)
  prepare.prepare(str(root / "raw"), str(root / "prepared"), image_size=76, jpeg_quality=95, examples_per_shard=16)
  config = tiny_config(**{"data.source": "prepared", "data.dir": str(root / "prepared"), "model.image_size": 67})
  config.num_train_steps = 3
  train.train_and_evaluate(config, str(root / "run"))
  return root


def test_the_predictor_is_the_runs_own_evaluation(run):
  p = Predictor.from_workdir(str(run / "run"))
  images, labels = p.validation_images()
  assert images.shape == (20, 76, 76, 3) and images.dtype == np.uint8 and labels.shape == (20,)
  probabilities = p.predict(images)
  assert probabilities.shape == (20, 10)
  np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
  # The same error as `evaluate` (centre crop), which reads the same images through the tf.data pipeline.
  result = evaluate.evaluate_workdirs([str(run / "run")], crops=1)
  assert result["num_examples"] == 20
  assert np.mean(probabilities.argmax(axis=1) != labels) == pytest.approx(result["top1_error"], abs=1e-6)
  assert p.features(images[:3], "fc7").shape == (3, 512)  # fc7: 4096 at 1/8 width
  # Any image: another size and aspect, RGBA, greyscale, floats in [0, 1].
  odd = [
    np.asarray(Image.fromarray(images[0]).resize((90, 60)).convert("RGBA")),
    np.asarray(Image.fromarray(images[1]).convert("L")),
    images[2] / 255.0,
  ]
  got = p.predict(odd)
  assert got.shape == (3, 10) and np.all(np.isfinite(got))
  np.testing.assert_allclose(got[2], probabilities[2], rtol=1e-4, atol=1e-6)  # floats: the same image
  with pytest.raises(ValueError, match="no layer 'fc9'"):
    p.features(images[:1], "fc9")


def test_figures_command_writes_the_papers_figures(run):
  out = subprocess.run(
    [sys.executable, "-m", "alexnet_jax.figures", f"--workdir={run / 'run'}", f"--out={run / 'png'}"],
    cwd=ROOT,
    env=cli_env(1),
    capture_output=True,
    text=True,
  )
  assert out.returncode == 0, out.stderr[-3000:]
  names = sorted(p.name for p in (run / "png").iterdir())
  assert names == ["confusion.png", "curves.png", "fig3_kernels.png", "fig4_neighbours.png", "fig4_predictions.png"]
  for name in names:
    image = np.asarray(Image.open(run / "png" / name).convert("RGB"))
    assert image.shape[0] > 200 and image.shape[1] > 200, name
    assert image.std() > 10, name  # not blank
  kernels = np.asarray(Image.open(run / "png" / "fig3_kernels.png").convert("RGB")).astype(float)
  assert np.abs(kernels[..., 0] - kernels[..., 1]).mean() > 1  # colour kernels, not grey


def test_nearest_neighbours_by_euclidean_distance():
  from alexnet_jax import figures

  features = np.array([[0.0, 0], [1, 0], [0, 3], [10, 10], [1.1, 0.1]])
  got = figures.nearest_neighbours(features, np.array([0, 1]), k=2)
  assert got.tolist() == [[1, 4], [4, 0]]


def test_fewer_than_five_classes_get_that_many_bars():
  """A two-class run (figures of it failed with a shape mismatch: five bars for two classes)."""
  from alexnet_jax import figures

  images = np.zeros((3, 16, 16, 3), np.uint8)
  probabilities = np.array([[0.9, 0.1], [0.3, 0.7], [0.5, 0.5]])
  fig = figures.fig4_predictions(images, probabilities, np.array([0, 1, 1]), ["cat", "dog"])
  assert fig._suptitle.get_text().startswith("Top-2 predictions")
  bars = [ax for ax in fig.axes if ax.patches]
  assert len(bars) == 3 and all(len(ax.patches) == 2 for ax in bars)
