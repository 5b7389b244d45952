"""Checkpoints with orbax: async, atomic, keep-N, restored straight into the current shardings.

Each checkpoint holds three items: ``state`` (the plain train-state pytree), ``config`` (the run's config as JSON,
to refuse a resume that would silently change the computation) and ``fingerprints`` (one exact checksum per array,
computed on the devices at save and compared at restore: damage that the reader does not trip on, a flipped bit or an
overwritten block inside the data, is caught too). A step directory is only a checkpoint once orbax
has committed it (an interrupted save leaves a ``*.orbax-checkpoint-tmp`` folder that is never read).

A restore tells damage from everything else, because only damage may cost a checkpoint:

- **damaged** (a fingerprint mismatch; bytes or metadata the reader cannot decode; a file of a committed step
  missing; each read error seen twice in a row): the step is moved aside to ``WORKDIR/checkpoints_corrupt/`` and the
  previous step is used, with a warning;
- **does not fit** (the saved config differs, checked first by the caller; the saved arrays' shapes, dtypes or keys
  differ from the state this code and config build, read from the checkpoint's metadata before any array):
  ``CheckpointMismatchError``, nothing moved;
- **anything else** (no permission, out of memory, a storage service unavailable, an error we do not know):
  ``CheckpointReadError``, nothing moved. The run stops; the checkpoints are all still there for a rerun.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from alexnet_jax import cli, storage

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


def _first_line(error: BaseException) -> str:
  """An exception's first line, without tensorstore's spec dump (readers' errors can run to pages)."""
  line = str(error).splitlines()[0] if str(error) else ""
  return re.split(r" \[tensorstore_spec=| See full TensorStore details", line)[0]


class DiskFullError(ValueError):
  """A checkpoint could not be written for lack of space; the committed steps are intact."""


class CheckpointMismatchError(ValueError):
  """A readable checkpoint that does not fit the state the current code and config build (a changed shape, dtype or
  set of arrays): not damage, so nothing is moved."""


class CheckpointReadError(ValueError):
  """A checkpoint could not be read for a reason that is not evidence of damage (permission, memory, an unavailable
  storage service, an unknown error): nothing is moved. ``transient`` is True when a rerun may well succeed."""

  def __init__(self, message: str, *, transient: bool = False):
    super().__init__(message)
    self.transient = transient


class _Damaged(Exception):
  """Internal: evidence that a committed step is damaged (it is moved aside and the step before it is tried)."""


# How a read failure is judged. Tensorstore reports absl status codes at the start of its messages.
_NOT_DAMAGE = ("PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "UNAUTHENTICATED", "out of memory", "Out of memory")
_MISMATCH = ("not compatible with the stored shape", "Requested shape", "dtype mismatch")
_DAMAGE = (
  "NOT_FOUND",
  "OUT_OF_RANGE",
  "DATA_LOSS",
  "FAILED_PRECONDITION",
  "Error reading",
  "Error decoding",
  "corrupt",
)


def _chain(error: BaseException) -> list[BaseException]:
  """``error`` and the errors behind it (``__cause__``, else ``__context__``): orbax wraps tensorstore's
  ``OUT_OF_RANGE: Error reading ...`` in a bare ``Exception`` whose own text says nothing."""
  links: list[BaseException] = []
  while error is not None and error not in links and len(links) < 16:
    links.append(error)
    error = error.__cause__ or error.__context__
  return links


def _judge_one(error: BaseException) -> str:
  text = f"{type(error).__name__}: {error}"
  if isinstance(error, PermissionError | MemoryError) or any(m in text for m in _NOT_DAMAGE):
    return "other"
  if cli.transient(error):  # the one rule of what a rerun may not meet again (the exit codes use it too)
    return "transient"
  if any(m in text for m in _MISMATCH):
    return "mismatch"
  if isinstance(error, json.JSONDecodeError | FileNotFoundError | UnicodeDecodeError | EOFError):
    return "damage"
  if isinstance(error, OSError | ValueError) and any(m in text for m in _DAMAGE):
    return "damage"
  return "unknown"


_PRECEDENCE = ("other", "transient", "mismatch", "damage")  # a reason not to move anything wins over damage


def _judge(error: BaseException) -> tuple[str, BaseException]:
  """('damage' (evidence of damaged bytes, if it repeats) | 'mismatch' | 'transient' | 'other' (stop, move
  nothing), the error in the chain that decided it), over ``error`` and every error behind it."""
  verdicts = [(_judge_one(e), e) for e in _chain(error)]
  for kind in _PRECEDENCE:
    for verdict, link in verdicts:
      if verdict == kind:
        return kind, link
  return "other", error


def _path(path: tuple[Any, ...]) -> str:
  """A pytree path as 'opt_state/velocity/conv1/kernel', whatever the containers (orbax's metadata tree holds dicts
  where the state holds named tuples)."""
  names = (getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))) for k in path)
  return "/".join(str(n) for n in names)


def _describe(shape: tuple[int, ...], dtype: Any) -> str:
  return f"{tuple(shape)} {np.dtype(dtype).name}"


def mismatches(saved_metadata: Any, abstract_state: Any) -> list[str]:
  """How a checkpoint's arrays (its metadata tree) differ from the state wanted now (a pytree of
  ``jax.ShapeDtypeStruct``): one line per array whose shape or dtype differs, that is saved but not wanted, or
  wanted but not saved. Empty when the state restores as it is."""
  saved = {_path(p): m for p, m in jax.tree_util.tree_flatten_with_path(saved_metadata)[0]}
  wanted = {_path(p): a for p, a in jax.tree_util.tree_flatten_with_path(abstract_state)[0]}
  lines = []
  for key in sorted(saved.keys() | wanted.keys(), key=lambda k: (not k.startswith("params/"), k)):  # params first
    m, a = saved.get(key), wanted.get(key)
    if a is None:
      lines.append(f"{key} is saved but this code has no such array")
    elif m is None:
      lines.append(f"{key} is not in the checkpoint")
    elif hasattr(m, "shape") and (tuple(m.shape) != tuple(a.shape) or np.dtype(m.dtype) != np.dtype(a.dtype)):
      lines.append(f"{key}: saved {_describe(m.shape, m.dtype)}, now {_describe(a.shape, a.dtype)}")
  return lines


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
    handlers = {
      "state": ocp.StandardCheckpointHandler(),
      "config": ocp.JsonCheckpointHandler(),
      "fingerprints": ocp.JsonCheckpointHandler(),
    }
    return ocp.CheckpointManager(self.directory, options=self._options, item_handlers=handlers)

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

  def _read(self, step: int, what: str, read: Callable[[], Any]) -> Any:
    """``read()``, judged: damage only when the same kind of read error happens twice in a row."""
    for attempt in (1, 2):
      try:
        return read()
      except Exception as e:
        kind, why = _judge(e)
        reason = f"{type(why).__name__}: {_first_line(why)}"
        if kind == "damage" and attempt == 1:
          logging.warning("Reading the %s of step %d failed (%s); trying once more.", what, step, reason)
          continue
        if kind == "damage":
          raise _Damaged(reason) from e
        if kind == "mismatch":
          raise CheckpointMismatchError(
            f"the checkpoint at step {step} in {self.directory} does not fit the state this config builds "
            f"({reason}); nothing was moved. Resume with the config it was saved with, or use a new --workdir."
          ) from None
        raise CheckpointReadError(
          f"could not read the {what} of the checkpoint at step {step} in {self.directory} ({reason}); this is "
          "not evidence of damage, so every checkpoint was left in place. "
          + ("Rerun the same command to retry." if kind == "transient" else "Fix the cause and rerun to resume."),
          transient=kind == "transient",
        ) from None
    raise AssertionError("unreachable")

  def restore(
    self, step: int, abstract_state: Any, *, check_config: Callable[[int, dict[str, Any]], None] | None = None
  ) -> tuple[int, Any, dict[str, Any]]:
    """(step, state, saved config) of one given step.

    In order, each before anything bigger is read: the saved config (``check_config(step, config)`` may refuse it by
    raising), the saved arrays' shapes and dtypes against ``abstract_state`` (``CheckpointMismatchError``), then the
    arrays and their fingerprints. Raises ``_Damaged`` on evidence of damage (``restore_latest`` moves the step aside;
    other callers see it as ``CheckpointReadError``), ``CheckpointMismatchError``, ``CheckpointReadError``.
    """
    saved_config = self._read(
      step,
      "config",
      lambda: dict(self._manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]),
    )
    if check_config is not None:
      check_config(step, saved_config)
    metadata = self._read(step, "array metadata", lambda: self._manager.item_metadata(step)["state"])
    if metadata is None:
      raise _Damaged("its array metadata is missing")
    differ = mismatches(metadata, abstract_state)
    if differ:
      more = f" (and {len(differ) - 6} more)" if len(differ) > 6 else ""
      raise CheckpointMismatchError(
        f"the checkpoint at step {step} in {self.directory} does not fit the state this code and config build: "
        f"{'; '.join(differ[:6])}{more}. A run cannot resume with other shapes (a changed model.width, "
        "num_classes, name, dtype, ...); nothing was moved. Resume with the config it was saved with, or use a new "
        "--workdir."
      )
    verified = storage.isdir(storage.join(self.directory, str(step), "fingerprints"))
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    if verified:
      items["fingerprints"] = ocp.args.JsonRestore()
    else:
      logging.warning("Checkpoint at step %d has no fingerprints (saved by an older version): not verified.", step)
    restored = self._read(step, "arrays", lambda: self._manager.restore(step, args=ocp.args.Composite(**items)))
    if verified:
      saved, now = dict(restored["fingerprints"]), fingerprints(restored["state"])
      differ = sorted(k for k in saved.keys() | now.keys() if saved.get(k) != now.get(k))
      if differ:
        more = " ..." if len(differ) > 4 else ""
        raise _Damaged(
          f"fingerprint mismatch: {len(differ)} array(s) differ from what was saved ({', '.join(differ[:4])}{more})"
        )
    return step, restored["state"], saved_config

  def restore_step(self, step: int, abstract_state: Any) -> tuple[int, Any, dict[str, Any]]:
    """``restore`` of exactly ``step``, for a caller that asked for it: damage is reported, not moved aside."""
    try:
      return self.restore(step, abstract_state)
    except _Damaged as e:
      raise CheckpointReadError(f"the checkpoint at step {step} in {self.directory} is damaged ({e})") from None

  def restore_latest(
    self, abstract_state: Any, *, check_config: Callable[[int, dict[str, Any]], None] | None = None
  ) -> tuple[int, Any, dict[str, Any]] | None:
    """(step, state, saved config) of the newest readable checkpoint, or None when there is none.

    ``abstract_state`` is a pytree of ``jax.ShapeDtypeStruct`` carrying the shardings wanted now, so a checkpoint
    written on another number of devices or processes lands directly in the current layout. A damaged step is moved
    to ``checkpoints_corrupt/`` and the one before it tried; every other failure (``check_config``'s refusal,
    ``CheckpointMismatchError``, ``CheckpointReadError``) is raised with every step left in place.
    """
    damaged = []
    for step in reversed(self.all_steps()):
      try:
        return self.restore(step, abstract_state, check_config=check_config)
      except _Damaged as e:
        damaged.append(step)
        logging.warning(
          "Checkpoint at step %d in %s cannot be read (%s); moving it aside and falling back to the previous step.",
          step,
          self.directory,
          e,
        )
        try:
          self._quarantine(step)
        except OSError as moved:  # a read-only workdir (evaluate may read one): skip the step, move nothing
          logging.warning("Could not move step %d aside (%s); using the previous step.", step, moved)
    if damaged:
      logging.warning(
        "Every checkpoint in %s was damaged (steps %s, kept for inspection in checkpoints_corrupt/): none is left "
        "to resume from.",
        self.directory,
        ", ".join(map(str, sorted(damaged))),
      )
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
