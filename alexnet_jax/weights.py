"""Weights in and out: torchvision's AlexNet into our ``owt`` network, and ours out as a PyTorch state_dict or a
safetensors file.

torchvision's ``alexnet(weights="IMAGENET1K_V1")`` is our ``owt`` architecture (the "one weird trick" single column:
64-192-384-256-256, no LRN, 224x224, adaptive average pooling to 6x6). The names and layouts differ:

  ours                          torchvision
  conv1..conv5 kernel (HWIO)    features.{0,3,6,8,10}.weight (OIHW)
  fc6..fc8 kernel (in, out)     classifier.{1,4,6}.weight (out, in)
  fc6's rows in (h, w, c) order  its columns in (c, h, w) order: torchvision flattens NCHW, we flatten NHWC

The paper's network exports under our own layer names (``conv1.weight`` ... ``fc8.bias``; a grouped layer's weight is
(out, in/groups, kh, kw), as ``nn.Conv2d(groups=2)`` holds it), with fc6 in the same NCHW order.

A weights file is data, never code: ``.pth``/``.pt`` files are read with ``torch.load(..., weights_only=True)`` and
``.safetensors`` with safetensors' numpy reader. A training checkpoint holding the weights under ``state_dict`` (or
``model_state_dict``, ``model``) is unwrapped, and a ``module.`` prefix (``nn.DataParallel``) dropped, each logged;
anything else is refused saying what the file holds. A state_dict whose keys or shapes differ from what the network
needs is refused, with every difference listed.

torchvision's ImageNet weights expect its own preprocessing: RGB scaled to [0, 1], then normalised by
``TORCHVISION_MEAN`` / ``TORCHVISION_STD``. ``write_run`` (the command line below) makes a workdir of imported
weights whose config says ``data.normalize='torchvision'`` and ``data.crop_fraction=224/256``, so that ``evaluate``
measures them, and ``inference.Predictor`` (with or without ``--data_dir``) predicts, as torchvision does:

  python -m alexnet_jax.weights --weights=torchvision --workdir=runs/torchvision --data_dir=DST
  python -m alexnet_jax.evaluate --workdir=runs/torchvision --crops=1
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

import numpy as np
from absl import flags

from alexnet_jax import cli
from alexnet_jax.input_pipeline.prepared import TORCHVISION_MEAN, TORCHVISION_STD  # noqa: F401  (re-exported)

TORCHVISION_URL = "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"  # IMAGENET1K_V1
TORCHVISION_LAYERS = {
  "conv1": "features.0",
  "conv2": "features.3",
  "conv3": "features.6",
  "conv4": "features.8",
  "conv5": "features.10",
  "fc6": "classifier.1",
  "fc7": "classifier.4",
  "fc8": "classifier.6",
}


class WeightsError(ValueError):
  """A weights file that does not fit the network: the message lists every difference."""


def _torch_names(model_name: str) -> dict[str, str]:
  return TORCHVISION_LAYERS if model_name == "owt" else {layer: layer for layer in TORCHVISION_LAYERS}


def _fc6_spatial(params: Mapping[str, Any]) -> tuple[int, int]:
  """(spatial side, channels) of the maps fc6 reads: its input length / conv5's channels = side squared."""
  channels = params["conv5"]["kernel"].shape[-1]
  side = int(round((params["fc6"]["kernel"].shape[0] // channels) ** 0.5))
  if side * side * channels != params["fc6"]["kernel"].shape[0]:
    raise WeightsError(f"fc6's {params['fc6']['kernel'].shape[0]} inputs are not {channels} square maps")
  return side, channels


def to_torch_state_dict(params: Mapping[str, Any], model_name: str = "owt") -> dict[str, np.ndarray]:
  """Our parameters (``nnx.to_pure_dict`` of the network) -> {name: float32 array} in PyTorch's layouts."""
  names = _torch_names(model_name)
  side, channels = _fc6_spatial(params)
  out = {}
  for layer, torch_name in names.items():
    kernel = np.asarray(params[layer]["kernel"], np.float32)
    if layer.startswith("conv"):
      weight = kernel.transpose(3, 2, 0, 1)  # HWIO -> OIHW
    elif layer == "fc6":  # rows (h, w, c) -> columns (c, h, w)
      weight = kernel.reshape(side, side, channels, -1).transpose(3, 2, 0, 1).reshape(kernel.shape[1], -1)
    else:
      weight = kernel.T
    out[f"{torch_name}.weight"] = np.ascontiguousarray(weight)
    out[f"{torch_name}.bias"] = np.asarray(params[layer]["bias"], np.float32)
  return out


def from_torch_state_dict(
  state_dict: Mapping[str, Any], target: Mapping[str, Any], model_name: str = "owt"
) -> dict[str, dict[str, np.ndarray]]:
  """A PyTorch state_dict -> our parameters, shaped like ``target`` (our network's parameters or their shapes).
  Refused with every difference listed if a key is missing or unexpected, or a shape does not match."""
  expected = {k: v.shape for k, v in to_torch_state_dict(_zeros_like(target), model_name).items()}
  got = {k: tuple(np.shape(v)) for k, v in state_dict.items()}
  problems = [f"missing {k} {expected[k]}" for k in expected if k not in got]
  problems += [f"unexpected {k} {got[k]}" for k in got if k not in expected]
  problems += [f"{k}: {got[k]}, expected {expected[k]}" for k in expected if k in got and got[k] != expected[k]]
  if problems:
    raise WeightsError(
      f"the weights do not fit model.name={model_name!r} with these layer sizes ({len(problems)} differences): "
      + "; ".join(problems)
    )
  side, channels = _fc6_spatial(target)
  params: dict[str, dict[str, np.ndarray]] = {}
  for layer, torch_name in _torch_names(model_name).items():
    weight = np.asarray(state_dict[f"{torch_name}.weight"], np.float32)
    if layer.startswith("conv"):
      kernel = weight.transpose(2, 3, 1, 0)  # OIHW -> HWIO
    elif layer == "fc6":  # columns (c, h, w) -> rows (h, w, c)
      kernel = weight.reshape(-1, channels, side, side).transpose(2, 3, 1, 0).reshape(-1, weight.shape[0])
    else:
      kernel = weight.T
    params[layer] = {"kernel": kernel, "bias": np.asarray(state_dict[f"{torch_name}.bias"], np.float32)}
  return params


def _zeros_like(tree: Mapping[str, Any]) -> dict[str, dict[str, np.ndarray]]:
  return {layer: {k: np.zeros(v.shape, np.float32) for k, v in p.items()} for layer, p in tree.items()}


CHECKPOINT_ENTRIES = ("state_dict", "model_state_dict", "model")  # where training scripts keep the weights
WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # nn.DataParallel / DistributedDataParallel, torch.compile
SAVE_INSTEAD = "save the network's weights alone instead: torch.save(model.state_dict(), 'weights.pth')"


def load_state_dict(path: str) -> dict[str, np.ndarray]:
  """A state_dict {name: float32 array} from a ``.pth``/``.pt`` file (``torch.load(weights_only=True)``: tensors
  only, no code) or a ``.safetensors`` file.

  A training checkpoint ({"state_dict": ..., "epoch": 90, "optimizer": ...}; also "model_state_dict" or "model") is
  unwrapped to that entry, and names that all start with ``module.`` (``nn.DataParallel``) or ``_orig_mod.``
  (``torch.compile``) lose the prefix; each is logged. Raises WeightsError, saying what the file holds and what to
  save instead, for anything else that is not a mapping of names to tensors (a pickled whole model, a list, a file
  that is not a PyTorch or safetensors file).
  """
  from absl import logging

  from alexnet_jax import storage

  with storage.open(path, "rb") as f:
    data = f.read()
  if path.endswith(".safetensors"):
    from safetensors import SafetensorError
    from safetensors.numpy import load

    try:
      return {k: np.asarray(v, np.float32) for k, v in load(data).items()}
    except SafetensorError as e:
      raise WeightsError(f"{path} is not a readable safetensors file ({e}): {SAVE_INSTEAD}") from None
  import io
  import pickle

  import torch

  try:
    loaded = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
  except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as e:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise WeightsError(
      f"{path} cannot be read as tensors only ({type(e).__name__}: {first}); it may hold a whole pickled model or "
      f"other objects, which weights_only loading refuses: {SAVE_INSTEAD}"
    ) from None
  where = path
  if isinstance(loaded, Mapping) and not _all_tensors(loaded):
    entry = next((k for k in CHECKPOINT_ENTRIES if isinstance(loaded.get(k), Mapping)), None)
    if entry is not None:
      others = [k for k in loaded if k != entry]
      logging.info("%s is a training checkpoint: using its %r entry (ignoring %s)", path, entry, others or "nothing")
      loaded, where = loaded[entry], f"{path}'s {entry!r} entry"
  if not isinstance(loaded, Mapping) or not loaded or not _all_tensors(loaded):
    raise WeightsError(f"{where} holds {_describe(loaded)}, not a state_dict (names mapped to tensors): {SAVE_INSTEAD}")
  for prefix in WRAPPER_PREFIXES:
    if all(str(k).startswith(prefix) for k in loaded):
      logging.info("%s: every name starts with %r (a wrapped network): the prefix is dropped", path, prefix)
      loaded = {str(k)[len(prefix) :]: v for k, v in loaded.items()}
  return {str(k): v.detach().float().numpy() for k, v in loaded.items()}


def _all_tensors(mapping: Mapping) -> bool:
  import torch

  return all(isinstance(v, torch.Tensor) for v in mapping.values())


def _describe(value: Any) -> str:
  """What a loaded object is, for an error: 'a dict with entries epoch (int), optimizer (dict)', 'a list of 3'."""
  if isinstance(value, Mapping):
    if not value:
      return "an empty mapping"
    kinds = [f"{k} ({type(v).__name__})" for k, v in list(value.items())[:8]]
    more = f" and {len(value) - 8} more" if len(value) > 8 else ""
    return f"a {type(value).__name__} with entries {', '.join(kinds)}{more}"
  if isinstance(value, (list, tuple)):
    return f"a {type(value).__name__} of {len(value)} items"
  return f"a {type(value).__name__}"


def imagenet_class_names() -> list[str]:
  """ImageNet's (ILSVRC-2012) 1000 class names, human-readable, in class order (torchvision's weights' order):
  ``alexnet_jax/imagenet_classes.txt``, copied from torchvision's ``_IMAGENET_CATEGORIES`` (BSD-3; its header)."""
  import importlib.resources

  text = importlib.resources.files("alexnet_jax").joinpath("imagenet_classes.txt").read_text(encoding="utf-8")
  return [line for line in text.splitlines() if line and not line.startswith("#")]


def torchvision_state_dict() -> dict[str, np.ndarray]:
  """torchvision's IMAGENET1K_V1 AlexNet weights, downloaded by ``torch.hub`` (needs internet; cached by torch)."""
  import torch

  loaded = torch.hub.load_state_dict_from_url(TORCHVISION_URL, map_location="cpu", weights_only=True)
  return {k: v.float().numpy() for k, v in loaded.items()}


def save_state_dict(state_dict: Mapping[str, np.ndarray], path: str) -> None:
  """Write ``state_dict`` as ``.safetensors`` (by the name's ending) or as a PyTorch ``.pth`` file."""
  from alexnet_jax import storage

  if path.endswith(".safetensors"):
    from safetensors.numpy import save

    data = save({k: np.ascontiguousarray(v) for k, v in state_dict.items()})
  else:
    import io

    import torch

    buffer = io.BytesIO()
    torch.save({k: torch.from_numpy(np.array(v, copy=True)) for k, v in state_dict.items()}, buffer)
    data = buffer.getvalue()
  with storage.open(path, "wb") as f:
    f.write(data)


# ---------------------------------------------------------------------------------------------------------------
# A run made of imported weights, for evaluate, the Predictor and the figures.
# ---------------------------------------------------------------------------------------------------------------
def write_run(state_dict: Mapping[str, Any], workdir: str, data_dir: str | None = None) -> int:
  """A workdir holding ``state_dict`` (torchvision's layout) as the ``owt`` network's step-0 checkpoint, with a
  config that evaluates and predicts as torchvision does, whatever the data source (``data_dir``'s, or none):
  shorter side to 256, the central 224x224, RGB / 255 minus torchvision's channel means over its deviations. The
  number of classes is fc8's; with 1000 of them, ImageNet's class names go in the workdir's ``class_names.txt``
  (for ``inference.Predictor`` when the run has no dataset). Returns the number of classes."""
  import jax

  from alexnet_jax import checkpoint as checkpoint_lib
  from alexnet_jax import config_lib, parallel, storage, train

  if "classifier.6.weight" not in state_dict:
    raise WeightsError("not a torchvision AlexNet state_dict: no classifier.6.weight (fc8)")
  config = config_lib.base_config()
  config.model.name = "owt"
  config.model.num_classes = int(np.shape(state_dict["classifier.6.weight"])[0])
  config.data.normalize = "torchvision"
  config.data.subtract_mean = False
  # torchvision's Resize(256) + CenterCrop(224): the central 224 of the image scaled to 256, whatever the source
  # stores (a prepared set at another size, a TFDS set, or none: the Predictor scales any image to 256 first).
  config.data.crop_fraction = 224 / 256
  if data_dir:
    config.data.dir, config.data.source = data_dir, "auto"
  else:
    config.data.source = "synthetic"
  config.num_train_steps = 0
  config_lib.validate(config)
  mesh = parallel.create_mesh(1, devices=jax.devices()[:1])
  plan = train.plan_state(config, mesh)
  state = jax.jit(plan.init, out_shardings=plan.shardings)()
  params = from_torch_state_dict(state_dict, jax.device_get(state["params"]), "owt")
  state["params"] = jax.device_put(params, plan.shardings["params"])
  workdir = train.prepare_workdir(workdir)
  ckpt = checkpoint_lib.Checkpointer(storage.join(workdir, "checkpoints"), max_to_keep=1)
  try:
    ckpt.save(0, state, config_lib.to_json(config))
    ckpt.wait()
  finally:
    ckpt.close()
  if config.model.num_classes == 1000:
    from alexnet_jax import inference

    with storage.open(storage.join(workdir, inference.CLASS_NAMES_FILE), "w") as f:
      f.write("# ImageNet's class names (alexnet_jax/imagenet_classes.txt, from torchvision), one a line\n")
      f.write("\n".join(imagenet_class_names()) + "\n")
  return config.model.num_classes


def define_flags() -> None:
  flags.DEFINE_string(
    "weights",
    None,
    "'torchvision' (IMAGENET1K_V1 via torch.hub; needs internet), or a .pth/.pt or "
    ".safetensors file holding torchvision's AlexNet state_dict (or a training checkpoint with a 'state_dict' "
    "or 'model' entry).",
  )
  flags.DEFINE_string("workdir", None, "Where to write the run (a step-0 checkpoint and its config).")
  flags.DEFINE_string(
    "data_dir", None, "The prepared set it will be evaluated on (default: none; pass --data_dir to evaluate later)."
  )
  flags.mark_flags_as_required(["weights", "workdir"])


def main(argv: list[str]) -> int:
  del argv
  f = flags.FLAGS
  try:
    state_dict = torchvision_state_dict() if f.weights == "torchvision" else load_state_dict(f.weights)
    classes = write_run(state_dict, f.workdir, f.data_dir)
  except (ValueError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(
    f"wrote {f.workdir} (owt, {classes} classes, torchvision's preprocessing). Evaluate it with: python -m "
    f"alexnet_jax.evaluate --workdir={f.workdir} --crops=1" + ("" if f.data_dir else " --data_dir=DST")
  )
  return 0


if __name__ == "__main__":
  define_flags()
  cli.run(main)
