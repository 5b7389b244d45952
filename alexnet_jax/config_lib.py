"""Every knob of a run, with its default; recipes in configs/ start from ``base_config()`` and change a few.

Also: validation (unknown keys, impossible values: errors that say what to do) and the comparison of a saved and a
current config on resume.
"""

from __future__ import annotations

import difflib
import json
import os
from typing import Any

import ml_collections

from alexnet_jax import model as model_lib
from alexnet_jax import optim

# Keys that may differ between a checkpoint and the run resuming it: how long, how often, where, how laid out.
# Everything else changes the computation, and a resume with it changed is refused unless --allow_config_change.
SAFE_TO_CHANGE_ON_RESUME = (
  "num_train_steps",
  "num_epochs",
  "log_every_steps",
  "tensorboard",
  "eval_every_steps",
  "checkpoint_every_steps",
  "keep_checkpoints",
  "eval_batch_size",
  "data.dir",
  "data.num_eval_examples",
  "data.prefetch",
  "data.input_wait_warning",
  "data.pixel_reader",
  "data.service",
  "mesh.",
  "profile.",
  "health.",
)

DATA_SOURCES = ("auto", "synthetic", "prepared", "tfds")
NORMALIZATIONS = ("mean_image", "torchvision")
DTYPES = ("float32", "bfloat16", "float16")  # float16: with dynamic loss scaling (loss_scale.py)


def base_config() -> ml_collections.ConfigDict:
  """The paper's recipe (Sec. 5) on ImageNet; every key the trainer reads is here."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.batch_size = 128  # global, over all devices and processes (the paper: 128)
  c.eval_batch_size = 128  # global; the last batch is padded and masked, so any value works
  c.num_epochs = 90.0  # "roughly 90 cycles through the training set"
  c.num_train_steps = -1  # > 0 overrides num_epochs
  c.log_every_steps = 100
  c.tensorboard = True  # event files in WORKDIR/tensorboard as well as metrics.jsonl (False: metrics.jsonl only)
  c.eval_every_steps = -1  # -1: once an epoch (what the plateau rule watches); 0: only at the end
  c.checkpoint_every_steps = 1000
  c.keep_checkpoints = 3

  c.model = ml_collections.ConfigDict()
  # 'paper' (Sec. 3), 'owt' (torchvision's single-column variant) or 'alexnet_bn' (the LARS paper's AlexNet-BN: no
  # LRN, conv -> batch norm -> ReLU; docs/model.md)
  c.model.name = "paper"
  c.model.num_classes = 1000
  c.model.image_size = 0  # 0: the architecture's own (paper 227, owt 224)
  c.model.width = 1.0  # < 1 scales every layer down (CPU demos and tests); 1.0 is the paper
  c.model.dropout_rate = 0.5
  c.model.lrn_alpha_over_n = False  # False: alpha as printed in Sec. 3.3; True: alpha/n as in cuda-convnet/Caffe
  c.model.lrn_per_column = False  # True: each column's channels normalised apart (cuda-convnet's per-GPU layers)
  # Grouped convs as two convs ('split', fastest on CPU) or one feature_group_count conv ('grouped'); 'auto' =
  # 'split'. Under mesh.model=2 each device runs its own group as one plain conv (model.AlexNet._columns).
  c.model.conv_impl = "auto"
  # conv1 as a convolution ('conv') or as one matrix product over its 11x11x3 patches ('patches', ~3x faster on
  # XLA's CPU backend). 'auto': 'patches' on CPU, 'conv' on GPU/TPU. Same function.
  c.model.conv1_impl = "auto"
  # '': the architecture's own ('paper': N(0, 0.01), biases of 1; 'owt': PyTorch's 'torch'); 'cuda_convnet2' (the
  # authors' layer files: 0.03 for conv3-5) or 'caffe' (bvlc_alexnet: 0.005 for fc6/7, biases of 0.1)
  c.model.init = ""
  # compute dtype; parameters stay float32; LRN, softmax and loss run in float32. 'float16' (GPUs without bfloat16,
  # e.g. Colab's T4) adds dynamic loss scaling (alexnet_jax/loss_scale.py, docs/training.md)
  c.model.dtype = "float32"
  # alexnet_bn: batch statistics per group of this many devices of the mesh's 'data' axis (their examples), as
  # per-GPU batch norm did; 0: over the whole global batch. Must divide the 'data' axis. Evaluation: running stats.
  c.model.bn_group_size = 0
  c.model.bn_momentum = 0.999  # alexnet_bn: running averages' weight of the past (NVCaffe BatchNorm's default)
  c.model.bn_epsilon = 1e-5  # alexnet_bn: added to the variance (NVCaffe BatchNorm's default)

  c.optimizer = ml_collections.ConfigDict()
  # 'sgd' (the paper's momentum SGD) or 'lars' (You, Gitman & Ginsburg 2017: each array's rate times its trust ratio
  # eta * ||w|| / (||g|| + weight_decay * ||w||); docs/training.md)
  c.optimizer.name = "sgd"
  c.optimizer.learning_rate = 0.01
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 5e-4
  c.optimizer.weight_decay_mode = "coupled"  # 'coupled' (the paper), 'decoupled', 'none'
  c.optimizer.decay_biases = True  # the paper's update applies to every weight it names; False spares biases
  c.optimizer.bias_lr_multiplier = 1.0  # biases learn at this times the rate (cuda-convnet2 and Caffe: 2)
  # k > 1: each step's batch_size examples run as k micro-batches inside the step, their gradients averaged into the
  # one update (steps.make_train_step; docs/training.md). batch_size must be a multiple of k x data devices.
  c.optimizer.accumulation_steps = 1
  # ("biases" above: every parameter that is not a kernel, batch norm's scale and offset included)
  c.optimizer.lars_eta = 0.001  # 'lars': the trust coefficient eta (the LARS paper: 0.001)
  # 'lars': which arrays get the trust ratio: 'all' (the LARS paper) or 'kernels' (Jia et al. 2018, the MLPerf TPU
  # references: biases and batch norm take plain momentum SGD steps; pair it with decay_biases=False, as they do)
  c.optimizer.lars_scope = "all"

  c.schedule = ml_collections.ConfigDict()
  # 'paper' (divide on plateau), 'step', 'cosine', 'constant', 'poly' (the LARS paper's polynomial decay; with
  # warmup_epochs > 0: its linear warm-up, then the decay over the remaining steps)
  c.schedule.name = "paper"
  c.schedule.factor = 0.1  # 'paper' and 'step': multiply the rate by this at each drop
  c.schedule.patience = 3  # 'paper': evaluations without improvement before a drop
  c.schedule.min_delta = 0.0  # 'paper': an improvement must beat the best error by more than this
  c.schedule.max_drops = 3  # 'paper': "reduced three times prior to termination"
  c.schedule.step_epochs = (30.0, 60.0, 80.0)  # 'step'
  c.schedule.warmup_epochs = 0.0  # any schedule: the rate rises linearly over this many epochs first (step s: (s+1)/W)
  c.schedule.power = 2.0  # 'poly': rate = end + (peak - end) * (1 - t/T)^power (the LARS paper: 2)
  c.schedule.end_learning_rate = 0.0  # 'poly': the rate it decays to at the last step

  c.data = ml_collections.ConfigDict()
  # 'auto': what data.dir holds (a prepared set -> 'prepared', a TFDS dataset folder -> 'tfds'; no data.dir is an
  # error); 'prepared', 'tfds' or 'synthetic' by name ('synthetic' refuses a data.dir it would ignore).
  c.data.source = "auto"
  c.data.dir = ""  # 'prepared': the output of alexnet_jax.prepare; 'tfds': the TFDS data_dir (or a dataset folder)
  c.data.tfds_name = ""  # 'tfds': a TFDS dataset name, e.g. 'imagenet2012' or 'imagenette' (built beforehand)
  c.data.num_train_examples = 1_281_167  # synthetic only (ILSVRC-2012's count, for realistic epochs)
  c.data.num_eval_examples = 50_000  # synthetic only
  c.data.learnable = True  # synthetic: class-dependent patterns plus noise (False: pure noise, for speed tests)
  c.data.prefetch = 2  # batches put on the devices ahead of the step
  # Warn once (health.InputWaitMonitor) when the loop waited for input more than this fraction of the wall time in 2
  # log windows in a row, the first log window (compile, warm-up) not counted; 0 turns the warning off.
  c.data.input_wait_warning = 0.25
  # The paper's augmentation (Sec. 4.1), each switchable for ablations ('prepared' source):
  # The crop covers this fraction of the (square) image it is cut from: the paper's 227 of 256. Stored images of
  # another size are resized on read to model.image_size / crop_fraction (76 for 67x67 crops, 256 for 227x227), so
  # any prepared set trains any recipe; 0 crops the stored images as they are.
  c.data.crop_fraction = 227 / 256
  c.data.random_crop = True  # random crops of the (resized) stored images (False: the centre crop)
  c.data.flip = True  # random horizontal reflections
  c.data.lighting_std = 0.1  # "fancy PCA" lighting: alpha ~ N(0, lighting_std); 0 turns it off
  c.data.subtract_mean = True  # subtract the training set's per-pixel mean image
  # 'mean_image': the paper's (pixel values minus the mean image, when subtract_mean); 'torchvision': RGB / 255 minus
  # torchvision's channel means, over its deviations (what torchvision's pretrained weights expect)
  c.data.normalize = "mean_image"
  c.data.device_preprocess = True  # ship uint8 crops and finish on the device (identical numbers, 4x fewer bytes)
  c.data.shuffle_buffer = 10_000  # examples in tf.data's shuffle buffer
  c.data.eval_crops = 1  # periodic evaluation: 1 (centre) or 10 (the paper's 10 crops)
  # How training reads a pixel set (prepare --encoding=pixels) on a local disk: 'mmap' (memory-mapped shards, each
  # image copied once; 6.5x the JPEG path per core) or 'tfrecord' (the records through tf.data). The same batches.
  c.data.pixel_reader = "mmap"
  # The tf.data service's dispatcher, HOST:PORT ('': off): training's input (read, decode, augment, batch) runs on
  # its workers (`python -m alexnet_jax.data_service`); every example once per epoch, in an order not fixed.
  c.data.service = ""

  c.mesh = ml_collections.ConfigDict()
  c.mesh.model = 1  # size of the 'model' axis: 2 = the paper's two-GPU split (Sec. 3.2)

  c.health = ml_collections.ConfigDict()  # alexnet_jax/health.py: a collapse caught at a log step, once
  c.health.on_collapse = "warn"  # 'warn' (a warning naming the dead layers) or 'stop' (an error; checkpoints kept)
  c.health.chance_margin = 0.05  # "at chance": |loss - ln(num_classes)| below this (nats) ...
  c.health.vanishing_grad = 0.1  # ... with the gradient norm below this fraction of the largest logged so far ...
  c.health.patience = 3  # ... for this many log windows in a row; a layer whose ReLUs are all dead fires at once
  # > 0: also fire when the loss of a log window ending at or after this step is not yet chance_margin below
  # ln(num_classes) (at chance, or above it), whatever the gradient does. configs/paper.py sets it (its docstring:
  # what a healthy start looks like). That step is always a log step, whatever log_every_steps is.
  c.health.max_steps_at_chance = 0

  c.profile = ml_collections.ConfigDict()
  c.profile.enabled = False  # a jax.profiler trace of a few steps, viewable in TensorBoard's profile tab
  c.profile.first_step = 10
  c.profile.num_steps = 5
  return c


def load_config_file(path: str) -> ml_collections.ConfigDict:
  """``get_config()`` of a config file, as ``--config=PATH`` would load it (for notebooks and tools); ``PATH:ARG``
  passes ARG to ``get_config`` (``configs/paper.py:text``), as ml_collections' config flags do."""
  import importlib.util

  path, _, arg = path.partition(":") if not os.path.exists(path) else (path, "", "")
  spec = importlib.util.spec_from_file_location(f"_config_{abs(hash(path))}", path)
  if spec is None or spec.loader is None:
    raise ValueError(f"cannot load config file {path!r}")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def set_by_path(config: ml_collections.ConfigDict, key: str, value: Any) -> None:
  """``config['a.b'] = value`` for a dotted key; a list becomes a tuple where the default is one (JSON has no
  tuples). An unknown key is an error."""
  node = config
  *parents, leaf = key.split(".")
  for p in parents:
    node = node[p]
  if leaf not in node:
    raise ValueError(f"unknown config key {key!r}")
  node[leaf] = tuple(value) if isinstance(node[leaf], tuple) and isinstance(value, list) else value


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
  """{'a': {'b': 1}} -> {'a.b': 1}; tuples become lists (their JSON form), so saved and live configs compare."""
  d = d.to_dict() if isinstance(d, ml_collections.ConfigDict) else d
  out: dict[str, Any] = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
  return out


def to_json(config: ml_collections.ConfigDict) -> dict[str, Any]:
  return json.loads(json.dumps(config.to_dict()))


def unknown_keys_message(unknown: list[str], known) -> str:
  hints = [f"{k} (did you mean {m[0]}?)" if (m := difflib.get_close_matches(k, known, 1)) else k for k in unknown]
  return f"unknown config key(s): {', '.join(hints)}. Valid keys: {', '.join(sorted(known))}"


def unknown_override_message(argv: list[str], error: Exception) -> str:
  """The one-line error for ``--config.KEY=VALUE`` flags that absl could not parse (unknown keys, with hints)."""
  known = flatten(base_config())
  given = [a[len("--config.") :].split("=")[0] for a in argv if a.startswith("--config.")]
  return unknown_keys_message([k for k in given if k not in known] or [str(error)], known)


def validate(config: ml_collections.ConfigDict) -> None:
  """Raise ValueError naming what is wrong (and the valid choices) for unknown keys or impossible values."""
  known = flatten(base_config())
  given = flatten(config)
  unknown = sorted(set(given) - set(known))
  if unknown:
    raise ValueError(unknown_keys_message(unknown, known))
  missing = sorted(set(known) - set(given))
  if missing:
    raise ValueError(f"config is missing key(s) {missing}: build it from alexnet_jax.config_lib.base_config()")

  def choice(key: str, value: Any, options) -> None:
    if value not in options:
      raise ValueError(f"{key}={value!r} is not one of {tuple(options)}")

  choice("model.name", config.model.name, model_lib.ARCHITECTURES)
  choice("model.dtype", config.model.dtype, DTYPES)
  choice("model.conv_impl", config.model.conv_impl, ("auto", "split", "grouped"))
  choice("model.conv1_impl", config.model.conv1_impl, ("auto", "conv", "patches"))
  choice("model.init", config.model.init, ("", *model_lib.INITS))
  choice("optimizer.weight_decay_mode", config.optimizer.weight_decay_mode, optim.WEIGHT_DECAY_MODES)
  choice("optimizer.name", config.optimizer.name, optim.OPTIMIZERS)
  choice("optimizer.lars_scope", config.optimizer.lars_scope, optim.LARS_SCOPES)
  if config.optimizer.name == "lars" and config.optimizer.weight_decay_mode == "decoupled":
    raise ValueError(
      "optimizer.name='lars' puts the weight decay inside the trust ratio (the LARS paper's Algorithm 1): use "
      "optimizer.weight_decay_mode='coupled' (or 'none'), not 'decoupled'"
    )
  if config.optimizer.lars_eta <= 0:
    raise ValueError(f"optimizer.lars_eta must be positive, got {config.optimizer.lars_eta}")
  if config.model.bn_group_size < 0:
    raise ValueError(f"model.bn_group_size must be >= 0 (0: the whole global batch), got {config.model.bn_group_size}")
  if config.model.bn_group_size and not model_lib.ARCHITECTURES[config.model.name].batch_norm:
    raise ValueError(
      f"model.bn_group_size={config.model.bn_group_size} sets batch norm's statistics groups, but "
      f"model.name={config.model.name!r} has no batch norm: use model.name='alexnet_bn' or bn_group_size=0"
    )
  if not 0.0 <= config.model.bn_momentum < 1.0:
    raise ValueError(f"model.bn_momentum must be in [0, 1), got {config.model.bn_momentum}")
  if config.model.bn_epsilon <= 0:
    raise ValueError(f"model.bn_epsilon must be positive, got {config.model.bn_epsilon}")
  if config.schedule.power <= 0:
    raise ValueError(f"schedule.power must be positive, got {config.schedule.power}")
  if config.schedule.end_learning_rate < 0:
    raise ValueError(f"schedule.end_learning_rate must be >= 0, got {config.schedule.end_learning_rate}")
  choice("schedule.name", config.schedule.name, optim.SCHEDULES)
  choice("data.source", config.data.source, DATA_SOURCES)
  choice("data.normalize", config.data.normalize, NORMALIZATIONS)
  for key in ("batch_size", "eval_batch_size", "log_every_steps", "checkpoint_every_steps", "keep_checkpoints"):
    if config[key] <= 0:
      raise ValueError(f"{key} must be positive, got {config[key]}")
  if config.num_train_steps <= 0 and config.num_epochs <= 0:
    raise ValueError("set num_epochs > 0 or num_train_steps > 0")
  if not 0.0 <= config.model.dropout_rate < 1.0:
    raise ValueError(f"model.dropout_rate must be in [0, 1), got {config.model.dropout_rate}")
  if config.mesh.model < 1:
    raise ValueError(f"mesh.model must be >= 1, got {config.mesh.model}")
  if config.model.lrn_per_column and config.mesh.model not in (1, 2):
    raise ValueError(
      f"model.lrn_per_column normalises each of the paper's 2 columns apart, one per device of the split: use "
      f"mesh.model=1 or 2, or --config.model.lrn_per_column=False for mesh.model={config.mesh.model}"
    )
  if not 0.0 <= config.data.crop_fraction <= 1.0:
    raise ValueError(f"data.crop_fraction must be in (0, 1] (or 0: no resizing), got {config.data.crop_fraction}")
  if not 0.0 <= config.data.input_wait_warning < 1.0:
    raise ValueError(f"data.input_wait_warning must be in [0, 1) (0: no warning), got {config.data.input_wait_warning}")
  choice("data.pixel_reader", config.data.pixel_reader, ("mmap", "tfrecord"))
  if config.data.service:
    from alexnet_jax.data.service import parse_address

    parse_address(config.data.service)
  if config.data.eval_crops not in (1, 10):
    raise ValueError(f"data.eval_crops must be 1 or 10, got {config.data.eval_crops}")
  choice("health.on_collapse", config.health.on_collapse, ("warn", "stop"))
  if config.health.patience < 1:
    raise ValueError(f"health.patience must be >= 1, got {config.health.patience}")
  if config.health.max_steps_at_chance < 0:
    raise ValueError(f"health.max_steps_at_chance must be >= 0 (0: off), got {config.health.max_steps_at_chance}")
  if config.schedule.patience < 1:
    raise ValueError(f"schedule.patience must be >= 1, got {config.schedule.patience}")
  if config.schedule.warmup_epochs < 0:
    raise ValueError(f"schedule.warmup_epochs must be >= 0, got {config.schedule.warmup_epochs}")
  k = config.optimizer.accumulation_steps
  if not isinstance(k, int) or k < 1:
    raise ValueError(f"optimizer.accumulation_steps must be an integer >= 1 (1: no accumulation), got {k!r}")
  if config.batch_size % k:
    raise ValueError(
      f"batch_size={config.batch_size} does not split into optimizer.accumulation_steps={k} equal micro-batches: "
      f"use a batch_size that is a multiple of {k} (and of {k} x the data-parallel devices)"
    )
  if config.optimizer.bias_lr_multiplier <= 0:
    raise ValueError(f"optimizer.bias_lr_multiplier must be positive, got {config.optimizer.bias_lr_multiplier}")


def changed_keys(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
  """Keys whose values differ between two (JSON) configs and that matter for the computation. A key the saved
  config lacks (saved by an older version) counts as its default: a new option left at its default changes
  nothing."""
  defaults = flatten(to_json(base_config()))
  a, b = {**defaults, **flatten(saved)}, flatten(current)
  diff = sorted(k for k in set(a) | set(b) if a.get(k, "<absent>") != b.get(k, "<absent>"))
  return [k for k in diff if not any(k == s or (s.endswith(".") and k.startswith(s)) for s in SAFE_TO_CHANGE_ON_RESUME)]
