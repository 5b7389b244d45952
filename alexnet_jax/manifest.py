"""WORKDIR/run.json: what ran, on what, with which versions (rewritten at every start)."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import subprocess
import time
from typing import Any

import jax
import ml_collections

from alexnet_jax import config_lib, storage

PACKAGES = (
  "jax",
  "jaxlib",
  "flax",
  "optax",
  "orbax-checkpoint",
  "clu",
  "ml-collections",
  "numpy",
  "tensorflow",
  "tensorflow-cpu",
  "tensorflow-datasets",
)


def _git_sha() -> str | None:
  try:
    out = subprocess.run(
      ["git", "rev-parse", "HEAD"],
      cwd=os.path.dirname(os.path.abspath(__file__)),
      capture_output=True,
      text=True,
      timeout=10,
      check=True,
    )
    return out.stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return None


def write_manifest(workdir: str, config: ml_collections.ConfigDict, **extra: Any) -> None:
  """WORKDIR/run.json (process 0 only): the config, ``extra``, package versions, devices and the git commit."""
  if jax.process_index() != 0:
    return
  versions = {}
  for pkg in PACKAGES:
    try:
      versions[pkg] = importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
      pass
  manifest = {
    "config": config_lib.to_json(config),
    **extra,
    "versions": versions,
    "python": platform.python_version(),
    "devices": [str(d) for d in jax.devices()],
    "device_kind": jax.devices()[0].device_kind,
    "num_devices": jax.device_count(),
    "process_count": jax.process_count(),
    "git_sha": _git_sha(),
    "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
  }
  with storage.open(storage.join(workdir, "run.json"), "w") as f:
    json.dump(manifest, f, indent=2)
