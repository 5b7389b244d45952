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
# # AlexNet in JAX: quickstart
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/OWNER/alexnet_jax/blob/main/notebooks/quickstart.ipynb)
# (replace `OWNER` with where this repository lives)
#
# Trains the paper's network at 1/4 width on the project's embedded shapes dataset (no download), with the paper's
# augmentation, schedule and 10-crop evaluation, through the same `train.train_and_evaluate` that the command line
# runs. About 4 minutes on 2 CPU cores; seconds per epoch on a Colab GPU or TPU.

# %% Setup: in Colab, clone the repository and install it into Colab's runtime (nothing it ships is replaced)
import os
import shutil
import subprocess
import sys
import tempfile

IN_COLAB = "google.colab" in sys.modules
TEST_MODE = os.environ.get("ALEXNET_JAX_NOTEBOOK_TEST") == "1"  # CI: a few steps on a tiny dataset
REPO_URL = "https://github.com/OWNER/alexnet_jax"  # @param {type:"string"}

if IN_COLAB and "OWNER" in REPO_URL:
  raise SystemExit("Set REPO_URL above to where this repository lives (its git URL), then run this cell again.")
if IN_COLAB and not os.path.exists("/content/alexnet_jax"):
  # A regular install, not an editable one (Colab would not see that until the runtime restarts); the clone gives
  # the configs/ folder and these notebooks' working directory.
  subprocess.run(["git", "clone", "-q", "--depth=1", REPO_URL, "/content/alexnet_jax"], check=True)
  subprocess.run([sys.executable, "-m", "pip", "install", "-q", "/content/alexnet_jax"], check=True)
if IN_COLAB:
  os.chdir("/content/alexnet_jax/notebooks")
try:
  import alexnet_jax  # noqa: F401
except ImportError:  # a clone without the package installed: run from its source
  sys.path.insert(0, os.path.abspath(".."))

# %% Parameters
NUM_EPOCHS = 30  # @param {type:"integer"}
WORKDIR = "../workdirs/notebook_quickstart"  # @param {type:"string"}
DATA_ROOT = "../demo_data"  # @param {type:"string"}
SAVE_TO_DRIVE = False  # @param {type:"boolean"}
if TEST_MODE:  # a few steps on tiny data, in the test folder the three notebooks share (never WORKDIR above)
  TEST_DIR = os.environ.get("ALEXNET_JAX_NOTEBOOK_DIR") or f"{tempfile.gettempdir()}/alexnet_jax_notebook_test"
  WORKDIR, DATA_ROOT = f"{TEST_DIR}/run", f"{TEST_DIR}/data"
  shutil.rmtree(WORKDIR, ignore_errors=True)  # every test run trains from step 0

# %% [markdown]
# ## Devices
# Whatever this runtime has: a GPU, the 1 chip of a Colab TPU runtime, or the CPU. Training uses all of them (data
# parallel).

# %%
import jax

from alexnet_jax.native import compat

print(f"jax {jax.__version__}, backend {jax.default_backend()}: {jax.devices()}")
print("TensorFlow (tf.data):", "installed" if compat.has_tensorflow() else "missing")

# %% [markdown]
# ## Data
# The embedded shapes dataset (10 classes drawn procedurally) written as a class-folder tree of JPEGs, then prepared
# the paper's way: shorter side to 76 (the demo's size), central square, shards, the mean image and the RGB
# eigenpairs for the colour augmentation. Colab's TPU runtimes have no TensorFlow: there the notebook trains on the
# synthetic source instead (or `pip install tensorflow-cpu` and rerun).

# %%
from alexnet_jax import config_lib, prepare, shapes

config = config_lib.load_config_file("../configs/demo.py")
per_class = (8, 2) if TEST_MODE else (600, 100)  # training and validation images of each of the 10 shapes
if compat.has_tensorflow():
  raw, prepared = f"{DATA_ROOT}/shapes", f"{DATA_ROOT}/shapes_prepared"
  if not os.path.exists(f"{prepared}/{prepare.METADATA}"):
    shapes.generate(raw, train_per_class=per_class[0], val_per_class=per_class[1])
    prepare.prepare(raw, prepared, image_size=76)
  config.data.dir = prepared
else:
  print("No TensorFlow: training on synthetic images. For the real pipeline: pip install tensorflow-cpu")
  config.data.source, config.data.dir = "synthetic", ""  # (a data.dir that the source would not read is an error)
  # as many images as the shapes set has (the synthetic source's defaults are ImageNet's: 1,281,167 to train on, so
  # an epoch of ~10,000 steps, and 50,000 to evaluate)
  num_classes = len(shapes.CLASSES)
  config.data.num_train_examples, config.data.num_eval_examples = num_classes * per_class[0], num_classes * per_class[1]
config.num_epochs = NUM_EPOCHS
if TEST_MODE:
  config.num_epochs, config.num_train_steps, config.batch_size, config.eval_batch_size = 0, 4, 16, 16
  config.log_every_steps = 2
print(config.data)

# %% [markdown]
# ## Train
# Progress is logged every `log_every_steps`; checkpoints go to `WORKDIR/checkpoints` (rerun this cell after an
# interruption and it resumes).

# %%
from absl import logging

from alexnet_jax import train
from alexnet_jax.native import library_logs

logging.set_verbosity(logging.INFO)  # absl's log lines: the progress of the run
library_logs.quiet_library_logs()  # without orbax's narration of every save
result = train.train_and_evaluate(config, WORKDIR)
print(result)

# %% [markdown]
# ## Training curves
# From `WORKDIR/metrics.jsonl` (one JSON object per logged step and per evaluation).

# %%
from alexnet_jax import figures

rows = figures.read_metrics(f"{WORKDIR}/metrics.jsonl")
_ = figures.training_curves(rows)

# %% [markdown]
# ## 10-crop evaluation (Sec. 4.1)
# The four corner patches and the centre patch and their reflections, softmax averaged.

# %%
from alexnet_jax import evaluate

ten = evaluate.evaluate_workdirs([WORKDIR], crops=10)
print(f"top-1 error {ten['top1_error']:.2%}, top-5 error {ten['top5_error']:.2%} on {ten['num_examples']} images")

# %% [markdown]
# ## TensorBoard, checkpoints, Drive

# %%
if IN_COLAB and compat.has_tensorflow():
  ipython = get_ipython()  # noqa: F821
  ipython.run_line_magic("load_ext", "tensorboard")
  ipython.run_line_magic("tensorboard", f"--logdir {WORKDIR}/tensorboard")
print("checkpoints:", sorted(os.listdir(f"{WORKDIR}/checkpoints")))
print("metrics:    ", f"{WORKDIR}/metrics.jsonl")
if SAVE_TO_DRIVE and IN_COLAB:
  import shutil

  from google.colab import drive

  drive.mount("/content/drive")
  shutil.copytree(WORKDIR, "/content/drive/MyDrive/alexnet_demo", dirs_exist_ok=True)
  print("copied to /content/drive/MyDrive/alexnet_demo")
