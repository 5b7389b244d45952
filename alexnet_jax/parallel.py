"""One device mesh with axes ('data', 'model'), and where every array of the train state and the batch lives.

``data``  : data parallelism, across every device of every process.
``model`` : the paper's two-GPU split (Sec. 3.2), size 1 or 2. With size 2 each device holds one half of every
            conv layer's kernels (for conv2, conv4, conv5 exactly one of the two groups), the columns of fc6 and
            fc8 and the rows of fc7, so each device holds about half of the parameters.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

# Which axis of each parameter is split over 'model' (kernel shapes: conv HWIO, dense IO).
_MODEL_SPLIT = {
  # batch norm (alexnet_bn): scale, offset ('bias') and running mean and var per output channel, split like the bias
  "conv": {
    "kernel": P(None, None, None, "model"),
    "bias": P("model"),
    "scale": P("model"),
    "mean": P("model"),
    "var": P("model"),
  },
  "fc6": {"kernel": P(None, "model"), "bias": P("model")},  # column-parallel
  "fc7": {"kernel": P("model", None), "bias": P()},  # row-parallel: consumes fc6's halves
  "fc8": {"kernel": P(None, "model"), "bias": P("model")},  # column-parallel: 500 classes each
}


def create_mesh(model_axis: int = 1, devices: list[jax.Device] | None = None) -> Mesh:
  """A ('data', 'model') mesh over ``devices`` (default: every device of every process)."""
  devices = list(jax.devices() if devices is None else devices)
  n = len(devices)
  if model_axis < 1 or n % model_axis:
    raise ValueError(
      f"mesh.model={model_axis} does not divide the {n} devices; use a divisor of {n} (1 = data parallel only, "
      "2 = the paper's two-GPU split)."
    )
  shape = (n // model_axis, model_axis)
  try:  # topology-aware order on TPU/GPU slices; plain order elsewhere
    from jax.experimental import mesh_utils

    grid = mesh_utils.create_device_mesh(shape, devices)
  except Exception:
    grid = np.asarray(devices).reshape(shape)
  return Mesh(grid, ("data", "model"))


def _leaf_spec(path: tuple[Any, ...], leaf: Any) -> P:
  names = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
  layer = next((n for n in names if n.startswith(("conv", "fc"))), None)
  kind = names[-1] if names else ""
  rules = _MODEL_SPLIT["conv" if layer and layer.startswith("conv") else layer] if layer else {}
  if kind not in rules or not getattr(leaf, "ndim", 0):
    return P()
  return rules[kind]


def _knob(path: tuple[Any, ...]) -> str:
  """What sets the size of the split dimension of the parameter at ``path``: fc8's outputs are the classes, every
  other split dimension scales with model.width."""
  names = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
  if "fc8" in names:
    return "fc8's outputs are model.num_classes, so use a num_classes that it divides (model.width does not change it)"
  return "choose a model.width whose channels split evenly"


def state_shardings(mesh: Mesh, abstract_state: Any) -> Any:
  """NamedShardings for a train state (or params): parameters and their velocities split over 'model' by the
  rules above, everything else replicated. With mesh.model = 1 everything is replicated."""
  model = mesh.shape["model"]

  def sharding(path, leaf):
    spec = _leaf_spec(path, leaf) if model > 1 else P()
    for dim, axis in zip(getattr(leaf, "shape", ()), spec, strict=False):
      if axis == "model" and dim % model:
        raise ValueError(
          f"mesh.model={model} does not divide dimension {dim} of {jax.tree_util.keystr(path)}: {_knob(path)}, or "
          "mesh.model=1."
        )
    return NamedSharding(mesh, spec)

  return jax.tree_util.tree_map_with_path(sharding, abstract_state)


def bytes_per_device(abstract: Any, shardings: Any) -> int:
  """The largest number of bytes any one device holds of a pytree laid out by ``shardings``."""
  per_leaf = jax.tree.map(
    lambda x, s: int(np.prod(s.shard_shape(x.shape))) * np.dtype(x.dtype).itemsize, abstract, shardings
  )
  return int(sum(jax.tree.leaves(per_leaf)))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Batches are split over 'data' on their leading axis (and replicated over 'model')."""
  return NamedSharding(mesh, P("data"))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def check_batch_size(global_batch: int, mesh: Mesh, what: str = "batch_size") -> int:
  """The per-process batch; a clear error when the global batch is not a multiple of the data-parallel devices."""
  data = mesh.shape["data"]
  if global_batch % data:
    raise ValueError(
      f"{what}={global_batch} is not a multiple of the {data} data-parallel devices (mesh 'data' axis); "
      f"use a multiple of {data}, {_nearest_multiples(global_batch, data)}."
    )
  return global_batch // jax.process_count()


def check_micro_batches(global_batch: int, accumulation_steps: int, mesh: Mesh) -> None:
  """A clear error unless ``global_batch`` splits into ``accumulation_steps`` micro-batches that each split evenly
  over the data-parallel devices (``steps.split_micro_batches``: every device holds its slice of every one)."""
  data, k = mesh.shape["data"], accumulation_steps
  if global_batch % (k * data):
    raise ValueError(
      f"batch_size={global_batch} does not split into optimizer.accumulation_steps={k} micro-batches over the {data} "
      f"data-parallel devices: it must be a multiple of {k} x {data} = {k * data}, "
      f"{_nearest_multiples(global_batch, k * data)} "
      "(or choose an accumulation_steps that divides batch_size / devices)."
    )


def _nearest_multiples(value: int, multiple: int) -> str:
  """ "e.g. 8 or 16": the positive multiples of ``multiple`` nearest ``value`` (one where only one is positive)."""
  lower, upper = (value // multiple) * multiple, -(-value // multiple) * multiple
  return f"e.g. {lower} or {upper}" if lower > 0 else f"e.g. {upper}"


def to_global(batch: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
  """This process's slice of a global batch -> one global array per key, already sharded over 'data'."""
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


def peak_memory_bytes(device=None) -> int | None:
  """The most memory ``device`` (default: this process's first) has held so far, in bytes, where its backend
  reports it (GPU, TPU; XLA:CPU reports none: None)."""
  device = device or jax.local_devices()[0]
  try:
    return (device.memory_stats() or {}).get("peak_bytes_in_use")
  except Exception:  # a backend without memory statistics
    return None
