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

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: stopped by SIGTERM after saving; rerun to resume


def main(argv: list[str]) -> int:
  del argv  # cli.parse_flags refused any leftover
  from alexnet_jax import distributed, train

  train.quiet_library_logs()  # before the backends start (JAX logs the ones it does not find)
  f = flags.FLAGS
  distributed.initialize(f.coordinator_address, f.num_processes, f.process_id, f.heartbeat_timeout_seconds)
  try:
    result = train.train_and_evaluate(
      flags.FLAGS.config, flags.FLAGS.workdir, allow_config_change=flags.FLAGS.allow_config_change
    )
  except (ValueError, train.NonFiniteError) as e:
    print(f"error: {e}", file=sys.stderr)  # once: not also as a log line
    return 1
  return EXIT_PREEMPTED if result["status"] == "preempted" else 0


def run() -> None:
  """Console-script entry point (``alexnet-train``)."""
  cli.run(main)


if __name__ == "__main__":
  run()
