#!/usr/bin/env python3
r"""The training command line, built in one place for every launch kit: ``--config`` first, then everything else.

  python3 launch/command.py [--python=P] [--workdir=W] [--data_dir=D] [--exec | --status_file=F] -- --config=... [FLAGS]
  python3 launch/command.py --combine STATUS ...

prints (or with ``--exec`` runs, replacing this process) ::

  P -m alexnet_jax.main --config=configs/paper.py --workdir=W --config.data.dir=D FLAGS

``--status_file=F`` runs it as a child instead (SIGTERM and SIGINT passed on), writes its exit status to ``F`` (``%t``
in ``F``: the SLURM task's rank, SLURM_PROCID, as in srun's file name patterns) and exits with it: how
``launch/slurm.sbatch`` learns each task's own status (srun returns only the highest of them).
``--combine`` prints the one exit status of a run whose processes exited with ``STATUS ...`` (``combine``: the
project's one rule, used by ``launch/tpu_pod.sh`` and ``launch/slurm.sbatch``).

ml_collections refuses a ``--config.KEY=VALUE`` that comes before ``--config=FILE`` ("Found --config.data.dir=...
in argv before a value for --config was specified"), so the kit's own flags can only follow the user's
``--config``. ``--workdir`` and ``--data_dir`` are the kit's defaults: a flag the user gives wins and the default is
left out. Used by ``launch/tpu_pod.sh`` (on the machine that runs gcloud), ``launch/slurm.sbatch`` and the GKE
manifests (``--exec`` on each node) and ``launch/sweep.py`` (imported); ``launch/local.py`` runs the command it is
given and adds only the process flags, which may come anywhere. Standard library only,
Python 3.8 or later, so it runs with whatever ``python3`` the launching machine has.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys

MAIN = ["-m", "alexnet_jax.main"]

# alexnet_jax/cli.py's exit codes (this file runs without the package installed, so they are repeated here).
EXIT_ERRORS = (1, 2)  # an error to fix (a bad config value or data, a bad command line): final
EXIT_RETRY = 75  # preempted after saving, or a transient error: rerun
EXIT_SETUP = (126, 127)  # the shell could not run the interpreter (not executable, not found: no venv yet): final


def combine(statuses: list[int]) -> int:
  """The exit status of a run from its processes' statuses (one per TPU worker or SLURM task), for a supervisor
  (launch/restart.sh, SLURM's requeue): an error to fix (1 or 2) beats everything; then a setup error (126, 127:
  the interpreter is missing); 0 when all are 0; 75 only when every failure was 75 (preempted or transient); else
  the first other status (a crash: 134, 137, ssh's 255, SIGTERM's 143), which a supervisor retries after a back-off
  and a bounded number of times -- never 75, which would skip both."""
  failures = [s for s in statuses if s != 0]
  for final in (EXIT_ERRORS, EXIT_SETUP):
    for s in failures:
      if s in final:
        return s
  if not failures:
    return 0
  if all(s == EXIT_RETRY for s in failures):
    return EXIT_RETRY
  return next(s for s in failures if s != EXIT_RETRY)


def _combine_main(words: list[str]) -> int:
  try:
    statuses = [int(w) for w in words]
  except ValueError:
    print(f"error: --combine takes exit statuses (integers), got {' '.join(words)!r}", file=sys.stderr)
    return 2
  if not statuses:
    print("error: --combine needs at least one exit status", file=sys.stderr)
    return 2
  print(combine(statuses))
  return 0


def run_and_record(command: list[str], status_file: str) -> int:
  """Run ``command``, pass SIGTERM and SIGINT on to it, write its exit status (128 + N for signal N, as a shell
  says it) to ``status_file`` and return it. 127 when the interpreter cannot be found."""
  try:
    child = subprocess.Popen(command)
  except OSError as e:
    print(f"error: cannot run {command[0]}: {e.strerror}", file=sys.stderr)
    status = 127 if isinstance(e, FileNotFoundError) else 126
  else:
    for sig in (signal.SIGTERM, signal.SIGINT):
      signal.signal(sig, lambda signum, frame: child.send_signal(signum))
    code = child.wait()
    status = 128 - code if code < 0 else code
  os.makedirs(os.path.dirname(os.path.abspath(status_file)), exist_ok=True)
  with open(status_file + ".tmp", "w") as f:
    f.write(f"{status}\n")
  os.replace(status_file + ".tmp", status_file)
  return status


class CommandError(ValueError):
  pass


def _split_config(flags: list[str]) -> tuple[list[str], list[str]]:
  """(the --config flag as one or two words, the other flags in their order)."""
  config, rest, i = [], [], 0
  while i < len(flags):
    a = flags[i]
    if a.startswith("--config="):
      config.append([a])
    elif a == "--config":
      if i + 1 >= len(flags):
        raise CommandError("--config needs a value: --config=configs/NAME.py")
      config.append([a, flags[i + 1]])
      i += 1
    else:
      rest.append(a)
    i += 1
  if len(config) != 1:
    found = " ".join(" ".join(c) for c in config) or "none"
    raise CommandError(f"give --config=configs/NAME.py exactly once among the training flags (found: {found})")
  return config[0], rest


def _gives(flags: list[str], name: str) -> bool:
  return any(a == name or a.startswith(name + "=") for a in flags)


def training_command(
  flags: list[str], python: str = "python", workdir: str | None = None, data_dir: str | None = None
) -> list[str]:
  """``python -m alexnet_jax.main --config=... [--workdir=W] [--config.data.dir=D] FLAGS``: the user's
  ``--config`` first, the kit's defaults next (unless ``flags`` gives them), then the user's other flags in order."""
  config, rest = _split_config(list(flags))
  defaults = []
  if workdir and not _gives(rest, "--workdir"):
    defaults.append(f"--workdir={workdir}")
  if data_dir and not _gives(rest, "--config.data.dir"):
    defaults.append(f"--config.data.dir={data_dir}")
  return [python, *MAIN, *config, *defaults, *rest]


def config_first(argv: list[str]) -> list[str]:
  """``argv`` with its ``--config`` moved before the other flags when it runs ``alexnet_jax.main`` (as
  ``training_command`` orders them); any other command is returned as it is."""
  for i in range(len(argv) - 1):
    if argv[i : i + 2] == MAIN:
      head, flags = argv[: i + 2], argv[i + 2 :]
      if not any(a == "--config" or a.startswith("--config=") for a in flags):
        return list(argv)
      config, rest = _split_config(flags)
      return [*head, *config, *rest]
  return list(argv)


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  if argv[:1] == ["--combine"]:
    return _combine_main(argv[1:])
  parser = argparse.ArgumentParser(
    description=__doc__.split("\n\n")[0],
    usage="%(prog)s [--python=P] [--workdir=W] [--data_dir=D] [--exec | --status_file=F] -- FLAGS"
    " | --combine STATUS...",
  )
  parser.add_argument("--python", default="python", help="the interpreter on the machine that trains")
  parser.add_argument("--workdir", default=None, help="the kit's --workdir, unless FLAGS give one")
  parser.add_argument("--data_dir", default=None, help="the kit's --config.data.dir, unless FLAGS give one")
  parser.add_argument("--exec", action="store_true", help="run the command (exec) instead of printing it")
  parser.add_argument("--status_file", default=None, help="run the command, write its exit status to this file")
  parser.add_argument("flags", nargs=argparse.REMAINDER)
  args = parser.parse_args(argv)
  flags = args.flags[1:] if args.flags[:1] == ["--"] else args.flags
  try:
    command = training_command(flags, args.python, args.workdir, args.data_dir)
  except CommandError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if args.status_file:
    sys.stdout.flush()
    return run_and_record(command, args.status_file.replace("%t", os.environ.get("SLURM_PROCID", "0")))
  if args.exec:
    sys.stdout.flush()
    os.execvp(command[0], command)
  print(" ".join(shlex.quote(a) for a in command))
  return 0


if __name__ == "__main__":
  sys.exit(main())
