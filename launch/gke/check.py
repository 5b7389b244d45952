#!/usr/bin/env python3
"""Check the GKE manifests without a cluster (CI's dry run): they parse, and the Job's pieces agree.

  python launch/gke/check.py launch/gke/alexnet-job.yaml

Checks: every document has apiVersion / kind / metadata.name; the Job is Indexed with completions == parallelism ==
--num_processes; the coordinator address names pod 0 through the headless Service the Job's pods use as subdomain;
--process_id comes from the completion index; exit 75 is ignored by the failure policy. With kubectl on PATH and
a cluster configured, ``--server`` also runs ``kubectl apply --dry-run=server``.
"""

from __future__ import annotations

import subprocess
import sys

import yaml


def check(path: str) -> list[str]:
  with open(path) as f:
    docs = [d for d in yaml.safe_load_all(f) if d]
  problems = []
  for d in docs:
    for key in ("apiVersion", "kind"):
      if key not in d:
        problems.append(f"a document has no {key}")
    if not d.get("metadata", {}).get("name"):
      problems.append(f"a {d.get('kind')} has no metadata.name")
  services = {d["metadata"]["name"]: d for d in docs if d.get("kind") == "Service"}
  jobs = [d for d in docs if d.get("kind") == "Job"]
  if not jobs:
    problems.append("no Job")
  for job in jobs:
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    name = job["metadata"]["name"]
    if spec.get("completionMode") != "Indexed":
      problems.append(f"Job {name}: completionMode must be Indexed (one index per host)")
    container = pod["containers"][0]
    args = dict(a.split("=", 1) for a in container.get("args", []) if a.startswith("--") and "=" in a)
    n = int(args.get("--num_processes", -1))
    if not spec.get("completions") == spec.get("parallelism") == n:
      problems.append(
        f"Job {name}: completions, parallelism and --num_processes differ ({spec.get('completions')}, "
        f"{spec.get('parallelism')}, {n})"
      )
    sub = pod.get("subdomain")
    if sub not in services or services[sub]["spec"].get("clusterIP") != "None":
      problems.append(f"Job {name}: subdomain {sub!r} is not a headless Service in this file")
    coordinator = args.get("--coordinator_address", "")
    host, _, port = coordinator.partition(":")
    if host != f"{name}-0.{sub}":
      problems.append(f"Job {name}: --coordinator_address should be {name}-0.{sub}:PORT, got {coordinator!r}")
    if sub in services and int(port or 0) not in [p["port"] for p in services[sub]["spec"].get("ports", [])]:
      problems.append(f"Job {name}: coordinator port {port} is not a port of Service {sub}")
    if args.get("--process_id") != "$(JOB_COMPLETION_INDEX)":
      problems.append(f"Job {name}: --process_id must be $(JOB_COMPLETION_INDEX)")
    env = {e["name"] for e in container.get("env", [])}
    if "JOB_COMPLETION_INDEX" not in env:
      problems.append(f"Job {name}: JOB_COMPLETION_INDEX is not in the container's env")
    rules = spec.get("podFailurePolicy", {}).get("rules", [])
    if not any(r["action"] == "Ignore" and 75 in r.get("onExitCodes", {}).get("values", []) for r in rules):
      problems.append(f"Job {name}: exit 75 (preempted, checkpoint saved) should not count as a failure")
  return problems


def main(argv: list[str]) -> int:
  paths = [a for a in argv if not a.startswith("--")]
  if not paths:
    print("usage: check.py MANIFEST.yaml ... [--server]", file=sys.stderr)
    return 2
  status = 0
  for path in paths:
    problems = check(path)
    for p in problems:
      print(f"{path}: {p}", file=sys.stderr)
    status = status or bool(problems)
    if not problems:
      print(f"{path}: ok")
    if "--server" in argv:
      status = status or subprocess.call(["kubectl", "apply", "--dry-run=server", "-f", path])
  return int(status)


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
