r"""Compile the real train and eval steps for a GPU or TPU that is not here, and say what they need.

``python -m alexnet_jax.aot --config=configs/paper.py --target=h100:8 [--config.KEY=VALUE ...] [--hlo_out=PATH]``

The programs are the ones ``train.py`` runs, built by the same functions (``train.plan_state``,
``train.jit_train_step``, ``train.jit_eval_step``: the same shardings, donation and dtype policy), lowered for the
devices of a target topology (``jax.experimental.topologies``) and compiled by that target's own compiler: libtpu for
Cloud TPU, XLA:GPU with ptxas for NVIDIA GPUs. Nothing runs, and no accelerator or network is needed; only the
compilers (``make install-aot``: ``jax[tpu]``, ``jax-cuda12-plugin``/``-pjrt`` and ``nvidia-cuda-nvcc-cu12``, in
``.venv-aot``). MaxText's ``train_compile.py`` does the same for its models.

One JSON line per program (``train``, ``eval``): the per-device memory the compiler plans (arguments, outputs,
temporaries, peak) against the device's memory, flops per device where the backend reports them (TPU; XLA:GPU
reports none), and every collective in the compiled program with its count and bytes. The train program's line also
says what its input must deliver: the step time (``step_time``: the roofline from the compiler's costs on TPU, our
FLOP count at ``--mfu`` of the peak on GPU), ``images_per_sec_needed`` and ``host_cores_needed`` at the per-core
rates ``benchmark --input_only`` recorded (``input_rates``; defaults and flags otherwise). A program that does not
fit exits 1 naming its per-device need, the device's memory and the largest batch that fits.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import sys
import time
from typing import Any

from absl import flags

from alexnet_jax import cli, input_rates, step_time
from alexnet_jax.native import banners

with banners.filtered_native_stderr():  # .venv-aot's CUDA plugin says "Could not find cuda drivers" as jax loads it
  import jax  # noqa: F401

TARGET_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "targets")
GiB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
  platform: str  # 'tpu' or 'cuda'
  memory_bytes: int  # what one device has for a program (HBM per TPU chip; the GPU's memory)
  peaks: step_time.ChipPeaks  # dense FLOP/s per dtype and HBM bandwidth, for the step-time estimates
  interconnect: step_time.Interconnect  # the gradient all-reduce's bandwidth, for the time-to-train estimate
  chip_config: str = "default"  # TPU: 'megacore' where two TensorCores act as one device
  topology_prefix: str = ""  # TPU: the name libtpu knows the generation by
  target_config: str = ""  # GPU: a GpuTargetConfig in text form, in alexnet_jax/targets/


PEAKS, LINKS = step_time.PEAKS, step_time.INTERCONNECTS  # the one table of each, with their sources
CHIPS = {
  # Cloud TPU: HBM per chip from Google's Cloud TPU system-architecture pages.
  "v4": Chip("tpu", 32 * GiB, PEAKS["v4"], LINKS["v4"], "megacore", "v4"),
  "v5e": Chip("tpu", 16 * GiB, PEAKS["v5e"], LINKS["v5e"], "default", "v5e"),
  "v5p": Chip("tpu", 95 * GiB, PEAKS["v5p"], LINKS["v5p"], "megacore", "v5"),
  "v6e": Chip("tpu", 32 * GiB, PEAKS["v6e"], LINKS["v6e"], "default", "v6e"),
  # NVIDIA: device_memory_size of the target config (what the CUDA driver reports). XLA:GPU reports no cost
  # analysis, so no roofline: the step time comes from our FLOP count at an assumed MFU (--mfu).
  "h100": Chip("cuda", 84_929_347_584, PEAKS["h100"], LINKS["h100"], target_config="h100_gpu_target_config.txtpb"),
  "a100": Chip("cuda", 85_198_045_184, PEAKS["a100"], LINKS["a100"], target_config="a100_gpu_target_config.txtpb"),
}


@dataclasses.dataclass(frozen=True)
class Target:
  name: str
  chip: Chip
  devices: list[Any]
  num_hosts: int


def use_host_only() -> None:
  """Compile for the target with no local accelerator in play: unless JAX_PLATFORMS says otherwise, jax uses only
  the CPU here. Without this, on a machine with no GPU the CUDA plugin fails to initialise (its version check needs
  the CUDA runtime) and takes the 'cuda' topology with it ("topology not implemented for cuda"); on a machine with
  a GPU or TPU, compiling would otherwise also claim the local device. The target's compiler is loaded either way."""
  import jax

  if not os.environ.get("JAX_PLATFORMS"):
    jax.config.update("jax_platforms", "cpu")
  with banners.filtered_native_stderr():  # the backends start here; the plugins' banners stay off the terminal
    jax.devices()


def resolve_target(spec: str) -> Target:
  """``h100:8`` / ``a100:4`` (N GPUs of one host), ``h100:8x8`` (hosts x GPUs a host: 8 hosts of 8, 64 GPUs; XLA:GPU's
  topology ``1xHOSTSxGPUS``, one partition), ``v5e:2x2``, ``v4:2x2x1``, ``v5e:4x4`` (TPU topologies; 4 chips a host,
  so 4x4 is a 4-host pod slice; a single-host v5e/v6e has up to 8 chips). ValueError for an unknown chip or a
  malformed shape, naming the forms."""
  from jax.experimental import topologies

  use_host_only()
  kind, _, shape = spec.partition(":")
  chip = CHIPS.get(kind.lower())
  if chip is None or not shape:
    raise ValueError(f"--target={spec!r}: expected one of {sorted(CHIPS)} followed by :N (GPUs) or :AxB[xC] (TPU)")
  if chip.platform == "cuda":
    parts = shape.split("x")
    if len(parts) not in (1, 2) or not all(p.isdigit() and int(p) >= 1 for p in parts):
      raise ValueError(
        f"--target={spec!r}: a GPU target is {kind}:N (N GPUs on one host) or {kind}:HxN (H hosts of N GPUs each), "
        f"e.g. {kind}:8 or {kind}:8x8"
      )
    hosts, per_host = (1, int(parts[0])) if len(parts) == 1 else (int(parts[0]), int(parts[1]))
    with open(os.path.join(TARGET_DIR, chip.target_config)) as f:
      config = f.read()
    with banners.filtered_native_stderr():  # the plugin's "Could not find cuda drivers" on a machine without a GPU
      topology = topologies.get_topology_desc(platform="cuda", target_config=config, topology=f"1x{hosts}x{per_host}")
    devices = list(topology.devices)
    return Target(spec, chip, devices, len({d.process_index for d in devices}))
  dims = [int(d) for d in shape.split("x")]
  if len(dims) not in (2, 3) or min(dims) < 1:
    raise ValueError(f"--target={spec!r}: a TPU target is {kind}:AxB or {kind}:AxBxC")
  dims3 = (*dims, 1) if len(dims) == 2 else tuple(dims)
  chips = dims3[0] * dims3[1] * dims3[2]
  single_host_8 = len(dims) == 2 and chips == 8 and kind in ("v5e", "v6e")
  per_host = (dims3[0], dims3[1], 1) if single_host_8 else (min(2, dims3[0]), min(2, dims3[1]), 1)
  os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")  # keeps libtpu from looking for a TPU VM's metadata
  # libtpu takes /tmp/libtpu_lockfile so that two processes never drive one TPU; compiling drives none, and two
  # compiles at once (a test suite, a sweep of targets) would otherwise fail with "Internal error when accessing
  # libtpu multi-process lockfile".
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  with banners.filtered_native_stderr():  # libtpu's "could not determine TPU accelerator type" off a TPU VM
    topology = topologies.get_topology_desc(
      platform="tpu",
      topology_name=f"{chip.topology_prefix}:{shape}",
      chip_config_name=chip.chip_config,
      chips_per_host_bounds=per_host,
      num_slices=1,
      wrap=(False, False, False),
    )
  hosts = chips // (per_host[0] * per_host[1] * per_host[2])
  return Target(spec, chip, list(topology.devices), hosts)


# ---------------------------------------------------------------------------------------------------------------
# What the compiled program says about itself.
# ---------------------------------------------------------------------------------------------------------------
_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4, "f32": 4}
_DTYPE_BYTES.update({"s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16})
_ARRAY = re.compile(r"\b(pred|[suf]\d+|bf16|c64|c128|f8\w*)\[([\d,]*)\]")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(?P<shape>.+?)\s+(?P<op>[a-z][\w\-]*)\(")
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")


def _array_bytes(shape_text: str) -> list[int]:
  sizes = []
  for dtype, dims in _ARRAY.findall(shape_text):
    n = 1
    for d in filter(None, dims.split(",")):
      n *= int(d)
    sizes.append(n * _DTYPE_BYTES.get(dtype, 1))
  return sizes


_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%?(?P<name>[\w.\-]+)\s*\(.*\{\s*$")
_WHILE = re.compile(r"\bwhile\(.*\bbody=%?(?P<body>[\w.\-]+)")
_TRIP_COUNT = re.compile(r'"known_trip_count":\{"n":"(?P<n>\d+)"\}')


def loop_trip_counts(hlo_text: str) -> dict[str, int]:
  """{computation: how many times one run of the program runs it} for the bodies of the program's while loops (a
  ``lax.scan``: gradient accumulation's micro-batches), by XLA's ``known_trip_count`` (1 where it states none),
  nested loops multiplied. Computations not listed run once (or are fused into an instruction that does)."""
  parent: dict[str, tuple[str, int]] = {}  # body -> (the computation holding its while, trip count)
  current = None
  for line in hlo_text.splitlines():
    if m := _COMPUTATION.match(line):
      current = m.group("name")
    elif current and (w := _WHILE.search(line)):
      n = _TRIP_COUNT.search(line)
      parent[w.group("body")] = (current, int(n.group("n")) if n else 1)

  def times(name: str, seen=()) -> int:
    if name not in parent or name in seen:
      return 1
    holder, n = parent[name]
    return n * times(holder, (*seen, name))

  return {body: times(body) for body in parent}


def collectives(hlo_text: str) -> dict[str, dict[str, int]]:
  """{kind: {count, bytes}} of the collectives one run of a compiled program performs (per device: the bytes each
  result holds). An async pair (``all-gather-start`` / ``-done``) counts once, by the ``-done``'s shape: the result
  alone (a start's tuple also holds its operands, and on TPU a collective-permute's two u32 sync flags). One inside
  a while loop's body counts once per iteration (``loop_trip_counts``): accumulation's k micro-batches each
  all-reduce their gradients where the compiler left the reduction in the loop."""
  trips = loop_trip_counts(hlo_text)
  found: dict[str, dict[str, int]] = {}
  current = None
  for line in hlo_text.splitlines():
    if m := _COMPUTATION.match(line):
      current = m.group("name")
      continue
    m = _INSTRUCTION.match(line)
    if not m:
      continue
    op = m.group("op")
    if op.endswith("-start"):
      continue
    kind = op[: -len("-done")] if op.endswith("-done") else op
    if kind not in COLLECTIVES:
      continue
    # A plain op with a tuple shape is several collectives combined into one: all of it.
    times = trips.get(current, 1)
    entry = found.setdefault(kind, {"count": 0, "bytes": 0})
    entry["count"] += times
    entry["bytes"] += times * sum(_array_bytes(m.group("shape")))
  return found


_CUDNN_CONV = re.compile(r'custom_call_target="__cudnn\$conv(?P<kind>\w*)"')
_CONV_LABELS = re.compile(r"dim_labels=\w+_\w+->(?P<out>\w+)")
_CONV_WINDOW = re.compile(r"window=\{size=(?P<size>[\dx]+)(?:.*?stride=(?P<stride>[\dx]+))?")
_OP_NAME = re.compile(r'op_name="(?P<name>[^"]*)"')


def convolutions(hlo_text: str) -> list[dict[str, Any]]:
  """Every convolution in a compiled program's HLO, per device: XLA's ``convolution`` (TPU, CPU) and cuDNN's
  custom calls (GPU). Each as {dtype, shape, features (output channels), spatial (output height, width), window,
  stride, backward}: ``backward`` for the gradient convolutions (cuDNN's BackwardInput/-Filter, or an op JAX named
  ``transpose(...)``), so that the forward ones are each layer's own output as this device computes it."""
  found = []
  for line in hlo_text.splitlines():
    m = _INSTRUCTION.match(line)
    if not m:
      continue
    cudnn = _CUDNN_CONV.search(line) if m.group("op") == "custom-call" else None
    if m.group("op") != "convolution" and not cudnn:
      continue
    labels, window = _CONV_LABELS.search(line), _CONV_WINDOW.search(line)
    arrays = _ARRAY.findall(m.group("shape"))
    if not (labels and window and arrays):
      continue
    dtype, dims = arrays[0]
    shape = tuple(int(d) for d in filter(None, dims.split(",")))
    out = labels.group("out")
    op_name = _OP_NAME.search(line)
    backward = "transpose(" in (op_name.group("name") if op_name else "")
    if cudnn:
      backward = backward or cudnn.group("kind").startswith("Backward")
    found.append(
      {
        "dtype": dtype,
        "shape": shape,
        "features": shape[out.index("f")],
        "spatial": (shape[out.index("0")], shape[out.index("1")]),
        "window": window.group("size"),
        "stride": window.group("stride") or "1x1",
        "backward": backward,
      }
    )
  return found


def _what(target: Target, program: str, mesh, batch_size: int, dtype: str) -> dict[str, Any]:
  """The fields that say which program a row is about (every row has them, compiled or refused)."""
  return {
    "target": target.name,
    "program": program,
    "num_devices": len(target.devices),
    "num_hosts": target.num_hosts,
    "mesh": dict(mesh.shape),
    "batch_size": batch_size,
    "dtype": dtype,
  }


def describe(compiled, target: Target, program: str, mesh, batch_size: int, dtype: str, seconds: float) -> dict:
  memory = compiled.memory_analysis()
  argument, output = int(memory.argument_size_in_bytes), int(memory.output_size_in_bytes)
  temp, alias = int(memory.temp_size_in_bytes), int(memory.alias_size_in_bytes)
  peak = int(getattr(memory, "peak_memory_in_bytes", 0) or 0) or argument + output - alias + temp
  cost = compiled.cost_analysis()
  if isinstance(cost, list):
    cost = cost[0] if cost else None
  flops = cost.get("flops") if cost else None
  accessed = cost.get("bytes accessed") if cost else None
  return {
    **_what(target, program, mesh, batch_size, dtype),
    "argument_bytes": argument,
    "output_bytes": output,
    "alias_bytes": alias,
    "temp_bytes": temp,
    "peak_bytes": peak,
    "device_memory_bytes": target.chip.memory_bytes,
    "fits": peak <= target.chip.memory_bytes,
    "flops_per_device": float(flops) if flops is not None else None,
    "bytes_accessed_per_device": float(accessed) if accessed is not None else None,
    "collectives": collectives(compiled.as_text()),
    **roofline(target.chip, dtype, flops, accessed),
    "compile_seconds": round(seconds, 2),
  }


def roofline(chip: Chip, dtype: str, flops: float | None, accessed: float | None) -> dict[str, Any]:
  """``roofline_seconds`` and ``roofline_bound`` from the compiler's cost analysis (``step_time.roofline``: the
  longer of the FLOPs at the chip's dense peak for ``dtype`` and the bytes at its HBM bandwidth; an estimate, not a
  measurement). Null where the backend reports no cost analysis (XLA:GPU)."""
  estimate = step_time.roofline(chip.peaks, dtype, flops, accessed)
  if estimate is None:
    return {"roofline_seconds": None, "roofline_bound": None}
  return {"roofline_seconds": estimate.seconds, "roofline_bound": estimate.bound}


def abstract_model(config):
  """The configured network built abstractly (``nnx.eval_shape``: shapes, no arrays), whatever the target."""
  from flax import nnx

  from alexnet_jax import model as model_lib

  m = config.model
  return nnx.eval_shape(
    lambda: model_lib.AlexNet(
      m.name, num_classes=m.num_classes, image_size=m.image_size or None, width=m.width, rngs=nnx.Rngs(0)
    )
  )


def train_flops_per_image(config) -> int:
  """Our own FLOP count of one image through the configured network's train step (``step_time``)."""
  return step_time.train_flops_per_image(abstract_model(config))


def param_bytes_per_device(config) -> int:
  """Float32 bytes of the parameters one device holds (all of them, over ``mesh.model``): the gradient all-reduce's
  buffer where there is no compiled HLO to read it from."""
  import jax
  from flax import nnx

  params = nnx.state(abstract_model(config), nnx.Param)
  return 4 * sum(int(x.size) for x in jax.tree.leaves(params)) // config.mesh.model


def gradient_all_reduce_bytes(row: dict, param_bytes: int) -> tuple[float, str]:
  """(bytes, where they came from): the gradient reduction's buffer per device and step (a reduction left inside
  accumulation's micro-batch loop counts once per micro-batch: ``collectives``). From the compiled HLO where the row
  has its collectives: the all-reduces' result bytes and, data parallel, each reduce-scatter's result x the
  data-parallel devices (its whole buffer; the all-gather that follows it is the ring's second half). Under
  ``mesh.model`` > 1 the reduce-scatters and all-gathers are the model split's activation exchanges (not counted;
  its all-reduces, mostly the gradients', are). Otherwise (a program the compiler refused) ``param_bytes``: every
  parameter this device holds, in float32."""
  found = row.get("collectives")
  if found is None:
    return float(param_bytes), "parameter bytes (float32 gradients; no compiled HLO to read)"
  total = found.get("all-reduce", {}).get("bytes", 0)
  if row["mesh"]["model"] > 1:
    return float(total), "compiled HLO: all-reduce result bytes (the model split's other exchanges not counted)"
  total += row["mesh"]["data"] * found.get("reduce-scatter", {}).get("bytes", 0)
  return float(total), "compiled HLO: all-reduce result bytes + reduce-scatter result bytes x data devices"


def train_step_estimate(row: dict, chip: Chip, flops_per_image: int, mfu: float, **communication):
  """``step_time.train_step_time`` for a compiled train row: its reported costs (TPU) or ``flops_per_image`` x the
  batch per device at ``mfu`` (GPU); ``communication``: the all-reduce's bytes and bandwidth, when counted."""
  return step_time.train_step_time(
    chip.peaks,
    row["dtype"],
    own_flops_per_device=flops_per_image * row["batch_size"] / row["num_devices"],
    mfu=mfu,
    reported_flops_per_device=row["flops_per_device"],
    reported_bytes_per_device=row["bytes_accessed_per_device"],
    **communication,
  )


def time_to_train(
  row: dict, chip: Chip, flops_per_image: int, param_bytes: int, mfu: float, epochs: float
) -> dict[str, Any]:
  """The train row's estimate of the time to train (``step_time``): the step of ``needs`` (roofline or MFU) plus the
  gradient all-reduce (``gradient_all_reduce_bytes`` x 2(n-1)/n over the target's ``all_reduce_bandwidth``, n the
  data-parallel devices), summed; images/s and the seconds of ``epochs`` epochs of ImageNet's 1,281,167 images.
  Every figure an estimate, its sources in ``estimate_sources``."""
  data, hosts = row["mesh"]["data"], row["num_hosts"]
  buffer, buffer_source = gradient_all_reduce_bytes(row, param_bytes)
  sent = step_time.ring_all_reduce_bytes(buffer, data)
  bandwidth = step_time.all_reduce_bandwidth(chip.interconnect, hosts, row["num_devices"] // hosts)
  step = train_step_estimate(
    row, chip, flops_per_image, mfu, all_reduce_bytes_per_device=sent, interconnect_bytes_per_second=bandwidth
  )
  total = step_time.time_to_train(step, row["batch_size"], epochs)
  compute = (
    f"roofline: libtpu's FLOPs at {chip.peaks.flops(row['dtype']) / 1e12:g} TFLOP/s, bytes at "
    f"{chip.peaks.hbm_bytes_per_second / 1e9:g} GB/s HBM"
    if step.basis == "roofline"
    else f"mfu: {flops_per_image:,} train FLOPs an image (our count) over {mfu:g} x "
    f"{chip.peaks.flops(row['dtype']) / 1e12:g} TFLOP/s {row['dtype']} peak"
  )
  network = (
    f"min(device link, {row['num_devices'] // hosts} x {chip.interconnect.network_bytes_per_second_per_device / 1e9:g}"
    " GB/s network a GPU)"
    if hosts > 1 and chip.interconnect.network_bytes_per_second_per_device
    else "device link"
  )
  return {
    "epochs": epochs,
    "compute_seconds_estimate": step.seconds - step.communication_seconds,
    "gradient_all_reduce_bytes": buffer,
    "all_reduce_sent_bytes_per_device": sent,
    "all_reduce_bytes_per_second": bandwidth,
    "communication_seconds_estimate": step.communication_seconds,
    "step_seconds_estimate": step.seconds,
    "images_per_sec_estimate": round(total.images_per_sec, 1),
    "train_steps": total.steps,
    "time_to_train_seconds_estimate": round(total.seconds, 1),
    "estimate_sources": {
      "compute": compute,
      "gradient_bytes": buffer_source,
      "ring_factor": f"2(n-1)/n, n = {data} data-parallel devices",
      "bandwidth": f"{network}: {chip.interconnect.source}",
      "overlap": "none: compute and communication summed (conservative; XLA may overlap them)",
      "steps": f"{epochs:g} epochs x (1,281,167 // {row['batch_size']}) steps, rounded",
    },
  }


def needs(row: dict, chip: Chip, flops_per_image: int, mfu: float, rates: dict[str, Any]) -> dict[str, Any]:
  """What a train program's row adds: the step time (``step_time.train_step_time``: the roofline where the row has
  the compiler's costs, else ``flops_per_image`` x the batch per device at ``mfu`` of the chip's peak), the input
  rate that keeps the devices busy (``images_per_sec_needed``, all hosts together) and the host cores that feed it
  at ``rates``' per-core rates (``input_rates.load``): ``host_cores_needed`` per host, ``host_cores_needed_total``
  over all hosts, with the rates and where they came from."""
  step = train_step_estimate(row, chip, flops_per_image, mfu)
  rate = step_time.images_per_sec_needed(row["batch_size"], step)
  per_host = input_rates.cores_needed(rate, rates, row["num_hosts"])
  total = input_rates.cores_needed(rate, rates)
  return {
    **step_time.describe(step, mfu),
    "images_per_sec_needed": round(rate, 1),
    "host_cores_needed": {k: round(v, 2) for k, v in per_host.items()},
    "host_cores_needed_total": {k: round(v, 2) for k, v in total.items()},
    "input_images_per_sec_per_core": {k: rates[k] for k in per_host},
    "input_rates_source": rates["source"],
  }


def input_rates_for(jpeg: float | None, pixels: float | None) -> dict[str, Any]:
  """The per-core input rates (``input_rates.load``), each replaced by its flag where one was given. ValueError for
  a rate that is not positive, or a record that is no record."""
  rates = input_rates.load()
  for pipeline, given in (("jpeg", jpeg), ("pixels", pixels)):
    if given is None:
      continue
    if not given > 0:
      raise ValueError(f"--{pipeline}_images_per_sec_per_core must be positive, got {given}")
    rates[pipeline], rates["source"][pipeline] = float(given), f"--{pipeline}_images_per_sec_per_core"
  return rates


_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGT])i?B?\b")


def describe_out_of_memory(
  error: str, target: Target, program: str, mesh, batch_size: int, dtype: str, argument_bytes: int, seconds: float
) -> dict:
  """The row for a program the compiler refused for lack of memory (libtpu: RESOURCE_EXHAUSTED): the need is the
  arguments' bytes per device plus the first size the compiler's message names (its temporaries, or what it used)."""
  m = _SIZE.search(error.split("RESOURCE_EXHAUSTED", 1)[-1])
  temp = int(float(m.group(1)) * 1024 ** "KMGT".index(m.group(2)) * 1024) if m else None
  return {
    **_what(target, program, mesh, batch_size, dtype),
    "argument_bytes": argument_bytes,
    "output_bytes": None,
    "alias_bytes": None,
    "temp_bytes": temp,
    "peak_bytes": argument_bytes + temp if temp is not None else None,
    "device_memory_bytes": target.chip.memory_bytes,
    "fits": False,
    "flops_per_device": None,
    "bytes_accessed_per_device": None,
    "collectives": None,
    "roofline_seconds": None,
    "roofline_bound": None,
    "compile_seconds": round(seconds, 2),
    "compiler_error": error.strip().splitlines()[0][:500],
  }


# ---------------------------------------------------------------------------------------------------------------
# The programs: built by train.py's own functions.
# ---------------------------------------------------------------------------------------------------------------
def compile_source(config):
  """The input a real run would feed (shapes, dtypes, on-device preprocessing), without reading any data."""
  from alexnet_jax.data.pipeline import AugmentedSource
  from alexnet_jax.data.sources import default_image_size
  from alexnet_jax.data.synthetic import SyntheticSource

  image_size = config.model.image_size or default_image_size(config.model.name)
  if config.data.source == "synthetic":
    return SyntheticSource(
      num_classes=config.model.num_classes,
      image_size=image_size,
      num_train_examples=1,
      num_eval_examples=1,
      learnable=False,
      seed=0,
      normalize=config.data.normalize,
      subtract_mean=config.data.subtract_mean,
    )
  d = config.data
  return AugmentedSource.for_compile(
    image_size=image_size,
    crop_fraction=d.crop_fraction or None,
    subtract_mean=d.subtract_mean,
    normalize=d.normalize,
    device_preprocess=d.device_preprocess,
    eval_crops=d.eval_crops,
  )


# The MFU assumed where the compiler reports no costs (GPUs): one NVIDIA H200, jax 0.11.2, the paper's network in
# bfloat16 reached 11.1% at batch 128, 15.0% at 512, 16.1% at 2048 (benchmarks/RESULTS.md, "GPU";
# benchmarks/accelerator_check.py).
DEFAULT_MFU = 0.15
IMAGENET_TRAIN_EXAMPLES = step_time.IMAGENET_TRAIN_EXAMPLES  # the schedule's epoch length (a scalar in the program)


def compile_programs(config, target: Target, programs=("train", "eval")) -> list[tuple[dict, Any]]:
  """[(description, compiled program)] for each of ``programs``, built exactly as train.py builds them."""
  import jax

  from alexnet_jax import checkpoint as checkpoint_lib
  from alexnet_jax import parallel, steps, train

  mesh = parallel.create_mesh(config.mesh.model, devices=target.devices)
  parallel.check_batch_size(config.batch_size, mesh, "batch_size")
  parallel.check_batch_size(config.eval_batch_size, mesh, "eval_batch_size")
  source = compile_source(config)
  plan = train.plan_state(config, mesh)
  state = checkpoint_lib.abstract_with_shardings(plan.abstract, plan.shardings)
  steps_per_epoch, total, _ = train.schedule_steps(config, max(1, IMAGENET_TRAIN_EXAMPLES // config.batch_size))
  lr_schedule = train.make_lr_schedule(config, steps_per_epoch, total)

  def batch(size: int, training: bool):
    spec = source.batch_spec(size, train=training)
    sharding = parallel.batch_sharding(mesh)
    return {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=sharding) for k, v in spec.items()}

  results = []
  for program in programs:
    started = time.perf_counter()
    if program == "train":
      step = train.jit_train_step(
        plan.graphdef, plan.tx, lr_schedule, source.preprocess, mesh, plan.shardings, **train.train_step_options(config)
      )
      args, size = (state, batch(config.batch_size, True)), config.batch_size
    else:
      step = train.jit_eval_step(plan.graphdef, source.preprocess, mesh, steps.model_variables(plan.shardings))
      args, size = (steps.model_variables(state), batch(config.eval_batch_size, False)), config.eval_batch_size
    try:
      compiled = step.lower(*args).compile()
    except jax.errors.JaxRuntimeError as e:
      if "RESOURCE_EXHAUSTED" not in str(e):
        raise
      arguments = parallel.bytes_per_device(args, jax.tree.map(lambda a: a.sharding, args))
      seconds = time.perf_counter() - started
      row = describe_out_of_memory(str(e), target, program, mesh, size, config.model.dtype, arguments, seconds)
      results.append((row, None))
      continue
    seconds = time.perf_counter() - started
    row = describe(compiled, target, program, mesh, size, config.model.dtype, seconds)
    if program == "train":
      row = count_loop_costs(row, target.chip, config)
    results.append((row, compiled))
  return results


def count_loop_costs(row: dict, chip: Chip, config) -> dict:
  """``row`` with the cost analysis's FLOPs and bytes x k where it counted gradient accumulation's micro-batch loop
  once. With ``optimizer.accumulation_steps`` = k > 1 the step is a ``lax.scan`` over k micro-batches, and libtpu
  0.0.42's cost analysis counts a while loop's body once (measured: the same FLOPs for 32K on 16 v5e chips with
  k = 16 as for 32K on 256 chips without it). Judged against our own FLOP count of the step, not assumed: the
  reported FLOPs are scaled only when they are nearer 1/k of it than all of it, so a cost analysis that counts the
  loop is left alone. The update outside the loop is then counted k times too (it reads and writes the parameters
  and the velocity and reads the gradients: ~1.2 GB of the 15.2 GB a v5e chip's AlexNet-BN step at 128 images
  moves), so the roofline errs long.
  ``cost_analysis_loop_scale`` says which was done."""
  k = int(config.optimizer.accumulation_steps)
  flops = row.get("flops_per_device")
  if k == 1 or not flops:
    return row
  own = train_flops_per_image(config) * row["batch_size"] / row["num_devices"]
  scale = k if abs(math.log(flops * k / own)) < abs(math.log(flops / own)) else 1
  row = {**row, "cost_analysis_loop_scale": scale}
  if scale > 1:
    row["flops_per_device"] = flops * scale
    row["bytes_accessed_per_device"] = row["bytes_accessed_per_device"] * scale
    row.update(roofline(chip, row["dtype"], row["flops_per_device"], row["bytes_accessed_per_device"]))
  return row


def largest_fitting_batch(config, target: Target, program: str, need: dict) -> int | None:
  """The largest batch (a multiple of the data-parallel devices) whose ``program`` fits. Peak memory is affine in
  the batch, so two compiles at batches that fit predict it, and a third checks the prediction (stepping down if it
  was optimistic). The two probes are small (a few dozen examples per device), whatever batch was asked for."""
  key = "batch_size" if program == "train" else "eval_batch_size"
  data = len(target.devices) // config.mesh.model
  probe = config.copy_and_resolve_references()

  def compile_at(batch: int) -> dict:
    probe[key] = batch
    return compile_programs(probe, target, (program,))[0][0]

  small = max(data, min(need["batch_size"] // 2, 32 * data) // data * data)
  at_small = compile_at(small)
  while not at_small["fits"]:  # even a few examples per device do not fit: halve down to one per device
    if small == data:
      return None
    small = max(data, small // 2 // data * data)
    at_small = compile_at(small)
  at_double = compile_at(2 * small) if 2 * small < need["batch_size"] else need
  if at_double["peak_bytes"] is None or at_double["batch_size"] == small:
    return small
  per_example = (at_double["peak_bytes"] - at_small["peak_bytes"]) / (at_double["batch_size"] - small)
  fixed = at_small["peak_bytes"] - per_example * small
  if per_example <= 0:
    return None
  guess = min(int((target.chip.memory_bytes - fixed) // per_example) // data * data, need["batch_size"] - data)
  for _ in range(4):
    if guess <= small:
      return small
    if compile_at(guess)["fits"]:
      return guess
    guess = int(guess * 0.95) // data * data
  return small


# ---------------------------------------------------------------------------------------------------------------
# Command line.
# ---------------------------------------------------------------------------------------------------------------
def define_flags() -> None:
  from ml_collections import config_flags

  config_flags.DEFINE_config_file("config", None, "A config file (configs/NAME.py); override keys with --config.KEY.")
  flags.DEFINE_string("target", None, "h100:N, h100:HOSTSxN, a100:N, v4:2x2x1, v5e:2x2, v5e:2x4, v5e:16x16, ...")
  flags.DEFINE_string("hlo_out", None, "Write the compiled train step's HLO text here.")
  flags.DEFINE_list("programs", ["train", "eval"], "Which programs to compile: train, eval or both.")
  flags.DEFINE_float(
    "mfu",
    DEFAULT_MFU,
    "Model-FLOPs utilisation assumed where the compiler reports no costs (GPUs), for the train step's time: "
    "0.15 was measured on one NVIDIA H200, paper net, bfloat16, batch 512 (benchmarks/RESULTS.md, 'GPU').",
  )
  flags.DEFINE_float(
    "epochs", None, "Epochs of ImageNet (1,281,167 images) for time_to_train_seconds_estimate (default: num_epochs)."
  )
  flags.DEFINE_float("jpeg_images_per_sec_per_core", None, "Input rate per host core, JPEG shards (default: recorded).")
  flags.DEFINE_float(
    "pixels_images_per_sec_per_core", None, "Input rate per host core, pixel shards (default: recorded)."
  )
  flags.mark_flags_as_required(["config", "target"])


def main(argv: list[str]) -> int:
  del argv
  f = flags.FLAGS
  from alexnet_jax import config_lib

  config = f.config
  try:
    config_lib.validate(config)
    target = resolve_target(f.target)
    unknown = set(f.programs) - {"train", "eval"}
    if unknown or not f.programs:
      raise ValueError(f"--programs={','.join(f.programs)}: name train, eval or both")
    if not 0.0 < f.mfu <= 1.0:
      raise ValueError(f"--mfu={f.mfu}: a fraction of the peak, in (0, 1]")
    rates = input_rates_for(f.jpeg_images_per_sec_per_core, f.pixels_images_per_sec_per_core)
    epochs = config.num_epochs if f.epochs is None else f.epochs
    if not epochs > 0:
      raise ValueError(f"--epochs={epochs}: a positive number of epochs (default: the config's num_epochs)")
    if config.batch_size > IMAGENET_TRAIN_EXAMPLES:
      raise ValueError(f"--config.batch_size={config.batch_size} is larger than ImageNet's {IMAGENET_TRAIN_EXAMPLES}")
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  try:
    compiled = compile_programs(config, target, tuple(f.programs))
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  flops_per_image, param_bytes = train_flops_per_image(config), param_bytes_per_device(config)
  for result, _ in compiled:
    if result["program"] == "train":
      result.update(needs(result, target.chip, flops_per_image, f.mfu, rates))
      result.update(time_to_train(result, target.chip, flops_per_image, param_bytes, f.mfu, epochs))
    print(json.dumps(result), flush=True)
  train_program = next((c for r, c in compiled if r["program"] == "train"), None)
  if f.hlo_out and train_program is not None:
    from alexnet_jax import storage

    with storage.open(f.hlo_out, "w") as out:
      out.write(train_program.as_text())
  status = 0
  for result, _ in compiled:
    if result["fits"]:
      continue
    fits = largest_fitting_batch(config, target, result["program"], result)
    key = "batch_size" if result["program"] == "train" else "eval_batch_size"
    advice = f"the largest {key} that fits is {fits}" if fits else "no batch size fits: use more devices"
    need = (
      f"needs {result['peak_bytes'] / GiB:.2f} GiB per device"
      if result["peak_bytes"] is not None
      else f"does not fit ({result['compiler_error']})"
    )
    print(
      f"error: the {result['program']} step at {key}={result['batch_size']} {need}; a {f.target.split(':')[0]} "
      f"device has {target.chip.memory_bytes / GiB:.2f} GiB: {advice}.",
      file=sys.stderr,
    )
    status = 1
  return status


def run() -> None:
  define_flags()
  cli.run(main)


if __name__ == "__main__":
  run()
