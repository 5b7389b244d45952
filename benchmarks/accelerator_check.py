#!/usr/bin/env python3
r"""What only an accelerator shows, in one run: one JSON line per measurement (GPU or TPU; runs on CPU too, slowly).

  python benchmarks/accelerator_check.py [--batch_sizes=128,512,2048] [--steps=10] [--windows=3]

1. ``train_step``: the paper's network (and the one-tower variant) through ``alexnet_jax.benchmark``'s harness:
   images/s, ms per step, MFU against the chip's dense peak (``benchmark.PEAK_TFLOPS``), in bfloat16 at each batch
   size and in float32 at the first two, grouped convolutions as one op beside two.
2. ``train_step_memory``: what the compiler plans for the first bfloat16 row's step (arguments, temporaries)
   beside what the device reports as its peak after running it (the first row runs first, so its peak is its own).
3. ``determinism``: the same 10 steps run twice from the same initialisation; whether every parameter is bitwise
   equal, and the largest difference when not.
4. ``device_crop``: the on-device part of the input (``AugmentedSource.preprocess``) for a batch of whole 256x256
   views: crop, flip, mean window, lighting (what a pixel-encoded set sends), beside the same for crops cut on the
   host; ms per batch and images/s.

Needs jax, flax and optax only (no TensorFlow). Results: benchmarks/RESULTS.md, "GPU".
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from alexnet_jax import benchmark


def emit(row: dict) -> None:
  print(json.dumps(row), flush=True)


def timed(fn, windows: int, steps: int) -> list[float]:
  """Seconds per call of ``fn`` (which returns something to block on), per window, after one warm-up call."""
  import jax

  jax.block_until_ready(fn())
  out = []
  for _ in range(windows):
    t0 = time.perf_counter()
    for _ in range(steps):
      r = fn()
    jax.block_until_ready(r)
    out.append((time.perf_counter() - t0) / steps)
  return out


def determinism(batch_size: int, dtype: str, steps: int = 10) -> dict:
  """Two runs of ``steps`` train steps from the same state and batch: bitwise equal parameters?"""
  import jax
  from flax import nnx  # noqa: F401

  from alexnet_jax import model as model_lib
  from alexnet_jax import optim, parallel
  from alexnet_jax import steps as steps_lib

  mesh = parallel.create_mesh(1)
  conv_impl, conv1_impl = model_lib.resolve_conv_impls("auto", "auto")
  make_model = functools.partial(
    model_lib.AlexNet, "paper", conv_impl=conv_impl, conv1_impl=conv1_impl, dtype=dtype, mesh=mesh
  )
  tx = optim.paper_sgd()
  graphdef, init = steps_lib.init_train_state(make_model, tx, seed=0)
  shardings = parallel.state_shardings(mesh, jax.eval_shape(init))
  step = benchmark.step_fn(graphdef, tx, mesh, shardings)
  rng = np.random.default_rng(0)
  batch = parallel.to_global(
    {
      "image": rng.integers(0, 256, (batch_size, 227, 227, 3), dtype=np.uint8),
      "label": rng.integers(0, 1000, (batch_size,), dtype=np.int32),
    },
    parallel.batch_sharding(mesh),
  )
  finals = []
  for _ in range(2):
    state = jax.jit(init, out_shardings=shardings)()
    losses = []
    for _ in range(steps):
      state, out = step(state, batch)
      losses.append(float(np.mean(out["loss"])))
    finals.append((jax.device_get(state["params"]), losses))
  (a, la), (b, lb) = finals
  diffs = [
    float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
  ]
  return {
    "what": "determinism",
    "batch_size": batch_size,
    "dtype": dtype,
    "steps": steps,
    "bitwise_equal_params": all(d == 0.0 for d in diffs),
    "max_abs_param_difference": max(diffs),
    "losses_equal": la == lb,
    "losses": la,
    "xla_flags": os.environ.get("XLA_FLAGS", ""),
  }


def device_crop(batch_size: int, windows: int, steps: int) -> list[dict]:
  """The device part of the input for whole 256x256 views (pixel sets) and for host-cut 227x227 crops."""
  import jax

  from alexnet_jax.data.pipeline import AugmentedSource

  rng = np.random.default_rng(0)
  rows = []
  for stored in (256, 227):
    source = AugmentedSource.for_compile(image_size=227, stored_size=256)
    source.mean_image = rng.uniform(0, 255, (256, 256, 3)).astype(np.float32)
    batch = {
      "image": jax.device_put(rng.integers(0, 256, (batch_size, stored, stored, 3), dtype=np.uint8)),
      "offset": jax.device_put(rng.integers(0, 30, (batch_size, 2), dtype=np.int32)),
      "flip": jax.device_put(rng.integers(0, 2, (batch_size,), dtype=np.int32)),
      "shift": jax.device_put(rng.normal(0, 5, (batch_size, 3)).astype(np.float32)),
    }
    fn = jax.jit(source.preprocess)
    times = timed(lambda fn=fn, batch=batch: fn(batch), windows, steps)
    ms = statistics.median(times) * 1e3
    rows.append(
      {
        "what": "device_crop",
        "input": "whole 256x256 views: crop, flip, mean, lighting"
        if stored == 256
        else "227x227 crops: mean, lighting",
        "batch_size": batch_size,
        "ms_per_batch": ms,
        "images_per_sec": batch_size / (ms / 1e3),
        "device": jax.devices()[0].device_kind,
      }
    )
  return rows


def main() -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--batch_sizes", default="128,512,2048")
  p.add_argument("--steps", type=int, default=10)
  p.add_argument("--windows", type=int, default=3)
  p.add_argument("--skip", default="", help="comma-separated parts to skip: sweep, memory, determinism, crop")
  args = p.parse_args()
  sizes = [int(b) for b in args.batch_sizes.split(",")]
  skip = set(filter(None, args.skip.split(",")))
  bench = functools.partial(
    benchmark.bench_train_step,
    steps=args.steps,
    windows=args.windows,
    width=1.0,
    conv_impl="auto",
    peak_tflops=None,
    show_layers=False,
  )
  first = sizes[min(1, len(sizes) - 1)]
  emit(bench("paper", first, "bfloat16"))  # first: the device's peak memory afterwards is this row's own
  if "memory" not in skip:
    emit(bench("paper", first, "bfloat16", memory_only=True))
  if "crop" not in skip:
    for row in device_crop(first, args.windows, args.steps):
      emit(row)
  if "determinism" not in skip:
    emit(determinism(min(sizes), "bfloat16"))
  if "sweep" not in skip:
    for b in sizes:
      if b != first:
        emit(bench("paper", b, "bfloat16"))
    emit(bench("paper", first, "bfloat16", conv_impl="grouped"))
    emit(bench("owt", first, "bfloat16"))
    for b in sizes[:2]:
      emit(bench("paper", b, "float32"))
  return 0


if __name__ == "__main__":
  sys.exit(main())
