"""The input's background thread: host batches made ahead of the steps, and put on the devices ahead of them."""

from __future__ import annotations

import collections
import queue
import threading
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np

from alexnet_jax import parallel


def threaded(iterator: Iterator[Any], size: int) -> Iterator[Any]:
  """Run ``iterator`` in a background thread, ``size`` items ahead. The thread makes host (numpy) batches only and
  is stopped and joined when the consumer closes the generator, so none is left inside native code at exit."""
  q: queue.Queue = queue.Queue(maxsize=max(1, size))
  stop = threading.Event()
  done = object()

  def put(item) -> bool:
    while not stop.is_set():
      try:
        q.put(item, timeout=0.05)
        return True
      except queue.Full:
        continue
    return False

  def producer():
    try:
      for item in iterator:
        if not put(item):
          return
    except BaseException as e:
      put(e)
      return
    put(done)

  thread = threading.Thread(target=producer, daemon=True, name="input_producer")
  thread.start()
  try:
    while True:
      item = q.get()
      if item is done:
        return
      if isinstance(item, BaseException):
        raise item
      yield item
  finally:
    stop.set()
    thread.join(timeout=60)


def prefetch(iterator: Iterator[dict[str, np.ndarray]], size: int, sharding) -> Iterator[dict[str, jax.Array]]:
  """Host batches made in a background thread; each put on the devices (asynchronously, from this thread) ``size``
  steps before the step that uses it."""
  host = threaded(iterator, size)
  ahead: collections.deque = collections.deque()
  try:
    for batch in host:
      ahead.append(parallel.to_global(batch, sharding))
      if len(ahead) > size:
        yield ahead.popleft()
    while ahead:
      yield ahead.popleft()
  finally:
    host.close()
