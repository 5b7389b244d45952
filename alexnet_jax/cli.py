"""What every command line of the project shares: a bad command line is one ``error:`` line and exit code 2.

absl reports a bad flag value, a missing required flag or a config file that cannot be loaded with a traceback and
exit code 1; ``run(main)`` turns each into ``error: ...`` and 2 (the README's contract: 2 for every bad command line,
1 for every other clear error). ``--verbosity`` at 1 or more keeps the traceback.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable

from absl import app, flags

EXIT_USAGE = 2


def _usage_error(message: str) -> None:
  print(f"error: {message}", file=sys.stderr)
  print(f"(see --helpfull for {sys.argv[0].rsplit('/', 1)[-1]}'s flags)", file=sys.stderr)
  sys.exit(EXIT_USAGE)


def parse_flags(argv: list[str]) -> list[str]:
  try:
    rest = flags.FLAGS(argv)
  except (AttributeError, KeyError) as e:  # an unknown --config.KEY
    from alexnet_jax import config_lib

    _usage_error(config_lib.unknown_override_message(argv, e))
  except flags.Error as e:  # a value of the wrong type, a missing required flag, an unknown flag
    _usage_error(str(e).replace("\n", "; "))
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
