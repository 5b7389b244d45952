"""What every command line of the project shares: a bad command line is one ``error:`` line and exit code 2.

absl reports a bad flag value, a missing required flag or a config file that cannot be loaded with a traceback and
exit code 1; ``run(main)`` turns each into ``error: ...`` and 2 (docs/training.md's contract: 2 for every bad command
line, 1 for every other clear error). ``--verbosity`` at 1 or more keeps the traceback.
"""

from __future__ import annotations

import errno
import re
import sys
from collections.abc import Callable

from absl import app, flags

# The exit codes every command of the project uses, and what a supervisor (launch/restart.sh, launch/slurm.sbatch's
# requeue, the GKE manifests' failure policies) does with each: 0 and 1/2 are final, everything else is retried.
EXIT_DONE = 0  # finished
EXIT_ERROR = 1  # a clear error a rerun cannot fix (bad config value, bad data, NaN loss), one `error:` line
EXIT_USAGE = 2  # a bad command line (unknown flag or config key, a value of the wrong type), one `error:` line
EXIT_RETRY = 75  # EX_TEMPFAIL: preempted (SIGTERM, checkpoint saved) or a transient error: rerun to resume
# Anything else (a crash, SIGABRT=134 from JAX's coordination service after a lost peer, SIGKILL=137) is also
# retried, after a back-off and a bounded number of times.

_TRANSIENT_ERRNOS = {
  errno.EIO,
  errno.ESTALE,  # a network file system's handle gone stale
  errno.ETIMEDOUT,
  errno.ECONNRESET,
  errno.ECONNREFUSED,
  errno.ECONNABORTED,
  errno.EHOSTUNREACH,
  errno.ENETUNREACH,
  errno.ENETDOWN,
  errno.ENETRESET,
  errno.EAGAIN,
}
# gRPC status codes (JAX's runtime, the coordination service, tensorstore) that say "try again".
_TRANSIENT_STATUS = re.compile(r"\b(UNAVAILABLE|DEADLINE_EXCEEDED|ABORTED)\b")


def transient(error: BaseException) -> bool:
  """An error that a rerun from the last checkpoint may not meet again: a network or I/O failure (not a missing
  file, a permission or a full disk), an unreachable or lost peer, a storage service that is briefly unavailable."""
  if getattr(error, "transient", None) is not None:  # the error says so itself (checkpoint.CheckpointReadError)
    return bool(error.transient)
  if isinstance(error, (ConnectionError, TimeoutError)):
    return True
  if isinstance(error, OSError):
    return error.errno in _TRANSIENT_ERRNOS
  return isinstance(error, (RuntimeError, ValueError)) and bool(_TRANSIENT_STATUS.search(str(error)))


def exit_code_for(error: Exception, clear: tuple[type[BaseException], ...] = (ValueError, OSError)) -> int:
  """Print ``error`` as one ``error:`` line and return its exit code: EXIT_RETRY for a transient error, EXIT_ERROR for
  one of the ``clear`` kinds; anything else (a bug) is raised again, for Python's traceback."""
  if transient(error):
    message = str(error).strip().splitlines()[0] if str(error).strip() else ""
    print(
      f"error: {type(error).__name__}: {message} -- a transient error (I/O, network, a lost or unreachable peer): "
      f"exit {EXIT_RETRY}, a rerun resumes from the last checkpoint",
      file=sys.stderr,
    )
    return EXIT_RETRY
  if isinstance(error, clear):
    print(f"error: {error}", file=sys.stderr)  # once: not also as a log line
    return EXIT_ERROR
  raise error


def define_process_flags() -> None:
  """The flags of a multi-process run, for every command that can run as one (``main``, ``evaluate``); without them
  the cluster's environment is read (``alexnet_jax/distributed.py``)."""
  flags.DEFINE_string("coordinator_address", None, "HOST:PORT of process 0, for multi-process runs.")
  flags.DEFINE_integer("num_processes", None, "Number of processes in a multi-process run.")
  flags.DEFINE_integer("process_id", None, "This process's index in a multi-process run.")
  flags.DEFINE_integer(
    "heartbeat_timeout_seconds", 100, "Multi-process: how soon the others stop (with an error) after a process dies."
  )
  flags.DEFINE_integer(
    "initialization_timeout_seconds",
    300,
    "Multi-process: how long a process waits for the coordinator (process 0) before it exits 75 (JAX's default: 300).",
  )


def start_processes() -> int | None:
  """Join the other processes (``distributed.initialize`` with the process flags): None once joined, else the exit
  code to return after one ``error:`` line (2 for half of the flags, 75 for a coordinator not reachable)."""
  from alexnet_jax import distributed

  f = flags.FLAGS
  try:
    distributed.initialize(
      f.coordinator_address,
      f.num_processes,
      f.process_id,
      f.heartbeat_timeout_seconds,
      f.initialization_timeout_seconds,
    )
  except ValueError as e:
    if not transient(e):  # half of the multi-process flags, an Open MPI 5 job without a coordinator address
      print(f"error: {e}", file=sys.stderr)
      return EXIT_USAGE
    return exit_code_for(e)
  except Exception as e:
    if transient(e):  # the coordinator not reachable (yet): the scheduler's rerun may find it
      return exit_code_for(e)
    raise
  return None


def _usage_error(message: str) -> None:
  print(f"error: {message}", file=sys.stderr)
  print(f"(see --helpfull for {sys.argv[0].rsplit('/', 1)[-1]}'s flags)", file=sys.stderr)
  sys.exit(EXIT_USAGE)


def flag_error_message(text: str) -> str:
  """absl's flag error as one line. A config file whose ``get_config`` raised (an unknown variant, say) comes wrapped
  in ml_collections' traceback: the flag and the exception's own last line are kept, the traceback dropped."""
  if "Traceback (most recent call last)" in text:
    causes = re.findall(r"^\w+(?:Error|Exception): .*$", text, re.M)
    if causes:
      return f"{text.splitlines()[0].split(': Error whilst', 1)[0]}: {causes[-1]}"
  return text.replace("\n", "; ")


def parse_flags(argv: list[str]) -> list[str]:
  try:
    rest = flags.FLAGS(argv)
  except (AttributeError, KeyError) as e:  # an unknown --config.KEY
    from alexnet_jax import config_lib

    _usage_error(config_lib.unknown_override_message(argv, e))
  except flags.Error as e:  # a value of the wrong type, a missing required flag, an unknown flag
    _usage_error(flag_error_message(str(e)))
  if "config" in flags.FLAGS:
    try:
      config = flags.FLAGS.config  # a file that failed to load gives a stand-in that raises when it is used
      if config is not None:
        config.keys()
    except OSError as e:
      path = getattr(flags.FLAGS["config"], "config_filename", None) or flags.FLAGS["config"].serialize()
      cause = re.search(r"\[Errno \d+\][^\n]*|\w*Error: [^\n]*", str(e))
      _usage_error(f"--config={path} could not be loaded: {cause.group(0) if cause else str(e).splitlines()[0]}")
  if len(rest) > 1:
    _usage_error(f"unexpected arguments: {rest[1:]}")
  return rest


def run(main: Callable[[list[str]], int | None]) -> None:
  """``app.run(main)`` with the project's parsing; ``main``'s return value is the exit code."""
  app.run(lambda argv: sys.exit(main(argv) or 0), flags_parser=parse_flags)
