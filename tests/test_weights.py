"""Weights in and out (alexnet_jax.weights): a state_dict with torchvision's exact key names and shapes (random
values, no download) loaded into our ``owt`` network gives the logits of torchvision's architecture
(benchmarks/torch_reference.py's ``TorchvisionAlexNet``); ours exported and read back are the same parameters; a
file that does not fit is refused with its differences listed."""

import os
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from alexnet_jax import model as model_lib
from alexnet_jax import weights

torch = pytest.importorskip("torch", reason="the PyTorch side needs torch (a dev dependency on x86_64)")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import torch_reference  # noqa: E402


def our_params(name="owt", **kw):
  return nnx.to_pure_dict(nnx.split(model_lib.AlexNet(name, rngs=nnx.Rngs(0), **kw), nnx.Param)[1])


def logits(name, params, images_nhwc, **kw):
  model = nnx.eval_shape(lambda: model_lib.AlexNet(name, rngs=nnx.Rngs(0), **kw))
  graphdef, _ = nnx.split(model, nnx.Param)
  return np.asarray(nnx.merge(graphdef, params)(jnp.asarray(images_nhwc)))


def test_torchvision_weights_give_torchvisions_logits(tmp_path):
  torch.manual_seed(0)
  net = torch_reference.TorchvisionAlexNet().eval()
  state_dict = net.state_dict()
  assert list(state_dict)[:2] == ["features.0.weight", "features.0.bias"] and len(state_dict) == 16
  path = str(tmp_path / "alexnet-owt.pth")
  torch.save(state_dict, path)
  params = weights.from_torch_state_dict(weights.load_state_dict(path), our_params(), "owt")
  images = np.random.default_rng(0).normal(0, 1, (2, 224, 224, 3)).astype(np.float32)
  with torch.no_grad():
    want = net(torch.from_numpy(images.transpose(0, 3, 1, 2))).numpy()
  got = logits("owt", params, images, dropout_rate=0.0)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
  assert np.abs(want).max() > 1e-3  # not a test of two zero vectors


@pytest.mark.parametrize("name,suffix", [("owt", ".pth"), ("paper", ".safetensors")])
def test_export_and_import_are_inverse(tmp_path, name, suffix):
  params = our_params(name, width=0.25, num_classes=10)
  path = str(tmp_path / f"weights{suffix}")
  weights.save_state_dict(weights.to_torch_state_dict(params, name), path)
  back = weights.from_torch_state_dict(weights.load_state_dict(path), params, name)
  for layer, p in params.items():
    for kind, value in p.items():
      np.testing.assert_array_equal(back[layer][kind], np.asarray(value))
  if name == "paper":  # a grouped layer as nn.Conv2d(groups=2) holds it: (out, in / groups, kh, kw)
    assert weights.load_state_dict(path)["conv2.weight"].shape == (64, 12, 5, 5)


def test_a_file_that_does_not_fit_is_refused_with_every_difference(tmp_path):
  state_dict = torch_reference.TorchvisionAlexNet(num_classes=10).state_dict()
  del state_dict["features.3.bias"]
  state_dict["extra.weight"] = torch.zeros(3)
  with pytest.raises(weights.WeightsError) as e:
    weights.from_torch_state_dict({k: v.numpy() for k, v in state_dict.items()}, our_params(), "owt")
  message = str(e.value)
  assert "4 differences" in message and "missing features.3.bias (192,)" in message
  assert (
    "unexpected extra.weight (3,)" in message and "classifier.6.weight: (10, 4096), expected (1000, 4096)" in message
  )


def test_a_pickle_with_code_is_not_loaded(tmp_path):
  """weights_only=True: a .pth file that would run code when unpickled is refused, not run."""
  path = tmp_path / "evil.pth"
  marker = tmp_path / "ran"
  torch.save({"w": torch.zeros(1), "payload": _Payload(str(marker))}, path)
  with pytest.raises(Exception, match=r"Weights only load failed|weights_only"):
    weights.load_state_dict(str(path))
  assert not marker.exists()


class _Payload:
  def __init__(self, path):
    self.path = path

  def __reduce__(self):
    return (open, (self.path, "w"))


def test_imported_weights_evaluate_as_torchvision_computes(tmp_path):
  """`python -m alexnet_jax.weights` writes a run whose evaluation is torchvision's own: the central 224x224 of the
  stored 256x256 images, torchvision's normalisation, the same probabilities as its architecture in PyTorch, and
  `evaluate`'s error from them."""
  import subprocess

  from alexnet_jax import evaluate, prepare, shapes
  from alexnet_jax.inference import Predictor
  from tests.conftest import cli_env

  shapes.generate(str(tmp_path / "raw"), train_per_class=1, val_per_class=2, size=300, seed=4)
  prepare.prepare(str(tmp_path / "raw"), str(tmp_path / "prepared"), image_size=256, examples_per_shard=8)
  torch.manual_seed(1)
  net = torch_reference.TorchvisionAlexNet(num_classes=10).eval()
  torch.save(net.state_dict(), tmp_path / "weights.pth")
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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
