"""JAX's multi-controller runtime: one process per host, the mesh spanning every device of every process."""

from __future__ import annotations

import logging as logging_std
import os

import jax
from absl import logging


def initialize(
  coordinator_address: str | None,
  num_processes: int | None,
  process_id: int | None,
  heartbeat_timeout_seconds: int = 100,
) -> None:
  """Explicit flags win; otherwise the cluster's own environment (TPU pod, SLURM, GKE, Open MPI); otherwise one
  process. CPU runs with several processes use gloo collectives.

  A process that dies stops sending heartbeats; within about ``heartbeat_timeout_seconds`` JAX's coordination
  service ends every other process with "Terminating process because the JAX distributed service detected fatal
  errors", so a job never hangs on a lost peer and its scheduler (or ``launch/restart.sh``) can restart it from the
  last checkpoint.
  """
  explicit = (coordinator_address, num_processes, process_id)
  if any(v is not None for v in explicit):
    if any(v is None for v in explicit):
      raise ValueError("--coordinator_address, --num_processes and --process_id go together: give all three.")
    if jax.config.jax_platforms in (None, "", "cpu") or os.environ.get("JAX_PLATFORMS", "") == "cpu":
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
      coordinator_address, num_processes, process_id, heartbeat_timeout_seconds=heartbeat_timeout_seconds
    )
  elif _in_cluster():
    jax.distributed.initialize(heartbeat_timeout_seconds=heartbeat_timeout_seconds)
  else:
    return
  if jax.process_count() > 1:
    logging.get_absl_handler().addFilter(_ProcessPrefix(jax.process_index(), jax.process_count()))
  logging.info(
    "Process %d of %d: %d local / %d global devices",
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
  )


def _in_cluster() -> bool:
  env = os.environ
  return bool(
    (env.get("SLURM_NTASKS", "1") not in ("", "1") and "SLURM_JOB_ID" in env)
    or ("OMPI_COMM_WORLD_SIZE" in env and env["OMPI_COMM_WORLD_SIZE"] != "1")
    or "JAX_COORDINATOR_ADDRESS" in env
    or env.get("TPU_WORKER_HOSTNAMES", "").count(",") > 0
  )


class _ProcessPrefix(logging_std.Filter):
  """Prefix every log line with the process that wrote it: ``[process 1/4] ...``."""

  def __init__(self, index: int, count: int):
    super().__init__()
    self.prefix = f"[process {index}/{count}] "

  def filter(self, record: logging_std.LogRecord) -> bool:
    if not str(record.msg).startswith(self.prefix):
      record.msg = self.prefix + str(record.msg)
    return True
