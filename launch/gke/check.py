#!/usr/bin/env python3
"""Check the GKE manifests without a cluster (CI's dry run): Kubernetes' and JobSet's published schemas, and the
pieces that must agree with each other and with the trainer.

  python launch/gke/check.py launch/gke/*.yaml [--server]

Schemas: every built-in object (Service, Job) against the Kubernetes API's own openAPI schemas bundled by the
``kubernetes-validate`` package, strictly (an unknown or mistyped field is an error), for each version in
``KUBERNETES_VERSIONS``; a JobSet against the openAPIV3Schema of JobSet's CRD (``tests/support/fixtures/``, release
v0.12.0, its provenance in the file's header), also strict, with ``jsonschema``.

Cross-checks, per Indexed Job or JobSet (the tf.data service's manifest, Deployments: ``_data_service_problems``):
completions == parallelism == --num_processes; the coordinator address
names pod 0 through the headless Service the pods use as subdomain (a Job's own Service; the one JobSet creates);
--process_id comes from the completion index; the training command is the one ``launch/command.py`` builds
(``--config`` first); a TPU pod asks for ``google.com/tpu`` chips (requests == limits) with the accelerator and
topology node selectors, and the hosts times chips per host fill the topology; on a Spot node (GKE gives a pod at
most 15 s after SIGTERM there) terminationGracePeriodSeconds is at most 15. The failure policies act on the exit
codes as ``alexnet_jax/cli.py`` defines them: 1 and 2 final, 75 and anything else retried and counted (bounded), a
disruption (node preempted or drained) not counted as a failure. With kubectl on PATH and a cluster configured,
``--server`` also runs ``kubectl apply --dry-run=server``.
"""

from __future__ import annotations

import math
import os
import re
import shlex
import subprocess
import sys

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
JOBSET_CRD = os.path.join(ROOT, "tests", "support", "fixtures", "jobset.x-k8s.io_jobsets-v0.12.0.yaml")
# The oldest Kubernetes with podFailurePolicy GA (1.31) and a recent one; GKE's supported versions lie between.
KUBERNETES_VERSIONS = ("1.31.0", "1.37.0")
# alexnet_jax/cli.py's exit codes.
EXIT_ERROR, EXIT_USAGE, EXIT_RETRY, EXIT_CRASH = 1, 2, 75, 134  # 134: SIGABRT, e.g. JAX ending a lost peer's job
SPOT_GRACE_SECONDS = 15  # GKE: non-system pods on a Spot node get at most 15 s after SIGTERM; more has no effect


# ---------------------------------------------------------------------------------------------------------------
# Schemas.
# ---------------------------------------------------------------------------------------------------------------
def _strict(schema):
  """An openAPI v3 schema as jsonschema reads it, with Kubernetes' strict field validation: an object that lists its
  properties refuses others (unless it preserves unknown fields); ``nullable`` allows null."""
  if isinstance(schema, list):
    return [_strict(s) for s in schema]
  if not isinstance(schema, dict):
    return schema
  out = {
    k: _strict(v) if k in ("items", "additionalProperties", "anyOf", "allOf", "oneOf", "not") else v
    for k, v in schema.items()
  }
  if "properties" in schema:
    out["properties"] = {k: _strict(v) for k, v in schema["properties"].items()}
    if "additionalProperties" not in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
      out["additionalProperties"] = False
  if schema.get("nullable") and "type" in schema:
    out["type"] = [schema["type"], "null"]
  return out


def jobset_schema(crd_path: str = JOBSET_CRD) -> dict:
  with open(crd_path) as f:
    crd = yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
  (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha2"]
  return _strict(version["schema"]["openAPIV3Schema"])


def schema_problems(docs: list[dict], crd_path: str = JOBSET_CRD) -> list[str]:
  import jsonschema
  import kubernetes_validate

  problems = []
  for d in docs:
    what = f"{d.get('kind')} {d.get('metadata', {}).get('name')}"
    if d.get("apiVersion") == "jobset.x-k8s.io/v1alpha2" and d.get("kind") == "JobSet":
      for e in jsonschema.Draft7Validator(jobset_schema(crd_path)).iter_errors(d):
        path = ".".join(str(p) for p in e.absolute_path)
        problems.append(f"{what}: JobSet schema (v0.12.0): {path}: {e.message}")
      continue
    for version in KUBERNETES_VERSIONS:
      try:
        kubernetes_validate.validate(d, version, strict=True)
      except kubernetes_validate.ValidationError as e:
        path = ".".join(str(p) for p in e.path)
        problems.append(f"{what}: Kubernetes {version} schema: {path}: {e.message}")
      except kubernetes_validate.SchemaNotFoundError as e:
        problems.append(f"{what}: Kubernetes {version} has no schema for it ({e})")
  return problems


# ---------------------------------------------------------------------------------------------------------------
# The training command.
# ---------------------------------------------------------------------------------------------------------------
def training_argv(container: dict) -> list[str]:
  """The command the container ends up running: through ``launch/command.py`` (run here without ``--exec``, so it
  prints what it would exec) when the container runs it, else its command and args as they are."""
  words = [*container.get("command", []), *container.get("args", [])]
  if len(words) > 1 and words[1].endswith("launch/command.py"):
    options = [w for w in words[2:] if w != "--exec"]
    out = subprocess.run(
      [sys.executable, os.path.join(ROOT, "launch", "command.py"), *options], capture_output=True, text=True
    )
    if out.returncode:
      raise ValueError(f"launch/command.py refused the container's arguments: {out.stderr.strip()}")
    return shlex.split(out.stdout)
  return words


# ---------------------------------------------------------------------------------------------------------------
# Failure policies: what the Job controller and JobSet's controller do with a failed pod.
# ---------------------------------------------------------------------------------------------------------------
def pod_failure_action(rules: list[dict], container: str, exit_code: int | None = None, condition: str | None = None):
  """(action, the Job's failure message) of the first podFailurePolicy rule a failed pod matches, as Kubernetes'
  Job controller evaluates them (pkg/controller/job/pod_failure_policy.go); ("Count", None) when none does."""
  for index, rule in enumerate(rules):
    on_codes, on_conditions = rule.get("onExitCodes"), rule.get("onPodConditions")
    if on_codes and exit_code is not None and on_codes.get("containerName", container) == container:
      inside = exit_code in on_codes["values"]
      if inside == (on_codes["operator"] == "In"):
        message = (
          f"Container {container} for pod default/pod failed with exit code {exit_code} matching {rule['action']} "
          f"rule at index {index}"
        )
        return rule["action"], message
    if on_conditions and condition and any(c["type"] == condition for c in on_conditions):
      return rule[
        "action"
      ], f"Pod default/pod has condition {condition} matching {rule['action']} rule at index {index}"
  return "Count", None


def jobset_action(rules: list[dict], reason: str, message: str) -> str:
  """JobSet's action for a failed Job: the first rule whose reasons and message patterns (RE2, searched) match;
  RestartJobSet when none does (JobSet's API reference)."""
  for rule in rules:
    reasons, patterns = rule.get("onJobFailureReasons") or [], rule.get("onJobFailureMessagePatterns") or []
    if (not reasons or reason in reasons) and (not patterns or any(re.search(p, message) for p in patterns)):
      return rule["action"]
  return "RestartJobSet"


def _policy_problems(what: str, job_spec: dict, container: str, jobset_spec: dict | None) -> list[str]:
  """The outcome of exits 1, 2, 75, 134 and of a DisruptionTarget condition, against cli.py's mapping."""
  rules = job_spec.get("podFailurePolicy", {}).get("rules", [])
  operators = [r["onExitCodes"].get("operator") for r in rules if "onExitCodes" in r]
  if any(o not in ("In", "NotIn") for o in operators):  # the API's two operators (the schema has no enum for it)
    return [f"{what}: podFailurePolicy operators must be In or NotIn, got {operators}"]
  events = {f"exit {c}": {"exit_code": c} for c in (EXIT_ERROR, EXIT_USAGE, EXIT_RETRY, EXIT_CRASH)}
  events["DisruptionTarget"] = {"condition": "DisruptionTarget"}
  if jobset_spec is None:  # an Indexed Job restarts the failed pod; FailJob ends the Job
    want = {
      "exit 1": "FailJob",
      "exit 2": "FailJob",
      "exit 75": "Count",  # bounded: a real preemption is the DisruptionTarget rule's
      "exit 134": "Count",
      "DisruptionTarget": "Ignore",
    }
    got = {event: pod_failure_action(rules, container, **kw)[0] for event, kw in events.items()}
  else:  # a failed Job fails at once (backoffLimit 0); JobSet restarts every Job of the group, or fails the set
    restart = "RestartJobSet|RestartJobSetAndIgnoreMaxRestarts"
    want = {
      "exit 1": "FailJobSet",
      "exit 2": "FailJobSet",
      "exit 75": restart,
      "exit 134": "RestartJobSet",
      "DisruptionTarget": "RestartJobSetAndIgnoreMaxRestarts",
    }
    js_rules = jobset_spec.get("failurePolicy", {}).get("rules", [])
    got = {}
    for event, kw in events.items():
      action, message = pod_failure_action(rules, container, **kw)
      if action == "FailJob":
        got[event] = jobset_action(js_rules, "PodFailurePolicy", message)
      elif action == "Count" and job_spec.get("backoffLimit") == 0:
        got[event] = jobset_action(js_rules, "BackoffLimitExceeded", "Job has reached the specified backoff limit")
      else:
        got[event] = f"{action} (the Job restarts one pod, not the group)"
    if not isinstance(jobset_spec.get("failurePolicy", {}).get("maxRestarts"), int):
      problems = [f"{what}: failurePolicy.maxRestarts is not set: JobSet would never restart the group"]
      return problems + [f"{what}: {e} -> {got[e]}, want {w}" for e, w in want.items() if not re.fullmatch(w, got[e])]
  return [f"{what}: {e} -> {got[e]}, want {w}" for e, w in want.items() if not re.fullmatch(w, got[e])]


# ---------------------------------------------------------------------------------------------------------------
# Cross-checks.
# ---------------------------------------------------------------------------------------------------------------
def _workloads(docs: list[dict]):
  """(what, job spec, pod 0's hostname, subdomain, its Service or None when JobSet makes it, the JobSet's spec)."""
  services = {d["metadata"]["name"]: d for d in docs if d.get("kind") == "Service"}
  for d in docs:
    name = d.get("metadata", {}).get("name")
    if d.get("kind") == "Job":
      sub = d["spec"]["template"]["spec"].get("subdomain")
      yield f"Job {name}", d["spec"], f"{name}-0", sub, services.get(sub, "missing"), None
    elif d.get("kind") == "JobSet":
      replicated = d["spec"].get("replicatedJobs", [])
      if len(replicated) != 1 or replicated[0].get("replicas", 1) != 1:
        yield f"JobSet {name}", None, None, None, None, d["spec"]
        continue
      sub = d["spec"].get("network", {}).get("subdomain") or name  # JobSet's default: the JobSet's name
      job = f"{name}-{replicated[0]['name']}-0"
      yield f"JobSet {name}", replicated[0]["template"]["spec"], f"{job}-0", sub, None, d["spec"]


def _data_service_problems(docs: list[dict]) -> list[str]:
  """The tf.data service's manifest (Deployments running ``alexnet_jax.data_service``): a dispatcher whose --port
  the Service that selects it exposes, and workers whose --dispatcher names that Service and port."""
  problems, flags = [], {}
  for d in docs:
    if d.get("kind") == "Deployment":
      container = d["spec"]["template"]["spec"]["containers"][0]
      argv = container.get("command", []) + container.get("args", [])
      given = dict(a[2:].split("=", 1) for a in argv if a.startswith("--") and "=" in a)
      flags[given.get("role")] = (d, given)
  if set(flags) != {"dispatcher", "worker"}:
    return ["the tf.data service needs one Deployment with --role=dispatcher and one with --role=worker"]
  (dispatcher, dflags), (_, wflags) = flags["dispatcher"], flags["worker"]
  labels = dispatcher["spec"]["template"]["metadata"].get("labels", {})
  services = [d for d in docs if d.get("kind") == "Service" and d["spec"].get("selector", {}).items() <= labels.items()]
  if not services:
    return ["no Service selects the dispatcher's pods"]
  name, ports = services[0]["metadata"]["name"], [p["port"] for p in services[0]["spec"].get("ports", [])]
  if int(dflags.get("port", 5050)) not in ports:
    problems.append(f"the dispatcher serves on --port={dflags.get('port', 5050)}, not a port of Service {name} {ports}")
  if wflags.get("dispatcher") != f"{name}:{dflags.get('port', 5050)}":
    problems.append(f"the workers' --dispatcher={wflags.get('dispatcher')} is not {name}:{dflags.get('port', 5050)}")
  return problems


def _cross_problems(docs: list[dict]) -> list[str]:
  problems = []
  workloads = list(_workloads(docs))
  if not workloads and any(d.get("kind") == "Deployment" for d in docs):
    return _data_service_problems(docs)
  if not workloads:
    problems.append("no Job or JobSet")
  for what, spec, pod0, sub, service, jobset_spec in workloads:
    if spec is None:
      problems.append(f"{what}: one replicatedJob with replicas 1 (one slice) is what the cross-checks know")
      continue
    pod = spec["template"]["spec"]
    if spec.get("completionMode") != "Indexed":
      problems.append(f"{what}: completionMode must be Indexed (one index per host)")
    container = pod["containers"][0]
    try:
      argv = training_argv(container)
    except ValueError as e:
      problems.append(f"{what}: {e}")
      continue
    if argv[1:3] != ["-m", "alexnet_jax.main"] or not "".join(argv[3:4]).startswith("--config"):
      problems.append(f"{what}: the training command should be python -m alexnet_jax.main --config=...: {argv}")
    flags = dict(a.split("=", 1) for a in argv if a.startswith("--") and "=" in a)
    n = int(flags.get("--num_processes", -1))
    if not spec.get("completions") == spec.get("parallelism") == n:
      problems.append(
        f"{what}: completions, parallelism and --num_processes differ ({spec.get('completions')}, "
        f"{spec.get('parallelism')}, {n})"
      )
    headless = service != "missing" and service is not None and service["spec"].get("clusterIP") == "None"
    if jobset_spec is None and (pod.get("subdomain") is None or not headless):
      problems.append(f"{what}: subdomain {pod.get('subdomain')!r} is not a headless Service in this file")
      service = None
    coordinator = flags.get("--coordinator_address", "")
    host, _, port = coordinator.partition(":")
    if host != f"{pod0}.{sub}":
      problems.append(f"{what}: --coordinator_address should be {pod0}.{sub}:PORT, got {coordinator!r}")
    if service and int(port or 0) not in [p["port"] for p in service["spec"].get("ports", [])]:
      problems.append(f"{what}: coordinator port {port} is not a port of Service {sub}")
    if flags.get("--process_id") != "$(JOB_COMPLETION_INDEX)":
      problems.append(f"{what}: --process_id must be $(JOB_COMPLETION_INDEX)")
    if "JOB_COMPLETION_INDEX" not in {e["name"] for e in container.get("env", [])}:
      problems.append(f"{what}: JOB_COMPLETION_INDEX is not in the container's env")
    selector, resources = pod.get("nodeSelector", {}), container.get("resources", {})
    grace = pod.get("terminationGracePeriodSeconds", 30)
    if selector.get("cloud.google.com/gke-spot") == "true" and grace > SPOT_GRACE_SECONDS:
      problems.append(f"{what}: on Spot nodes GKE gives {SPOT_GRACE_SECONDS} s after SIGTERM, not {grace}")
    chips = resources.get("limits", {}).get("google.com/tpu")
    if chips is not None:
      if resources.get("requests", {}).get("google.com/tpu") != chips:
        problems.append(f"{what}: google.com/tpu requests and limits should be equal ({chips})")
      topology = selector.get("cloud.google.com/gke-tpu-topology", "")
      if "cloud.google.com/gke-tpu-accelerator" not in selector or not re.fullmatch(r"\d+(x\d+)+", topology):
        problems.append(f"{what}: a TPU pod needs the gke-tpu-accelerator and gke-tpu-topology node selectors")
      elif math.prod(int(x) for x in topology.split("x")) != int(chips) * (spec.get("completions") or 0):
        problems.append(
          f"{what}: topology {topology} has {math.prod(int(x) for x in topology.split('x'))} chips, but "
          f"{spec.get('completions')} hosts x {chips} chips asked"
        )
    if pod.get("restartPolicy") != "Never":
      problems.append(f"{what}: restartPolicy must be Never (podFailurePolicy needs it; the policy restarts)")
    problems += _policy_problems(what, spec, container["name"], jobset_spec)
  return problems


def check(path: str, schemas: bool = True) -> list[str]:
  with open(path) as f:
    docs = [d for d in yaml.safe_load_all(f) if d]
  problems = []
  for d in docs:
    for key in ("apiVersion", "kind"):
      if key not in d:
        problems.append(f"a document has no {key}")
    if not d.get("metadata", {}).get("name"):
      problems.append(f"a {d.get('kind')} has no metadata.name")
  if problems:
    return problems
  return (schema_problems(docs) if schemas else []) + _cross_problems(docs)


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
      print(f"{path}: ok (schemas: Kubernetes {', '.join(KUBERNETES_VERSIONS)}, JobSet v0.12.0; cross-checks)")
    if "--server" in argv:
      status = status or subprocess.call(["kubectl", "apply", "--dry-run=server", "-f", path])
  return int(status)


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
