"""Each test module's measured time, so that conftest.py can start the longest first.

``tests/support/durations.txt`` holds one line per module, ``SECONDS PATH``, summed over its tests (setup, call and
teardown) at a recent ``make test``; ``make durations`` rewrites it from the JUnit reports that ``make test`` leaves in
``.cache/`` (``python -m tests.support.durations .cache/junit-*.xml``). A stale or missing file changes only the order.
"""

import collections
import pathlib
import sys
import xml.etree.ElementTree as ET

FILE = pathlib.Path(__file__).with_name("durations.txt")
ROOT = FILE.parents[2]


def module_seconds(path: pathlib.Path = FILE) -> dict[str, float]:
  """{"tests/unit/test_train.py": seconds, ...}; empty if the file is missing."""
  if not path.exists():
    return {}
  rows = (line.split(maxsplit=1) for line in path.read_text().splitlines() if line and not line.startswith("#"))
  return {module.strip(): float(seconds) for seconds, module in rows}


def from_junit(paths: list[str], measure: str = "time") -> dict[str, float]:
  """Seconds per module from pytest's JUnit XML reports (a testcase's ``file`` or, failing that, its classname):
  wall seconds (``measure="time"``) or CPU seconds (``"cpu_s"``, the property tests/conftest.py records)."""
  seconds = collections.Counter()
  for path in paths:
    for case in ET.parse(path).getroot().iter("testcase"):
      parts = case.get("classname", "").split(".")  # tests.unit.test_train[.TestClass]
      while parts and not (ROOT / ("/".join(parts) + ".py")).exists():
        parts.pop()
      if measure == "time":
        value = case.get("time", 0.0)
      else:
        value = next((p.get("value") for p in case.iter("property") if p.get("name") == measure), 0.0)
      seconds[case.get("file") or "/".join(parts) + ".py"] += float(value)
  return dict(seconds)


def per_level(seconds: dict[str, float]) -> dict[str, float]:
  levels = collections.Counter()
  for module, s in seconds.items():
    levels["/".join(module.split("/")[:2])] += s
  return dict(sorted(levels.items()))


def main(argv: list[str]) -> None:
  seconds = from_junit(argv[1:])
  if not seconds:
    sys.exit("error: no test cases in " + " ".join(argv[1:]) + ": run `make test` first (it writes .cache/junit-*.xml)")
  lines = [f"{s:8.1f} {m}" for m, s in sorted(seconds.items(), key=lambda kv: -kv[1])]
  FILE.write_text(
    "# seconds per test module at a `make test` (make durations); conftest.py starts the longest first\n"
    + "\n".join(lines)
    + "\n"
  )
  cpu = per_level(from_junit(argv[1:], "cpu_s"))  # 0 for a report written before tests/conftest.py recorded it
  print(
    f"wrote {FILE} ({len(lines)} modules); per level, the tests' wall seconds (all workers together) and their CPU "
    "seconds (with their subprocesses'):",
    ", ".join(
      f"{level} {s:.0f} s wall, " + (f"{cpu[level]:.0f} s CPU" if cpu.get(level) else "CPU not recorded")
      for level, s in per_level(seconds).items()
    ),
  )


if __name__ == "__main__":
  main(sys.argv)
