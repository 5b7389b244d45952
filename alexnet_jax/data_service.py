r"""Start a tf.data service server for training's input (docs/data.md, "tf.data service"):

  python -m alexnet_jax.data_service --role=dispatcher --port=5050
  python -m alexnet_jax.data_service --role=worker --dispatcher=HOST:5050   # one or more, on any machines

then train with ``--config.data.service=HOST:5050``. Each server prints one JSON line once it serves (``role``,
``address``: HOST:PORT, the port it got when ``--port=0``) and serves until SIGTERM or SIGINT (exit 0). A worker
reads the data at the path the trainers name (data.dir), so it needs the same files at the same path, and
TensorFlow (no JAX). Exit codes as every command's (alexnet_jax/cli.py): 2 for a bad command line, 1 for a server
that cannot start (a port in use).
"""

from __future__ import annotations

import json
import signal
import socket
import sys
import threading

from absl import flags

from alexnet_jax import cli

flags.DEFINE_enum("role", None, ["dispatcher", "worker"], "Which server to start.")
flags.DEFINE_integer(
  "port", None, "The port to serve on (0: any free one). Default: 5050 for the dispatcher, 0 for a worker."
)
flags.DEFINE_string("dispatcher", "", "Worker: the dispatcher's HOST:PORT.")
flags.DEFINE_string(
  "host", "", "The name the others reach this server at (printed; a worker tells the dispatcher). Default: host name."
)
flags.DEFINE_string(
  "work_dir", "", "Dispatcher: a folder for its journal, so that a restarted dispatcher keeps its jobs (default: none)."
)
flags.mark_flag_as_required("role")


def main(argv: list[str]) -> int:
  del argv
  from alexnet_jax.data import service

  f = flags.FLAGS
  if f.role == "worker" and not f.dispatcher:
    print("error: --role=worker needs --dispatcher=HOST:PORT (the dispatcher's address)", file=sys.stderr)
    return cli.EXIT_USAGE
  if f.role == "dispatcher" and f.dispatcher:
    print("error: --dispatcher is a worker's flag; a dispatcher takes --port", file=sys.stderr)
    return cli.EXIT_USAGE
  port = f.port if f.port is not None else (5050 if f.role == "dispatcher" else 0)
  if not 0 <= port < 65536:
    print(f"error: --port={port} is not a port (0-65535)", file=sys.stderr)
    return cli.EXIT_USAGE
  stop = threading.Event()
  for sig in (signal.SIGTERM, signal.SIGINT):
    signal.signal(sig, lambda *_: stop.set())
  try:
    if f.role == "dispatcher":
      server = service.serve_dispatcher(port, f.work_dir)
    else:
      server = service.serve_worker(f.dispatcher, port, f.host)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return cli.EXIT_USAGE
  except Exception as e:  # TensorFlow's errors for a port in use, a work_dir it cannot write
    print(f"error: the {f.role} could not start: {type(e).__name__}: {str(e).strip().splitlines()[0]}", file=sys.stderr)
    return cli.EXIT_ERROR
  bound = service.bound_port(server)  # the one asked, or a free one for 0
  address = f"{f.host or socket.gethostname()}:{bound}"
  print(json.dumps({"role": f.role, "address": address, **({"dispatcher": f.dispatcher} if f.dispatcher else {})}))
  sys.stdout.flush()
  while not stop.wait(1.0):
    pass
  server.stop()
  return cli.EXIT_DONE


if __name__ == "__main__":
  cli.run(main)
