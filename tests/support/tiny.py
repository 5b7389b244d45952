"""The tiny run every level uses: in-process (``tiny_config``; ``small_prepared_run`` on prepared files) and on the
command line (``TINY_FLAGS`` in a subprocess with ``cli_env``, or ``colab_env`` in Colab's stack)."""

import os

from alexnet_jax import config_lib
from tests.support import FAST_COMPILE_FLAGS, ROOT

# The same tiny run on the command line (the CLI, multi-process and sweep tests); each adds its own step counts.
TINY_FLAGS = [
  "--config.model.width=0.125",
  "--config.model.image_size=67",
  "--config.model.num_classes=10",
  "--config.batch_size=16",
  "--config.eval_batch_size=16",
  "--config.data.num_eval_examples=20",
  "--config.log_every_steps=1",
]


def cli_env(devices=None, *, fast_compile=False):
  """The environment for a subprocess that runs JAX on the CPU: ``devices`` fake devices (default: one), this
  session's other XLA flags kept (the collective timeouts), FAST_COMPILE_FLAGS only if ``fast_compile`` (a command
  that compiles much and runs little), output unbuffered."""
  kept = [f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f and f not in FAST_COMPILE_FLAGS]
  flags = kept + (FAST_COMPILE_FLAGS if fast_compile else [])
  if devices:
    flags.append(f"--xla_force_host_platform_device_count={devices}")
  return {**os.environ, "XLA_FLAGS": " ".join(flags), "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1"}


def colab_env(devices: int, *, fast_compile=False) -> dict[str, str]:
  """``cli_env`` for jaxlib 0.7.2, which aborts on XLA flags it does not know (the CPU collective timeouts; it knows
  FAST_COMPILE_FLAGS)."""
  env = {**cli_env(devices), "PYTHONPATH": ROOT}
  flags = [f"--xla_force_host_platform_device_count={devices}", *(FAST_COMPILE_FLAGS if fast_compile else [])]
  env["XLA_FLAGS"] = " ".join(flags)
  return env


def tiny_config(**overrides):
  """The paper's network and recipe at 1/8 width on 67x67 images, 10 classes: seconds per step on a CPU."""
  c = config_lib.base_config()
  c.data.source = "synthetic"
  c.model.width = 0.125
  c.model.image_size = 67
  c.model.num_classes = 10
  c.batch_size = 16
  c.eval_batch_size = 16
  c.data.num_train_examples = 160
  c.data.num_eval_examples = 20  # not a multiple of the batch: exercises padding and masking
  c.num_train_steps = 4
  c.log_every_steps = 1
  c.eval_every_steps = 0
  c.checkpoint_every_steps = 2
  for key, value in overrides.items():
    config_lib.set_by_path(c, key, value)
  return c


def small_prepared_run(root):
  """A few steps of the paper's network (1/8 width) on a small prepared shapes set, in ``root / "run"``: a real
  workdir (its data in ``root / "prepared"``). Returns ``root``."""
  from alexnet_jax import train
  from alexnet_jax.data import embedded, prepare

  embedded.generate(str(root / "raw"), train_per_class=6, val_per_class=2, size=80, seed=3)
  prepare.prepare(str(root / "raw"), str(root / "prepared"), image_size=76, jpeg_quality=95, examples_per_shard=16)
  config = tiny_config(**{"data.source": "prepared", "data.dir": str(root / "prepared"), "model.image_size": 67})
  config.num_train_steps = 3
  train.train_and_evaluate(config, str(root / "run"))
  return root
