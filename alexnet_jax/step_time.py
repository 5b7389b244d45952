"""One model of a train step's time, for every estimate the project makes before a run is paid for.

``python -m alexnet_jax.aot`` turns it into ``images_per_sec_needed`` (the input rate that keeps the devices busy)
and ``host_cores_needed``; ``benchmark.py`` counts FLOPs and reads device peaks from here. Two bases, chosen by
what the compiler reports:

- ``roofline`` (TPU: libtpu's cost analysis gives FLOPs and bytes accessed per device): the longer of the FLOPs at
  the chip's dense peak and the bytes at its HBM bandwidth. A lower bound on the step time: no real step beats it.
- ``mfu`` (GPU: XLA:GPU reports no cost analysis): our own FLOP count of the network (``layer_flops``, forward x 3
  for forward and backward) per device, at an assumed model-FLOPs utilisation (MFU) of the chip's dense peak for the
  compute dtype. aot's default MFU, 0.15, is what one NVIDIA H200 measured for the paper's network in bfloat16 at
  batch 512 (benchmarks/RESULTS.md, "GPU").

A gradient all-reduce term is added to either basis for aot's time-to-train estimate (issue 23): the bytes each
device sends in a ring all-reduce of the gradients (``ring_all_reduce_bytes``: 2(n-1)/n x the buffer, n the
data-parallel devices) over the bandwidth one device sends at (``all_reduce_bandwidth``, from the ``INTERCONNECTS``
table with its sources). Compute and communication are summed, not overlapped: the conservative choice (XLA can
overlap the all-reduce with the backward pass; a real step is then shorter, but never shorter than the larger of
the two terms). ``time_to_train`` turns the step into images/s and the seconds of E epochs of ImageNet.

Pure Python: no jax, flax or TensorFlow (``.venv-aot`` and the CPU tools both import it).
"""

from __future__ import annotations

import dataclasses
from typing import Any

DTYPES = ("float32", "bfloat16")
# Forward + backward FLOPs over forward FLOPs: the backward pass computes the gradients with respect to each layer's
# input and to its weights, each as many multiply-adds as the forward pass.
TRAIN_FLOPS_PER_FORWARD = 3


@dataclasses.dataclass(frozen=True)
class ChipPeaks:
  """One device's published peaks: dense matrix-unit FLOP/s (no sparsity) and HBM bandwidth."""

  bfloat16_flops: float  # FLOP/s
  float32_flops: float  # FLOP/s for float32 matmuls as JAX runs them: TF32 on NVIDIA, one bf16 pass on TPU
  hbm_bytes_per_second: float
  device_kind: str = ""  # a substring of jax's ``device_kind`` (benchmark's MFU lookup); "" where not looked up

  def flops(self, dtype: str) -> float:
    """Dense FLOP/s for compute in ``dtype`` ('float32' or 'bfloat16'); ValueError for another."""
    if dtype not in DTYPES:
      raise ValueError(f"dtype {dtype!r} is not one of {DTYPES}")
    return self.bfloat16_flops if dtype == "bfloat16" else self.float32_flops


# The one table of device peaks (aot.CHIPS and benchmark.PEAK_TFLOPS read it). NVIDIA: the H100 SXM, H200 and A100
# SXM 80GB datasheets (dense bf16 / TF32 tensor-core FLOP/s; HBM bandwidth). Cloud TPU: Google's system-architecture
# pages (bf16 per chip, HBM bandwidth per chip); JAX's default float32 matmul precision on TPU is one bf16 pass.
PEAKS: dict[str, ChipPeaks] = {
  "h100": ChipPeaks(989e12, 494e12, 3.35e12, device_kind="H100"),
  "h200": ChipPeaks(989e12, 494e12, 4.8e12, device_kind="H200"),
  "a100": ChipPeaks(312e12, 156e12, 2.039e12, device_kind="A100"),
  "v4": ChipPeaks(275e12, 275e12, 1200e9),
  "v5e": ChipPeaks(197e12, 197e12, 819e9),
  "v5p": ChipPeaks(459e12, 459e12, 2765e9),
  "v6e": ChipPeaks(918e12, 918e12, 1640e9),
}


@dataclasses.dataclass(frozen=True)
class Interconnect:
  """What one device's gradient all-reduce runs at. ``bytes_per_second``: one direction, per device, between the
  devices of one host (GPU: NVLink) or of a whole TPU slice (ICI), half the published bidirectional figure (a ring
  all-reduce sends one way on each link). ``network_bytes_per_second_per_device``: GPUs only, between hosts: the
  host's network (one NIC per GPU) per GPU, one direction. ``source``: where the figures come from."""

  bytes_per_second: float
  source: str
  network_bytes_per_second_per_device: float | None = None


# The one table of interconnect bandwidths. Cloud TPU: Google's system-architecture pages give the bidirectional ICI
# bandwidth per chip (v5e 400 GB/s, v5p 1,200, v6e 800) and the all-reduce bandwidth per 256-chip Pod (v5e 51.2
# TB/s = 200 GB/s a chip, v6e 102.4 TB/s = 400 GB/s a chip: the same one-direction figures); v4 gives only the Pod's
# all-reduce bandwidth (1.1 PB/s over 4,096 chips). NVIDIA: NVLink per GPU from the H100 SXM (900 GB/s) and A100 SXM
# (600 GB/s) datasheets, bidirectional; between hosts, the DGX/HGX reference designs' one NIC per GPU (H100: 8 x
# ConnectX-7 400 Gb/s InfiniBand = 400 GB/s a host, 50 GB/s a GPU; A100: 8 x ConnectX-6 200 Gb/s HDR = 200 GB/s a
# host, 25 GB/s a GPU).
INTERCONNECTS: dict[str, Interconnect] = {
  "h100": Interconnect(
    450e9,
    "NVLink 4: 900 GB/s bidirectional per GPU (H100 SXM datasheet), 450 GB/s each way; between hosts 8 x 400 Gb/s "
    "InfiniBand (ConnectX-7, DGX H100) = 400 GB/s a host, 50 GB/s a GPU",
    50e9,
  ),
  "a100": Interconnect(
    300e9,
    "NVLink 3: 600 GB/s bidirectional per GPU (A100 SXM datasheet), 300 GB/s each way; between hosts 8 x 200 Gb/s "
    "InfiniBand HDR (ConnectX-6, DGX A100) = 200 GB/s a host, 25 GB/s a GPU",
    25e9,
  ),
  "v4": Interconnect(1.1e15 / 4096, "v4 ICI: all-reduce bandwidth per Pod 1.1 PB/s over 4,096 chips (Cloud TPU v4)"),
  "v5e": Interconnect(200e9, "v5e ICI: 400 GB/s bidirectional per chip, 200 GB/s each way (Cloud TPU v5e page)"),
  "v5p": Interconnect(600e9, "v5p ICI: 1,200 GB/s bidirectional per chip, 600 GB/s each way (Cloud TPU v5p page)"),
  "v6e": Interconnect(400e9, "v6e ICI: 800 GB/s bidirectional per chip, 400 GB/s each way (Cloud TPU v6e page)"),
}


def all_reduce_bandwidth(link: Interconnect, num_hosts: int, devices_per_host: int) -> float:
  """Bytes/s one device sends at in a ring all-reduce over ``num_hosts`` hosts of ``devices_per_host`` devices.

  One host, or a TPU slice (its hosts' chips are all on ICI): ``link.bytes_per_second``. GPUs on several hosts: the
  smaller of NVLink and the host's network, ``devices_per_host`` x ``network_bytes_per_second_per_device`` (NCCL
  runs as many rings as the host has NICs, each crossing between hosts on its own NIC: each ring carries 1/k of the
  buffer, so the all-reduce sees the whole host's network). ValueError for fewer than one host or device."""
  if num_hosts < 1 or devices_per_host < 1:
    raise ValueError(f"need at least one host and one device a host, got {num_hosts} x {devices_per_host}")
  if num_hosts == 1 or link.network_bytes_per_second_per_device is None:
    return link.bytes_per_second
  return min(link.bytes_per_second, devices_per_host * link.network_bytes_per_second_per_device)


def ring_all_reduce_bytes(buffer_bytes: float, num_devices: int) -> float:
  """Bytes each device sends in a ring all-reduce of ``buffer_bytes`` over ``num_devices``: 2(n-1)/n x the buffer
  (a reduce-scatter and an all-gather, each (n-1)/n of it). 0 for one device. ValueError for n < 1."""
  if num_devices < 1:
    raise ValueError(f"num_devices must be at least 1, got {num_devices}")
  return 2 * (num_devices - 1) / num_devices * buffer_bytes


# -----------------------------------------------------------------------------------------------------------------
# FLOPs, counted per layer.
# -----------------------------------------------------------------------------------------------------------------
def layer_flops(model) -> dict[str, int]:
  """{layer: forward FLOPs for one image}: multiply-adds x 2 of every conv and dense layer of an ``AlexNet`` (an
  abstract one from ``nnx.eval_shape`` will do: only ``arch``, ``image_size`` and the kernels' shapes are read).
  LRN, pooling and ReLU are negligible and not counted."""
  arch, size, out = model.arch, model.image_size, {}
  for i, conv in enumerate((model.conv1, model.conv2, model.conv3, model.conv4, model.conv5)):
    k, _, cin_per_group, cout = conv.kernel.shape
    size = (size + 2 * arch.conv_paddings[i] - k) // arch.conv_strides[i] + 1
    out[f"conv{i + 1}"] = 2 * size * size * k * k * cin_per_group * cout
    if arch.pool_after[i]:
      size = (size - 3) // 2 + 1
  for name in ("fc6", "fc7", "fc8"):
    fin, fout = getattr(model, name).kernel.shape
    out[name] = 2 * fin * fout
  return out


def train_flops_per_image(model) -> int:
  """FLOPs of one image through a train step (forward and backward): ``TRAIN_FLOPS_PER_FORWARD`` x the forward
  FLOPs of ``layer_flops``. The paper's network: 4,346,440,896."""
  return TRAIN_FLOPS_PER_FORWARD * sum(layer_flops(model).values())


# -----------------------------------------------------------------------------------------------------------------
# The step time.
# -----------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class StepTime:
  """An estimate of one train step's time, not a measurement.

  ``seconds``: the step (compute or memory, plus communication); ``basis``: 'roofline' (the compiler's costs) or
  'mfu' (our FLOP count at an assumed MFU); ``bound``: 'compute' or 'memory' (roofline), 'mfu' (the MFU basis says
  nothing about what binds); ``compute_seconds``, ``memory_seconds`` (None on the MFU basis),
  ``communication_seconds`` (the all-reduce term, 0 when none was given)."""

  seconds: float
  basis: str
  bound: str
  compute_seconds: float
  memory_seconds: float | None
  communication_seconds: float = 0.0


def roofline(peaks: ChipPeaks, dtype: str, flops: float | None, bytes_accessed: float | None) -> StepTime | None:
  """The roofline step time from a compiler's cost analysis: the longer of ``flops`` (per device) at the dense peak
  for ``dtype`` and ``bytes_accessed`` (per device) at the HBM bandwidth; None where either is missing or zero
  (XLA:GPU reports none)."""
  if not (flops and bytes_accessed):
    return None
  compute, memory = float(flops) / peaks.flops(dtype), float(bytes_accessed) / peaks.hbm_bytes_per_second
  bound = "compute" if compute >= memory else "memory"
  return StepTime(max(compute, memory), "roofline", bound, compute, memory)


def train_step_time(
  peaks: ChipPeaks,
  dtype: str,
  *,
  own_flops_per_device: float,
  mfu: float,
  reported_flops_per_device: float | None = None,
  reported_bytes_per_device: float | None = None,
  all_reduce_bytes_per_device: float = 0.0,
  interconnect_bytes_per_second: float | None = None,
) -> StepTime:
  """The time of one train step on one device (all devices step together).

  Where the compiler reported costs (``reported_*``, per device), the roofline of ``roofline``; otherwise
  ``own_flops_per_device`` (``train_flops_per_image`` x the global batch / the number of devices) over ``mfu`` x the
  dense peak for ``dtype``. ``all_reduce_bytes_per_device`` (what each device sends: ``ring_all_reduce_bytes``) over
  ``interconnect_bytes_per_second`` (``all_reduce_bandwidth``) is added to either: the gradient all-reduce, assumed
  not to overlap the compute (0 when no bytes are given).

  Raises ValueError for an ``mfu`` outside (0, 1], a non-positive FLOP count on the MFU basis, or all-reduce bytes
  without a bandwidth."""
  if not 0.0 < mfu <= 1.0:
    raise ValueError(f"mfu must be in (0, 1], got {mfu}")
  if all_reduce_bytes_per_device and not interconnect_bytes_per_second:
    raise ValueError("all_reduce_bytes_per_device needs interconnect_bytes_per_second")
  communication = all_reduce_bytes_per_device / interconnect_bytes_per_second if all_reduce_bytes_per_device else 0.0
  estimate = roofline(peaks, dtype, reported_flops_per_device, reported_bytes_per_device)
  if estimate is None:
    if own_flops_per_device <= 0:
      raise ValueError(f"own_flops_per_device must be positive, got {own_flops_per_device}")
    compute = float(own_flops_per_device) / (mfu * peaks.flops(dtype))
    estimate = StepTime(compute, "mfu", "mfu", compute, None)
  return dataclasses.replace(estimate, seconds=estimate.seconds + communication, communication_seconds=communication)


def images_per_sec_needed(batch_size: int, step: StepTime) -> float:
  """The input rate that keeps every device busy: the global batch (images) over the step's seconds."""
  return batch_size / step.seconds


def describe(step: StepTime, mfu: float) -> dict[str, Any]:
  """The step time's fields in a JSON line: ``step_seconds``, ``step_time_basis``, ``mfu_assumed`` (None on the
  roofline basis, which assumes none)."""
  return {
    "step_seconds": step.seconds,
    "step_time_basis": step.basis,
    "mfu_assumed": mfu if step.basis == "mfu" else None,
  }


IMAGENET_TRAIN_EXAMPLES = 1_281_167  # ILSVRC-2012's training set


@dataclasses.dataclass(frozen=True)
class TimeToTrain:
  """An estimate, not a measurement: ``steps`` train steps of ``step_seconds`` each; ``images_per_sec`` (the global
  batch over the step) and ``seconds`` (steps x step)."""

  epochs: float
  steps: int
  step_seconds: float
  images_per_sec: float
  seconds: float


def time_to_train(
  step: StepTime, batch_size: int, epochs: float, num_train_examples: int = IMAGENET_TRAIN_EXAMPLES
) -> TimeToTrain:
  """The time of ``epochs`` passes over ``num_train_examples`` at ``step``: the steps training takes (``epochs`` x
  ``num_train_examples // batch_size``, rounded, as ``train.schedule_steps`` counts them: the last partial batch
  of an epoch is dropped) times the step's seconds. ValueError for a batch larger than the set or epochs <= 0."""
  if epochs <= 0:
    raise ValueError(f"epochs must be positive, got {epochs}")
  per_epoch = num_train_examples // batch_size
  if per_epoch < 1:
    raise ValueError(f"batch_size {batch_size} is larger than the {num_train_examples} training examples")
  steps = int(round(epochs * per_epoch))
  return TimeToTrain(epochs, steps, step.seconds, batch_size / step.seconds, steps * step.seconds)
