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
# # Explore a trained network: the paper's Fig. 3 and Fig. 4
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/OWNER/alexnet_jax/blob/main/notebooks/explore.ipynb)
# (replace `OWNER` with where this repository lives)
#
# Loads a run (by default the one `quickstart.ipynb` trained) with its own preprocessing, then draws the learned
# conv1 kernels (Fig. 3), validation images with their top-5 predictions (Fig. 4 left), the images nearest to a
# query by the Euclidean distance of their fc7 features (Fig. 4 right), a confusion matrix, and classifies your own
# images.

# %% Setup: in Colab, clone the repository and install it into Colab's runtime (nothing it ships is replaced)
import os
import subprocess
import sys
import tempfile

IN_COLAB = "google.colab" in sys.modules
TEST_MODE = os.environ.get("ALEXNET_JAX_NOTEBOOK_TEST") == "1"  # CI: the quickstart's tiny run
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
WORKDIR = "../workdirs/notebook_quickstart"  # @param {type:"string"}
NUM_IMAGES = 8  # @param {type:"integer"}
if TEST_MODE:  # the quickstart's test run, in the test folder the three notebooks share
  TEST_DIR = os.environ.get("ALEXNET_JAX_NOTEBOOK_DIR") or f"{tempfile.gettempdir()}/alexnet_jax_notebook_test"
  WORKDIR = f"{TEST_DIR}/run"
if not os.path.isdir(f"{WORKDIR}/checkpoints"):
  raise SystemExit(f"No trained run in {WORKDIR}: run quickstart.ipynb first, or set WORKDIR to a run's workdir.")

# %% The run, with its own preprocessing
from absl import logging

from alexnet_jax import figures
from alexnet_jax.inference import Predictor
from alexnet_jax.native import library_logs

library_logs.quiet_library_logs()
logging.set_verbosity(logging.WARNING)
predictor = Predictor.from_workdir(WORKDIR)
images, labels = predictor.validation_images()
probabilities = predictor.predict(images)
print(f"step {predictor.step}: {len(images)} validation images, classes {predictor.class_names}")
print(f"top-1 error (centre crop): {(probabilities.argmax(1) != labels).mean():.1%}")

# %% [markdown]
# ## Fig. 3: the conv1 kernels
# Each kernel scaled to [0, 1] on its own. With the model split the paper's GPU 1 learned the top block (mostly
# colour-agnostic) and GPU 2 the bottom one (mostly colour-specific); here the two blocks are the two halves of
# conv1's output channels.

# %%
_ = figures.fig3_kernels(predictor.conv1_kernels())

# %% [markdown]
# ## Fig. 4 (left): top-5 predictions

# %%
import numpy as np

shown = np.arange(min(NUM_IMAGES, len(images)))
_ = figures.fig4_predictions(images[shown], probabilities[shown], labels[shown], predictor.class_names)

# %% [markdown]
# ## Fig. 4 (right): nearest neighbours by fc7
# The first column is the query; the others are the validation images whose fc7 activations (the 4096-d feature of
# the last hidden layer, before dropout) are nearest by Euclidean distance.

# %%
features = predictor.features(images, "fc7")
_ = figures.fig4_neighbours(images, features, queries=np.arange(min(5, len(images) - 1)), k=min(6, len(images) - 1))

# %% [markdown]
# ## Confusion matrix

# %%
_ = figures.confusion(labels, probabilities.argmax(1), predictor.class_names)

# %% [markdown]
# ## Your own images
# In Colab, upload any images (JPEG, PNG, ...; any size, 16-bit too): each is turned upright as its camera's EXIF
# tag says, then rescaled and centre-cropped exactly as the run's validation images were. Elsewhere, the first
# validation images stand in, as PNG files.

# %%
import io

from PIL import Image

from alexnet_jax import prepare

if IN_COLAB and not TEST_MODE:
  from google.colab import files

  uploaded = files.upload()
else:
  uploaded = {}
  for i, image in enumerate(images[:3]):
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "PNG")
    uploaded[f"validation_{i}.png"] = buffer.getvalue()
own = [np.asarray(prepare.decode_rgb(data, exif_orientation=True)) for data in uploaded.values()]
for image, p in zip(own, predictor.predict(own), strict=True):
  best = np.argsort(p)[::-1][:5]
  print(", ".join(f"{predictor.class_names[c]} {p[c]:.1%}" for c in best), f"({image.shape[1]}x{image.shape[0]})")
