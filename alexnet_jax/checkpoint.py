"""Checkpoints with orbax: async, atomic, keep-N, restored straight into the current shardings.

Each checkpoint holds two items: ``state`` (the plain train-state pytree) and ``config`` (the run's config as JSON,
to refuse a resume that would silently change the computation). A step directory is only a checkpoint once orbax
has committed it (an interrupted save leaves a ``*.orbax-checkpoint-tmp`` folder that is never read). A committed
step that cannot be read is moved aside to ``WORKDIR/checkpoints_corrupt/`` and the previous step is used, with a
warning.
"""

from __future__ import annotations

import os
import shutil
import time
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging


class Checkpointer:
  def __init__(self, directory: str, *, max_to_keep: int, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    self._options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep, create=True, enable_async_checkpointing=async_save
    )
    self._manager = self._open()

  def _open(self) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(self.directory, options=self._options, item_names=("state", "config"))

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, state: Any, config_json: dict[str, Any]) -> None:
    """Start saving ``state`` at ``step`` (asynchronously; ``wait()`` blocks until it is committed)."""
    if step in self._manager.all_steps():
      return
    self._manager.save(
      step,
      args=ocp.args.Composite(state=ocp.args.StandardSave(state), config=ocp.args.JsonSave(config_json)),
      force=True,
    )

  def restore(self, step: int, abstract_state: Any) -> tuple[int, Any, dict[str, Any]]:
    """(step, state, saved config) of one given step."""
    restored = self._manager.restore(
      step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), config=ocp.args.JsonRestore())
    )
    return step, restored["state"], dict(restored["config"])

  def restore_latest(self, abstract_state: Any) -> tuple[int, Any, dict[str, Any]] | None:
    """(step, state, saved config) of the newest readable checkpoint, or None when there is none.

    ``abstract_state`` is a pytree of ``jax.ShapeDtypeStruct`` carrying the shardings wanted now, so a checkpoint
    written on another number of devices or processes lands directly in the current layout.
    """
    for step in reversed(self.all_steps()):
      try:
        return self.restore(step, abstract_state)
      except Exception as e:
        logging.warning(
          "Checkpoint at step %d in %s cannot be read (%s: %s); moving it aside and falling back to the previous step.",
          step,
          self.directory,
          type(e).__name__,
          str(e).splitlines()[0] if str(e) else "",
        )
        self._quarantine(step)
    return None

  def read_config(self, step: int | None = None) -> tuple[int, dict[str, Any]]:
    """(step, the config saved with that checkpoint); the newest step by default."""
    steps = self.all_steps()
    if not steps:
      raise ValueError(f"no checkpoint in {self.directory}: train first, or check --workdir")
    step = steps[-1] if step is None else step
    if step not in steps:
      raise ValueError(f"no checkpoint for step {step} in {self.directory}; there are {steps}")
    restored = self._manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
    return step, dict(restored["config"])

  def _quarantine(self, step: int) -> None:
    """Move an unreadable step out of the manager's directory (so a later save of that step can succeed)."""
    if jax.process_index() == 0:
      src = os.path.join(self.directory, str(step))
      dst_dir = os.path.join(os.path.dirname(self.directory), "checkpoints_corrupt")
      os.makedirs(dst_dir, exist_ok=True)
      dst = os.path.join(dst_dir, f"{step}.{int(time.time())}")
      shutil.move(src, dst)
      logging.warning("Unreadable checkpoint kept for inspection at %s", dst)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils

      multihost_utils.sync_global_devices(f"quarantine_{step}")
    self._manager.close()
    self._manager = self._open()

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def abstract_with_shardings(abstract_state: Any, shardings: Any) -> Any:
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_state, shardings)
