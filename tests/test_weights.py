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


# ---- a run of imported weights predicts as torchvision does, whatever its data source -------------------------------
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
  from alexnet_jax import shapes

  rng = np.random.default_rng(7)
  return [shapes.draw(i % 10, rng, max(h, w))[:h, :w] for i, (h, w) in enumerate(sizes)]


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
  # Resampled (bicubic here, bilinear in torchvision): the same to within the filters' difference.
  resized = non_square_pictures([(300, 420), (500, 330), (200, 260)])
  np.testing.assert_allclose(np.log(predictor.predict(resized)), theirs(resized), atol=0.1)


def test_every_source_normalises_as_the_config_records():
  """The synthetic source applies data.normalize and data.subtract_mean (and computes the view from
  data.crop_fraction) as the prepared and TFDS sources do; the expected values are torchvision's published
  normalisation and the plain mean pixel."""
  from alexnet_jax import config_lib, input_pipeline

  pixels = np.asarray([[[[0, 128, 255]]]], np.uint8)
  config = config_lib.base_config()
  config.data.source, config.model.name, config.model.num_classes = "synthetic", "owt", 10
  config.data.normalize, config.data.subtract_mean, config.data.crop_fraction = "torchvision", False, 224 / 256
  source = input_pipeline.create_source(config)
  want = (np.array([0, 128, 255]) / 255 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
  np.testing.assert_allclose(np.asarray(source.preprocess({"image": pixels}))[0, 0, 0], want, rtol=1e-6)
  assert (source.image_size, source.view_size) == (224, 256)
  config.data.normalize, config.data.subtract_mean = "mean_image", True
  got = input_pipeline.create_source(config).preprocess({"image": pixels})
  np.testing.assert_allclose(np.asarray(got)[0, 0, 0], [-127.5, 0.5, 127.5])
  config.data.subtract_mean = False
  got = input_pipeline.create_source(config).preprocess({"image": pixels})
  np.testing.assert_allclose(np.asarray(got)[0, 0, 0], [0, 128, 255])


# ---- weight files that are not a plain state_dict (issue 20, item 5) ------------------------------------------------
def run_weights_cli(tmp_path, weights_file, *extra):
  import subprocess

  from tests.conftest import cli_env

  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  return subprocess.run(
    [sys.executable, "-m", "alexnet_jax.weights", f"--weights={weights_file}", f"--workdir={tmp_path / 'w'}", *extra],
    cwd=root,
    env=cli_env(1),
    capture_output=True,
    text=True,
  )


@pytest.mark.parametrize("entry", ["state_dict", "model_state_dict", "model"])
@pytest.mark.parametrize("prefix", ["", "module.", "_orig_mod."])
def test_a_training_checkpoint_is_unwrapped_and_says_so(tmp_path, caplog, entry, prefix):
  import logging

  state_dict = torch_reference.TorchvisionAlexNet(num_classes=10).state_dict()
  path = tmp_path / "checkpoint.pth"
  optimizer = {"state": {0: {"momentum_buffer": torch.ones(2)}}, "param_groups": [{"lr": 0.01}]}
  torch.save({entry: {prefix + k: v for k, v in state_dict.items()}, "epoch": 90, "optimizer": optimizer}, path)
  caplog.set_level(logging.INFO)
  got = weights.load_state_dict(str(path))
  assert list(got) == list(state_dict)
  for k, v in state_dict.items():
    np.testing.assert_array_equal(got[k], v.numpy())
  said = [r.getMessage() for r in caplog.records]
  assert sum(f"training checkpoint: using its {entry!r} entry" in m for m in said) == 1, said
  assert sum("the prefix is dropped" in m for m in said) == (1 if prefix else 0), said


def test_the_command_line_reads_a_training_checkpoint(tmp_path):
  """The issue's own input: torch.save({"state_dict": sd, "epoch": 90}, F) gave an AttributeError traceback."""
  torch.manual_seed(3)
  state_dict = torch_reference.TorchvisionAlexNet(num_classes=10).state_dict()
  torch.save({"state_dict": state_dict, "epoch": 90}, tmp_path / "checkpoint.pth")
  out = run_weights_cli(tmp_path, tmp_path / "checkpoint.pth")
  assert out.returncode == 0, out.stderr[-3000:]
  assert "training checkpoint: using its 'state_dict' entry (ignoring ['epoch'])" in out.stderr
  assert "owt, 10 classes" in out.stdout


class _Tiny(torch.nn.Module):
  def __init__(self):
    super().__init__()
    self.fc = torch.nn.Linear(2, 2)


@pytest.mark.parametrize(
  "content,says",
  [
    ({"epoch": 90, "optimizer": {"lr": 0.01}}, "holds a dict with entries epoch (int), optimizer (dict)"),
    ({"state_dict": {"a": 1}}, "'state_dict' entry holds a dict with entries a (int)"),
    ([torch.zeros(2), torch.ones(2)], "holds a list of 2 items"),
    (torch.zeros(3), "holds a Tensor"),
    ({}, "holds an empty mapping"),
    (_Tiny(), "cannot be read as tensors only (UnpicklingError: Weights only load failed"),
    (b"not a pytorch file", "cannot be read as tensors only"),
  ],
  ids=["epoch-and-optimizer", "state-dict-of-numbers", "list", "tensor", "empty", "whole-model", "garbage"],
)
def test_anything_else_is_one_error_line_saying_what_to_save(tmp_path, content, says):
  path = tmp_path / "weights.pth"
  if isinstance(content, bytes):
    path.write_bytes(content)
  else:
    torch.save(content, path)
  with pytest.raises(weights.WeightsError) as e:
    weights.load_state_dict(str(path))
  assert says in str(e.value) and "torch.save(model.state_dict(), 'weights.pth')" in str(e.value), str(e.value)


def test_the_command_line_refuses_a_file_without_weights_in_one_line(tmp_path):
  torch.save({"epoch": 90, "optimizer": {"lr": 0.01}}, tmp_path / "state.pth")
  (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 10)
  for name in ("state.pth", "bad.safetensors"):
    out = run_weights_cli(tmp_path, tmp_path / name)
    assert out.returncode == 1, out.stderr[-3000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert name in errors[0] and "torch.save(model.state_dict(), 'weights.pth')" in errors[0]
    assert not (tmp_path / "w").exists()  # nothing written


# ---- ImageNet's class names, shipped -------------------------------------------------------------------------------
def test_the_shipped_imagenet_class_names_are_torchvisions():
  """alexnet_jax/imagenet_classes.txt: 1000 distinct names in ILSVRC-2012's class order, equal to torchvision's
  ``_IMAGENET_CATEGORIES`` (read from torchvision's installed source without importing torchvision, whose compiled
  ops need a matching torch). Where torchvision is not installed, the order is checked at published anchors."""
  import importlib.util

  names = weights.imagenet_class_names()
  assert len(names) == 1000 and len(set(names)) == 1000
  assert all(n == n.strip() and n for n in names)
  # Anchors of the ILSVRC-2012 order (synsets sorted by WordNet ID): n01440764 tench, n01443537 goldfish,
  # n02099601 golden retriever, n02123045 tabby, n15075141 toilet tissue.
  assert [names[i] for i in (0, 1, 207, 281, 999)] == [
    "tench",
    "goldfish",
    "golden retriever",
    "tabby",
    "toilet tissue",
  ]
  spec = importlib.util.find_spec("torchvision")
  if spec is None or not spec.submodule_search_locations:
    pytest.skip("torchvision is not installed: the full list was checked against it where it is (see the file)")
  meta = os.path.join(next(iter(spec.submodule_search_locations)), "models", "_meta.py")
  loader = importlib.util.spec_from_file_location("torchvision_meta", meta)
  module = importlib.util.module_from_spec(loader)
  loader.loader.exec_module(module)
  assert names == list(module._IMAGENET_CATEGORIES)


def test_a_synthetic_runs_own_images_reach_the_network_as_in_evaluation():
  """The synthetic source's images are the crops themselves: its validation images, reflected out to the view the
  config's crop_fraction gives, come back through the Predictor's resize-and-centre-crop pixel for pixel."""
  from alexnet_jax.inference import Predictor
  from alexnet_jax.input_pipeline.synthetic import SyntheticSource

  source = SyntheticSource(
    num_classes=5, image_size=67, num_train_examples=10, num_eval_examples=6, learnable=True, seed=0,
    crop_fraction=227 / 256,
  )  # fmt: skip
  predictor = Predictor(config=None, step=0, params=None, graphdef=None, source=source, class_names=[])
  images, labels = predictor.validation_images()
  assert images.shape == (6, 76, 76, 3) and source.view_size == 76
  evaluated = next(source.eval_batches(6))
  np.testing.assert_array_equal(predictor.batch(images)["image"], evaluated["image"])
  np.testing.assert_array_equal(labels, evaluated["label"])
