"""The tf.data service: the training input's per-example work (read, parse, decode, crop, flip, batch) done by worker
processes, on this host's or other machines' cores, and streamed to the trainers (docs/data.md, "tf.data service").

A dispatcher (``serve_dispatcher``) hands out the work; workers (``serve_worker``) register with it and run it;
``python -m alexnet_jax.data_service`` starts either. Training with ``--config.data.service=HOST:PORT`` (the
dispatcher's address) sends each epoch's pipeline of its process's share to the service (``distribute``) and reads
the batches back (``AugmentedSource._service_batches``).

What holds (tested in tests/system/test_data_service.py): each epoch of each JAX process is one job of the service,
in dynamic sharding (``ShardingPolicy.DYNAMIC``): the dispatcher hands the share's pieces (shards, or parts of one)
out to whichever worker asks next, so every example of the share is read exactly once per epoch (while no worker is
lost), in an order that depends on the workers' timing. The workers need the data at the same path as the trainers,
and TensorFlow only (no JAX; GPUs stay hidden from them).
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time

_ADDRESS = re.compile(r"^(?P<host>[A-Za-z0-9_.\-]+|\[[0-9A-Fa-f:.]+\]):(?P<port>[0-9]{1,5})$")


def parse_address(address: str, what: str = "data.service") -> tuple[str, int]:
  """``HOST:PORT`` -> (host, port). Raises ValueError saying the expected form for anything else (a scheme, no
  port, a port outside 1-65535)."""
  m = _ADDRESS.match(address or "")
  if not m or not 0 < int(m["port"]) < 65536:
    raise ValueError(
      f"{what}={address!r} is not HOST:PORT (the dispatcher's, e.g. 10.0.0.2:5050, as `python -m "
      "alexnet_jax.data_service --role=dispatcher --port=5050` prints it)"
    )
  return m["host"].strip("[]"), int(m["port"])


def check_reachable(address: str, timeout: float = 10.0) -> None:
  """Raise ConnectionError (a transient error: training exits 75, a rerun retries) when nothing accepts a
  connection at ``address`` (HOST:PORT) within ``timeout`` seconds. tf.data's own client would wait for the
  dispatcher for an hour without a word."""
  host, port = parse_address(address)
  try:
    socket.create_connection((host, port), timeout=timeout).close()
  except OSError as e:
    raise ConnectionError(
      f"the tf.data service dispatcher at {address} (data.service) is not reachable ({e}): start it with `python -m "
      f"alexnet_jax.data_service --role=dispatcher --port={port}` on {host}, and workers with `--role=worker "
      f"--dispatcher={address}`"
    ) from None


def _tf():
  from alexnet_jax.native import tensorflow_devices

  tensorflow_devices.hide_accelerators_from_tensorflow()  # a worker's tf.data work runs on its CPUs only
  import tensorflow as tf

  return tf


def serve_dispatcher(port: int, work_dir: str = ""):
  """A started ``tf.data.experimental.service.DispatchServer`` on ``port`` (0: any free one). ``work_dir``: where
  it keeps its journal, so that a restarted dispatcher resumes its jobs (fault-tolerant mode); '' keeps nothing."""
  tf = _tf()
  service = tf.data.experimental.service
  config = service.DispatcherConfig(port=port, work_dir=work_dir or None, fault_tolerant_mode=bool(work_dir))
  return service.DispatchServer(config, start=True)


def serve_worker(dispatcher: str, port: int = 0, host: str = ""):
  """A started ``tf.data.experimental.service.WorkerServer`` registered with ``dispatcher`` (HOST:PORT), listening
  on ``port`` (0: any free one). ``host``: the name the trainers reach it at (default: this machine's host name);
  it is told to the dispatcher as HOST:PORT. Raises ValueError for a ``dispatcher`` not of that form."""
  parse_address(dispatcher, "--dispatcher")
  tf = _tf()
  service = tf.data.experimental.service
  host = host or socket.gethostname()
  config = service.WorkerConfig(dispatcher_address=dispatcher, worker_address=f"{host}:%port%", port=port)
  return service.WorkerServer(config, start=True)


def bound_port(server) -> int:
  """The port a started DispatchServer or WorkerServer listens on (the one asked, or the free one it took for 0).
  TensorFlow offers no public accessor: this reads the server's ``_address`` (HOST:PORT)."""
  return int(server._address.rsplit(":", 1)[1])


def distribute(dataset, address: str):
  """``dataset`` run by the service at ``address`` (HOST:PORT) as one new job in dynamic sharding: each of its
  splits (the elements of its source ``from_tensor_slices``) read by exactly one worker; uncompressed (images
  compress badly; snappy costs the trainer's cores)."""
  import tensorflow as tf

  service = tf.data.experimental.service
  return dataset.apply(
    service.distribute(service.ShardingPolicy.DYNAMIC, service=f"grpc://{address}", compression=None)
  )


class LocalService:
  """A dispatcher in this process and ``workers`` worker processes (``python -m alexnet_jax.data_service``) on
  127.0.0.1, for the tests and the input benchmark: ``with LocalService(2) as address: ...``; ``add_workers(n)``
  registers more with the same dispatcher (jobs started after it use them all). The workers start together (each
  imports TensorFlow: ~10 s of a core) and are ended on exit, the dispatcher stopped."""

  def __init__(self, workers: int, timeout: float = 120.0):
    self.workers, self.timeout = workers, timeout
    self.processes: list[subprocess.Popen] = []
    self.dispatcher = None
    self.address = ""

  def add_workers(self, count: int) -> None:
    """Start ``count`` more worker processes and return once each serves. Raises RuntimeError for one that exits
    or does not start within the timeout."""
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH", "")) if p)  # this alexnet_jax
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": path}
    flags = ("--role=worker", f"--dispatcher={self.address}", "--port=0", "--host=127.0.0.1")
    started = [
      subprocess.Popen(
        [sys.executable, "-m", "alexnet_jax.data_service", *flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
      )
      for _ in range(count)
    ]
    self.processes += started
    deadline = time.monotonic() + self.timeout
    for p in started:
      line = p.stdout.readline()  # the one JSON line each server prints once it serves
      if not line or time.monotonic() > deadline:
        raise RuntimeError(f"`python -m alexnet_jax.data_service {' '.join(flags)}` did not start (exit {p.poll()})")

  def __enter__(self) -> str:
    try:
      self.dispatcher = serve_dispatcher(0)
      self.address = f"127.0.0.1:{bound_port(self.dispatcher)}"
      self.add_workers(self.workers)
    except BaseException:
      self.__exit__()
      raise
    return self.address

  def __exit__(self, *exc) -> None:
    for p in self.processes:
      if p.poll() is None:
        p.terminate()
    for p in self.processes:
      try:
        p.wait(timeout=30)
      except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
    if self.dispatcher is not None:
      self.dispatcher._stop()
      self.dispatcher = None
