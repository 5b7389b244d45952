"""Deliberate one-line breaks of the product, and the test that must catch each: a test that cannot fail is a defect.

``python -m tests.support.breaks [--only NAME ...] [--no-baseline] [--list]`` (or ``make breaks [ONLY=NAME]``)
copies the working tree (the files git tracks or would track) to a temporary folder once per break, applies the break
there, runs the named test in that copy with this environment's Python, and reports ``caught`` (the test failed) or
``MISSED`` (it passed). First, unless ``--no-baseline``, it runs the same test on the unbroken copy: a test that fails
without the break proves nothing. Exit 0 when every break is caught, 1 when one is missed, its baseline fails or its
line is no longer in the code.

Not run by CI (``make test``): each break costs a copy and a test run (seconds to a minute or two each). Run it after
changing a promise's code or its test, and add a break here for each new promise (issue 21, item 7). The checkout is
never touched.
"""

import argparse
import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import time

from tests.support import ROOT


@dataclasses.dataclass(frozen=True)
class Break:
  name: str
  promise: str  # what a user was told, in a few words
  file: str  # where the line is (relative to the repository); searched for in alexnet_jax/ if it has moved
  original: str  # the line as it is (compared without its indentation)
  broken: str  # what it becomes (indented as the original)
  test: str  # the pytest node id that must fail


BREAKS = [
  Break(
    "ten_crop_first_view",
    "10-crop evaluation averages the softmax over the ten views (Sec. 4.1)",
    "alexnet_jax/steps.py",
    "return jax.nn.softmax(logits).reshape(b, v, -1).mean(axis=1)",
    "return jax.nn.softmax(logits).reshape(b, v, -1)[:, 0]",
    "tests/unit/test_steps.py::test_ten_crop_evaluation_averages_the_softmax_of_the_ten_views",
  ),
  Break(
    "plateau_factor_ignored",
    "after a plateau drop the learning rate is multiplied by schedule.factor (Sec. 5)",
    "alexnet_jax/steps.py",
    'lr = lr_schedule(step) * state["plateau"]["scale"]',
    "lr = lr_schedule(step)",
    "tests/unit/test_train.py::test_the_learning_rate_after_a_plateau_drop_is_divided_by_the_factor",
  ),
  Break(
    "plateau_count_not_reset",
    "the plateau rule waits `patience` evaluations again after each drop",
    "alexnet_jax/optim.py",
    "scale, drops, bad = scale * factor, drops + 1, 0",
    "scale, drops = scale * factor, drops + 1",
    "tests/unit/test_optim.py::test_plateau_count_starts_again_after_each_drop",
  ),
  Break(
    "prepare_top_left_square",
    "prepare keeps the central square after rescaling the shorter side (Sec. 2)",
    "alexnet_jax/data/decode.py",
    "left, top = (nw - size) // 2, (nh - size) // 2",
    "left, top = 0, 0",
    "tests/unit/test_data.py::test_prepare_keeps_the_central_square_of_any_picture",
  ),
  Break(
    "micro_batches_contiguous",
    "each micro-batch of gradient accumulation is spread over every data device, with no data moved",
    "alexnet_jax/steps.py",
    "return jnp.swapaxes(x.reshape(x.shape[0] // k, k, *x.shape[1:]), 0, 1)",
    "return x.reshape(k, x.shape[0] // k, *x.shape[1:])",
    "tests/unit/test_steps.py::test_accumulation_on_eight_devices_is_the_one_device_step_and_spreads_each_micro_batch",
  ),
  Break(
    "micro_batch_gradients_summed_not_averaged",
    "accumulating k micro-batches gives the whole batch's gradient (the mean, not the sum)",
    "alexnet_jax/steps.py",
    "grads = jax.tree.map(lambda g: g / k, grads_sum)",
    "grads = grads_sum",
    "tests/unit/test_steps.py::test_accumulating_four_micro_batches_is_one_step_of_the_whole_batch",
  ),
  Break(
    "loss_scale_overflow_stops_the_run",
    "a float16 loss-scale overflow skips the update and never stops the run",
    "alexnet_jax/steps.py",
    "finite = ~diverged  # an overflow is normal: the run goes on",
    "finite = apply_update",
    "tests/unit/test_train.py::test_float16_overflows_lower_the_scale_without_stopping_and_checkpoints_carry_it",
  ),
  Break(
    "loss_scale_not_lowered",
    "an overflow halves the loss scale",
    "alexnet_jax/loss_scale.py",
    'lowered = {"scale": jnp.maximum(scale / rule.factor, rule.min_scale), "good_steps": jnp.zeros_like(good)}',
    'lowered = {"scale": scale, "good_steps": jnp.zeros_like(good)}',
    "tests/unit/test_steps.py::test_the_loss_scale_rule_halves_on_overflow_grows_after_the_interval_and_stops_at_the_minimum",
  ),
]


def working_tree_files() -> list[str]:
  out = subprocess.run(
    ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True, check=True
  )
  return [f for f in out.stdout.decode().split("\0") if f and os.path.isfile(os.path.join(ROOT, f))]


def copy_tree(files: list[str], dest: str) -> None:
  for f in files:
    os.makedirs(os.path.dirname(os.path.join(dest, f)), exist_ok=True)
    shutil.copy2(os.path.join(ROOT, f), os.path.join(dest, f))


def find_line(tree: str, b: Break) -> tuple[str, int]:
  """(file, 0-based line index) of ``b.original`` in ``tree``: in ``b.file``, else anywhere in alexnet_jax/ (a module
  split moves lines). Raises LookupError unless it occurs exactly once."""
  candidates = [b.file] + sorted(
    os.path.relpath(os.path.join(d, f), tree)
    for d, _, names in os.walk(os.path.join(tree, "alexnet_jax"))
    for f in names
    if f.endswith(".py")
  )
  for rel in dict.fromkeys(candidates):
    path = os.path.join(tree, rel)
    if not os.path.exists(path):
      continue
    with open(path) as f:
      hits = [i for i, line in enumerate(f.read().split("\n")) if line.strip() == b.original]
    if len(hits) > 1:
      raise LookupError(f"{b.original!r} occurs {len(hits)} times in {rel}: make the break's line unique")
    if hits:
      return rel, hits[0]
  raise LookupError(f"{b.original!r} is no longer in {b.file} or anywhere in alexnet_jax/: update this break")


def apply(tree: str, b: Break) -> tuple[str, int]:
  rel, i = find_line(tree, b)
  path = os.path.join(tree, rel)
  with open(path) as f:
    lines = f.read().split("\n")
  indent = lines[i][: len(lines[i]) - len(lines[i].lstrip())]
  lines[i] = indent + b.broken
  with open(path, "w") as f:
    f.write("\n".join(lines))
  return rel, i + 1


def run_test(tree: str, test: str) -> tuple[int, str]:
  """(pytest's exit status, the output's tail) of one node run in ``tree`` (its own alexnet_jax, not the checkout's):
  0 passed, 1 failed; anything else (not collected, an import error, a usage error) is no verdict."""
  env = {**os.environ, "PYTHONPATH": tree, "PYTHONDONTWRITEBYTECODE": "1"}
  cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", test]
  out = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
  return out.returncode, (out.stdout + out.stderr)[-1500:]


def check_imports_from(tree: str) -> None:
  out = subprocess.run(
    [sys.executable, "-c", "import alexnet_jax; print(alexnet_jax.__file__)"],
    cwd=tree,
    env={**os.environ, "PYTHONPATH": tree},
    capture_output=True,
    text=True,
    check=True,
  )
  if not os.path.realpath(out.stdout.strip()).startswith(os.path.realpath(tree)):
    raise SystemExit(f"error: the copy imports alexnet_jax from {out.stdout.strip()}, not from itself: nothing to test")


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--only", action="append", choices=[b.name for b in BREAKS], help="this break (repeatable)")
  parser.add_argument("--no-baseline", action="store_true", help="skip the run of each test on the unbroken copy")
  parser.add_argument("--list", action="store_true", help="print the breaks and exit")
  args = parser.parse_args(argv)
  chosen = [b for b in BREAKS if not args.only or b.name in args.only]
  if args.list:
    for b in chosen:
      print(f"{b.name}: {b.promise}\n  {b.file}: {b.original}\n  ->  {b.broken}\n  caught by {b.test}")
    return 0
  files = working_tree_files()
  results = []
  for b in chosen:
    start = time.time()
    with tempfile.TemporaryDirectory(prefix=f"break_{b.name}_") as tree:
      copy_tree(files, tree)
      check_imports_from(tree)
      try:
        find_line(tree, b)
      except LookupError as e:
        results.append((b, "STALE", str(e), time.time() - start))
        continue
      if not args.no_baseline:
        rc, tail = run_test(tree, b.test)
        if rc != 0:
          results.append((b, "BASELINE FAILS", tail, time.time() - start))
          continue
      where = "{}:{}".format(*apply(tree, b))
      rc, tail = run_test(tree, b.test)
      verdict = {0: "MISSED", 1: "caught"}.get(rc, f"ERROR (pytest {rc})")
      results.append((b, verdict, where if rc in (0, 1) else tail, time.time() - start))
    print(f"{results[-1][1]:>14}  {b.name}  ({results[-1][3]:.0f} s)", flush=True)
  print()
  for b, verdict, detail, took in results:
    print(f"{verdict:>14}  {b.name}: {b.promise}")
    print(f"{'':>14}  {detail if verdict in ('caught', 'MISSED') else ''}  {b.broken!r}  ->  {b.test}  ({took:.0f} s)")
    if verdict not in ("caught", "MISSED"):
      print("\n".join(f"{'':>16}{line}" for line in detail.splitlines()[-15:]))
  return 0 if all(verdict == "caught" for _, verdict, _, _ in results) else 1


if __name__ == "__main__":
  sys.exit(main())
