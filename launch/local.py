#!/usr/bin/env python3
r"""Run one multi-process JAX job on this machine: N processes, each with its own devices, as a cluster would.

  python launch/local.py --num_processes=2 --devices_per_process=4 -- \
    python -m alexnet_jax.main --config=configs/synthetic.py --workdir=/tmp/two_procs

Each process gets ``--coordinator_address=localhost:PORT --num_processes=N --process_id=I`` appended to the command
and, with ``--devices_per_process``, that many fake CPU devices (``JAX_PLATFORMS=cpu`` and
``--xla_force_host_platform_device_count``); together they form one mesh over every device. Output lines are
prefixed with ``[process I]``. When a process fails, the others get ``--grace_secs`` to end by themselves (JAX's
runtime notices a lost peer) and are then stopped; the exit status is the first failure's (0 if all succeeded).
``--dry_run`` prints the commands and environments instead. Standard library only.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time

COLLECTIVE_TIMEOUT_FLAGS = (
  # Several fake devices per process on few cores: a slow peer at a CPU collective is not a hang.
  "--xla_cpu_collective_call_terminate_timeout_seconds=600",
  "--xla_cpu_collective_call_warn_stuck_timeout_seconds=120",
)


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def process_commands(
  command: list[str], num_processes: int, port: int, devices_per_process: int | None, env: dict[str, str]
) -> list[tuple[list[str], dict[str, str]]]:
  """(argv, environment) of each process."""
  out = []
  for i in range(num_processes):
    argv = [
      *command,
      f"--coordinator_address=localhost:{port}",
      f"--num_processes={num_processes}",
      f"--process_id={i}",
    ]
    penv = dict(env)
    if devices_per_process:
      kept = [f for f in penv.get("XLA_FLAGS", "").split() if "host_platform_device_count" not in f]
      extra = [f for f in COLLECTIVE_TIMEOUT_FLAGS if f.split("=")[0] not in penv.get("XLA_FLAGS", "")]
      penv["XLA_FLAGS"] = " ".join([*kept, f"--xla_force_host_platform_device_count={devices_per_process}", *extra])
      penv["JAX_PLATFORMS"] = "cpu"
    out.append((argv, penv))
  return out


def _pump(stream, prefix: str) -> None:
  for line in iter(stream.readline, b""):
    sys.stdout.buffer.write(prefix.encode() + line)
    sys.stdout.flush()


def run(commands: list[tuple[list[str], dict[str, str]]], grace_secs: float) -> int:
  procs, pumps = [], []
  for i, (argv, env) in enumerate(commands):
    p = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    print(f"[launch] process {i}: pid {p.pid}", flush=True)
    t = threading.Thread(target=_pump, args=(p.stdout, f"[process {i}] "), daemon=True)
    t.start()
    procs.append(p)
    pumps.append(t)

  def stop_all(signum, frame):  # pass SIGTERM / SIGINT on: each process saves a checkpoint and exits 75
    del frame
    for p in procs:
      if p.poll() is None:
        p.send_signal(signum)

  signal.signal(signal.SIGTERM, stop_all)
  signal.signal(signal.SIGINT, stop_all)

  first_failure, deadline = None, None
  while any(p.poll() is None for p in procs):
    for i, p in enumerate(procs):
      if p.returncode not in (None, 0) and first_failure is None:
        first_failure = (i, p.returncode)
        deadline = time.monotonic() + grace_secs
        print(f"[launch] process {i} exited with {_describe(p.returncode)}; the others get {grace_secs:g} s to end")
    if deadline is not None and time.monotonic() > deadline:
      for i, p in enumerate(procs):
        if p.poll() is None:
          print(f"[launch] process {i} still running after {grace_secs:g} s: killing it", flush=True)
          p.kill()
      break
    time.sleep(0.2)
  for p in procs:
    p.wait()
  for t in pumps:
    t.join(timeout=5)
  codes = [p.returncode for p in procs]
  print("[launch] exit statuses: " + ", ".join(f"process {i}: {_describe(c)}" for i, c in enumerate(codes)))
  if first_failure is None:
    first_failure = next(((i, c) for i, c in enumerate(codes) if c), None)
  if first_failure is None:
    return 0
  code = first_failure[1]
  return code if code > 0 else 128 - code


def _describe(code: int) -> str:
  return f"signal {signal.Signals(-code).name}" if code < 0 else f"status {code}"


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], usage="%(prog)s [options] -- COMMAND ...")
  parser.add_argument("--num_processes", type=int, default=2)
  parser.add_argument("--devices_per_process", type=int, default=None, help="fake CPU devices per process")
  parser.add_argument("--port", type=int, default=0, help="coordinator port (default: a free one)")
  parser.add_argument("--grace_secs", type=float, default=180.0, help="after one process fails, wait this long")
  parser.add_argument("--dry_run", action="store_true", help="print the commands, run nothing")
  parser.add_argument("command", nargs=argparse.REMAINDER)
  args = parser.parse_args(argv)
  command = args.command[1:] if args.command[:1] == ["--"] else args.command
  if not command:
    parser.error("give the command to run after --, e.g. -- python -m alexnet_jax.main --config=... --workdir=...")
  if args.num_processes < 1:
    parser.error("--num_processes must be at least 1")
  commands = process_commands(
    command, args.num_processes, args.port or free_port(), args.devices_per_process, dict(os.environ)
  )
  if args.dry_run:
    for i, (cmd, env) in enumerate(commands):
      changed = {k: v for k, v in env.items() if os.environ.get(k) != v}
      prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(changed.items()))
      print(f"# process {i}\n{prefix + ' ' if prefix else ''}{shlex.join(cmd)}")
    return 0
  return run(commands, args.grace_secs)


if __name__ == "__main__":
  sys.exit(main())
