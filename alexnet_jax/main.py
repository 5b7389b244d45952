r"""Train AlexNet: ``python -m alexnet_jax.main --config=configs/NAME.py --workdir=DIR [--config.KEY=VALUE ...]``.

A second call with the same ``--workdir`` resumes from its latest checkpoint.
"""

from __future__ import annotations

import sys

from absl import flags
from ml_collections import config_flags

from alexnet_jax import cli

config_flags.DEFINE_config_file(
  "config", None, "A config file from configs/ (e.g. configs/paper.py).", lock_config=True
)
flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and logs go; an existing one is resumed.")
flags.DEFINE_bool("allow_config_change", False, "Resume even though config keys that change the run differ.")
flags.DEFINE_string("coordinator_address", None, "HOST:PORT of process 0, for multi-process runs.")
flags.DEFINE_integer("num_processes", None, "Number of processes in a multi-process run.")
flags.DEFINE_integer("process_id", None, "This process's index in a multi-process run.")
flags.DEFINE_integer(
  "heartbeat_timeout_seconds", 100, "Multi-process: how soon the others stop (with an error) after a process dies."
)
flags.mark_flags_as_required(["config", "workdir"])

EXIT_PREEMPTED = cli.EXIT_RETRY  # stopped by SIGTERM after saving; rerun to resume


def main(argv: list[str]) -> int:
  """Exit codes (cli.py): 0 done, 1 a clear error, 2 a bad command line, 75 preempted or a transient error."""
  del argv  # cli.parse_flags refused any leftover
  from alexnet_jax import distributed, train

  train.quiet_library_logs()  # before the backends start (JAX logs the ones it does not find)
  f = flags.FLAGS
  try:
    distributed.initialize(f.coordinator_address, f.num_processes, f.process_id, f.heartbeat_timeout_seconds)
  except ValueError as e:
    if not cli.transient(e):  # half of the multi-process flags, an Open MPI 5 job without a coordinator address
      print(f"error: {e}", file=sys.stderr)
      return cli.EXIT_USAGE
    return cli.exit_code_for(e)
  except Exception as e:
    if cli.transient(e):  # the coordinator not reachable (yet): the scheduler's rerun may find it
      return cli.exit_code_for(e)
    raise
  try:
    result = train.train_and_evaluate(f.config, f.workdir, allow_config_change=f.allow_config_change)
  except Exception as e:  # OSError: a missing file, a permission
    return cli.exit_code_for(e, (ValueError, OSError, train.NonFiniteError))
  return EXIT_PREEMPTED if result["status"] == "preempted" else cli.EXIT_DONE


def run() -> None:
  """Console-script entry point (``alexnet-train``)."""
  cli.run(main)


if __name__ == "__main__":
  run()
