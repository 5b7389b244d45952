r"""Train AlexNet: ``python -m alexnet_jax.main --config=configs/NAME.py --workdir=DIR [--config.KEY=VALUE ...]``.

A second call with the same ``--workdir`` resumes from its latest checkpoint.
"""

from __future__ import annotations

from absl import flags
from ml_collections import config_flags

from alexnet_jax import cli

config_flags.DEFINE_config_file(
  "config", None, "A config file from configs/ (e.g. configs/paper.py).", lock_config=True
)
flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and logs go; an existing one is resumed.")
flags.DEFINE_bool("allow_config_change", False, "Resume even though config keys that change the run differ.")
cli.define_process_flags()
flags.mark_flags_as_required(["config", "workdir"])

EXIT_PREEMPTED = cli.EXIT_RETRY  # stopped by SIGTERM after saving; rerun to resume


def main(argv: list[str]) -> int:
  """Exit codes (cli.py): 0 done, 1 a clear error, 2 a bad command line, 75 preempted or a transient error."""
  del argv  # cli.parse_flags refused any leftover
  from alexnet_jax import config_lib, train
  from alexnet_jax.native import library_logs

  library_logs.quiet_library_logs()  # before the backends start (JAX logs the ones it does not find)
  f = flags.FLAGS
  try:  # before joining the other processes: a bad value ends this one at once, not after their shutdown barrier
    config_lib.validate(f.config)
  except ValueError as e:
    return cli.exit_code_for(e)
  exit_code = cli.start_processes()
  if exit_code is not None:
    return exit_code
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
