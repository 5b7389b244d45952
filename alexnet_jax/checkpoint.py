"""Checkpoints with orbax: async, atomic, keep-N, restored straight into the current shardings.

Each checkpoint holds three items: ``state`` (the plain train-state pytree), ``config`` (the run's config as JSON,
to refuse a resume that would silently change the computation) and ``fingerprints`` (one exact checksum per array,
computed on the devices at save and compared at restore: damage that the reader does not trip on, a flipped bit or an
overwritten block inside the data, is caught too). A step directory is only a checkpoint once orbax
has committed it (an interrupted save leaves a ``*.orbax-checkpoint-tmp`` folder that is never read). A committed
step that cannot be read is moved aside to ``WORKDIR/checkpoints_corrupt/`` and the previous step is used, with a
warning.
"""

from __future__ import annotations

import time
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from absl import logging

from alexnet_jax import storage

# ---------------------------------------------------------------------------------------------------------------
# Fingerprints: every saved array's, recorded at save and checked at restore.
# ---------------------------------------------------------------------------------------------------------------
_GOLDEN = 0x9E3779B1


def _fingerprint(x: jax.Array) -> jax.Array:
  """sum_i bits_i * w_i mod 2^32 over the array's elements, with w_i = (i * golden) | 1 odd: a changed bit of any
  element changes the sum (an odd weight times a power of two is never 0 mod 2^32). Integer sums wrap exactly and in
  any order, so the value is the same on every device layout."""
  bits = jax.lax.bitcast_convert_type(x, jnp.uint32) if x.dtype.itemsize == 4 else x.astype(jnp.uint32)
  index = jnp.arange(x.size, dtype=jnp.uint32).reshape(x.shape)
  return jnp.sum(bits * ((index * jnp.uint32(_GOLDEN)) | jnp.uint32(1)), dtype=jnp.uint32)


@jax.jit
def _fingerprints(state: Any) -> Any:
  return jax.tree.map(_fingerprint, state)


def fingerprints(state: Any) -> dict[str, int]:
  """{array path: its fingerprint} for a state pytree, computed on the devices where the arrays live."""
  values = jax.device_get(_fingerprints(state))
  return {jax.tree_util.keystr(path): int(v) for path, v in jax.tree_util.tree_flatten_with_path(values)[0]}


def _first_line(error: Exception) -> str:
  """An exception's first line (readers' errors can run to pages)."""
  return str(error).splitlines()[0] if str(error) else ""


class FingerprintMismatchError(ValueError):
  """A restored array differs from the one that was saved (bit rot, a partial overwrite, a bad copy)."""


class DiskFullError(ValueError):
  """A checkpoint could not be written for lack of space; the committed steps are intact."""


def _disk_full(error: Exception) -> bool:
  text = str(error)
  return "No space left on device" in text or "RESOURCE_EXHAUSTED" in text or getattr(error, "errno", None) == 28


class Checkpointer:
  def __init__(self, directory: str, *, max_to_keep: int, async_save: bool = True):
    self.directory = storage.resolve(directory)
    self._options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep, create=True, enable_async_checkpointing=async_save
    )
    self._manager = self._open()

  def _open(self) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(self.directory, options=self._options, item_names=("state", "config", "fingerprints"))

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, state: Any, config_json: dict[str, Any]) -> None:
    """Start saving ``state`` at ``step`` (asynchronously; ``wait()`` blocks until it is committed)."""
    if step in self._manager.all_steps():
      return
    try:  # a save first waits for the one before it, whose failure surfaces here
      self._manager.save(  # the fingerprints are computed now, before the next step donates the state's buffers
        step,
        args=ocp.args.Composite(
          state=ocp.args.StandardSave(state),
          config=ocp.args.JsonSave(config_json),
          fingerprints=ocp.args.JsonSave(fingerprints(state)),
        ),
        force=True,
      )
    except Exception as e:
      raise self._write_failed(e) from None

  def restore(self, step: int, abstract_state: Any) -> tuple[int, Any, dict[str, Any]]:
    """(step, state, saved config) of one given step; FingerprintMismatchError if any array differs from what was
    saved."""
    items = {"state": ocp.args.StandardRestore(abstract_state), "config": ocp.args.JsonRestore()}
    verified = storage.isdir(storage.join(self.directory, str(step), "fingerprints"))
    if verified:
      items["fingerprints"] = ocp.args.JsonRestore()
    else:
      logging.warning("Checkpoint at step %d has no fingerprints (saved by an older version): not verified.", step)
    restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    if verified:
      saved, now = dict(restored["fingerprints"]), fingerprints(restored["state"])
      differ = sorted(k for k in saved.keys() | now.keys() if saved.get(k) != now.get(k))
      if differ:
        more = " ..." if len(differ) > 4 else ""
        raise FingerprintMismatchError(
          f"{len(differ)} array(s) differ from what was saved ({', '.join(differ[:4])}{more})"
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
          _first_line(e),
        )
        try:
          self._quarantine(step)
        except OSError as moved:  # a read-only workdir (evaluate may read one): skip the step, move nothing
          logging.warning("Could not move step %d aside (%s); using the previous step.", step, moved)
    return None

  def read_config(self, step: int | None = None) -> tuple[int, dict[str, Any]]:
    """(step, the config saved with that checkpoint); by default the newest step whose config can be read."""
    steps = self.all_steps()
    if not steps:
      raise ValueError(f"no checkpoint in {self.directory}: train first, or check --workdir")
    if step is not None and step not in steps:
      raise ValueError(f"no checkpoint for step {step} in {self.directory}; there are {steps}")
    errors = []
    for s in [step] if step is not None else reversed(steps):
      try:
        restored = self._manager.restore(s, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
        return s, dict(restored["config"])
      except Exception as e:  # a damaged step: the one before it may be fine
        errors.append(f"step {s}: {type(e).__name__}: {_first_line(e)}")
    raise ValueError(f"no readable checkpoint config in {self.directory} ({'; '.join(errors)})")

  def _quarantine(self, step: int) -> None:
    """Move an unreadable step out of the manager's directory (so a later save of that step can succeed)."""
    if jax.process_index() == 0:
      src = storage.join(self.directory, str(step))
      dst_dir = storage.join(storage.dirname(self.directory), "checkpoints_corrupt")
      storage.makedirs(dst_dir)
      dst = storage.join(dst_dir, f"{step}.{int(time.time())}")
      storage.move_tree(src, dst)
      logging.warning("Unreadable checkpoint kept for inspection at %s", dst)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils

      multihost_utils.sync_global_devices(f"quarantine_{step}")
    self._manager.close()
    self._manager = self._open()

  def _write_failed(self, error: Exception) -> Exception:
    """The error to raise for a failed write: a full disk said in one line, with what to do; others as they are."""
    if not _disk_full(error):
      return error
    committed = self.all_steps()
    kept = f"the last committed step ({committed[-1]}) is intact" if committed else "no step had been committed yet"
    return DiskFullError(
      f"no space left to write a checkpoint in {self.directory}; {kept}. Free space (or use a --workdir with "
      "more room) and rerun the same command to resume."
    )

  def wait(self) -> None:
    try:
      self._manager.wait_until_finished()
    except Exception as e:
      raise self._write_failed(e) from None

  def close(self) -> None:
    try:
      self._manager.wait_until_finished()
    except Exception as e:
      self._manager.close()
      raise self._write_failed(e) from None
    self._manager.close()


def abstract_with_shardings(abstract_state: Any, shardings: Any) -> Any:
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_state, shardings)
