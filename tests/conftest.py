"""Every test runs on CPU with 8 fake devices, so the sharded code paths are the ones tested."""

import os

os.environ["XLA_FLAGS"] = " ".join(
  [f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f]
  + [
    "--xla_force_host_platform_device_count=8",
    # 8 fake devices on 2 busy cores: a straggler at a CPU collective is a false alarm, not a hang.
    "--xla_cpu_collective_call_terminate_timeout_seconds=600",
    "--xla_cpu_collective_call_warn_stuck_timeout_seconds=120",
  ]
)
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax
import pytest

from alexnet_jax import config_lib

assert jax.device_count() == 8, "tests need 8 fake CPU devices (XLA_FLAGS was set too late?)"


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


def cli_env(devices=None):
  """The environment for a subprocess that runs JAX on the CPU: ``devices`` fake devices (default: one), this
  session's other XLA flags kept (the collective timeouts), output unbuffered."""
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f]
  if devices:
    flags.append(f"--xla_force_host_platform_device_count={devices}")
  return {**os.environ, "XLA_FLAGS": " ".join(flags), "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1"}


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


@pytest.fixture
def tiny():
  return tiny_config
