"""Google Colab's runtime: the package installs into Colab's own versions without changing any of them, and runs there,
with TensorFlow (GPU/CPU runtimes) and without it (TPU runtimes).

``make install-colab`` (which ``make test`` runs) builds ``.venv-colab``: Python 3.13 with exactly the versions in
``constraints/colab.txt`` (googlecolab/backend-info), a ``pip freeze`` of it, then this package installed with those
versions as constraints. The code runs from this working tree (``PYTHONPATH``), as a Colab notebook runs the
repository it installed.
"""

import json
import os
import subprocess

import pytest

from tests.support import ROOT
from tests.support.tiny import colab_env

VENV = os.path.join(ROOT, ".venv-colab")
PYTHON = os.path.join(VENV, "bin", "python")
pytestmark = pytest.mark.xdist_group("colab")


def colab_python():
  if not os.path.exists(os.path.join(VENV, ".installed")):
    pytest.fail("Colab's stack is not installed: run `make install-colab` (make test does)")
  return PYTHON


def freeze() -> dict[str, str]:
  out = subprocess.run([colab_python(), "-m", "pip", "freeze"], capture_output=True, text=True, check=True).stdout
  return parse_freeze(out)


def parse_freeze(text: str) -> dict[str, str]:
  pins = {}
  for line in text.splitlines():
    line = line.split("#", 1)[0].strip()
    if "==" in line:
      name, version = line.split("==", 1)
      pins[name.lower().replace("_", "-")] = version.strip()
    elif " @ " in line:
      name, where = line.split(" @ ", 1)
      pins[name.lower().replace("_", "-")] = where.strip()
  return pins


def test_installing_into_colabs_runtime_changes_none_of_its_packages():
  with open(os.path.join(ROOT, "constraints", "colab.txt")) as f:
    colab = parse_freeze(f.read())
  with open(os.path.join(VENV, "colab-before.txt")) as f:
    before = parse_freeze(f.read())
  after = freeze()
  assert {k: before.get(k) for k in colab} == colab  # the venv really is Colab's stack
  changed = {k: (v, after.get(k)) for k, v in before.items() if after.get(k) != v}
  assert not changed, f"installing alexnet_jax changed Colab's packages: {changed}"
  added = set(after) - set(before)
  assert {"alexnet-jax", "clu", "ml-collections"} <= added, added  # what Colab lacks, and nothing of its own
  out = subprocess.run([colab_python(), "--version"], capture_output=True, text=True, check=True)
  assert out.stdout.startswith("Python 3.13"), out.stdout


RUN = """
import json, sys
if sys.argv[1] == "no-tensorflow":
  sys.modules["tensorflow"] = None  # a Colab TPU runtime: no TensorFlow at all
from alexnet_jax import config_lib, train
c = config_lib.base_config()
c.data.source = "synthetic"
c.model.update(width=0.125, image_size=67, num_classes=10)
c.update(batch_size=16, eval_batch_size=16, num_train_steps=3, log_every_steps=1, checkpoint_every_steps=3)
c.mesh.model = 2
c.data.num_eval_examples = 32
first = train.train_and_evaluate(c, sys.argv[2])
c.num_train_steps = 4
resumed = train.train_and_evaluate(c, sys.argv[2])
print(json.dumps({"first": first, "resumed": resumed, "jax": __import__("jax").__version__}))
"""


@pytest.mark.parametrize("runtime", ["with-tensorflow", "no-tensorflow"])
def test_training_runs_on_colabs_stack(tmp_path, runtime):
  """The paper's network (small), the two-GPU split on 8 fake devices, train, checkpoint, resume, on jax 0.7.2."""
  env = colab_env(8)
  out = subprocess.run(
    [colab_python(), "-c", RUN, runtime, str(tmp_path / "run")], cwd=tmp_path, env=env, capture_output=True, text=True
  )
  assert out.returncode == 0, out.stderr[-3000:]
  result = json.loads(out.stdout.strip().splitlines()[-1])
  assert result["jax"] == "0.7.2"
  assert result["first"]["status"] == "completed" and result["resumed"]["step"] == 4
  if runtime == "no-tensorflow":
    assert "No TensorBoard summaries: TensorFlow is not installed: `pip install tensorflow-cpu`" in out.stderr
    assert not (tmp_path / "run" / "tensorboard").exists()
  else:
    assert (tmp_path / "run" / "tensorboard").is_dir()


def test_the_data_pipeline_without_tensorflow_says_what_to_install(tmp_path):
  env = colab_env(1)
  code = (
    "import sys; sys.modules['tensorflow'] = None\n"
    "from alexnet_jax import config_lib\n"
    "from alexnet_jax.data import sources\n"
    "c = config_lib.base_config(); c.data.source = 'prepared'; c.data.dir = sys.argv[1]\n"
    "sources.create_source(c)\n"
  )
  out = subprocess.run([colab_python(), "-c", code, str(tmp_path)], env=env, capture_output=True, text=True)
  assert out.returncode == 1
  assert "data.source='prepared' reads its data with tf.data. TensorFlow is not installed: `pip install " in out.stderr
