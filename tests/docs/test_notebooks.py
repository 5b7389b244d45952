"""notebooks/: committed without outputs, in step with their jupytext sources, Colab-ready (an "Open in Colab"
link, a Colab-aware setup cell, a `# @param` cell, no editable install), and executed top to bottom in test mode
(ALEXNET_JAX_NOTEBOOK_TEST=1: a few steps on a tiny dataset), here and inside Colab's stack (.venv-colab: Python
3.13, jax 0.7.2, ...), showing their figures."""

import glob
import json
import os
import subprocess
import sys

import pytest

from tests.support import ROOT
from tests.support.tiny import cli_env, colab_env

NOTEBOOKS = sorted(glob.glob(os.path.join(ROOT, "notebooks", "*.ipynb")))
ORDER = ["quickstart", "explore", "pretrained"]  # explore uses the quickstart's run
COLAB_PYTHON = os.path.join(ROOT, ".venv-colab", "bin", "python")


def name(path):
  return os.path.basename(path)[: -len(".ipynb")]


def load(path):
  with open(path) as f:
    return json.load(f)


def test_the_notebooks_are_the_three_named():
  assert sorted(map(name, NOTEBOOKS)) == sorted(ORDER)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=name)
def test_committed_clean_in_step_with_its_source_and_colab_ready(path):
  jupytext = pytest.importorskip("jupytext")
  nb = load(path)
  code = [c for c in nb["cells"] if c["cell_type"] == "code"]
  assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), "strip the outputs"
  paired = jupytext.read(path[: -len(".ipynb")] + ".py")
  source = lambda cells: [("".join(c["source"]) if isinstance(c["source"], list) else c["source"]) for c in cells]
  assert source(nb["cells"]) == source(paired.cells), f"run `jupytext --sync {os.path.basename(path)}`"
  text = "\n".join(source(nb["cells"]))
  assert f"colab.research.google.com/github/OWNER/alexnet_jax/blob/main/notebooks/{name(path)}.ipynb" in text
  assert "# @param" in text and 'IN_COLAB = "google.colab" in sys.modules' in text
  assert "pip install -e" not in text and "--editable" not in text


@pytest.mark.parametrize("path", NOTEBOOKS, ids=name)
def test_no_cell_ends_in_an_expression_that_returns_a_figure(path):
  """Jupyter shows a figure a cell made when the cell ends, and shows the cell's last expression's value as well:
  a cell whose last statement is a bare call of ``figures`` (each returns its figure) or of ``plt`` shows it twice.
  The figures must be kept by an assignment (``_ = figures...``, ``fig = figures...``) instead."""
  import ast

  for cell in load(path)["cells"]:
    if cell["cell_type"] != "code":
      continue
    text = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
    body = ast.parse("\n".join(line for line in text.splitlines() if not line.lstrip().startswith(("%", "!")))).body
    last = body[-1] if body else None
    if isinstance(last, ast.Expr) and isinstance(last.value, ast.Call):
      called = ast.unparse(last.value.func)
      if called not in ("plt.show", "plt.close"):
        assert not called.startswith(("figures.", "plt.", "fig.")), f"{name(path)}: a cell ends in {called}(...)"


def execute(
  python: str, devices: int, tmp_path, *, without_tensorflow: bool = False, only_the_switch: bool = False
) -> dict[str, dict]:
  """Run the three notebooks in order in test mode; the test folder is ``tmp_path`` through ALEXNET_JAX_NOTEBOOK_DIR,
  or, ``only_the_switch``, the notebooks' own default (the system temp dir's ``alexnet_jax_notebook_test``, here
  inside ``tmp_path`` through TMPDIR) with ALEXNET_JAX_NOTEBOOK_TEST=1 the only variable set, run from notebooks/
  as a user would."""
  # In test mode the notebooks train and read tiny networks: XLA's fast-compile flags (tiny.cli_env; the three
  # notebooks here 135 s -> 99 s, 166 -> 109 s of CPU).
  if python == COLAB_PYTHON:
    env = colab_env(devices, fast_compile=True)
  else:
    env = {**cli_env(devices, fast_compile=True), "PYTHONPATH": ROOT}
  if without_tensorflow:  # a Colab TPU runtime: the kernel cannot import TensorFlow at all
    blocker = tmp_path / "no_tensorflow"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text('import sys\nsys.modules["tensorflow"] = None\n')
    env["PYTHONPATH"] = f"{blocker}{os.pathsep}{env['PYTHONPATH']}"
  env.pop("ALEXNET_JAX_NOTEBOOK_DIR", None)
  env["ALEXNET_JAX_NOTEBOOK_TEST"] = "1"
  if only_the_switch:  # the default folder, under a temp dir of this test's own (tempfile reads TMPDIR)
    env["TMPDIR"] = str(tmp_path / "tmp")
    os.makedirs(env["TMPDIR"])
  else:
    env["ALEXNET_JAX_NOTEBOOK_DIR"] = str(tmp_path)
  executed = {}
  for nb in ORDER:
    out = tmp_path / f"{nb}.executed.ipynb"
    run = subprocess.run(
      [
        python,
        os.path.join(ROOT, "tests", "support", "run_notebook.py"),
        os.path.join(ROOT, "notebooks", f"{nb}.ipynb"),
        out,
      ],
      env=env,
      cwd=os.path.join(ROOT, "notebooks"),
      capture_output=True,
      text=True,
      timeout=1800,
    )
    assert run.returncode == 0, f"{nb}: {run.stderr[-4000:]}"
    executed[nb] = load(out)
  return executed


def images(nb: dict) -> int:
  return sum("image/png" in o.get("data", {}) for c in nb["cells"] for o in c.get("outputs", []))


def check(executed: dict[str, dict]):
  # each figure exactly once (a cell ending in a call that returns the figure showed it twice: QA of issue 20, item 7)
  assert images(executed["quickstart"]) == 1  # the training curves
  assert images(executed["explore"]) == 4  # Fig. 3, Fig. 4 left and right, the confusion matrix
  assert images(executed["pretrained"]) == 1  # the photos' top-5
  text = json.dumps(executed["quickstart"])
  assert "top-1 error" in text and "checkpoints: ['4']" in text
  assert "loaded 16 arrays" in json.dumps(executed["pretrained"])


@pytest.mark.slow
def test_every_notebook_runs_here(tmp_path):
  """With ALEXNET_JAX_NOTEBOOK_TEST=1 alone (the documented switch), from notebooks/: the quickstart trains in the
  default test folder under the system temp dir (not the clone's ../workdirs) and explore reads that run. (The Colab
  runs below name the folder with ALEXNET_JAX_NOTEBOOK_DIR.)"""
  check(execute(sys.executable, 1, tmp_path, only_the_switch=True))
  run = tmp_path / "tmp" / "alexnet_jax_notebook_test" / "run"
  assert sorted(os.listdir(run / "checkpoints")) == ["4"] and (run / "metrics.jsonl").exists()


@pytest.mark.slow
@pytest.mark.xdist_group("colab")
def test_every_notebook_runs_on_colabs_stack(tmp_path):
  if not os.path.exists(os.path.join(ROOT, ".venv-colab", ".installed")):
    pytest.fail("Colab's stack is not installed: run `make install-colab` (make test does)")
  check(execute(COLAB_PYTHON, 1, tmp_path))


@pytest.mark.slow
@pytest.mark.xdist_group("colab")
def test_every_notebook_runs_on_a_colab_tpu_runtime_without_tensorflow(tmp_path):
  """Colab's TPU runtimes ship no TensorFlow: the quickstart trains on synthetic images instead and says so."""
  if not os.path.exists(os.path.join(ROOT, ".venv-colab", ".installed")):
    pytest.fail("Colab's stack is not installed: run `make install-colab` (make test does)")
  executed = execute(COLAB_PYTHON, 1, tmp_path, without_tensorflow=True)
  check(executed)
  assert "No TensorFlow: training on synthetic images" in json.dumps(executed["quickstart"])
