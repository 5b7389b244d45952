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

A weights file is data, never code: PyTorch files (``.pth``/``.pt``) are read with ``torch.load(...,
weights_only=True)`` and safetensors files through safetensors' torch reader (any dtype, bfloat16 included), told
apart by their first bytes. The weights are found wherever a training script put them (``load_state_dict``: the one
mapping of tensors whose names, less one common prefix such as ``module.``, ``_orig_mod.`` or Lightning's ``model.``,
are AlexNet's), and what was unwrapped is logged; any other file (empty, text, HTML, a Git LFS pointer, a zip that
is not a PyTorch file, a pickled whole model) is refused in one line saying what it is. A state_dict whose keys or
shapes differ from what the network needs is refused, with every difference listed.

torchvision's ImageNet weights expect its own preprocessing: RGB scaled to [0, 1], then normalised by
``TORCHVISION_MEAN`` / ``TORCHVISION_STD``. ``write_run`` (the command line below) makes a workdir of imported
weights whose config says ``data.normalize='torchvision'`` and ``data.crop_fraction=224/256``, so that ``evaluate``
measures them, and ``inference.Predictor`` (with or without ``--data_dir``) predicts, as torchvision does:

  python -m alexnet_jax.weights --weights=torchvision --workdir=runs/torchvision --data_dir=DST
  python -m alexnet_jax.evaluate --workdir=runs/torchvision --crops=1
"""

from __future__ import annotations

import codecs
import io
import re
import sys
from collections.abc import Mapping
from typing import Any

import numpy as np
from absl import flags

from alexnet_jax import cli
from alexnet_jax.data.augment import TORCHVISION_MEAN, TORCHVISION_STD  # noqa: F401  (re-exported)

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


CHECKPOINT_ENTRIES = ("state_dict", "model_state_dict", "model")  # preferred where a file holds several weight sets
SAVE_INSTEAD = "save the network's weights alone instead: torch.save(model.state_dict(), 'weights.pth')"
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _names(layers) -> frozenset[str]:
  return frozenset(f"{name}.{kind}" for name in layers for kind in ("weight", "bias"))


# The parameter names of torchvision's AlexNet (features.0.weight ...) and of our own export (conv1.weight ...): what
# a state_dict's keys are, once any wrapper's prefix is dropped.
NAME_SETS = (_names(TORCHVISION_LAYERS.values()), _names(TORCHVISION_LAYERS))


def sniff(data: bytes) -> str | None:
  """What a file that is not loadable weights looks like, judged by its first bytes (None: a zip archive holding a
  PyTorch file, a pickle, or a safetensors file, to be read)."""
  if not data:
    return "is empty (0 bytes): the download or copy did not finish"
  head = data[:1024]
  if _safetensors_header(data) is not None:
    return None
  if head.startswith(b"version https://git-lfs"):
    return (
      "is a Git LFS pointer (a small text file standing for the weights), not the weights: fetch them with "
      "`git lfs pull` in its repository, or download the file itself"
    )
  if head.startswith(b"PK\x03\x04"):
    import zipfile

    try:
      names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    except zipfile.BadZipFile as e:
      return f"is a damaged zip archive ({e}): download it again"
    if any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
      return None  # torch.save's archive
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "") or "nothing"
    return f"is a zip archive but not a PyTorch file (it holds {shown}): unpack it and give the weights file inside"
  if head[:1] == b"\x80":  # a pickle (torch's legacy format)
    return None
  stripped = head.lstrip().lower()
  if stripped.startswith((b"<!doctype html", b"<html", b"<?xml", b"<head", b"<body")) or b"<html" in stripped:
    return (
      "is an HTML page, not weights: probably an error or sign-in page saved in place of the file; download the "
      "file itself (a direct link)"
    )
  try:  # a character cut at byte 1024 is not a reason to call it binary
    text = codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
  except UnicodeDecodeError:
    text = None
  if text is not None and all(c.isprintable() or c in "\r\n\t" for c in text):
    first = text.strip().splitlines()[0][:60] if text.strip() else ""
    return f"is a text file (it starts {first!r}), not weights"
  return (
    f"is neither a PyTorch file (a zip archive or a pickle) nor a safetensors file (it starts with bytes "
    f"{data[:8].hex(' ')})"
  )


def _safetensors_header(data: bytes) -> int | None:
  """The header length of a safetensors file (8 bytes little-endian, then a JSON object), else None."""
  if len(data) < 10:
    return None
  n = int.from_bytes(data[:8], "little")
  return n if 2 <= n <= len(data) - 8 and data[8:9] == b"{" else None


def load_state_dict(path: str) -> dict[str, np.ndarray]:
  """A state_dict {name: float32 array} from a PyTorch file (``.pth``/``.pt``, read with
  ``torch.load(weights_only=True)``: tensors only, never code) or a safetensors file (any dtype torch reads,
  bfloat16 included), told apart by their first bytes.

  Wherever the weights sit in the file, they are found by one rule: the one mapping of tensors, at any depth (a
  training checkpoint's ``state_dict``, ``model_state_dict``, ``model``, ``net`` entry, ``{"checkpoint":
  {"state_dict": ...}}``) whose names, after dropping one prefix common to all (``module.`` of
  ``nn.DataParallel``, ``_orig_mod.`` of ``torch.compile``, ``model.`` of Lightning), are AlexNet's (torchvision's
  or ours); what was unwrapped is logged. Raises WeightsError, saying what the file is and what to give instead, for
  anything else (an empty, text, HTML or Git LFS pointer file, a zip that is not a PyTorch file, a pickled whole
  model, a list, no weights found).
  """
  from alexnet_jax import storage

  with storage.open(path, "rb") as f:
    data = f.read()
  what = sniff(data)
  if what:
    raise WeightsError(f"{path} {what}")
  if _safetensors_header(data) is not None:
    return _unwrap(path, _load_safetensors(path, data))
  import torch

  try:
    loaded = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
  except Exception as e:  # whatever torch raises: one line saying what the file is
    raise WeightsError(f"{path} {_torch_refusal(e)}: {SAVE_INSTEAD}") from None
  return _unwrap(path, loaded)


def _load_safetensors(path: str, data: bytes) -> dict[str, Any]:
  from safetensors import SafetensorError

  try:
    try:
      from safetensors.torch import load
    except ImportError:  # no torch: numpy's dtypes (no bfloat16)
      from safetensors.numpy import load
    return load(data)
  except (SafetensorError, KeyError, ValueError, TypeError) as e:
    raise WeightsError(f"{path} is not a readable safetensors file ({type(e).__name__}: {e}): {SAVE_INSTEAD}") from None


def _torch_refusal(e: BaseException) -> str:
  """What torch.load's failure says about the file, without torch's advice to load with weights_only=False (which
  runs whatever code the file holds) and without its terminal escapes."""
  message = _ANSI.sub("", str(e))
  found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", message)
  if found:
    return (
      f"holds pickled Python objects ({found.group(1)}), such as a whole model saved with torch.save(model): "
      "they are code, which is never loaded"
    )
  detail = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\n\n|$)", message, re.S)
  line = (detail.group(1) if detail else message).strip().splitlines()
  line = [s for s in line if "weights_only" not in s]
  said = f"{type(e).__name__}: {line[0].strip()[:200]}" if line else type(e).__name__
  return f"cannot be read as tensors only ({said}): it is damaged, or holds objects other than tensors"


def _is_tensor(value: Any) -> bool:
  torch = sys.modules.get("torch")
  return isinstance(value, np.ndarray) or (torch is not None and isinstance(value, torch.Tensor))


def _prefix(keys: list[str]) -> str | None:
  """The one prefix (possibly '') that, dropped from every key, leaves AlexNet's parameter names (at least one of
  them; others are listed as differences later), else None."""
  known = NAME_SETS[0] | NAME_SETS[1]
  counts: dict[str, int] = {}
  for k in keys:
    for name in known:
      if k.endswith(name) and (len(k) == len(name) or k[-len(name) - 1] == "."):
        counts[k[: -len(name)]] = counts.get(k[: -len(name)], 0) + 1
  for prefix, _ in sorted(counts.items(), key=lambda item: (-item[1], len(item[0]))):
    if all(k.startswith(prefix) for k in keys):
      return prefix
  return None


def _unwrap(path: str, loaded: Any) -> dict[str, np.ndarray]:
  """The weights inside what a file held (see ``load_state_dict``), as float32 arrays."""
  from absl import logging

  candidates = []  # (where, mapping, prefix, exact)

  def visit(value: Any, where: tuple, depth: int) -> None:
    if not isinstance(value, Mapping) or not value or depth > 4:
      return
    if all(_is_tensor(v) for v in value.values()):
      keys = [str(k) for k in value]
      prefix = _prefix(keys)
      if prefix is not None:
        candidates.append((where, value, prefix, {k[len(prefix) :] for k in keys} in NAME_SETS))
      return
    for k, v in value.items():
      visit(v, (*where, k), depth + 1)

  visit(loaded, (), 0)
  if not candidates and isinstance(loaded, Mapping) and loaded and all(_is_tensor(v) for v in loaded.values()):
    candidates = [((), loaded, "", False)]  # some other network's state_dict: its differences are listed later
  if len(candidates) > 1:
    exact = [c for c in candidates if c[3]]
    candidates = exact or candidates
  if len(candidates) > 1:
    preferred = [c for c in candidates if len(c[0]) == 1 and c[0][0] in CHECKPOINT_ENTRIES]
    preferred.sort(key=lambda c: CHECKPOINT_ENTRIES.index(c[0][0]))
    if preferred:
      candidates = preferred[:1]
  if len(candidates) != 1:
    if candidates:
      shown = ", ".join(_where(c[0]) for c in candidates)
      raise WeightsError(f"{path} holds several sets of AlexNet weights ({shown}): save the one you want alone")
    entry = next((k for k in CHECKPOINT_ENTRIES if isinstance(loaded, Mapping) and k in loaded), None)
    if entry is not None:
      raise WeightsError(f"{path}'s {entry!r} entry holds {_describe(loaded[entry])}, not a state_dict: {SAVE_INSTEAD}")
    raise WeightsError(f"{path} holds {_describe(loaded)}, and no AlexNet state_dict in it: {SAVE_INSTEAD}")
  where, state_dict, prefix, _ = candidates[0]
  if where:
    ignored = [str(k) for k in loaded if k != where[0]] if isinstance(loaded, Mapping) else []
    logging.info(
      "%s is a training checkpoint: using its %s entry (ignoring %s)", path, _where(where), ignored or "nothing"
    )
  if prefix:
    logging.info("%s: every name starts with %r (a wrapped network): the prefix is dropped", path, prefix)
  return {str(k)[len(prefix) :]: _to_float32(v) for k, v in state_dict.items()}


def _where(where: tuple) -> str:
  return repr(where[0]) if len(where) == 1 else "".join(f"[{k!r}]" for k in where)


def _to_float32(value: Any) -> np.ndarray:
  if isinstance(value, np.ndarray):
    return value.astype(np.float32)
  return value.detach().float().cpu().numpy()


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
IMPORTED_KEY = "imported_weights"  # in the run.json of a run ``write_run`` made: where its weights came from


def write_run(
  state_dict: Mapping[str, Any], workdir: str, data_dir: str | None = None, source: str | None = None
) -> int:
  """A workdir holding ``state_dict`` (torchvision's layout) as the ``owt`` network's step-0 checkpoint, with a
  config that evaluates and predicts as torchvision does, whatever the data source (``data_dir``'s, or none):
  shorter side to 256, the central 224x224, RGB / 255 minus torchvision's channel means over its deviations. The
  number of classes is fc8's; with 1000 of them, ImageNet's class names go in the workdir's ``class_names.txt``
  (for ``inference.Predictor`` when the run has no dataset). The workdir's ``run.json`` records
  ``imported_weights`` (``source``, where the weights came from), by which ``evaluate`` knows that a run without a
  dataset has nothing to be evaluated on. Returns the number of classes."""
  import jax

  from alexnet_jax import checkpoint as checkpoint_lib
  from alexnet_jax import config_lib, manifest, parallel, storage, train

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
  manifest.write_manifest(workdir, config, **{IMPORTED_KEY: source or "a state_dict"})
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


def imported_without_data(workdir: str, config: Any) -> bool:
  """Whether ``workdir`` is a run of imported weights written without a dataset (``write_run`` without
  ``data_dir``): its config records the synthetic source, and its run.json says ``imported_weights`` (runs written
  before run.json said so: no training steps and torchvision's normalisation, which no synthetic training run has)."""
  import json

  from alexnet_jax import storage

  if config.data.source != "synthetic":
    return False
  path = storage.join(storage.resolve(workdir), "run.json")
  if storage.exists(path):
    try:
      with storage.open(path) as f:
        if IMPORTED_KEY in json.load(f):
          return True
    except (OSError, ValueError):
      pass
  return config.num_train_steps == 0 and config.data.normalize == "torchvision"


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
    classes = write_run(state_dict, f.workdir, f.data_dir, source=f.weights)
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
