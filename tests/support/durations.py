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


def from_junit(paths: list[str]) -> dict[str, float]:
  """Seconds per module from pytest's JUnit XML reports (a testcase's ``file`` or, failing that, its classname)."""
  seconds = collections.Counter()
  for path in paths:
    for case in ET.parse(path).getroot().iter("testcase"):
      parts = case.get("classname", "").split(".")  # tests.unit.test_train[.TestClass]
      while parts and not (ROOT / ("/".join(parts) + ".py")).exists():
        parts.pop()
      seconds[case.get("file") or "/".join(parts) + ".py"] += float(case.get("time", 0.0))
  return dict(seconds)


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
  levels = collections.Counter()
  for module, s in seconds.items():
    levels["/".join(module.split("/")[:2])] += s
  print(
    f"wrote {FILE} ({len(lines)} modules); test time per level (both workers together):",
    ", ".join(f"{level} {s:.0f} s" for level, s in sorted(levels.items())),
  )


if __name__ == "__main__":
  main(sys.argv)
