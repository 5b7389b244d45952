"""JAX's multi-controller runtime: one process per host, the mesh spanning every device of every process."""

from __future__ import annotations

import os

import jax
from absl import logging


def initialize(coordinator_address: str | None, num_processes: int | None, process_id: int | None) -> None:
  """Explicit flags win; otherwise the cluster's own environment (TPU pod, SLURM, GKE, Open MPI); otherwise one
  process. CPU runs with several processes use gloo collectives."""
  explicit = (coordinator_address, num_processes, process_id)
  if any(v is not None for v in explicit):
    if any(v is None for v in explicit):
      raise ValueError("--coordinator_address, --num_processes and --process_id go together: give all three.")
    if jax.config.jax_platforms in (None, "", "cpu") or os.environ.get("JAX_PLATFORMS", "") == "cpu":
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
  elif _in_cluster():
    jax.distributed.initialize()
  else:
    return
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
