"""The Python libraries' narration off the run's log: their warnings and errors kept, their INFO lines dropped."""

from __future__ import annotations

import logging as logging_std

from absl import logging


class _QuietLibraries(logging_std.Filter):
  """Orbax narrates every save at INFO, fsspec/gcsfs every file they open in cloud storage, and JAX every backend it
  did not find ("Unable to initialize backend 'tpu'" on every command): keep their warnings and errors, drop the
  rest."""

  def filter(self, record: logging_std.LogRecord) -> bool:
    if record.name == "asyncio" and str(record.msg).startswith("Task exception was never retrieved"):
      return False  # orbax's writers after a failed save: the error itself reaches the run, once
    chatty = ("/orbax/", "/fsspec/", "/gcsfs/", "/jax/_src/xla_bridge.py")
    return record.levelno >= logging_std.WARNING or not any(c in record.pathname for c in chatty)


def quiet_library_logs() -> None:
  """Install the filter on absl's logger and on every root handler; call it before the backends start (JAX logs the
  ones it does not find as it starts them)."""
  logging_std.getLogger("absl").addFilter(_QuietLibraries())
  for handler in logging_std.getLogger().handlers + [logging.get_absl_handler()]:
    handler.addFilter(_QuietLibraries())
