"""`python -m alexnet_jax.weights` (a torchvision state_dict in, a run out), each run in a subprocess: the run's
evaluation and Predictor give torchvision's own probabilities, with and without a dataset; a training checkpoint is
read; a file without weights is one error line. The in-process side of weights: tests/unit/test_weights.py."""

import os
import subprocess
import sys

import numpy as np
import pytest

from alexnet_jax import weights
from tests.support import ROOT

torch = pytest.importorskip("torch", reason="the PyTorch side needs torch (a dev dependency on x86_64)")
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import torch_reference  # noqa: E402


def test_imported_weights_evaluate_as_torchvision_computes(tmp_path):
  """`python -m alexnet_jax.weights` writes a run whose evaluation is torchvision's own: the central 224x224 of the
  stored 256x256 images, torchvision's normalisation, the same probabilities as its architecture in PyTorch, and
  `evaluate`'s error from them."""
  import subprocess

  from alexnet_jax import evaluate
  from alexnet_jax.data import embedded, prepare
  from alexnet_jax.inference import Predictor
  from tests.support.tiny import cli_env

  embedded.generate(str(tmp_path / "raw"), train_per_class=1, val_per_class=2, size=300, seed=4)
  prepare.prepare(str(tmp_path / "raw"), str(tmp_path / "prepared"), image_size=256, examples_per_shard=8)
  torch.manual_seed(1)
  net = torch_reference.TorchvisionAlexNet(num_classes=10).eval()
  torch.save(net.state_dict(), tmp_path / "weights.pth")
  root = ROOT
  out = subprocess.run(
    [
      sys.executable,
      "-m",
      "alexnet_jax.weights",
      f"--weights={tmp_path / 'weights.pth'}",
      f"--workdir={tmp_path / 'run'}",
      f"--data_dir={tmp_path / 'prepared'}",
    ],
    cwd=root,
    env=cli_env(1),
    capture_output=True,
    text=True,
  )
  assert out.returncode == 0, out.stderr[-3000:]
  assert "owt, 10 classes, torchvision's preprocessing" in out.stdout
  predictor = Predictor.from_workdir(str(tmp_path / "run"))
  images, labels = predictor.validation_images()
  assert images.shape == (20, 256, 256, 3)
  crops = images[:, 16:240, 16:240].astype(np.float32) / 255.0
  crops = (crops - np.asarray(weights.TORCHVISION_MEAN)) / np.asarray(weights.TORCHVISION_STD)
  with torch.no_grad():
    theirs = torch.softmax(net(torch.from_numpy(crops.transpose(0, 3, 1, 2)).float()), dim=1).numpy()
  np.testing.assert_allclose(predictor.predict(images), theirs, rtol=1e-4, atol=1e-6)
  result = evaluate.evaluate_workdirs([str(tmp_path / "run")], crops=1, batch_size=8)
  assert result["num_examples"] == 20
  assert result["top1_error"] == pytest.approx(float(np.mean(theirs.argmax(1) != labels)), abs=1e-6)


def torchvision_preprocessing(picture: np.ndarray) -> np.ndarray:
  """torchvision's ImageNet evaluation transform, the oracle: ``Resize(256)`` (shorter side 256, the longer
  int(256 * long / short), PIL bilinear), ``CenterCrop(224)`` (top = round((h - 224) / 2)), ``ToTensor`` (/255) and
  ``Normalize`` with ImageNet's means and deviations. torchvision's own transforms where torchvision imports; else
  the same steps as its documentation and source give them, written out here with PIL."""
  from PIL import Image

  image = Image.fromarray(picture)
  mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # torchvision's published ImageNet normalisation
  try:
    from torchvision import transforms

    pipeline = transforms.Compose(
      [transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(), transforms.Normalize(mean, std)]
    )
    return pipeline(image).numpy()
  except Exception:  # torchvision absent (not a dependency here), or its compiled ops do not load with this torch
    w, h = image.size
    short, long = min(w, h), max(w, h)
    size = (256, int(256 * long / short)) if w <= h else (int(256 * long / short), 256)
    if size != (w, h):
      image = image.resize(size, Image.Resampling.BILINEAR)
    w, h = image.size
    top, left = int(round((h - 224) / 2.0)), int(round((w - 224) / 2.0))
    crop = np.asarray(image.crop((left, top, left + 224, top + 224)), np.float32) / 255.0
    return ((crop - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)).transpose(2, 0, 1)


def non_square_pictures(sizes):
  """Drawn shapes (no download), cut to (height, width) rectangles."""
  from alexnet_jax.data import embedded

  rng = np.random.default_rng(7)
  return [embedded.draw(i % 10, rng, max(h, w))[:h, :w] for i, (h, w) in enumerate(sizes)]


def test_weights_without_a_dataset_predict_as_torchvision_does(tmp_path):
  """`python -m alexnet_jax.weights` without --data_dir, then the Predictor on pictures of other shapes: the
  log-probabilities of torchvision's architecture in PyTorch after torchvision's preprocessing (issue 20, item 4:
  the synthetic source it recorded subtracted 127.5 and squashed the picture to 224, off by up to 13)."""
  from alexnet_jax.inference import Predictor

  torch.manual_seed(2)
  net = torch_reference.TorchvisionAlexNet(num_classes=10).eval()
  with torch.no_grad():  # PyTorch's initialisation gives near-equal logits: spread them as trained weights do
    net.classifier[6].weight.mul_(100.0)
  torch.save(net.state_dict(), tmp_path / "weights.pth")
  out = run_weights_cli(tmp_path, tmp_path / "weights.pth")  # no --data_dir
  assert out.returncode == 0, out.stderr[-3000:]
  predictor = Predictor.from_workdir(str(tmp_path / "w"))
  assert predictor.config.data.source == "synthetic"

  def theirs(pictures):
    batch = torch.from_numpy(np.stack([torchvision_preprocessing(p) for p in pictures]))
    with torch.no_grad():
      return torch.log_softmax(net(batch), dim=1).numpy()

  # Shorter side already 256: no resampling on either side, so every step must agree to float rounding.
  exact = non_square_pictures([(256, 341), (384, 256), (256, 256)])
  want = theirs(exact)
  assert np.ptp(want, axis=1).min() > 1  # the classes differ: a comparison that can fail
  np.testing.assert_allclose(np.log(predictor.predict(exact)), want, rtol=1e-4, atol=1e-4)
  # Resampled: torchvision's own filter (PIL's antialiased bilinear) and crop, so the same to float rounding too.
  resized = non_square_pictures([(300, 420), (500, 330), (200, 260)])
  np.testing.assert_allclose(np.log(predictor.predict(resized)), theirs(resized), rtol=1e-4, atol=1e-3)


def test_resized_pictures_get_torchvisions_log_probabilities_and_classes(tmp_path):
  """QA of issue 20, item 6: pictures that must be resized a lot (shrunk 120x900 -> 256x1920, enlarged 20x30 ->
  256x384, odd leftovers for the centre crop) with weights whose log-probabilities spread as trained ones do (fc8
  scaled by 300): the Predictor's log-probabilities are torchvision's preprocessing (the PIL oracle above) through
  torchvision's architecture in PyTorch, to float rounding, and its top-5 classes are the same, in order. Resizing
  bicubic, as before, was off by 0.16-0.38 and changed the top-1 class of the 120x900 picture."""
  from alexnet_jax.inference import Predictor

  torch.manual_seed(5)
  net = torch_reference.TorchvisionAlexNet(num_classes=1000).eval()
  with torch.no_grad():
    net.classifier[6].weight.mul_(300.0)
  torch.save(net.state_dict(), tmp_path / "weights.pth")
  out = run_weights_cli(tmp_path, tmp_path / "weights.pth")
  assert out.returncode == 0, out.stderr[-3000:]
  predictor = Predictor.from_workdir(str(tmp_path / "w"))
  pictures = non_square_pictures([(120, 900), (20, 30), (900, 120), (259, 301), (333, 257)])
  batch = torch.from_numpy(np.stack([torchvision_preprocessing(p) for p in pictures]))
  with torch.no_grad():
    want = torch.log_softmax(net(batch), dim=1).numpy()
  assert np.ptp(want, axis=1).min() > 5  # spread as trained weights' are: a filter's difference would show
  got = np.log(predictor.predict(pictures))
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=2e-3)
  np.testing.assert_array_equal(np.argsort(-got, axis=1)[:, :5], np.argsort(-want, axis=1)[:, :5])


def test_evaluate_refuses_imported_weights_without_a_dataset(tmp_path):
  """QA of issue 20, item 6: `evaluate` of a run `weights` wrote without --data_dir started on 50,000 synthetic
  images; it is one error line naming --data_dir=DST (exit 1, nothing evaluated), while a genuine synthetic training
  run still evaluates."""
  import subprocess

  from tests.support.tiny import cli_env

  torch.manual_seed(6)
  torch.save(torch_reference.TorchvisionAlexNet(num_classes=10).state_dict(), tmp_path / "weights.pth")
  assert run_weights_cli(tmp_path, tmp_path / "weights.pth").returncode == 0
  out = subprocess.run(
    [sys.executable, "-m", "alexnet_jax.evaluate", f"--workdir={tmp_path / 'w'}", "--crops=1"],
    cwd=ROOT, env=cli_env(1), capture_output=True, text=True, timeout=600,
  )  # fmt: skip
  errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
  assert out.returncode == 1 and len(errors) == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]
  assert "--data_dir=DST" in errors[0] and "imported weights" in errors[0], errors
  assert not (tmp_path / "w" / "eval").exists()
  # A run written before run.json said so is recognised by its config (no training steps, torchvision's normalising).
  (tmp_path / "w" / "run.json").unlink()
  from alexnet_jax import evaluate

  with pytest.raises(ValueError, match=r"--data_dir=DST"):
    evaluate.evaluate_workdirs([str(tmp_path / "w")], crops=1)


def run_weights_cli(tmp_path, weights_file, *extra):
  import subprocess

  from tests.support.tiny import cli_env

  root = ROOT
  return subprocess.run(
    [sys.executable, "-m", "alexnet_jax.weights", f"--weights={weights_file}", f"--workdir={tmp_path / 'w'}", *extra],
    cwd=root,
    env=cli_env(1),
    capture_output=True,
    text=True,
  )


def test_the_command_line_reads_a_training_checkpoint(tmp_path):
  """The issue's own input: torch.save({"state_dict": sd, "epoch": 90}, F) gave an AttributeError traceback."""
  torch.manual_seed(3)
  state_dict = torch_reference.TorchvisionAlexNet(num_classes=10).state_dict()
  torch.save({"state_dict": state_dict, "epoch": 90}, tmp_path / "checkpoint.pth")
  out = run_weights_cli(tmp_path, tmp_path / "checkpoint.pth")
  assert out.returncode == 0, out.stderr[-3000:]
  assert "training checkpoint: using its 'state_dict' entry (ignoring ['epoch'])" in out.stderr
  assert "owt, 10 classes" in out.stdout


def test_the_command_line_refuses_a_file_without_weights_in_one_line(tmp_path):
  torch.save({"epoch": 90, "optimizer": {"lr": 0.01}}, tmp_path / "state.pth")
  (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 10)
  for name, says in (
    ("state.pth", "torch.save(model.state_dict(), 'weights.pth')"),
    ("bad.safetensors", "is neither a PyTorch file (a zip archive or a pickle) nor a safetensors file"),
  ):
    out = run_weights_cli(tmp_path, tmp_path / name)
    assert out.returncode == 1, out.stderr[-3000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert name in errors[0] and says in errors[0], errors
    assert not (tmp_path / "w").exists()  # nothing written


def test_the_command_refuses_a_non_weights_file_in_one_error_line(tmp_path):
  """Through the command line: exit 1, one ``error:`` line, no traceback, nothing written."""
  for content in (b"hello\n", b"abc\n", b""):
    path = tmp_path / "weights.pth"
    path.write_bytes(content)
    run = subprocess.run(
      [sys.executable, "-m", "alexnet_jax.weights", f"--weights={path}", f"--workdir={tmp_path / 'run'}"],
      capture_output=True, text=True, cwd=ROOT, timeout=600,
    )  # fmt: skip
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert run.returncode == 1 and len(errors) == 1 and "Traceback" not in run.stderr, run.stderr
    assert not (tmp_path / "run").exists()
