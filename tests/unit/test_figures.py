"""A trained run, used: ``inference.Predictor`` (the run's own preprocessing, checked against ``evaluate``) and the
figures' arithmetic (the command that writes them as PNGs: tests/system/test_figures_cli.py)."""

import numpy as np
import pytest
from PIL import Image

from alexnet_jax import evaluate
from alexnet_jax.inference import Predictor
from tests.support.tiny import small_prepared_run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  return small_prepared_run(tmp_path_factory.mktemp("figures"))


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
  # ... and the same probabilities, not only the same argmax: the loss and the top-5 error from them, by hand.
  assert -np.log(probabilities[np.arange(20), labels]).mean() == pytest.approx(result["loss"], rel=1e-4)
  top5 = [label not in np.argsort(-p)[:5] for p, label in zip(probabilities, labels, strict=True)]
  assert np.mean(top5) == pytest.approx(result["top5_error"], abs=1e-6)
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
  # One image alone, as an array or a PIL image, is a batch of one (not one greyscale image per row); the same for
  # a greyscale one; features too. An array of another rank is refused.
  for one in (images[4], Image.fromarray(images[4])):
    np.testing.assert_allclose(p.predict(one), probabilities[4:5], rtol=1e-4, atol=1e-6)
  grey = np.asarray(Image.fromarray(images[5]).convert("L"))
  np.testing.assert_allclose(p.predict(grey), p.predict([grey]), rtol=1e-5)
  assert p.features(images[6], "fc7").shape == (1, 512)
  with pytest.raises(ValueError, match=r"images of shape \(2, 2, 76, 76, 3\)"):
    p.predict(images[:4].reshape(2, 2, 76, 76, 3))


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
