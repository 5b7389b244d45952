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
from tests.support import ROOT  # noqa: E402

sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
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
  with pytest.raises(weights.WeightsError, match=r"holds pickled Python objects \(io.open\)"):
    weights.load_state_dict(str(path))
  assert not marker.exists()


class _Payload:
  def __init__(self, path):
    self.path = path

  def __reduce__(self):
    return (open, (self.path, "w"))


# ---- a run of imported weights predicts as torchvision does, whatever its data source -------------------------------


def test_every_source_normalises_as_the_config_records():
  """The synthetic source applies data.normalize and data.subtract_mean (and computes the view from
  data.crop_fraction) as the prepared and TFDS sources do; the expected values are torchvision's published
  normalisation and the plain mean pixel."""
  from alexnet_jax import config_lib
  from alexnet_jax.data import sources

  pixels = np.asarray([[[[0, 128, 255]]]], np.uint8)
  config = config_lib.base_config()
  config.data.source, config.model.name, config.model.num_classes = "synthetic", "owt", 10
  config.data.normalize, config.data.subtract_mean, config.data.crop_fraction = "torchvision", False, 224 / 256
  source = sources.create_source(config)
  want = (np.array([0, 128, 255]) / 255 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
  np.testing.assert_allclose(np.asarray(source.preprocess({"image": pixels}))[0, 0, 0], want, rtol=1e-6)
  assert (source.image_size, source.view_size) == (224, 256)
  config.data.normalize, config.data.subtract_mean = "mean_image", True
  got = sources.create_source(config).preprocess({"image": pixels})
  np.testing.assert_allclose(np.asarray(got)[0, 0, 0], [-127.5, 0.5, 127.5])
  config.data.subtract_mean = False
  got = sources.create_source(config).preprocess({"image": pixels})
  np.testing.assert_allclose(np.asarray(got)[0, 0, 0], [0, 128, 255])


# ---- weight files that are not a plain state_dict (issue 20, item 5) ------------------------------------------------


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
    (_Tiny(), "holds pickled Python objects (tests.unit.test_weights._Tiny), such as a whole model"),
  ],
  ids=["epoch-and-optimizer", "state-dict-of-numbers", "list", "tensor", "empty", "whole-model"],
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
  assert "\x1b" not in str(e.value) and "weights_only set to False" not in str(e.value) and "\n" not in str(e.value)


# ---- every file that is not loadable weights: one line saying what it looks like (QA of issue 20, item 2) --------


def _zip(names):
  import io
  import zipfile

  buffer = io.BytesIO()
  with zipfile.ZipFile(buffer, "w") as z:
    for name in names:
      z.writestr(name, "x")
  return buffer.getvalue()


@pytest.mark.parametrize(
  "content,says",
  [
    (b"", "is empty (0 bytes)"),
    (b"hello\n", "is a text file (it starts 'hello')"),
    (b"abc\n", "is a text file (it starts 'abc')"),
    (
      b"version https://git-lfs.github.com/spec/v1\noid sha256:4d2f\nsize 244408911\n",
      "is a Git LFS pointer",
    ),
    (b"<!DOCTYPE html>\n<html><body>403 Forbidden</body></html>", "is an HTML page"),
    (b"\n  <html><head><title>Sign in</title></head></html>", "is an HTML page"),
    (
      _zip(["weights/readme.txt", "weights/model.bin"]),
      "a zip archive but not a PyTorch file (it holds weights/readme",
    ),
    (
      bytes(range(7, 107, 3)) + b"\xff\xfe\x00",
      "is neither a PyTorch file (a zip archive or a pickle) nor",
    ),
  ],
  ids=["empty", "text-hello", "text-abc", "git-lfs-pointer", "html", "html-indented", "zip-not-torch", "random-bytes"],
)
def test_a_file_that_is_not_weights_says_what_it_looks_like(tmp_path, content, says):
  path = tmp_path / "weights.pth"
  path.write_bytes(content)
  with pytest.raises(weights.WeightsError) as e:
    weights.load_state_dict(str(path))
  message = str(e.value)
  assert says in message and "\n" not in message, message
  assert "pickled model" not in message and "weights_only" not in message, message


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float64"])
@pytest.mark.parametrize("prefix", ["", "module.", "_orig_mod.", "model."])
def test_a_safetensors_file_of_any_dtype_and_prefix_loads(tmp_path, dtype, prefix):
  from safetensors.torch import save_file

  state_dict = torch_reference.TorchvisionAlexNet(num_classes=10).state_dict()
  converted = {prefix + k: v.to(getattr(torch, dtype)).contiguous() for k, v in state_dict.items()}
  path = tmp_path / "weights.safetensors"
  save_file(converted, str(path))
  got = weights.load_state_dict(str(path))
  assert sorted(got) == sorted(state_dict)
  for k, v in converted.items():  # the stored values, widened to float32 by torch (the oracle)
    assert got[k[len(prefix) :]].dtype == np.float32
    np.testing.assert_array_equal(got[k[len(prefix) :]], v.float().numpy())


@pytest.mark.parametrize(
  "wrap,where",
  [
    (lambda sd: {"state_dict": {"model." + k: v for k, v in sd.items()}, "epoch": 3}, "'state_dict'"),
    (lambda sd: {"checkpoint": {"state_dict": sd, "step": 10}}, "['checkpoint']['state_dict']"),
    (lambda sd: {"net": sd, "acc": 0.5, "epoch": 90}, "'net'"),
    (lambda sd: {"model": {"module._orig_mod." + k: v for k, v in sd.items()}}, "'model'"),
  ],
  ids=["lightning", "checkpoint-state-dict", "net", "two-prefixes"],
)
@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_weights_are_found_wherever_a_training_script_put_them(tmp_path, caplog, wrap, where, suffix):
  import logging

  state_dict = torch_reference.TorchvisionAlexNet(num_classes=10).state_dict()
  wrapped = wrap(state_dict)
  path = tmp_path / f"checkpoint{suffix}"
  if suffix == ".safetensors":  # a flat file: only the prefix can wrap it
    from safetensors.torch import save_file

    inner = next(v for v in wrapped.values() if isinstance(v, dict))
    inner = inner.get("state_dict", inner)
    save_file({k: v.contiguous() for k, v in inner.items()}, str(path))
  else:
    torch.save(wrapped, path)
  caplog.set_level(logging.INFO)
  got = weights.load_state_dict(str(path))
  assert sorted(got) == sorted(state_dict)
  for k, v in state_dict.items():
    np.testing.assert_array_equal(got[k], v.numpy())
  said = " ".join(r.getMessage() for r in caplog.records)
  if suffix == ".pth":
    assert f"using its {where} entry" in said, said


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
  import jax

  from alexnet_jax.data.synthetic import SyntheticSource
  from alexnet_jax.inference import Predictor

  source = SyntheticSource(
    num_classes=5, image_size=67, num_train_examples=10, num_eval_examples=6, learnable=True, seed=0,
    crop_fraction=227 / 256,
  )  # fmt: skip
  predictor = Predictor(config=None, step=0, params=None, graphdef=None, source=source, class_names=[])
  images, labels = predictor.validation_images()
  assert images.shape == (6, 76, 76, 3) and source.view_size == 76
  evaluated = next(source.eval_batches(6))
  np.testing.assert_array_equal(predictor.batch(images)["image"], jax.jit(source.device_images)(evaluated))
  np.testing.assert_array_equal(labels, evaluated["label"])
