"""`python -m alexnet_jax.figures` writes the paper's figures as PNGs from a trained run (the Predictor and the
figures' arithmetic: tests/unit/test_figures.py)."""

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.support import ROOT
from tests.support.tiny import cli_env, small_prepared_run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  return small_prepared_run(tmp_path_factory.mktemp("figures"))


def test_figures_command_writes_the_papers_figures(run):
  out = subprocess.run(
    [sys.executable, "-m", "alexnet_jax.figures", f"--workdir={run / 'run'}", f"--out={run / 'png'}"],
    cwd=ROOT,
    env=cli_env(1, fast_compile=True),
    capture_output=True,
    text=True,
  )
  assert out.returncode == 0, out.stderr[-3000:]
  names = sorted(p.name for p in (run / "png").iterdir())
  assert names == ["confusion.png", "curves.png", "fig3_kernels.png", "fig4_neighbours.png", "fig4_predictions.png"]
  for name in names:
    image = np.asarray(Image.open(run / "png" / name).convert("RGB"))
    assert image.shape[0] > 200 and image.shape[1] > 200, name
    assert image.std() > 10, name  # not blank
  kernels = np.asarray(Image.open(run / "png" / "fig3_kernels.png").convert("RGB")).astype(float)
  assert np.abs(kernels[..., 0] - kernels[..., 1]).mean() > 1  # colour kernels, not grey
