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
FAKE_GCLOUD_DIR/state.json; every call is appended to FAKE_GCLOUD_DIR/calls.log.

FAKE_TPU_STATE=PREEMPTED takes the slice back once, at the next describe, as Cloud TPU does with a spot slice: a TPU
VM made by `tpu-vm create` stays and says PREEMPTED; one made by a queued resource is deleted (tpu-vm describe:
NOT_FOUND) and its queued resource goes to SUSPENDED ("The resources specified in the request have been deleted":
REST v2 QueuedResourceState, "Manage queued resources"). As in the API, a queued resource is WAITING_FOR_RESOURCES,
then ACTIVE (here: at the second describe); deleting one whose node still runs needs --force (else only in the
ACCEPTED, FAILED or SUSPENDED states); creating a name that exists, or describing or deleting one that does not,
fails (ALREADY_EXISTS, NOT_FOUND).
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


def fail(kind: str, verb: str, message: str) -> int:
  print(f"ERROR: (gcloud.compute.tpus.{kind}.{verb}) {message}", file=sys.stderr)
  return 1


def preempt(state: dict, how: str) -> None:
  """Take every slice back, once: a queued resource's node is deleted and the queued resource SUSPENDED; a TPU VM of
  its own says ``how`` (PREEMPTED)."""
  state["was_preempted"] = True
  queued_nodes = {q["node"]: q for q in state["queued"].values() if q["state"] == "ACTIVE"}
  for name in list(state["tpus"]):
    if name in queued_nodes:
      state["tpus"].pop(name)
      queued_nodes[name]["state"] = "SUSPENDED"
    else:
      state["tpus"][name]["state"] = how


def queued_resources(state: dict, verb: str, name: str, rest: list[str]) -> int:
  queued = state["queued"]
  if verb == "create":
    if name in queued:
      return fail("queued-resources", verb, f"ALREADY_EXISTS: {name}")
    queued[name] = {"state": "WAITING_FOR_RESOURCES", "polls": 0, "node": flag(rest, "node-id")}
    return 0
  if name not in queued:
    return fail("queued-resources", verb, f"NOT_FOUND: {name}")
  q = queued[name]
  if verb == "describe":
    q["polls"] += 1
    if q["state"] == "WAITING_FOR_RESOURCES" and q["polls"] >= 2:  # ACTIVE on the second look
      q["state"] = "ACTIVE"
      state["tpus"][q["node"]] = {"state": "READY", "queued": name}
    if flag(rest, "format") != "value(state.state)":
      return fail("queued-resources", verb, f"the stand-in answers only --format='value(state.state)': {rest}")
    print(q["state"])
  elif verb == "delete":
    if q["node"] in state["tpus"] and "--force" not in rest and q["state"] not in ("ACCEPTED", "FAILED", "SUSPENDED"):
      return fail("queued-resources", verb, f"FAILED_PRECONDITION: {name} has a node: delete it first or use --force")
    queued.pop(name)
    state["tpus"].pop(q["node"], None)
  return 0


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
    if verb == "describe" and os.environ.get("FAKE_TPU_STATE") and not state.get("was_preempted"):
      preempt(state, os.environ["FAKE_TPU_STATE"])
    if kind == "queued-resources":
      return queued_resources(state, verb, name, rest)
    if verb == "create":
      if name in state["tpus"]:
        return fail(kind, verb, f"ALREADY_EXISTS: {name}")
      state["tpus"][name] = {"state": "READY", "spot": "--spot" in rest}
    elif verb == "delete":
      if name not in state["tpus"]:
        return fail(kind, verb, f"NOT_FOUND: {name}")
      state["tpus"].pop(name)
    elif verb == "describe":
      if name not in state["tpus"]:
        return fail(kind, verb, f"NOT_FOUND: {name}")
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
