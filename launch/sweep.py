#!/usr/bin/env python3
r"""Hyperparameter sweeps over ``--config.*`` overrides, described in a small Python file.

A sweep file (see launch/sweeps/) sets:

  config = "configs/paper.py"           # the --config file every run uses
  workdir_root = "workdirs/my_sweep"    # each run gets WORKDIR_ROOT/<name made from its overrides>
  fixed = {"num_epochs": 90}            # overrides shared by every run (optional)
  grid = {"optimizer.learning_rate": [0.01, 0.02], "optimizer.weight_decay": [5e-4, 1e-4]}
  # or, instead of grid, a random search:
  # random = {"optimizer.learning_rate": loguniform(1e-3, 1e-1), "model.dropout_rate": choice(0.3, 0.5)}
  # num_samples = 8; seed = 0
  extra_args = []                       # more flags for alexnet_jax.main (optional)

Then:

  python launch/sweep.py SWEEP.py print            # the commands, one per line (nothing runs)
  python launch/sweep.py SWEEP.py check            # parse every command's overrides against the config
  python launch/sweep.py SWEEP.py slurm [--out=F]  # a SLURM array script, one array task per run
  python launch/sweep.py SWEEP.py run [--dry_run]  # run them here, one after another (finished runs are skipped)
  python launch/sweep.py SWEEP.py summary          # a table of every run's last eval errors from metrics.jsonl

``print``, ``slurm`` and ``run`` check first, so a typo in a key fails before anything is launched.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import random as random_lib
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import command  # noqa: E402  (launch/command.py: the one place a training command line is built)


# ---------------------------------------------------------------------------------------------------------------
# Distributions for random search (usable inside sweep files).
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class loguniform:
  low: float
  high: float

  def sample(self, rng: random_lib.Random) -> float:
    return float(f"{math.exp(rng.uniform(math.log(self.low), math.log(self.high))):.3g}")


@dataclass(frozen=True)
class uniform:
  low: float
  high: float

  def sample(self, rng: random_lib.Random) -> float:
    return float(f"{rng.uniform(self.low, self.high):.3g}")


class choice:
  def __init__(self, *values: Any):
    self.values = values

  def sample(self, rng: random_lib.Random) -> Any:
    return rng.choice(self.values)


# ---------------------------------------------------------------------------------------------------------------
# Expanding a sweep.
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class Run:
  name: str
  workdir: str
  overrides: dict[str, Any]
  command: list[str]


def load_sweep(path: str) -> dict[str, Any]:
  namespace: dict[str, Any] = {"loguniform": loguniform, "uniform": uniform, "choice": choice}
  with open(path) as f:
    exec(compile(f.read(), path, "exec"), namespace)
  if "config" not in namespace or "workdir_root" not in namespace:
    raise SystemExit(f"error: {path} must set `config` and `workdir_root`")
  if ("grid" in namespace) == ("random" in namespace):
    raise SystemExit(
      f"error: {path} must set exactly one of `grid` (dict of lists) or `random` (dict of distributions)"
    )
  return namespace


def _format(value: Any) -> str:
  if isinstance(value, bool):
    return str(value)
  if isinstance(value, (list, tuple)):
    return "(" + ",".join(_format(v) for v in value) + ("," if len(value) == 1 else "") + ")"
  return str(value)


def run_name(overrides: dict[str, Any]) -> str:
  """A workdir name from the swept values: ``learning_rate=0.01,weight_decay=0.0005``."""
  parts = [f"{k.split('.')[-1]}={_format(v)}" for k, v in overrides.items()]
  return re.sub(r"[^A-Za-z0-9_.,=+-]", "_", ",".join(parts)) or "base"


def expand(sweep: dict[str, Any], python: str = "python") -> list[Run]:
  if "grid" in sweep:
    keys = list(sweep["grid"])
    points = [dict(zip(keys, values, strict=True)) for values in itertools.product(*sweep["grid"].values())]
  else:
    rng = random_lib.Random(sweep.get("seed", 0))
    points = [{k: d.sample(rng) for k, d in sweep["random"].items()} for _ in range(int(sweep.get("num_samples", 8)))]
  runs, seen = [], set()
  for point in points:
    name = run_name(point)
    if name in seen:  # a random search can draw the same point twice
      continue
    seen.add(name)
    workdir = os.path.join(sweep["workdir_root"], name)
    overrides = {**sweep.get("fixed", {}), **point}
    flags = [
      f"--config={sweep['config']}",
      *(f"--config.{k}={_format(v)}" for k, v in overrides.items()),
      *sweep.get("extra_args", []),
    ]
    runs.append(Run(name, workdir, point, command.training_command(flags, python=python, workdir=workdir)))
  return runs


def check(runs: list[Run]) -> None:
  """Parse each command's --config flags exactly as alexnet_jax.main does, then validate the config."""
  from absl import flags
  from ml_collections import config_flags

  from alexnet_jax import config_lib

  for run in runs:
    config_args = [a for a in run.command if a.startswith("--config")]
    argv = ["sweep", *config_args]
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=fv, lock_config=True, sys_argv=argv)
    try:
      try:
        fv(argv)
      except (AttributeError, KeyError) as e:  # what absl raises for an unknown --config.KEY
        raise ValueError(config_lib.unknown_override_message(argv, e)) from None
      config_lib.validate(fv.config)
    except Exception as e:
      raise SystemExit(f"error: run {run.name!r} does not parse against {config_args[0]}: {e}") from None


# ---------------------------------------------------------------------------------------------------------------
# What to do with the runs.
# ---------------------------------------------------------------------------------------------------------------
SLURM_TEMPLATE = """#!/usr/bin/env bash
# A SLURM array: one task per run of the sweep {sweep}. Submit with: sbatch {out}
#SBATCH --job-name={job}
#SBATCH --array=0-{last}%{parallel}
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node={gpus}
#SBATCH --time={time}
#SBATCH --output={root}/slurm-%A_%a.out
#SBATCH --signal=TERM@120
#SBATCH --requeue
set -euo pipefail
cd {cwd}
COMMANDS=(
{commands}
)
# SIGTERM two minutes before the time limit: the run saves a checkpoint and exits 75; requeue to resume it.
status=0
eval "${{COMMANDS[$SLURM_ARRAY_TASK_ID]}}" || status=$?
if [ "$status" -eq 75 ]; then
  scontrol requeue "${{SLURM_ARRAY_JOB_ID}}_${{SLURM_ARRAY_TASK_ID}}"
fi
exit "$status"
"""


def slurm_script(sweep_path: str, sweep: dict[str, Any], runs: list[Run], out: str, args) -> str:
  return SLURM_TEMPLATE.format(
    sweep=sweep_path,
    out=out,
    job=os.path.splitext(os.path.basename(sweep_path))[0],
    last=len(runs) - 1,
    parallel=args.parallel,
    gpus=args.gpus,
    time=args.time,
    root=sweep["workdir_root"],
    cwd=shlex.quote(os.getcwd()),
    commands="\n".join("  " + shlex.quote(shlex.join(r.command)) for r in runs),
  )


def finished(workdir: str) -> dict[str, Any] | None:
  """The last evaluation of a run (its metrics.jsonl), or None."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return None
  last, step = None, 0
  with open(path) as f:
    for line in f:
      row = json.loads(line)
      step = max(step, row["step"])
      if "eval_top1_error" in row:
        last = row
  return None if last is None else {**last, "last_step": step}


def summary_table(runs: list[Run]) -> str:
  rows = []
  for run in runs:
    result = finished(run.workdir)
    rows.append((run, result))
  rows.sort(key=lambda r: (r[1] is None, r[1]["eval_top1_error"] if r[1] else 0.0))
  keys = list(runs[0].overrides) if runs else []
  header = ["run", *keys, "step", "top1_error", "top5_error", "eval_loss"]
  lines = [header]
  for run, result in rows:
    values = [_format(run.overrides[k]) for k in keys]
    if result is None:
      lines.append([run.name, *values, "-", "not evaluated yet", "", ""])
    else:
      lines.append(
        [
          run.name,
          *values,
          str(result["step"]),
          f"{result['eval_top1_error']:.4f}",
          f"{result['eval_top5_error']:.4f}",
          f"{result.get('eval_loss', float('nan')):.4f}",
        ]
      )
  widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
  fmt = lambda line: "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
  return "\n".join([fmt(lines[0]), fmt(["-" * w for w in widths]), *map(fmt, lines[1:])])


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("sweep", help="the sweep file (a .py)")
  parser.add_argument("action", choices=["print", "check", "slurm", "run", "summary"])
  parser.add_argument("--dry_run", action="store_true", help="run: print each command instead of running it")
  parser.add_argument("--python", default=sys.executable if sys.executable else "python", help="interpreter to use")
  parser.add_argument("--out", default=None, help="slurm: where to write the script (default: beside the runs)")
  parser.add_argument("--gpus", type=int, default=8, help="slurm: GPUs per task")
  parser.add_argument("--time", default="72:00:00", help="slurm: time limit per task")
  parser.add_argument("--parallel", type=int, default=8, help="slurm: array tasks at once")
  args = parser.parse_args(argv)

  sweep = load_sweep(args.sweep)
  runs = expand(sweep, python="python" if args.action in ("print", "slurm") else args.python)
  if args.action == "summary":
    print(summary_table(runs))
    return 0
  check(runs)
  if args.action == "check":
    print(f"{len(runs)} runs parse against {sweep['config']}")
  elif args.action == "print":
    for run in runs:
      print(shlex.join(run.command))
  elif args.action == "slurm":
    out = args.out or os.path.join(sweep["workdir_root"], "sweep.sbatch")
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out, "w") as f:
      f.write(slurm_script(args.sweep, sweep, runs, out, args))
    print(f"wrote {out} ({len(runs)} array tasks); submit with: sbatch {out}")
  elif args.action == "run":
    for i, run in enumerate(runs):
      done = finished(run.workdir)
      print(f"[sweep] {i + 1}/{len(runs)} {run.name}" + (" (already evaluated: resumes or skips)" if done else ""))
      if args.dry_run:
        print(shlex.join(run.command))
        continue
      status = subprocess.call(run.command)
      if status:
        print(f"[sweep] {run.name} exited with {status}; going on with the next run", file=sys.stderr)
    if not args.dry_run:
      print(summary_table(runs))
  return 0


if __name__ == "__main__":
  sys.exit(main())
