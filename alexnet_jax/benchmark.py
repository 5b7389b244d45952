r"""Throughput harnesses; one JSON line per measurement.

Train step (forward, backward, the paper's optimiser update) on device-resident synthetic batches:

  python -m alexnet_jax.benchmark --model=paper --batch_size=32 --dtype=float32 --steps=5

prints ``images_per_sec``, ``ms_per_step`` (median of timed windows, warm-up excluded, device synchronised),
``flops_per_image`` (counted per layer, printed with ``--layers``), ``mfu`` (when the device's peak is known or given
with ``--peak_tflops``) and ``peak_memory_bytes`` (where the backend reports it). Needs only jax, flax and optax.

Training input, beside a naive reference on the same files in the same run:

  python -m alexnet_jax.benchmark --input_only [--data_dir=DST] [--steps=20]

measures the tf.data training input (decode + random crop + flip, and the full augmentation) on one core and on all
cores, and a plain PIL-decode + NumPy crop/flip loop on one core, over the same prepared shards. Without
``--data_dir`` it first prepares 2,000 generated 256x256 images in a temporary folder.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np
from absl import app, flags

from alexnet_jax import step_time

# Dense matrix-unit peaks per device, for MFU: bf16 (and TF32 for float32 on NVIDIA), TFLOP/s by a substring of jax's
# device_kind; read from the one table of device peaks, step_time.PEAKS.
PEAK_TFLOPS = {
  (p.device_kind, dtype): p.flops(dtype) / 1e12
  for p in step_time.PEAKS.values()
  if p.device_kind
  for dtype in step_time.DTYPES
}


def emit(row: dict) -> None:
  print(json.dumps(row), flush=True)


layer_flops = step_time.layer_flops  # forward FLOPs per layer for one image (one implementation: step_time.py)


# -----------------------------------------------------------------------------------------------------------------
# The train step.
# -----------------------------------------------------------------------------------------------------------------
def step_fn(graphdef, tx, mesh, shardings):
  """The jitted train step on uint8 batches (mean subtraction inside), constant learning rate, state donated."""
  import jax
  import jax.numpy as jnp

  from alexnet_jax import optim, parallel
  from alexnet_jax import steps as steps_lib

  preprocess = lambda b: b["image"].astype(jnp.float32) - 127.5
  schedule = optim.base_schedule("constant", learning_rate=0.01, steps_per_epoch=1, total_steps=1)
  return jax.jit(
    steps_lib.make_train_step(graphdef, tx, schedule, preprocess),
    in_shardings=(shardings, parallel.batch_sharding(mesh)),
    out_shardings=(shardings, parallel.replicated(mesh)),
    donate_argnums=0,
  )


def bench_train_step(
  model_name: str,
  batch_size: int,
  dtype: str,
  steps: int,
  windows: int,
  width: float,
  conv_impl: str,
  peak_tflops: float | None,
  show_layers: bool,
  mesh_model: int = 1,
  memory_only: bool = False,
  conv1_impl: str = "auto",
) -> dict:
  import functools

  import jax
  from flax import nnx

  from alexnet_jax import model as model_lib
  from alexnet_jax import optim, parallel
  from alexnet_jax import steps as steps_lib

  conv_impl, conv1_impl = model_lib.resolve_conv_impls(conv_impl, conv1_impl)
  mesh = parallel.create_mesh(mesh_model)
  make_model = functools.partial(
    model_lib.AlexNet, model_name, width=width, conv_impl=conv_impl, conv1_impl=conv1_impl, dtype=dtype, mesh=mesh
  )
  tx = optim.paper_sgd()
  graphdef, init = steps_lib.init_train_state(make_model, tx, seed=0)
  parallel.check_batch_size(batch_size, mesh)
  abstract = jax.eval_shape(init)
  shardings = parallel.state_shardings(mesh, abstract)
  size = model_lib.ARCHITECTURES[model_name].image_size
  rng = np.random.default_rng(0)
  layout = {  # what every row says about the run, and where the state lives
    "model": model_name,
    "batch_size": batch_size,
    "dtype": dtype,
    "width": width,
    "conv_impl": conv_impl,
    "conv1_impl": conv1_impl,
    "mesh": dict(mesh.shape),
    "param_bytes_per_device": parallel.bytes_per_device(abstract["params"], shardings["params"]),
    "state_bytes_per_device": parallel.bytes_per_device(abstract, shardings),
  }
  if memory_only:  # compile only: what each device holds (arguments) and needs besides (temporaries: activations)
    batch_shapes = {
      "image": jax.ShapeDtypeStruct((batch_size, size, size, 3), np.uint8),
      "label": jax.ShapeDtypeStruct((batch_size,), np.int32),
    }
    compiled = step_fn(graphdef, tx, mesh, shardings).lower(abstract, batch_shapes).compile()
    stats = compiled.memory_analysis()
    return {
      "what": "train_step_memory",
      **layout,
      "argument_bytes_per_device": stats.argument_size_in_bytes,
      "temp_bytes_per_device": stats.temp_size_in_bytes,
      "output_bytes_per_device": stats.output_size_in_bytes,
      "alias_bytes_per_device": stats.alias_size_in_bytes,
      "device": jax.devices()[0].device_kind,
      "num_devices": mesh.size,
      "jax": jax.__version__,
    }
  state = jax.jit(init, out_shardings=shardings)()
  batch = parallel.to_global(
    {
      "image": rng.integers(0, 256, (batch_size, size, size, 3), dtype=np.uint8),
      "label": rng.integers(0, 1000, (batch_size,), dtype=np.int32),
    },
    parallel.batch_sharding(mesh),
  )
  step = step_fn(graphdef, tx, mesh, shardings)

  abstract_model = nnx.eval_shape(lambda: make_model(rngs=nnx.Rngs(0)))
  per_layer = layer_flops(abstract_model)
  flops_per_image = step_time.TRAIN_FLOPS_PER_FORWARD * sum(per_layer.values())  # forward + backward (2x forward)
  state, out = step(state, batch)  # compile + warm up
  jax.block_until_ready(out["loss"])
  state, out = step(state, batch)
  jax.block_until_ready(out["loss"])
  times = []
  for _ in range(windows):
    t0 = time.perf_counter()
    for _ in range(steps):
      state, out = step(state, batch)
    jax.block_until_ready((state["params"], out["loss"]))
    times.append((time.perf_counter() - t0) / steps)
  ms = statistics.median(times) * 1e3
  device = jax.devices()[0]
  kind = device.device_kind
  peak = peak_tflops or next((v for (k, d), v in PEAK_TFLOPS.items() if k in kind and d == dtype), None)
  achieved = flops_per_image * batch_size / (ms / 1e3)
  memory = parallel.peak_memory_bytes(device)
  row = {
    "what": "train_step",
    **layout,
    "images_per_sec": batch_size / (ms / 1e3),
    "ms_per_step": ms,
    "ms_per_step_windows": [t * 1e3 for t in times],
    "flops_per_image": flops_per_image,
    "tflops_per_sec": achieved / 1e12,
    "mfu": achieved / (peak * 1e12) if peak else None,
    "peak_memory_bytes": memory,
    "device": kind,
    "num_devices": mesh.size,
    "jax": jax.__version__,
  }
  if show_layers:
    row["forward_flops_per_layer"] = per_layer
  return row


# -----------------------------------------------------------------------------------------------------------------
# The training input.
# -----------------------------------------------------------------------------------------------------------------
def _make_benchmark_data(root: str, count: int = 2000) -> str:
  from alexnet_jax.data import embedded, prepare

  raw, out = os.path.join(root, "raw"), os.path.join(root, "prepared")
  per_class = count // len(embedded.CLASSES)
  embedded.generate(raw, train_per_class=per_class, val_per_class=2, size=256)
  prepare.prepare(raw, out, image_size=256, examples_per_shard=250)
  return out


def _naive_reference(files: list[str], crop: int, limit: int) -> float:
  """PIL decode + NumPy random crop and flip, one image at a time, one core: images/s."""
  import io

  import tensorflow as tf
  from PIL import Image

  records = []
  for f in files:
    for rec in tf.data.TFRecordDataset(f).as_numpy_iterator():
      records.append(tf.train.Example.FromString(rec).features.feature["image"].bytes_list.value[0])
      if len(records) >= limit:
        break
  rng = np.random.default_rng(0)
  t0 = time.perf_counter()
  for data in records:
    image = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    y, x = rng.integers(0, image.shape[0] - crop + 1), rng.integers(0, image.shape[1] - crop + 1)
    patch = image[y : y + crop, x : x + crop]
    if rng.random() < 0.5:
      patch = patch[:, ::-1]
    np.ascontiguousarray(patch)
  return len(records) / (time.perf_counter() - t0)


def bench_input(data_dir: str | None, batch_size: int, steps: int) -> list[dict]:
  from alexnet_jax.data.prepared import prepared_source

  tmp = None
  if not data_dir:
    tmp = tempfile.TemporaryDirectory(prefix="alexnet_input_bench_")
    data_dir = _make_benchmark_data(tmp.name)
  cores = os.cpu_count() or 1
  rows = []
  variants = [("decode+crop+flip", dict(lighting_std=0.0)), ("full augmentation", {})]
  for label, kw in variants:
    for threads in (1, cores):
      src = prepared_source(data_dir, image_size=227, seed=0, shuffle_buffer=1, num_threads=threads, **kw)
      every = src._share("train", 0, 1)  # the whole training set, as one process reads it
      ds = src._train_dataset(every, start_epoch=0, batch=batch_size, per_epoch=src.steps_per_epoch(batch_size))
      it = ds.as_numpy_iterator()
      for _ in range(3):
        next(it)
      t0 = time.perf_counter()
      for _ in range(steps):
        next(it)
      rate = steps * batch_size / (time.perf_counter() - t0)
      rows.append(
        {
          "what": "input",
          "pipeline": f"tf.data {label}",
          "threads": threads,
          "images_per_sec": rate,
          "images_per_sec_per_core": rate / threads,
        }
      )
  files = prepared_source(data_dir, image_size=227, seed=0)._files("train", 0, 1)[0]
  naive = _naive_reference(files, 227, limit=steps * batch_size)
  rows.append(
    {
      "what": "input",
      "pipeline": "naive PIL decode + NumPy crop/flip",
      "threads": 1,
      "images_per_sec": naive,
      "images_per_sec_per_core": naive,
    }
  )
  one_core = next(r for r in rows if r["pipeline"] == "tf.data decode+crop+flip" and r["threads"] == 1)
  rows.append(
    {
      "what": "input",
      "ratio_tf_data_to_naive_per_core": one_core["images_per_sec"] / naive,
      "data_dir": data_dir,
      "cores": cores,
    }
  )
  if tmp is not None:
    tmp.cleanup()
  return rows


def define_flags() -> None:
  flags.DEFINE_enum("model", "paper", ["paper", "owt"], "Which network.")
  flags.DEFINE_integer("batch_size", 32, "Global batch.")
  flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype (parameters stay float32).")
  flags.DEFINE_integer("steps", 5, "Steps per timed window (input: batches timed).")
  flags.DEFINE_integer("windows", 3, "Timed windows; the median is reported.")
  flags.DEFINE_float("width", 1.0, "Network width multiplier (1.0 = the paper).")
  flags.DEFINE_enum(
    "conv_impl", "auto", ["auto", "split", "grouped"], "Grouped convs as two convs or one (auto: as in training)."
  )
  flags.DEFINE_enum(
    "conv1_impl", "auto", ["auto", "conv", "patches"], "conv1 as a convolution or patches x matrix (auto: CPU patches)."
  )
  flags.DEFINE_integer("mesh_model", 1, "Size of the mesh's 'model' axis (2: the paper's split) over all devices.")
  flags.DEFINE_bool("memory_only", False, "Compile only; print per-device parameter, state and temporary bytes.")
  flags.DEFINE_float("peak_tflops", None, "The device's peak, for MFU where it is not known.")
  flags.DEFINE_bool("layers", False, "Also print the forward FLOPs of every layer.")
  flags.DEFINE_bool("input_only", False, "Benchmark the training input instead of the train step.")
  flags.DEFINE_string("data_dir", None, "Prepared data for --input_only (default: generate some).")


def main(argv: list[str]) -> int:
  del argv
  try:
    run_benchmark(flags.FLAGS)
  except ValueError as e:  # an impossible layout or batch: say what to change
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0


def run_benchmark(f) -> None:
  if f.input_only:
    for row in bench_input(f.data_dir, f.batch_size, max(f.steps, 10)):
      emit(row)
    return
  emit(
    bench_train_step(
      f.model,
      f.batch_size,
      f.dtype,
      f.steps,
      f.windows,
      f.width,
      f.conv_impl,
      f.peak_tflops,
      f.layers,
      mesh_model=f.mesh_model,
      memory_only=f.memory_only,
      conv1_impl=f.conv1_impl,
    )
  )


if __name__ == "__main__":
  define_flags()
  app.run(lambda argv: sys.exit(main(argv)))
