"""`python -m alexnet_jax.benchmark` prints one JSON row (the arithmetic: tests/unit/test_benchmark.py)."""

import json
import subprocess
import sys

from alexnet_jax import model as M
from tests.support import ROOT
from tests.support.tiny import cli_env


def test_command_line_prints_json(tmp_path):
  out = subprocess.run(
    [sys.executable, "-m", "alexnet_jax.benchmark", "--model=owt", "--width=0.125", "--batch_size=4", "--steps=1"]
    + ["--windows=1", "--dtype=bfloat16", "--layers"],
    cwd=ROOT,
    env=cli_env(fast_compile=True),
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert out.returncode == 0, out.stderr[-2000:]
  row = json.loads(out.stdout.strip().splitlines()[-1])
  assert (
    row["model"] == "owt" and row["dtype"] == "bfloat16" and set(row["forward_flops_per_layer"]) == set(M.LAYER_NAMES)
  )
