r"""Where the test suite's CPU goes, process by process: every Python process a venv starts records, at exit, its
command line, CPU seconds, XLA compile seconds (JAX's ``backend_compile_duration`` events) and whether it imported
TensorFlow and JAX; ``summary`` groups them by kind of command.

  python benchmarks/process_profile.py install .venv .venv-aot .venv-colab   # a .pth hook in each (from make test)
  PROCESS_PROFILE=/tmp/processes.jsonl make test
  python benchmarks/process_profile.py uninstall .venv .venv-aot .venv-colab
  python benchmarks/process_profile.py summary /tmp/processes.jsonl

A process killed by a signal (the chaos tests) or ended by ``os._exit`` records nothing. Results:
benchmarks/RESULTS.md, "The test suite's time, a sixth time".
"""

from __future__ import annotations

import collections
import glob
import json
import os
import sys

HOOK = "alexnet_jax_process_profile"

# The hook itself: imported by a .pth file at every interpreter start of the venv; the standard library only.
_HOOK_SOURCE = r"""
import atexit, importlib.abc, importlib.util, json, os, resource, sys, time

_start = time.time()
_compile = {"compile_s": 0.0, "compiles": 0}


def _listen(event, duration, **kwargs):
  if event.endswith("backend_compile_duration"):
    _compile["compile_s"] += duration
    _compile["compiles"] += 1


class _WhenJaxMonitoringLoads(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path, target=None):
    if name != "jax._src.monitoring":
      return None
    sys.meta_path.remove(self)
    spec = importlib.util.find_spec(name)
    exec_module = spec.loader.exec_module

    def exec_and_listen(module):
      exec_module(module)
      module.register_event_duration_secs_listener(_listen)

    spec.loader.exec_module = exec_and_listen
    return spec


def _record():
  usage = resource.getrusage(resource.RUSAGE_SELF)
  row = {
    "argv": sys.argv[:8],
    "wall_s": round(time.time() - _start, 2),
    "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
    "tensorflow": "tensorflow" in sys.modules,
    "jax": "jax" in sys.modules,
    "test": os.environ.get("PYTEST_CURRENT_TEST", "")[:200],
    **{k: round(v, 2) for k, v in _compile.items()},
  }
  with open(os.environ["PROCESS_PROFILE"], "a") as f:
    f.write(json.dumps(row) + "\n")


if os.environ.get("PROCESS_PROFILE"):
  sys.meta_path.insert(0, _WhenJaxMonitoringLoads())
  atexit.register(_record)
"""

KINDS = [  # (a word of the script's path, the kind), first match wins
  ("aot.py", "aot (XLA:TPU/GPU compiles)"),
  ("ipykernel", "notebook kernel"),
  ("main.py", "train CLI"),
  ("evaluate.py", "evaluate CLI"),
  ("torch_reference", "PyTorch reference"),
  ("benchmark", "benchmark"),
  ("prepare.py", "prepare / shapes"),
  ("shapes.py", "prepare / shapes"),
  ("embedded", "prepare / shapes"),
  ("data_service", "tf.data service"),
  ("weights", "weights CLI"),
  ("figures", "figures CLI"),
  ("pip", "pip"),
  ("_in_process", "pip"),
]


def site_packages(venv: str) -> str:
  found = glob.glob(os.path.join(venv, "lib", "python3*", "site-packages"))
  if not found:
    raise SystemExit(f"error: {venv} has no lib/python3*/site-packages: give a virtualenv's folder")
  return found[0]


def install(venvs: list[str]) -> None:
  for where in [site_packages(venv) for venv in venvs]:  # every venv checked before any is changed
    with open(os.path.join(where, f"{HOOK}.py"), "w") as f:
      f.write(_HOOK_SOURCE)
    with open(os.path.join(where, f"zz_{HOOK}.pth"), "w") as f:
      f.write(f"import {HOOK}\n")
    print(f"installed in {where} (records only where PROCESS_PROFILE names a file)")


def uninstall(venvs: list[str]) -> None:
  for where in [site_packages(venv) for venv in venvs]:
    for name in (f"{HOOK}.py", f"zz_{HOOK}.pth"):
      if os.path.exists(os.path.join(where, name)):
        os.remove(os.path.join(where, name))
    for compiled in glob.glob(os.path.join(where, "__pycache__", f"{HOOK}.*.pyc")):
      os.remove(compiled)
    print(f"removed from {where}")


def kind(argv: list[str]) -> str:
  script = argv[0] if argv else "?"
  for word, name in KINDS:
    if word in script:
      return name
  if script == "-c":  # pytest-xdist's workers (the in-process tests) and the tests' own `python -c` programs
    return "python -c (test workers, inline programs)"
  return "other: " + os.path.basename(script)


def summary(path: str) -> None:
  try:
    with open(path) as f:
      rows = [json.loads(line) for line in f if line.strip()]
  except (OSError, ValueError) as e:
    raise SystemExit(f"error: {path}: {e}: give the file PROCESS_PROFILE named during the run") from None
  by_kind = collections.defaultdict(lambda: collections.Counter())
  for row in rows:
    k = by_kind[kind(row["argv"])]
    k.update(
      processes=1,
      cpu_s=row["cpu_s"],
      compile_s=row["compile_s"],
      tensorflow=int(row["tensorflow"]),
      jax=int(row["jax"]),
    )
  total = collections.Counter()
  for k in by_kind.values():
    total.update(k)
  print(f"{'processes':>9} {'CPU s':>7} {'compile s':>9} {'import TF':>9} {'import JAX':>10}  kind")
  for name, k in [*sorted(by_kind.items(), key=lambda item: -item[1]["cpu_s"]), ("all", total)]:
    print(f"{k['processes']:9d} {k['cpu_s']:7.0f} {k['compile_s']:9.0f} {k['tensorflow']:9d} {k['jax']:10d}  {name}")


if __name__ == "__main__":
  command, *args = sys.argv[1:] or ["help"]
  if command == "install" and args:
    install(args)
  elif command == "uninstall" and args:
    uninstall(args)
  elif command == "summary" and len(args) == 1:
    summary(args[0])
  else:
    raise SystemExit(f"error: unknown or incomplete command {sys.argv[1:]}; usage:\n{__doc__}")
