"""SIGTERM, what schedulers send before they take a machine: the run saves a checkpoint and exits cleanly (exit 75,
``main.EXIT_PREEMPTED``); a second SIGTERM stops it at once, without saving."""

from __future__ import annotations

import os
import signal
import threading

import jax
import numpy as np
from absl import logging


class PreemptionFlag:
  """Set by SIGTERM (what schedulers send before they take a machine); the loop saves and exits cleanly."""

  def __init__(self):
    self.set = False
    self._previous = None

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    # The flag is set before anything is logged: a second SIGTERM can arrive while the first handler is still
    # inside logging.warning (Python runs the nested handler there), and must see the first one as taken.
    if self.set:  # a second SIGTERM: the first one was not enough (a hung step, say); stop now, without saving
      logging.warning("Second SIGTERM: stopping now, without saving (the last committed checkpoint is kept).")
      signal.signal(signum, signal.SIG_DFL)
      os.kill(os.getpid(), signum)
      return
    self.set = True
    logging.warning("SIGTERM received: saving a checkpoint at the next step all processes reach, then stopping.")

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)

  def reached(self, step: int, every: int) -> bool:
    """With one process: whether SIGTERM came. With several, all must stop at the same step, so they agree (one
    small all-gather, which waits for the step to finish) only every ``every`` steps, where the loop syncs anyway."""
    if jax.process_count() == 1:
      return self.set
    if step % every:
      return False
    from jax.experimental import multihost_utils

    return bool(multihost_utils.process_allgather(np.asarray(self.set)).any())
