"""Every test runs on CPU with 8 fake devices, so the sharded code paths are the ones tested.

The levels: ``tests/unit`` (fast, in-process: ``make test-fast``), ``tests/system`` (command lines, several
processes, faults, AOT compiles, launch kits, cloud storage), ``tests/docs`` (the README's and docs' commands, the
notebooks, Colab's stack). What they share is in ``tests/support``; this file only sets the environment, before
anything imports JAX."""

import os

from tests.support import FAST_COMPILE_FLAGS  # nothing that imports JAX

os.environ["XLA_FLAGS"] = " ".join(
  [f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f]
  + [
    "--xla_force_host_platform_device_count=8",
    # 8 fake devices on 2 busy cores: a straggler at a CPU collective is a false alarm, not a hang.
    "--xla_cpu_collective_call_terminate_timeout_seconds=600",
    "--xla_cpu_collective_call_warn_stuck_timeout_seconds=120",
    *FAST_COMPILE_FLAGS,  # in this process (tests/support/__init__.py): compile fast, run slower
  ]
)
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# JAX's persistent compilation cache, shared by every test process and every subprocess they start: the same tiny
# programs (the tiny run's train and eval steps above all) then compile once per `make test` instead of once per
# process. Measured on this 2-core machine: a test that runs the CLI three times took 64 s without it, 52 s with an
# empty cache and 30 s with a warm one. The AOT tests keep a user's environment (tests/system/test_aot.py: no cache).
# A process killed while it writes an entry (the chaos tests) leaves it truncated: JAX then warns, recompiles and goes
# on (pyproject.toml's filterwarnings lets that warning pass).
os.environ.setdefault(
  "JAX_COMPILATION_CACHE_DIR",
  os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".cache", "jax-tests"),
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# `benchmark --input_only` records its rates for `aot`: in the tests, here rather than in the user's ~/.cache.
os.environ.setdefault(
  "ALEXNET_JAX_INPUT_RATES",
  os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".cache", "tests", "input_rates.json"),
)

import resource

import jax
import pytest

from tests.support import durations

try:
  import xdist

  XDIST_VERSION = tuple(int(part) for part in xdist.__version__.split(".")[:3])
except (ImportError, ValueError):
  XDIST_VERSION = None

assert jax.device_count() == 8, "tests need 8 fake CPU devices (XLA_FLAGS was set too late?)"


def pytest_configure(config):
  """The full-size tests share one worker only through their ``xdist_group``: refuse `--dist loadgroup` where
  pytest-xdist silently stops grouping (its issue #1386: pytest >= 9.2 with pytest-xdist <= 3.8.0; pyproject.toml's
  dev extra keeps pytest below 9.2). tests/unit/test_conftest.py checks the grouping itself."""
  if config.getoption("dist", "no") == "loadgroup" and xdist_loadgroup_broken():
    raise pytest.UsageError(
      f"pytest {pytest.__version__} with pytest-xdist {XDIST_VERSION} does not group `xdist_group` tests under "
      "--dist loadgroup (pytest-xdist issue #1386): the full-size tests would run at once. Install what "
      "pyproject.toml's dev extra allows (pip install -e '.[dev,tf]': pytest < 9.2), or run without -n."
    )


def xdist_loadgroup_broken() -> bool:
  return XDIST_VERSION is not None and pytest.version_tuple[:2] >= (9, 2) and XDIST_VERSION <= (3, 8, 0)


def pytest_collection_modifyitems(config, items):
  """Longest first: xdist hands tests out in collection order, so a long test collected last runs alone at the end
  while the other worker idles. Modules go in the order of their measured time (tests/support/durations.txt, from
  `make durations`), unknown ones after; a module's tests stay together and in order (its fixtures are set up once)."""
  seconds = durations.module_seconds()
  first = {}
  for i, item in enumerate(items):
    first.setdefault(item.nodeid.split("::")[0], i)
  items.sort(key=lambda item: (-seconds.get(item.nodeid.split("::")[0], 0.0), first[item.nodeid.split("::")[0]]))


# Each test's CPU seconds beside its wall time in the JUnit report (a property ``cpu_s``), setup to teardown: this
# worker's, and its subprocesses' once reaped (charged to the test that reaps them: a server a module fixture started
# goes to the module's last test; daemons, such as SLURM's, are not counted). A test whose CPU time is far below its
# wall time waits, and a test that waits leaves a core idle (`make durations` sums both per level).
def _cpu_seconds() -> float:
  own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
  return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item):
  item.stash[_CPU_AT_SETUP] = _cpu_seconds()
  yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item, nextitem):
  yield
  if _CPU_AT_SETUP in item.stash:
    item.user_properties.append(("cpu_s", round(_cpu_seconds() - item.stash[_CPU_AT_SETUP], 1)))


_CPU_AT_SETUP = pytest.StashKey[float]()
