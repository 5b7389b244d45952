"""The documentation's shell blocks, as the tests that run them read them (tests/docs/test_readme.py runs most;
a block marked ``<!-- run by tests/PATH.py -->`` is run, as written, by that test file, which checks its output)."""

import pathlib
import re
from typing import NamedTuple

from tests.support import ROOT

SKIP = re.compile(r"<!-- not run in CI: (.+?) -->")
RUN_BY = re.compile(r"<!-- run by (tests/[\w/]+\.py)\b")


class Block(NamedTuple):
  page: str
  text: str  # the lines between ```sh and ```
  skipped: str | None  # why it is not run in CI, or None
  run_by: str | None  # the test file that runs it instead of the documentation tests, or None


def shell_blocks(page: str) -> list[Block]:
  """Every ```sh block of ``page`` (a path relative to the repository), in order, with the marker on the line above."""
  lines = pathlib.Path(ROOT, page).read_text().splitlines()
  blocks, i = [], 0
  while i < len(lines):
    if lines[i].strip() == "```sh":
      j = lines.index("```", i + 1)
      above = next((lines[k] for k in range(i - 1, -1, -1) if lines[k].strip()), "")
      skip, run_by = SKIP.search(above), RUN_BY.search(above)
      blocks.append(Block(page, "\n".join(lines[i + 1 : j]), skip and skip.group(1), run_by and run_by.group(1)))
      i = j
    i += 1
  return blocks


def commands_of(block: str) -> list[str]:
  """One string per command (continuation lines joined), comments dropped."""
  joined = re.sub(r"\\\n\s*", " ", block)
  return [c.strip() for c in joined.splitlines() if c.strip() and not c.strip().startswith("#")]


def run_by(test_file: str) -> list[Block]:
  """The blocks of every documentation page that name ``test_file`` (e.g. "tests/system/test_aot.py") as theirs."""
  pages = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in pathlib.Path(ROOT, "docs").glob("*.md"))]
  return [b for page in pages for b in shell_blocks(page) if b.run_by == test_file]
