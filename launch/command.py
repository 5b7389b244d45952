#!/usr/bin/env python3
r"""The training command line, built in one place for every launch kit: ``--config`` first, then everything else.

  python3 launch/command.py [--python=P] [--workdir=W] [--data_dir=D] [--exec] -- --config=configs/paper.py [FLAGS]

prints (or with ``--exec`` runs, replacing this process) ::

  P -m alexnet_jax.main --config=configs/paper.py --workdir=W --config.data.dir=D FLAGS

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
import sys

MAIN = ["-m", "alexnet_jax.main"]


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
  parser = argparse.ArgumentParser(
    description=__doc__.split("\n\n")[0], usage="%(prog)s [--python=P] [--workdir=W] [--data_dir=D] [--exec] -- FLAGS"
  )
  parser.add_argument("--python", default="python", help="the interpreter on the machine that trains")
  parser.add_argument("--workdir", default=None, help="the kit's --workdir, unless FLAGS give one")
  parser.add_argument("--data_dir", default=None, help="the kit's --config.data.dir, unless FLAGS give one")
  parser.add_argument("--exec", action="store_true", help="run the command (exec) instead of printing it")
  parser.add_argument("flags", nargs=argparse.REMAINDER)
  args = parser.parse_args(argv)
  flags = args.flags[1:] if args.flags[:1] == ["--"] else args.flags
  try:
    command = training_command(flags, args.python, args.workdir, args.data_dir)
  except CommandError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if args.exec:
    sys.stdout.flush()
    os.execvp(command[0], command)
  print(" ".join(shlex.quote(a) for a in command))
  return 0


if __name__ == "__main__":
  sys.exit(main())
