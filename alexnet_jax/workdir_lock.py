"""One writer per workdir: a lease file, ``WORKDIR/lock.json``, naming the run that holds it.

Two runs writing one workdir (a job submitted twice, a sweep with a repeated name) would interleave checkpoints and
metrics silently. The first run takes the lease (an exclusive create); a second one finds it and stops at once,
naming the holder. A lease whose holder is provably gone is taken over, with a warning: on the same host when its
process no longer exists (or its pid now belongs to a process started later), on another host when its heartbeat,
refreshed every ``heartbeat_seconds``, is older than ``expire_seconds``. Multi-process runs take it once (process 0)
and all processes learn the outcome together. Reading a workdir (``evaluate``) takes no lease.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from typing import Any

from absl import logging

from alexnet_jax import storage

LOCK_FILE = "lock.json"


class WorkdirLockedError(ValueError):
  """Another live run holds the workdir."""


def _process_start_ticks(pid: int) -> int | None:
  """When process ``pid`` started (clock ticks since boot, from /proc), or None where /proc does not say."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      return int(f.read().rsplit(")", 1)[1].split()[19])
  except (OSError, IndexError, ValueError):
    return None


def _alive_here(holder: dict[str, Any]) -> bool:
  """Whether the holder (on this host) still runs: its pid exists and, where /proc tells, started when it said."""
  pid = int(holder.get("pid", -1))
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except (PermissionError, OverflowError, ValueError):
    return pid > 0
  ticks = _process_start_ticks(pid)
  return ticks is None or holder.get("start_ticks") in (None, ticks)


class WorkdirLock:
  def __init__(self, workdir: str, *, heartbeat_seconds: float = 30.0, expire_seconds: float = 600.0):
    self.path = storage.join(workdir, LOCK_FILE)
    self.heartbeat_seconds, self.expire_seconds = heartbeat_seconds, expire_seconds
    self.me = {
      "host": socket.gethostname(),
      "pid": os.getpid(),
      "start_ticks": _process_start_ticks(os.getpid()),
      "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None
    self.held = False

  def _record(self) -> dict[str, Any]:
    """What the lease says of its holder: who it is, and that it is alive now."""
    return {**self.me, "heartbeat": time.time()}

  def describe(self, holder: dict[str, Any]) -> str:
    age = time.time() - float(holder.get("heartbeat", 0))
    return (
      f"pid {holder.get('pid')} on host {holder.get('host')}, started {holder.get('started')}, "
      f"last heartbeat {age:.0f} s ago"
    )

  def _write_new(self) -> bool:
    """Create the lease if there is none (atomically); False if one exists.

    Object stores have no exclusive create: there the lease is written when none exists and read back a moment
    later to see who won a race (two runs that start within that moment could both believe they won; later ones
    see the lease)."""
    if storage.is_url(self.path):
      if storage.exists(self.path):
        return False
      record = self._record()
      with storage.open(self.path, "w") as f:
        json.dump(record, f)
      time.sleep(1.0)
      return self._read() == record
    try:
      fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      return False
    with os.fdopen(fd, "w") as f:
      json.dump(self._record(), f)
    return True

  def _read(self) -> dict[str, Any] | None:
    try:
      with storage.open(self.path) as f:
        return json.load(f)
    except FileNotFoundError:
      return None
    except Exception:
      return {}  # unreadable: written by a run killed mid-write (the create and the write are not one step)

  def _gone(self, holder: dict[str, Any]) -> bool:
    if not holder:  # an empty or half-written lease: its writer died before finishing it
      return time.time() - storage.mtime(self.path) > self.heartbeat_seconds
    if holder.get("host") == self.me["host"]:
      return not _alive_here(holder)
    return time.time() - float(holder.get("heartbeat", 0)) > self.expire_seconds

  def acquire(self) -> None:
    """Take the lease or raise WorkdirLockedError naming the holder (a stale lease is taken over)."""
    for _ in range(3):  # a takeover races with another newcomer at most a few times
      if self._write_new():
        break
      holder = self._read()
      if holder is None:
        continue  # released in between: try again
      if not self._gone(holder):
        raise WorkdirLockedError(
          f"{storage.dirname(self.path)} is in use by another run ({self.describe(holder)}). Two runs must not "
          "write one workdir: wait for it, stop it, or use another --workdir. If that run is surely gone (its "
          f"host is down), remove {self.path}."
        )
      if self._read() != holder:
        continue  # another newcomer took it over first: judge the new holder
      logging.warning("Taking over the workdir lease of a run that is gone (%s).", self.describe(holder))
      try:
        storage.remove(self.path)
      except FileNotFoundError:
        pass
    else:
      raise WorkdirLockedError(f"could not take {self.path}: other runs keep taking it; is a sweep repeating a name?")
    self.held = True
    self._thread = threading.Thread(target=self._beat, daemon=True, name="workdir_lease")
    self._thread.start()

  def _beat(self) -> None:
    while not self._stop.wait(self.heartbeat_seconds):
      try:
        if storage.is_url(self.path):  # an object is replaced whole by a write
          with storage.open(self.path, "w") as f:
            json.dump(self._record(), f)
          continue
        tmp = f"{self.path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
          json.dump(self._record(), f)
        os.replace(tmp, self.path)
      except Exception as e:  # a full or vanished disk: the run itself will say so
        logging.warning("Could not refresh the workdir lease %s: %s", self.path, e)

  def release(self) -> None:
    self._stop.set()
    if self._thread is not None:
      self._thread.join(timeout=10)
    if self.held:
      holder = self._read()
      if holder and holder.get("pid") == self.me["pid"] and holder.get("host") == self.me["host"]:
        storage.remove(self.path)
      self.held = False


def hold(workdir: str) -> WorkdirLock | None:
  """Take the workdir's lease for this run (process 0 takes it; every process learns the outcome). Returns the lock
  to ``release()`` at the end (None on the other processes)."""
  import jax

  lock, error = None, ""
  if jax.process_index() == 0:
    lock = WorkdirLock(workdir)
    try:
      lock.acquire()
    except WorkdirLockedError as e:
      error = str(e)
  if jax.process_count() > 1:
    import numpy as np
    from jax.experimental import multihost_utils

    failed = bool(multihost_utils.process_allgather(np.asarray(bool(error))).any())
    if failed and not error:
      error = f"{workdir} is in use by another run (process 0 could not take its lease; see its log)."
  if error:
    raise WorkdirLockedError(error)
  return lock
