r"""Throughput harnesses; one JSON line per measurement.

Train step (forward, backward, the paper's optimiser update) on device-resident synthetic batches:

  python -m alexnet_jax.benchmark --model=paper --batch_size=32 --dtype=float32 --steps=5

prints ``images_per_sec``, ``ms_per_step`` (median of timed windows, warm-up excluded, device synchronised),
``flops_per_image`` (counted per layer, printed with ``--layers``), ``mfu`` (when the device's peak is known or given
with ``--peak_tflops``) and ``peak_memory_bytes`` (where the backend reports it). Needs only jax, flax and optax.

The training input's paths side by side in one run (``bench_input``):

  python -m alexnet_jax.benchmark --input_only [--data_dir=DST] [--steps=20]

one JSON line per path (``pipeline``: ``jpeg``, ``pixels`` (memory-mapped), ``pixels_tfrecord`` (the records through
tf.data), ``service_1`` and ``service_2`` (the JPEG set through the tf.data service: 1 and 2 local worker processes
of one thread each, ``workers``; per core: per worker; ``batches_per_epoch`` and ``within_one_epoch``: whether the
timed batches stayed in one epoch, one job of the service), ``floor``, ``pixels device part``; ``threads``;
``images_per_sec``; ``images_per_sec_per_core``: over ``threads``; ``cpu_cores_used``: this process's CPU time over
the wall time, which counts the thread that takes the batches too: the memory-mapped pixel path copies the pixels
there), the first two on one thread and on every core, over the same
images: a JPEG set (``DST``, or 2,000 generated 256x256 images prepared in a temporary folder) and a sample of it
converted to pixels in a temporary folder (a pixel ``DST`` is read as it is).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np
from absl import flags

from alexnet_jax import cli, step_time

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


def _pixel_sample(data_dir: str, root: str, max_images: int) -> str:
  """A pixel set in ``root`` made of a JPEG set's first training shards (up to ``max_images`` images) and first
  validation shard, converted as ``prepare --encoding=pixels`` converts (``prepare.convert_shard``)."""
  import json

  from alexnet_jax import storage
  from alexnet_jax.data import format, prepare

  meta = format.read_metadata(data_dir)
  if meta["encoding"] == "pixels":
    return data_dir
  splits = {}
  for split, m in meta["splits"].items():
    files, lengths = [], []
    for path, n in zip(m["files"], m["shard_lengths"]):
      if files and (split != "train" or sum(lengths) >= max_images):
        break
      prepare.convert_shard(path, os.path.join(root, storage.basename(path)), meta["image_size"], [])
      files.append(storage.basename(path))
      lengths.append(n)
    splits[split] = {"files": files, "shard_lengths": lengths, "num_examples": sum(lengths)}
  storage.copy_file(os.path.join(data_dir, format.STATS), os.path.join(root, format.STATS))
  fields = {k: meta[k] for k in ("layout", "source", "image_size", "jpeg_quality", "classes", "num_bad_files")}
  with open(os.path.join(root, format.METADATA), "w") as f:
    json.dump(format.metadata(**fields, splits=splits, encoding="pixels"), f)
  return root


_CROP = 227  # --input_only's crops: the paper's
_WARMUP_BATCHES = 3  # read before each timed stretch of batches
_MIN_INPUT_STEPS = 10  # --input_only times at least this many batches (--steps, if more)


def _time_batches(batches, batch_size: int, steps: int) -> tuple[float, float]:
  """(images/s, CPU cores this process kept busy meanwhile: its CPU time over the wall time) of ``steps`` batches
  from the iterator ``batches``, after _WARMUP_BATCHES batches of warm-up."""
  for _ in range(_WARMUP_BATCHES):
    next(batches)
  t0, c0 = time.perf_counter(), time.process_time()
  for _ in range(steps):
    next(batches)
  wall = time.perf_counter() - t0
  return steps * batch_size / wall, (time.process_time() - c0) / wall


def _floor(images: np.ndarray, batch_size: int, steps: int) -> tuple[float, float]:
  """The floor: batches of the stored pixels gathered in a random order from memory by NumPy (one copy of each
  image's bytes, one thread), as ``_time_batches`` times it."""
  rng = np.random.default_rng(0)
  order = rng.permutation(len(images))

  def batches():
    while True:
      for i in range(0, len(order) - batch_size + 1, batch_size):
        yield images[order[i : i + batch_size]]

  return _time_batches(batches(), batch_size, steps)


def bench_input(data_dir: str | None, batch_size: int, steps: int, num_images: int = 2000) -> list[dict]:
  """The training input's paths side by side, one JSON row each (``pipeline``: "jpeg", "pixels", "pixels_tfrecord",
  "service_1", "service_2", "floor", "pixels device part"; ``threads``; ``images_per_sec``;
  ``images_per_sec_per_core``): the paper's full augmentation from a JPEG set (decode and crop on the host) and from
  the same images as a pixel set (the host reads and batches whole images; crop, flip, mean and lighting on the
  device, timed apart on the local device), each on one thread and on every core; the JPEG set through the tf.data
  service with 1 and 2 local workers (``_bench_service``: with ``batches_per_epoch`` and ``within_one_epoch``); and
  the floor: a NumPy copy of the same pixels from
  memory. Without ``data_dir``, a JPEG set of ``num_images`` generated photographs (256 px) is made and used.
  The pixel paths and the floor read (at most) ``num_images`` of its images, at least 4 batches."""
  import jax

  from alexnet_jax.data import embedded, format
  from alexnet_jax.data.prepared import prepared_source

  generated_classes = None if data_dir else len(embedded.CLASSES)
  if generated_classes:  # before making them: _make_benchmark_data makes num_images // classes a class
    made = num_images // generated_classes * generated_classes
    if made < batch_size:
      raise ValueError(f"--batch_size={batch_size} is more than the {made} images --input_images={num_images} makes")
  tmp = tempfile.TemporaryDirectory(prefix="alexnet_input_bench_")
  if not data_dir:
    data_dir = _make_benchmark_data(tmp.name, num_images)
  meta = format.read_metadata(data_dir)
  if meta["image_size"] < _CROP:
    raise ValueError(
      f"--data_dir={data_dir} stores {meta['image_size']}x{meta['image_size']} images; --input_only times the "
      f"paper's {_CROP}x{_CROP} crops: prepare the set with --image_size=256 (the paper's)"
    )
  if meta["splits"]["train"]["num_examples"] < batch_size:
    raise ValueError(
      f"--batch_size={batch_size} is more than the {meta['splits']['train']['num_examples']} training images of "
      f"--data_dir={data_dir}: give a smaller --batch_size or a larger set"
    )
  pixels_dir = _pixel_sample(data_dir, tempfile.mkdtemp(dir=tmp.name), max_images=max(num_images, 4 * batch_size))
  cores = os.cpu_count() or 1
  rows, sources = [], {}
  paths = (("jpeg", data_dir, "mmap"), ("pixels", pixels_dir, "mmap"), ("pixels_tfrecord", pixels_dir, "tfrecord"))
  for pipeline, folder, reader in paths:
    for threads in sorted({1, cores}):
      src = prepared_source(folder, reader, image_size=_CROP, seed=0, shuffle_buffer=1, num_threads=threads)
      rate, used = _time_batches(src.train_batches(0, batch_size), batch_size, steps)
      rows.append(
        _input_row(pipeline, threads, rate, cpu_cores_used=used, data_dir=folder, device_crop=src.device_crop)
      )
      sources[pipeline] = src
  rows += _bench_service(data_dir, batch_size, steps, generated_classes)
  src = sources["pixels"]
  batches = src.train_batches(0, batch_size)
  images = np.concatenate([next(batches)["image"] for _ in range(max(4, num_images // batch_size))])
  rate, used = _floor(images, batch_size, steps)
  rows.append(_input_row("floor", 1, rate, cpu_cores_used=used, stored_size=images.shape[1]))
  batch = jax.device_put(next(batches))
  preprocess = jax.jit(src.preprocess)

  def device_batches():
    while True:
      yield jax.block_until_ready(preprocess(batch))

  rate, _ = _time_batches(device_batches(), batch_size, steps)
  rows.append(_input_row("pixels device part", 0, rate, device=jax.devices()[0].device_kind))
  by = {(r["pipeline"], r["threads"]): r["images_per_sec_per_core"] for r in rows}
  rows.append(
    {
      "what": "input_ratios",
      "pixels_to_floor": by["pixels", 1] / by["floor", 1],
      "pixels_to_jpeg_per_core": by["pixels", 1] / by["jpeg", 1],
      "service_2_to_service_1": by["service_2", 1] * 2 / by["service_1", 1],
      "batch_size": batch_size,
      "cores": cores,
      "shuffle_buffer": 1,
    }
  )
  tmp.cleanup()
  return rows


def _bench_service(data_dir: str, batch_size: int, steps: int, generated_classes: int | None = None) -> list[dict]:
  """The JPEG set through the tf.data service: a dispatcher and 1, then 2, worker processes on this machine
  (``service.LocalService``: the dispatcher in this process, a second worker added for the second job), each
  worker's pipeline on one thread; the trainer's side (receiving, re-batching) runs in this process. Rows
  ``service_1`` and ``service_2``: ``threads`` 1 (per worker), ``workers``, ``images_per_sec`` of them all,
  ``images_per_sec_per_core`` per worker, ``batches_per_epoch`` and ``within_one_epoch``: whether the warm-up and
  timed batches fit in one epoch. Each epoch is a job of the service (``service.distribute``), so batches timed
  across an epoch's end time a job's start with them (measured on 2 cores: 2 workers 0.6-1.0x of one across three
  jobs, 1.2-1.4x within one epoch); a warning on stderr then says how many images would fit them
  (``service_epochs_warning``; ``generated_classes``: the classes of a set the benchmark generated)."""
  from alexnet_jax.data.prepared import prepared_source
  from alexnet_jax.data.service import LocalService

  rows = []
  service = LocalService(1)
  with service as address:
    for workers in (1, 2):
      if workers == 2:
        service.add_workers(1)  # the same dispatcher: the next job is served by both
      src = prepared_source(
        data_dir, "tfrecord", image_size=_CROP, seed=0, shuffle_buffer=1, num_threads=1, service=address
      )
      if workers == 1:  # the same set and batches for both rows
        batches_per_epoch = src.steps_per_epoch(batch_size)
        warning = service_epochs_warning(batches_per_epoch, batch_size, steps, generated_classes)
        if warning:
          print(warning, file=sys.stderr)
      rate, _ = _time_batches(src.train_batches(0, batch_size), batch_size, steps)
      row = _input_row(f"service_{workers}", 1, rate, data_dir=data_dir, workers=workers)
      within = {"batches_per_epoch": batches_per_epoch, "within_one_epoch": warning is None}
      rows.append({**row, "images_per_sec_per_core": rate / workers, **within})
  return rows


def service_epochs_warning(
  batches_per_epoch: int, batch_size: int, steps: int, generated_classes: int | None = None
) -> str | None:
  """None where the warm-up and the ``steps`` timed batches fit in one epoch of ``batches_per_epoch``; otherwise
  the warning line: how many epochs (service jobs) they span, and what would make them fit: the training images
  (for a generated set, ``generated_classes`` given, the ``--input_images`` that makes them: it generates
  ``input_images // classes`` images per class) or, where one epoch holds at least _MIN_INPUT_STEPS timed batches,
  fewer ``--steps``."""
  timed = _WARMUP_BATCHES + steps
  if timed <= batches_per_epoch:
    return None
  need = timed * batch_size
  if generated_classes:
    give = f"--input_images={-(-need // generated_classes) * generated_classes}"
  else:
    give = f"a --data_dir of at least {need} training images"
  fewer = batches_per_epoch - _WARMUP_BATCHES
  or_fewer = f", or --steps={fewer}" if fewer >= _MIN_INPUT_STEPS else ""
  return (
    f"warning: the service rows time {timed} batches of {batch_size} ({_WARMUP_BATCHES} of warm-up) across "
    f"{-(-timed // max(batches_per_epoch, 1))} epochs of {batches_per_epoch} batches, each epoch a new job of the "
    f"service: their rates include the jobs' starts. For a rate within one epoch give {give}{or_fewer}."
  )


def _input_row(pipeline: str, threads: int, rate: float, **extra) -> dict:
  return {
    "what": "input",
    "pipeline": pipeline,
    "threads": threads,
    "images_per_sec": rate,
    "images_per_sec_per_core": rate / threads if threads else None,
    **extra,
  }


def define_flags() -> None:
  flags.DEFINE_enum("model", "paper", ["paper", "owt"], "Which network.")
  flags.DEFINE_integer("batch_size", 32, "Global batch.")
  flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype (parameters stay float32).")
  flags.DEFINE_integer(
    "steps", 5, f"Steps per timed window (--input_only: batches timed, at least {_MIN_INPUT_STEPS}, after 3 warm-up)."
  )
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
  flags.DEFINE_string("data_dir", None, "Prepared data for --input_only (default: generate --input_images).")
  flags.DEFINE_integer(
    "input_images",
    2000,
    "--input_only without --data_dir: how many photographs are generated (256 px JPEGs) and timed.",
    lower_bound=100,
  )


def main(argv: list[str]) -> int:
  del argv
  try:
    run_benchmark(flags.FLAGS)
  except ValueError as e:  # an impossible layout or batch: say what to change
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0


def run_benchmark(f) -> None:
  if f.batch_size < 1:
    raise ValueError(f"--batch_size must be positive, got {f.batch_size}")
  if f.input_only:
    from alexnet_jax import input_rates

    rows = bench_input(f.data_dir, f.batch_size, max(f.steps, _MIN_INPUT_STEPS), f.input_images)
    for row in rows:
      emit(row)
    # what `python -m alexnet_jax.aot` reads for host_cores_needed
    emit({"what": "input_rates_recorded", "path": input_rates.record(rows)})
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
  cli.run(main)  # a bad flag value: one `error:` line, exit 2
