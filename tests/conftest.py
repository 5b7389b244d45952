"""Every test runs on CPU with 8 fake devices, so the sharded code paths are the ones tested.

The levels: ``tests/unit`` (fast, in-process: ``make test-fast``), ``tests/system`` (command lines, several
processes, faults, AOT compiles, launch kits, cloud storage), ``tests/docs`` (the README's and docs' commands, the
notebooks, Colab's stack). What they share is in ``tests/support``; this file only sets the environment, before
anything imports JAX."""

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

assert jax.device_count() == 8, "tests need 8 fake CPU devices (XLA_FLAGS was set too late?)"
