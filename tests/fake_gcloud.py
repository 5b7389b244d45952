#!/usr/bin/env python3
"""A stand-in for `gcloud compute tpus ...` (what launch/tpu_pod.sh calls): a TPU slice of FAKE_TPU_WORKERS workers
that are local processes, each in its own home folder under FAKE_GCLOUD_DIR, with a TPU VM's environment as far as
JAX on a CPU can use one.

The environment of each worker's command: JAX_FORCE_TPU_INIT=1 (JAX's own switch: treat this host as a Cloud TPU
VM, so jax._src.cloud_tpu_init.running_in_cloud_tpu_vm is True), and the variables JAX's TPU cluster detection
reads in a GKE TPU pod (TPU_WORKER_ID, TPU_WORKER_HOSTNAMES, MEGASCALE_*; jax/_src/clusters/cloud_tpu_cluster.py).
A real TPU VM answers the same questions from its metadata server, which JAX only asks on a host with TPU chips;
here each worker has JAX_PLATFORMS=cpu and FAKE_TPU_DEVICES fake CPU devices.

Commands: tpu-vm create|describe|delete|scp|ssh, queued-resources create|describe|delete. State lives in
FAKE_GCLOUD_DIR/state.json; every call is appended to FAKE_GCLOUD_DIR/calls.log. FAKE_TPU_STATE=PREEMPTED makes the
slice's next describe say PREEMPTED once (a spot slice taken back).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

ROOT = os.environ["FAKE_GCLOUD_DIR"]
WORKERS = int(os.environ.get("FAKE_TPU_WORKERS", "2"))
STATE = os.path.join(ROOT, "state.json")


def load() -> dict:
  if os.path.exists(STATE):
    with open(STATE) as f:
      return json.load(f)
  return {"tpus": {}, "queued": {}}


def save(state: dict) -> None:
  with open(STATE, "w") as f:
    json.dump(state, f)


def flag(args: list[str], name: str, default: str | None = None) -> str | None:
  for a in args:
    if a.startswith(f"--{name}="):
      return a.split("=", 1)[1]
  return default


def home(worker: int) -> str:
  path = os.path.join(ROOT, f"worker{worker}")
  os.makedirs(path, exist_ok=True)
  return path


def worker_env(worker: int, port: str) -> dict[str, str]:
  env = {k: v for k, v in os.environ.items() if not k.startswith(("FAKE_", "SLURM_", "OMPI_"))}
  env.update(
    HOME=home(worker),
    JAX_FORCE_TPU_INIT="1",
    TPU_WORKER_ID=str(worker),
    TPU_WORKER_HOSTNAMES=",".join(["localhost"] * WORKERS),
    MEGASCALE_COORDINATOR_ADDRESS="localhost",
    MEGASCALE_NUM_SLICES="1",
    MEGASCALE_SLICE_ID="0",
    JAX_COORDINATOR_PORT=port,
    JAX_PLATFORMS="cpu",
    XLA_FLAGS=" ".join(
      [f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f]
      + [f"--xla_force_host_platform_device_count={os.environ.get('FAKE_TPU_DEVICES', '4')}"]
    ),
  )
  return env


def ssh(args: list[str]) -> int:
  command = flag(args, "command")
  worker = flag(args, "worker", "0")
  workers = range(WORKERS) if worker == "all" else [int(worker)]
  port = os.environ.get("FAKE_TPU_PORT", "8482")  # JAX's coordinator port (its default on TPU: 8482)
  procs = [subprocess.Popen(["bash", "-c", command], cwd=home(w), env=worker_env(w, port)) for w in workers]
  return max(p.wait() for p in procs)


def main(argv: list[str]) -> int:
  with open(os.path.join(ROOT, "calls.log"), "a") as f:
    f.write(json.dumps(argv) + "\n")
  if argv[:3] != ["compute", "tpus", "tpu-vm"] and argv[:3] != ["compute", "tpus", "queued-resources"]:
    print(f"fake gcloud: not supported: {argv}", file=sys.stderr)
    return 2
  kind, verb, rest = argv[2], argv[3], argv[4:]
  name = rest[0] if rest else ""
  if verb == "ssh":  # runs for minutes, in parallel with other calls: touches no state
    return ssh(rest)
  state = load()
  try:
    if kind == "queued-resources":
      if verb == "create":
        state["queued"][name] = {"polls": 0, "node": flag(rest, "node-id")}
      elif verb == "describe":
        q = state["queued"][name]
        q["polls"] += 1
        if q["polls"] >= 2:  # WAITING_FOR_RESOURCES first, ACTIVE on the second look
          state["tpus"][q["node"]] = {"state": "READY"}
          print("ACTIVE")
        else:
          print("WAITING_FOR_RESOURCES")
      elif verb == "delete":
        q = state["queued"].pop(name)
        state["tpus"].pop(q["node"], None)
      return 0
    if verb == "create":
      state["tpus"][name] = {"state": "READY", "spot": "--spot" in rest}
    elif verb == "delete":
      state["tpus"].pop(name)
    elif verb == "describe":
      if name not in state["tpus"]:
        print(f"ERROR: (gcloud.compute.tpus.tpu-vm.describe) NOT_FOUND: {name}", file=sys.stderr)
        return 1
      if os.environ.get("FAKE_TPU_STATE") and not state["tpus"][name].get("was_preempted"):
        state["tpus"][name].update(state=os.environ["FAKE_TPU_STATE"], was_preempted=True)
      tpu = state["tpus"][name]
      if flag(rest, "format") == "json":
        print(json.dumps({"state": tpu["state"], "networkEndpoints": [{"ipAddress": "127.0.0.1"}] * WORKERS}))
      else:
        print(tpu["state"])
    elif verb == "scp":
      src, dst = rest[0], rest[1].split(":", 1)[1]
      shutil.copy(src, dst)  # the local "workers" share this machine's /tmp
    elif verb == "ssh":
      return ssh(rest)
    return 0
  finally:
    save(state)


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
