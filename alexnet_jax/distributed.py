"""JAX's multi-controller runtime: one process per host (or per GPU), the mesh spanning every device of every process.

Who the other processes are comes from, in this order:

- ``--coordinator_address --num_processes --process_id``: the flags.
- A Cloud TPU VM slice or a GKE TPU pod (JAX found TPU chips): ``jax.distributed.initialize()`` with no arguments,
  as JAX's guide says; JAX reads the TPU VM's metadata server (or GKE's ``TPU_WORKER_HOSTNAMES``/``TPU_WORKER_ID``).
- Open MPI (``mpirun`` with more than one rank, also inside a SLURM allocation: JAX's own order, Open MPI before
  SLURM, jax/_src/clusters/__init__.py): JAX's detection; for Open MPI 5, which JAX does not detect, rank and size
  from ``OMPI_COMM_WORLD_RANK/SIZE`` and the coordinator from ``JAX_COORDINATOR_ADDRESS``.
- SLURM (``srun`` with more than one task): JAX's SLURM detection (the coordinator: the step's first node).
- ``JAX_COORDINATOR_ADDRESS`` alone: ``jax.distributed.initialize()``.
- None of these: one process.

Local devices (``local_device_ids``, which only GPUs heed: JAX turns it into the visible CUDA/ROCm devices): on TPU
every chip of the host; elsewhere every device of the host when it runs one process (SLURM's tasks on this node,
Open MPI's local size, or no scheduler); when the scheduler runs several processes on the host, ``[local rank]`` if
each sees every GPU, but every visible device if the scheduler bound GPUs to tasks (``CUDA_VISIBLE_DEVICES`` or
``HIP_VISIBLE_DEVICES`` listing fewer GPUs than the host's processes, e.g. SLURM's ``--gpus-per-task=1``, which
implies ``--gpu-bind=per_task``: each task sees only its own GPU, as device 0).
JAX itself assumes one process per GPU under SLURM and Open MPI (``local_device_ids=[local rank]``), so a job with
one task per node would drive one GPU of eight; here every GPU is used when the node runs one task.
``JAX_LOCAL_DEVICE_IDS=0,1,...`` (JAX's own variable) overrides the choice. One log line says what was found, with
the platform that runs.

A process other than 0 given the coordinator's address (the flags, Open MPI 5) first connects to it over TCP, for at
most ``initialization_timeout_seconds`` (JAX's own default: 300 s), and if it never answers raises ``ConnectionError``
(one ``error:`` line and exit 75 from ``alexnet_jax.main``), instead of JAX's coordination client aborting the
process (SIGABRT, 134) after that time.
"""

from __future__ import annotations

import dataclasses
import logging as logging_std
import os
import re
import socket
import time
from collections.abc import Mapping

import jax
from absl import logging


@dataclasses.dataclass(frozen=True)
class Cluster:
  """How this process finds the others: what ``jax.distributed.initialize`` is called with, and why."""

  source: str  # "flags", "Cloud TPU", "SLURM", "Open MPI", "JAX_COORDINATOR_ADDRESS"
  coordinator_address: str | None = None  # None: JAX's own detection finds it
  num_processes: int | None = None
  process_id: int | None = None
  # None: JAX's choice (on TPU: every chip; with JAX_LOCAL_DEVICE_IDS: that list); []: every (visible) device of the
  # host, no restriction (an empty list also stops JAX from filling in [local rank] itself); [i]: GPU i only.
  local_device_ids: list[int] | None = None
  local_devices: str = "every device of this host"  # for the log line


def on_cloud_tpu_vm() -> bool:
  """JAX's own answer (``import jax`` finds libtpu and TPU chips on this host: a Cloud TPU VM or a GKE TPU node)."""
  from jax._src import cloud_tpu_init

  return bool(getattr(cloud_tpu_init, "running_in_cloud_tpu_vm", False))


def detect(
  env: Mapping[str, str],
  coordinator_address: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
  tpu_vm: bool = False,
) -> Cluster | None:
  """The cluster this process runs in (None: a single process), from the flags and the environment alone."""
  explicit = (coordinator_address, num_processes, process_id)
  if any(v is not None for v in explicit):
    if any(v is None for v in explicit):
      raise ValueError("--coordinator_address, --num_processes and --process_id go together: give all three.")
    ids, local = _local_device_ids(env)
    return Cluster("flags", coordinator_address, num_processes, process_id, ids, local)
  if tpu_vm:  # a TPU VM slice (metadata) or a GKE TPU pod (environment): JAX finds the workers itself
    return Cluster("Cloud TPU", local_device_ids=None, local_devices="every TPU chip of this host")
  # Open MPI before SLURM, as JAX checks them (jax/_src/clusters/__init__.py): mpirun inside a SLURM allocation.
  if _int(env.get("OMPI_COMM_WORLD_SIZE"), 1) > 1:
    ids, local = _local_device_ids(env)
    if "OMPI_MCA_orte_hnp_uri" in env:  # Open MPI 4 and older: JAX's detection reads the launcher's address
      return Cluster("Open MPI", local_device_ids=ids, local_devices=local)
    if "JAX_COORDINATOR_ADDRESS" not in env:
      raise ValueError(
        "Open MPI 5 does not tell JAX where process 0 is: export JAX_COORDINATOR_ADDRESS=HOST:PORT (HOST: the "
        "first rank's host, PORT: a free port) to every rank, e.g. mpirun -x JAX_COORDINATOR_ADDRESS=..."
      )
    size, rank = int(env["OMPI_COMM_WORLD_SIZE"]), int(env["OMPI_COMM_WORLD_RANK"])
    return Cluster("Open MPI", env["JAX_COORDINATOR_ADDRESS"], size, rank, ids, local)
  slurm = "SLURM_JOB_ID" in env and "SLURM_STEP_NODELIST" in env and _int(env.get("SLURM_NTASKS"), 1) > 1
  if slurm:
    ids, local = _local_device_ids(env)
    return Cluster("SLURM", local_device_ids=ids, local_devices=local)
  if env.get("JAX_COORDINATOR_ADDRESS"):
    return Cluster("JAX_COORDINATOR_ADDRESS")
  return None


def _int(value: str | None, default: int) -> int:
  try:
    return int(value) if value else default
  except ValueError:
    return default


def _expand_tasks_per_node(spec: str) -> list[int]:
  """SLURM's ``2(x3),1`` -> ``[2, 2, 2, 1]``."""
  out = []
  for part in spec.split(","):
    m = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part.strip())
    if not m:
      return []
    out += [int(m.group(1))] * int(m.group(2) or 1)
  return out


def _processes_on_this_node(env: Mapping[str, str]) -> tuple[int, int] | None:
  """(processes on this host, this one's local rank), as SLURM or Open MPI say; None outside both."""
  if "OMPI_COMM_WORLD_LOCAL_SIZE" in env:
    return _int(env["OMPI_COMM_WORLD_LOCAL_SIZE"], 1), _int(env.get("OMPI_COMM_WORLD_LOCAL_RANK"), 0)
  if "SLURM_JOB_ID" in env and "SLURM_LOCALID" in env:
    per_node = _expand_tasks_per_node(env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE", ""))
    node = _int(env.get("SLURM_NODEID"), 0)
    count = per_node[node] if node < len(per_node) else _int(env.get("SLURM_NTASKS_PER_NODE"), 1)
    return count, _int(env["SLURM_LOCALID"], 0)
  return None


def _local_device_ids(env: Mapping[str, str]) -> tuple[list[int] | None, str]:
  """What to pass as ``local_device_ids`` and how to say it: every device when this host runs one process, device
  ``local rank`` when the scheduler started one process per GPU, JAX's reading of ``JAX_LOCAL_DEVICE_IDS`` if set."""
  if env.get("JAX_LOCAL_DEVICE_IDS"):
    return None, f"devices {env['JAX_LOCAL_DEVICE_IDS']} (JAX_LOCAL_DEVICE_IDS)"
  here = _processes_on_this_node(env)
  if here is None or here[0] <= 1:
    return [], "local_device_ids=[]: every device of this host (1 process on it)"
  count, rank = here
  for name in ("CUDA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES"):
    visible = [d for d in env.get(name, "").split(",") if d.strip()]
    if name in env and len(visible) < count:  # the scheduler bound GPUs to tasks (--gpus-per-task, --gpu-bind)
      return [], (
        f"local_device_ids=[]: every visible device ({name}={env[name]}: bound to this process; {count} processes on "
        "this host)"
      )
  return [rank], f"local_device_ids=[{rank}]: local rank {rank} of {count} processes on this host"


def wait_for_coordinator(address: str, timeout_seconds: float) -> None:
  """Connect to ``HOST:PORT`` over TCP until it answers; ``ConnectionError`` (a transient error: exit 75) when it has
  not within ``timeout_seconds``. A name that does not resolve yet (pod 0's DNS record) is retried too."""
  host, _, port = address.rpartition(":")
  host = host.strip("[]")  # [::1]:1234
  if not host or not port.isdigit():
    raise ValueError(f"--coordinator_address={address}: give HOST:PORT")
  deadline = time.monotonic() + timeout_seconds
  while True:
    try:
      with socket.create_connection((host, int(port)), timeout=max(0.1, min(5.0, deadline - time.monotonic()))):
        return
    except OSError as e:
      error = e
    if time.monotonic() + 1 >= deadline:
      raise ConnectionError(
        f"the coordinator {address} (process 0) did not answer within {timeout_seconds:g} s "
        f"(--initialization_timeout_seconds): {error.strerror or error}"
      )
    time.sleep(1)


def initialize(
  coordinator_address: str | None,
  num_processes: int | None,
  process_id: int | None,
  heartbeat_timeout_seconds: int = 100,
  initialization_timeout_seconds: int = 300,
) -> Cluster | None:
  """Start JAX's distributed runtime if this is a multi-process run (see the module's docstring), and log one line
  saying what was found. CPU runs with several processes use gloo collectives.

  A process that dies stops sending heartbeats; within about ``heartbeat_timeout_seconds`` JAX's coordination
  service ends every other process with "Terminating process because the JAX distributed service detected fatal
  errors", so a job never hangs on a lost peer and its scheduler (or ``launch/restart.sh``) can restart it from the
  last checkpoint. A process other than 0 that has the coordinator's address waits at most
  ``initialization_timeout_seconds`` for it to answer (``wait_for_coordinator``: ConnectionError, exit 75), and JAX
  gets the same ``initialization_timeout``.
  """
  cluster = detect(os.environ, coordinator_address, num_processes, process_id, tpu_vm=on_cloud_tpu_vm())
  if cluster is None:
    logging.info(
      "Single process (no --coordinator_address, Cloud TPU slice, SLURM or Open MPI job found): %d local devices",
      jax.local_device_count(),
    )
    return None
  if jax.config.jax_platforms in (None, "", "cpu") or os.environ.get("JAX_PLATFORMS", "") == "cpu":
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if cluster.coordinator_address and cluster.process_id not in (None, 0):
    wait_for_coordinator(cluster.coordinator_address, initialization_timeout_seconds)
  jax.distributed.initialize(
    cluster.coordinator_address,
    cluster.num_processes,
    cluster.process_id,
    local_device_ids=cluster.local_device_ids,
    initialization_timeout=initialization_timeout_seconds,
    heartbeat_timeout_seconds=heartbeat_timeout_seconds,
  )
  if jax.process_count() > 1:
    logging.get_absl_handler().addFilter(_ProcessPrefix(jax.process_index(), jax.process_count()))
  how = "the flags" if cluster.source == "flags" else f"{cluster.source}, detected"
  platform = jax.local_devices()[0].platform
  local = cluster.local_devices
  if cluster.local_device_ids and platform != "gpu":
    local += f"; not used on {platform}"  # JAX turns local_device_ids into visible GPUs, nothing else
  logging.info(
    "Process %d of %d (%s): %d local devices (%s: %s), %d in all",
    jax.process_index(),
    jax.process_count(),
    how,
    jax.local_device_count(),
    platform,
    local,
    jax.device_count(),
  )
  return cluster


class _ProcessPrefix(logging_std.Filter):
  """Prefix every log line with the process that wrote it: ``[process 1/4] ...``."""

  def __init__(self, index: int, count: int):
    super().__init__()
    self.prefix = f"[process {index}/{count}] "

  def filter(self, record: logging_std.LogRecord) -> bool:
    if not str(record.msg).startswith(self.prefix):
      record.msg = self.prefix + str(record.msg)
    return True
