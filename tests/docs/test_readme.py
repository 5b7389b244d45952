"""The documented commands, run as written: every shell block of README.md and of docs/*.md (in the order of
PAGES) and every command in a config's docstring, in a fresh user directory, with the project's environment on PATH
(as after `source .venv/bin/activate`).

Only small sizes are added (step counts, batch sizes, benchmark windows) where a command does not give them, and a
measurement repeated once only (FEWER); a block
that needs hardware or data CI lacks carries ``<!-- not run in CI: REASON -->`` on the line above it, and at most
MAX_SKIPPED blocks of all the pages together do; a block that another test runs as written and checks more closely
(docs/aot.md's compiles: tests/system/test_aot.py) carries ``<!-- run by tests/PATH.py -->`` instead, and is not run
twice. What the docs promise about a command's result is checked after it
ran.
"""

from __future__ import annotations

import ast
import json
import os
import pathlib
import re
import resource
import shlex
import subprocess
import sys
import time

import pytest

from tests.support import ROOT, documented
from tests.support.fake_ilsvrc import make_fake_imagenet_tree
from tests.support.tiny import cli_env

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("full_size")]  # see tests/system/test_rehearsal.py


# Added to a command when it does not set the key itself: the documented command, made small enough for CI.
SMALL = {
  "alexnet_jax.main": [
    "--config.num_train_steps=2",
    "--config.batch_size=8",
    "--config.log_every_steps=1",
    "--config.eval_batch_size=16",  # configs/large_batch.py: 1,024 (a pod's), ~4 GB of conv1 patches at full size
    "--config.data.num_eval_examples=16",  # synthetic data's evaluation set (200 in configs/synthetic.py)
  ],
  "alexnet_jax.benchmark": ["--steps=1", "--windows=1", "--input_images=200"],
  # The paper's eval batch of 128 x 10 crops is ~12 GB at full size on one CPU device (conv1's patch matrix): too
  # much beside the other test worker on a 24 GB machine.
  "alexnet_jax.evaluate": ["--batch_size=16"],
  "benchmarks/torch_reference.py": ["--steps=1", "--windows=1", "--repeats=1", "--variants=eager"],
}

# Set even where the command sets it: how often a measurement is repeated (each repeat is the same command again).
FEWER = {"benchmarks/torch_reference.py": {"--repeats": "1"}}

# Folders of data that the documented commands make and later only read: the config docstrings' commands make them
# in a user directory shared by all of them (made by the first, found complete by the next: `prepare` and `shapes`
# keep a finished set), the runs in a directory of each config's own.
SHARED_DATA = ("DST", "demo_data")

# The pages whose ```sh blocks run, in this order, all in one user directory: a block may use what an earlier one
# made (the README's DIR, training.md's W, evaluation.md's runs/mine for its figures, scaling.md's two). Every
# docs/*.md page is listed, those without a shell block too, so that a new page is not left out unseen.
PAGES = (
  "README.md",
  "docs/install.md",
  "docs/training.md",
  "docs/data.md",
  "docs/evaluation.md",
  "docs/scaling.md",
  "docs/aot.md",
  "docs/performance.md",
  "docs/reliability.md",
  "docs/model.md",
  "docs/paper_recipe.md",
  "docs/colab.md",
  "docs/DEVIATIONS.md",
)
# Each command's wall and CPU seconds and XLA flags (tab-separated, appended): what to cut when this test grows slow.
TIMES = os.path.join(ROOT, ".cache", "tests", "documented_commands.tsv")
MAX_SKIPPED = 3  # blocks marked "not run in CI", over all PAGES together: most of the documentation runs


def readme_blocks() -> list[documented.Block]:
  """Every ```sh block of PAGES, page after page."""
  return [block for page in PAGES for block in documented.shell_blocks(page)]


def docstring_commands(path: str) -> list[str]:
  """The commands in a config file's docstring: indented lines starting with ``python``, with continuations."""
  doc = ast.get_docstring(ast.parse(pathlib.Path(path).read_text())) or ""
  commands, current = [], None
  for line in doc.splitlines():
    if current is not None:
      current += "\n" + line
      if not line.rstrip().endswith("\\"):
        commands.append(current)
        current = None
    elif line.startswith("  python ") or line.startswith("  make "):
      if line.rstrip().endswith("\\"):
        current = line
      else:
        commands.append(line)
  return commands


def small(command: str) -> str:
  """``command`` with the small sizes of SMALL added for the program it runs (keys it sets are left alone); the
  command's own text is kept as written (environment assignments, quoting, ``~``), a trailing comment dropped."""
  command = command.split(" # ", 1)[0].rstrip()
  words = shlex.split(command)
  given = {w.split("=")[0] for w in words}
  for program, extra in SMALL.items():
    if program in words:
      command += "".join(f" {e}" for e in extra if e.split("=")[0] not in given)
  for program, values in FEWER.items():
    if program in words:
      for key, value in values.items():
        command = re.sub(rf"(?<=\s){key}=\S+", f"{key}={value}", command)
  return command


@pytest.fixture(scope="module")
def user_dir(tmp_path_factory):
  """A new user's working directory: the repository's configs, launch scripts and benchmarks beside them, an
  ImageNet-like SRC (1,000 class folders) and a small class-folder set ``my_images`` (10 classes)."""
  from alexnet_jax.data import embedded

  home = tmp_path_factory.mktemp("user")
  # .venv-aot: the compilers `make install-aot` installs, for an aot command a page may give (docs/aot.md's own run in
  # tests/system/test_aot.py)
  for name in ("configs", "launch", "benchmarks", ".venv-aot"):
    os.symlink(os.path.join(ROOT, name), home / name)
  make_fake_imagenet_tree(str(home / "SRC"), per_class=2, num_val=20)
  embedded.generate(str(home / "my_images"), train_per_class=30, val_per_class=5, size=96, seed=3)
  return home


# (directory, command) of every command run so far in this session: a later test that gives the same command in the
# same directory finds its result there and does not run it again (configs/paper.py's docstring begins with the
# README's first three commands, and runs in the README's directory: IN_README_DIR).
RAN: set[tuple[str, str]] = set()
IN_README_DIR = ("paper",)


def run_commands(commands: list[str], cwd) -> None:
  earlier = set(RAN)  # a command given twice by one test runs twice
  env = cli_env()  # a user's machine: one CPU device, unless a command asks for more
  fast_env = cli_env(fast_compile=True)
  for e in (env, fast_env):
    e["PATH"] = os.path.dirname(sys.executable) + os.pathsep + e["PATH"]  # the activated environment
    e.pop("PYTHONPATH", None)
    e.pop("JAX_PLATFORMS", None)  # a user's shell does not set it
  os.makedirs(os.path.dirname(TIMES), exist_ok=True)
  for command in commands:
    command = small(command)
    said = " ".join(command.replace("\\\n", " ").split())  # the words, whatever the indentation and line breaks
    if (str(cwd), said) in earlier:
      continue
    RAN.add((str(cwd), said))
    fast = compiles_more_than_it_runs(command)
    started, cpu = time.time(), _children_cpu()
    out = subprocess.run(
      ["bash", "-c", command],
      cwd=cwd,
      env=fast_env if fast else env,
      capture_output=True,
      text=True,
      timeout=900,
    )
    with open(TIMES, "a") as f:  # where the docs tests' time goes: wall and CPU seconds, XLA's flags, the command
      flags = "fast-compile" if fast else "default"
      f.write(f"{time.time() - started:.1f}\t{_children_cpu() - cpu:.1f}\t{flags}\t{command}\n")
    assert out.returncode == 0, f"$ {command}\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}"


def compiles_more_than_it_runs(command: str) -> bool:
  """Whether ``command`` gets XLA's fast-compile flags (tests/support FAST_COMPILE_FLAGS: the test environment's,
  not the command's): a run of a few steps, an evaluation, figures. Measured on this 2-core machine (2026-12-01): a
  2-step full-size run on one device 57 -> 45 CPU seconds, a 10-crop evaluation 26 -> 17. Not for a measurement
  (benchmarks), a command that sets XLA_FLAGS itself (the 8-device run), the multi-process launch, or a run of more
  than 10 steps (the tiny runs that show learning), where the slower steps cost more than the compiles save (an
  8-device full-size run: 92 -> 116 s)."""
  if any(word in command for word in ("benchmark", "XLA_FLAGS=", "launch/local.py")):
    return False
  steps = re.search(r"--config\.num_train_steps=(\d+)", command)
  return steps is None or int(steps.group(1)) <= 10


def _children_cpu() -> float:
  usage = resource.getrusage(resource.RUSAGE_CHILDREN)
  return usage.ru_utime + usage.ru_stime


def test_every_readme_block_is_run_or_says_why_not():
  listed = set(PAGES) - {"README.md"}
  pages = {str(p.relative_to(ROOT)) for p in pathlib.Path(ROOT, "docs").glob("*.md")}
  assert pages == listed, f"docs pages missing from PAGES, or listed but gone: {sorted(pages ^ listed)}"
  blocks = readme_blocks()
  assert len(blocks) >= 6
  skipped = [block.skipped for block in blocks if block.skipped]
  assert all(len(reason) > 10 for reason in skipped)
  assert len(skipped) <= MAX_SKIPPED, skipped
  # A block run by another test file instead: that file exists and calls documented.run_by with its own path.
  for block in blocks:
    if block.run_by:
      calls = [
        node
        for node in ast.walk(ast.parse(pathlib.Path(ROOT, block.run_by).read_text()))
        if isinstance(node, ast.Call) and ast.unparse(node.func) == "documented.run_by"
      ]
      run = any(ast.literal_eval(c.args[0]) == block.run_by for c in calls)
      assert run, f"{block.page}: its block says it is run by {block.run_by}, which does not read it"


def torch_available() -> bool:
  try:
    import torch  # noqa: F401
  except ImportError:
    return False
  return True


def test_readme_commands_run_as_written(user_dir):
  ran = 0
  for block in readme_blocks():
    if block.skipped or block.run_by:
      continue
    commands = documented.commands_of(block.text)
    if not torch_available():
      commands = [c for c in commands if "torch_reference" not in c]
    run_commands(commands, user_dir)
    ran += len(commands)
  assert ran >= 12
  # What the README and the docs pages say of their results.
  manifest = json.loads((user_dir / "W" / "run.json").read_text())
  assert manifest["num_params"] == 60_965_224 and manifest["num_devices"] == 8
  paper = json.loads((user_dir / "DIR" / "eval" / "step2_10crop.json").read_text())
  assert paper["num_examples"] == 20 and paper["data_source"] == "prepared"
  mine = json.loads((user_dir / "runs" / "mine" / "eval" / "step2_10crop.json").read_text())
  assert mine["num_examples"] == 50
  assert len(list((user_dir / "runs" / "mine" / "figures").glob("*.png"))) == 5
  assert (user_dir / "two" / "checkpoints" / "3").is_dir()


@pytest.mark.parametrize("config", ["paper", "synthetic", "demo", "large_batch"])
def test_config_docstring_commands_run_as_written(config, user_dir, tmp_path):
  commands = docstring_commands(os.path.join(ROOT, "configs", f"{config}.py"))
  assert commands, f"configs/{config}.py's docstring gives no command"
  # Each config in a directory of its own (they share workdir names), with the same fixtures and data folders; the
  # paper's in the README's.
  cwd = user_dir if config in IN_README_DIR else tmp_path / "user"
  if cwd != user_dir:
    cwd.mkdir()
    for name in SHARED_DATA:
      (user_dir / name).mkdir(exist_ok=True)
    for name in os.listdir(user_dir):
      if name in ("configs", "launch", "benchmarks", "SRC", "my_images", *SHARED_DATA):
        os.symlink(user_dir / name, cwd / name)
  run_commands(commands, cwd)
  if config == "synthetic":  # the docstring's promise: the tiny variant learns
    rows = [json.loads(line) for line in (cwd / "runs" / "synthetic_tiny" / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in rows if "train_loss" in r][-1]
    assert last["step"] == 300 and last["train_loss"] < 0.5, last
  if config == "paper":
    assert json.loads((cwd / "DIR" / "run.json").read_text())["num_params"] == 60_965_224
  if config == "large_batch":  # the docstring's promise: the tiny variant leaves chance
    rows = [json.loads(line) for line in (cwd / "runs" / "large_batch_tiny" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train_loss"] for r in rows if "train_loss" in r]
    final = [r for r in rows if "eval_top1_error" in r][-1]
    assert rows[-1]["step"] == 60 and losses[-1] < losses[0] - 0.15, losses
    assert final["eval_top1_error"] < 0.9, final
