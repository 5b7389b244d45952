"""`python -m alexnet_jax.prepare` as a user runs it (the in-process side: tests/unit/test_data.py)."""

import json
import os
import subprocess
import sys

from alexnet_jax.data import embedded, format
from tests.support import ROOT


def test_a_set_without_validation_images_is_reported_and_a_rerun_adds_them(tmp_path):

  raw, dst = tmp_path / "raw", tmp_path / "prepared"
  embedded.generate(str(raw), train_per_class=2, val_per_class=1, size=40, seed=0)
  os.rename(raw / "val", tmp_path / "val_later")
  cmd = [sys.executable, "-m", "alexnet_jax.prepare", f"--input_dir={raw}", f"--output_dir={dst}", "--image_size=40"]
  root = ROOT
  first = subprocess.run([*cmd, "--num_workers=1"], cwd=root, capture_output=True, text=True, timeout=300)
  assert first.returncode == 0, first.stderr[-2000:]
  assert f"warning: {raw} has no validation images" in first.stderr
  os.rename(tmp_path / "val_later", raw / "val")
  second = subprocess.run([*cmd, "--num_workers=1"], cwd=root, capture_output=True, text=True, timeout=300)
  assert second.returncode == 0 and "no validation images" not in second.stderr, second.stderr[-2000:]
  meta = json.loads((dst / format.METADATA).read_text())
  assert meta["splits"]["val"]["num_examples"] == len(embedded.CLASSES)
