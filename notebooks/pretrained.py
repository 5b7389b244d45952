# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     name: python3
# ---

# %% [markdown]
# # torchvision's pretrained AlexNet in our network
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/OWNER/alexnet_jax/blob/main/notebooks/pretrained.ipynb)
# (replace `OWNER` with where this repository lives)
#
# torchvision's `alexnet(weights="IMAGENET1K_V1")` is our `owt` architecture. This notebook downloads its weights
# (with internet; `torch.hub` caches them), makes a run of them for our JAX network (`alexnet_jax.weights`: the file
# is read as data, `weights_only=True`), and classifies a few photos through that run's `Predictor`, which applies
# torchvision's preprocessing, naming ImageNet's classes. Without internet (or in CI's test mode) random weights of
# the same shapes stand in, so every cell still runs (their predictions are then meaningless).

# %% Setup: in Colab, clone the repository and install it into Colab's runtime (nothing it ships is replaced)
import os
import subprocess
import sys

IN_COLAB = "google.colab" in sys.modules
TEST_MODE = os.environ.get("ALEXNET_JAX_NOTEBOOK_TEST") == "1"  # CI: no download, random weights
REPO_URL = "https://github.com/OWNER/alexnet_jax"  # @param {type:"string"}

if IN_COLAB and "OWNER" in REPO_URL:
  raise SystemExit("Set REPO_URL above to where this repository lives (its git URL), then run this cell again.")
if IN_COLAB and not os.path.exists("/content/alexnet_jax"):
  subprocess.run(["git", "clone", "-q", "--depth=1", REPO_URL, "/content/alexnet_jax"], check=True)
  subprocess.run([sys.executable, "-m", "pip", "install", "-q", "/content/alexnet_jax"], check=True)
if IN_COLAB:
  os.chdir("/content/alexnet_jax/notebooks")
try:
  import alexnet_jax  # noqa: F401
except ImportError:  # a clone without the package installed: run from its source
  sys.path.insert(0, os.path.abspath(".."))

# %% Parameters
WEIGHTS = "torchvision"  # @param ["torchvision", "a .pth or .safetensors path"] {allow-input: true}

# %% The weights, as a run: what `python -m alexnet_jax.weights --weights=... --workdir=...` writes
import tempfile

import numpy as np
from absl import logging
from flax import nnx

from alexnet_jax import model as model_lib
from alexnet_jax import weights
from alexnet_jax.inference import Predictor
from alexnet_jax.native import library_logs

library_logs.quiet_library_logs()
logging.set_verbosity(logging.WARNING)
state_dict, source = None, "random weights (no download)"
if not TEST_MODE:
  try:
    if WEIGHTS == "torchvision":
      state_dict, source = weights.torchvision_state_dict(), weights.TORCHVISION_URL
    else:
      state_dict, source = weights.load_state_dict(WEIGHTS), WEIGHTS
  except Exception as e:  # no internet, no torch: say so and go on with random weights
    print(f"could not load {WEIGHTS}: {type(e).__name__}: {e}")
if state_dict is None:  # our random initialisation, in torchvision's layout
  ours = nnx.to_pure_dict(nnx.split(model_lib.AlexNet("owt", rngs=nnx.Rngs(0)), nnx.Param)[1])
  state_dict = weights.to_torch_state_dict(ours, "owt")
print(f"loaded {len(state_dict)} arrays from {source}")
run_dir = tempfile.TemporaryDirectory(prefix="alexnet_jax_pretrained_")  # deleted when the kernel stops
RUN = run_dir.name  # a step-0 checkpoint and its config
weights.write_run(state_dict, RUN)
predictor = Predictor.from_workdir(RUN)
data = predictor.config.data
print(
  f"a run of them in {RUN}: {len(predictor.class_names)} classes ({predictor.class_names[0]!r}, ...), "
  f"data.normalize={data.normalize!r}, images scaled to {predictor.source.view_size} then the central "
  f"{predictor.image_size}x{predictor.image_size}"
)

# %% [markdown]
# ## Predictions
# The `Predictor` applies what the run's config records, torchvision's preprocessing: shorter side to 256, the
# central 224x224, RGB scaled to [0, 1] and normalised by ImageNet's channel means and deviations. Class names:
# ImageNet's, shipped with the package (`alexnet_jax/imagenet_classes.txt`, copied from torchvision). The photos are
# drawn here (no download); upload your own in Colab.

# %%
from alexnet_jax import figures, prepare

photos = {}
if IN_COLAB and not TEST_MODE:
  from google.colab import files

  photos = {name: np.asarray(prepare.decode_rgb(data, exif_orientation=True)) for name, data in files.upload().items()}
if not photos:
  from alexnet_jax import shapes

  rng = np.random.default_rng(0)
  photos = {name: shapes.draw(i, rng, 320)[:, 20:] for i, name in enumerate(shapes.CLASSES[:3])}  # 320x300

pictures = [prepare.to_uint8_rgb(p) for p in photos.values()]
probabilities = predictor.predict(pictures)
names = predictor.class_names
for name, p in zip(photos, probabilities, strict=True):
  best = np.argsort(p)[::-1][:5]
  print(f"{name}: " + ", ".join(f"{names[c]} {p[c]:.1%}" for c in best))
# `fig = ...`, not the bare call: the figure is displayed once, as the cell ends (a bare call shows it twice)
fig = figures.fig4_predictions(pictures, probabilities, None, names, titles=list(photos))
if source.startswith("random"):  # random weights give each of the 1000 classes about 0.1%: scale the bars to them
  top = float(np.sort(probabilities, axis=1)[:, -5:].max())
  for bars in (ax for ax in fig.axes if ax.patches):
    bars.set_xlim(0, 1.1 * top)
  fig.suptitle(f"Top-5 predictions of random weights (each about {1 / len(names):.1%}; axis up to {1.1 * top:.2%})")

# %% [markdown]
# ## On a prepared ImageNet
# torchvision reports 56.522% top-1 / 79.066% top-5 accuracy for these weights (ILSVRC-2012 validation, one centre
# crop). With a prepared ImageNet (`python -m alexnet_jax.prepare`), our `evaluate` measures it as torchvision does:
#
#     python -m alexnet_jax.weights --weights=torchvision --workdir=runs/torchvision --data_dir=DST
#     python -m alexnet_jax.evaluate --workdir=runs/torchvision --crops=1
