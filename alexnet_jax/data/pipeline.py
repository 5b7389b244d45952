"""The paper's input pipeline (Sec. 2, 4.1): a reader's shards through the paper's augmentation, on tf.data.

``AugmentedSource(reader, ...)`` is a source (``data/batches.py``) over any reader: ``prepared.PreparedReader``
(a set written by ``python -m alexnet_jax.prepare``) or ``tfds_dataset.TfdsReader`` (a TFDS dataset). A reader
says what the dataset holds (``data_dir``; ``meta``: classes, stored image size, per split its shard files and
their lengths; ``stats``: the mean image and the RGB eigenpairs) and how to read it (``records`` of a shard,
``parse`` a record into (encoded image, label, index), ``decode_view`` and ``decode_patch`` an encoded image); the
source shares the examples out between processes, draws the augmentation (``augment.py``) and batches.

Training: random crops of the stored (256x256) images with random horizontal flips, "fancy PCA" lighting, and the
mean image subtracted. Evaluation: the centre crop, or the paper's 10 crops (4 corners + centre, and their mirror
images).

Determinism: epoch e reads this process's share in an order drawn from (seed, e, process), shuffles with a buffer
seeded the same way, and draws each example's crop, flip and lighting from (seed, e, example index) with stateless
random ops. So the batch of every step is a pure function of the step, and a resumed run sees what an unbroken one
would. One tf.data pipeline serves the whole run, the next epoch made ready while the current one is read.

With the tf.data service (``service``, ``data.service``; ``data/service.py``): each epoch of this process's share is
one job of the service's workers in dynamic sharding (``_service_epoch``), so every example of the share is read
once per epoch, in an order the workers' timing decides (each example still augmented from (seed, e, index)); the
process takes exactly ``steps_per_epoch`` batches of each epoch or stops with ``ServiceEpochShortError``
(``_service_batches``); a resumed epoch takes its remaining batches from a fresh pass over the share.

Processes: examples, not whole shards, are shared out (``_share``). The split's examples, shard after shard in the
order ``0, P, 2P, ..., 1, P + 1, ...``, are cut into P contiguous runs of floor(N/P) or ceil(N/P) examples, so any
shard count and any shard sizes work (one shard for two processes is cut in two) and every example is in exactly one
process's share. Where the shards divide evenly, process p reads exactly the whole shards ``p, p + P, ...``. An
epoch of training is floor(N / batch) steps; every process takes that many equal batches from its own share, so
together they read every example once except N mod batch of them, which change from epoch to epoch (the last
partial global batch; docs/DEVIATIONS.md). Evaluation reads every example of the shares once, padded and masked.

What crosses to the devices: with ``device_preprocess`` (default) the uint8 crops plus, per crop, its offset and
flip and the RGB lighting shift; the device subtracts the matching window of the mean image and adds the shift
(4x fewer bytes to move). A pixel set (``reader.whole_views``) read at its stored size sends each training image
whole instead (``device_crop``): the device cuts and mirrors the crop too (``augment.crop_and_flip``), bit for bit
what the host would have cut; with a memory-mapped reader (``PreparedReader.mapped``) tf.data carries example
positions and ``train_batches`` copies each batch's pixels out of the mapping. Without ``device_preprocess``
TensorFlow does the same float arithmetic on the host. The two give identical numbers (tested).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from alexnet_jax.data import augment, format
from alexnet_jax.data.augment import mix_seed, torchvision_normalize
from alexnet_jax.data.batches import spec


class AugmentedSource:
  """A source (see ``data/batches.py``) over a reader's dataset, through the paper's augmentation."""

  def __init__(
    self,
    reader,
    *,
    image_size: int,
    seed: int,
    crop_fraction: float | None = None,
    random_crop: bool = True,
    flip: bool = True,
    lighting_std: float = 0.1,
    subtract_mean: bool = True,
    normalize: str = "mean_image",
    device_preprocess: bool = True,
    shuffle_buffer: int = 10_000,
    eval_crops: int = 1,
    num_classes: int | None = None,
    num_threads: int | None = None,
    service: str = "",
  ):
    # The tf.data service's dispatcher (HOST:PORT; '' off): training's per-example work runs on its workers
    # (``_service_batches``). A reader it cannot serve (one that reads outside the graph) says why.
    self.service = service
    problem = getattr(reader, "service_problem", None) if service else None
    if problem:
      raise ValueError(f"data.service={service!r}: {problem}")
    self.reader = reader
    self.data_dir = data_dir = reader.data_dir
    self.meta, stats = reader.meta, reader.stats
    self.stored_size = self.meta["image_size"]
    self.image_size = image_size
    # The square the crops are cut from: the stored images, resized on read when the recipe's crop would otherwise
    # cover another fraction of them than crop_fraction (a set prepared at 256 trained with 67x67 crops, say).
    self.view_size = round(image_size / crop_fraction) if crop_fraction else self.stored_size
    if image_size > self.view_size:
      raise ValueError(
        f"model input {image_size} is larger than the stored images ({self.stored_size}x{self.stored_size}) of "
        f"{data_dir}: set data.crop_fraction (the paper's: {227 / 256:.4f}) to resize them on read, or prepare "
        f"with --image_size={round(image_size * 256 / 227)}"
      )
    if reader.reports_resize:
      self._report_resize(data_dir)
    self.num_classes = len(self.meta["classes"])
    if num_classes is not None and num_classes != self.num_classes:
      raise ValueError(
        f"model.num_classes={num_classes} but {data_dir} has {self.num_classes} classes: set "
        f"--config.model.num_classes={self.num_classes}"
      )
    self.num_train_examples = self.meta["splits"]["train"]["num_examples"]
    eval_split = self.meta["splits"].get("val")
    if not eval_split or not eval_split["num_examples"]:
      raise ValueError(f"{data_dir} has no validation images (prepare it from a tree with SRC/val/<class>/...)")
    self.num_eval_examples = eval_split["num_examples"]
    self.normalize = normalize  # before the mean image is resized: it names the filter
    self.mean_image = self._resized_mean(np.asarray(stats["mean_image"], np.float32))
    self.eigenvalues = np.asarray(stats["eigenvalues"], np.float32)
    self.eigenvectors = np.asarray(stats["eigenvectors"], np.float32)
    self.seed = seed
    self.random_crop, self.flip, self.lighting_std = random_crop, flip, lighting_std
    self.subtract_mean, self.device_preprocess = subtract_mean, device_preprocess
    self.normalize = normalize
    self.shuffle_buffer, self.eval_crops = shuffle_buffer, eval_crops
    self.num_threads = num_threads  # tf.data threads (None: one per core); the input benchmark pins it to 1
    if eval_crops not in (1, 10):
      raise ValueError(f"eval crops must be 1 or 10, got {eval_crops}")
    # Training sends each stored image whole, its crop and flip cut on the device (``preprocess``): a pixel set
    # (the reader says so) read at its stored size, with the device preprocessing on.
    self.device_crop = reader.whole_views and device_preprocess and self.view_size == self.stored_size

  def _report_resize(self, data_dir: str) -> None:
    """Say when stored images are resized on read; warn when they are blown up (detail the recipe expects is
    missing)."""
    from absl import logging

    stored, view, crop = self.stored_size, self.view_size, self.image_size
    if view == stored:
      return
    message = (
      f"{data_dir} stores {stored}x{stored} images; {crop}x{crop} crops are cut from them resized to {view}x{view} "
      f"on read, so a crop covers {crop / view:.1%} of the image's width (data.crop_fraction, in whole pixels)."
    )
    if view > 1.25 * stored:
      logging.warning(
        "%s They are upsampled %.1fx: the network sees less detail than the recipe expects. For this recipe, "
        "prepare with --image_size=%d.",
        message,
        view / stored,
        view,
      )
    else:
      logging.info("%s Preparing with --image_size=%d would save the resize.", message, view)

  def _resized_mean(self, mean_image: np.ndarray) -> np.ndarray:
    """The mean image at the size the crops are cut from (resized like the images)."""
    if mean_image.shape[0] == self.view_size:
      return mean_image
    import tensorflow as tf

    return tf.image.resize(mean_image, [self.view_size] * 2, method=self.resize_method, antialias=True).numpy()

  @property
  def resize_method(self) -> str:
    """'bicubic', or torchvision's 'bilinear' for ``normalize='torchvision'`` (``augment.resize_method``)."""
    return augment.resize_method(self.normalize)

  # ---- which examples each process reads ----------------------------------------------------------------------
  def _share(self, split: str, process: int, count: int) -> list[tuple[str, int, int]]:
    """Process ``process`` of ``count``'s share of ``split``: pieces (shard file, records to skip, records to read).

    The split's N examples, laid out shard after shard in the order 0, P, 2P, ..., 1, P + 1, ..., are cut into P
    contiguous runs of floor(N/P) or ceil(N/P) examples: every example in exactly one share, whatever the shard
    count and sizes. A shard that straddles two runs is read by both processes, each its own records of it (the
    second skips the first's: reading, not decoding, costs). With shards that divide evenly, process p reads whole
    shards p, p + P, ... (what earlier versions read); one process reads every shard whole, in order.
    """
    meta = self.meta["splits"][split]
    files, lengths = meta["files"], meta["shard_lengths"]
    order = [i for p in range(count) for i in range(p, len(files), count)]
    total = sum(lengths)
    begin, end = process * total // count, (process + 1) * total // count
    pieces, position = [], 0
    for i in order:
      lo, hi = max(begin, position), min(end, position + lengths[i])
      if lo < hi:
        pieces.append((files[i], lo - position, hi - lo))
      position += lengths[i]
    return pieces

  def _files(self, split: str, process: int = 0, count: int = 1) -> tuple[list[str], int]:
    """(the shard files that process ``process`` of ``count`` opens, how many examples of them are its share)."""
    pieces = self._share(split, process, count)
    return [f for f, _, _ in pieces], sum(n for _, _, n in pieces)

  def steps_per_epoch(self, global_batch: int) -> int:
    """Steps of one epoch: floor(N / global_batch) for N training examples (every process's share holds floor(N/P)
    or ceil(N/P) of them, so each has that many full local batches). Raises ValueError when a share cannot fill one
    local batch."""
    count = jax.process_count()
    local = global_batch // count
    smallest = min(self._files("train", p, count)[1] for p in range(count))
    steps = smallest // local
    if steps < 1:
      total = sum(self.meta["splits"]["train"]["shard_lengths"])
      per_process = f"; {smallest} for each of the {count} processes" if count > 1 else ""
      if smallest == 0:
        raise ValueError(
          f"the training set of {self.data_dir} has {total} images, fewer than the {count} processes: train it with "
          "fewer processes"
        )
      raise ValueError(
        f"batch_size={global_batch} is larger than the training set of {self.data_dir} ({total} images"
        f"{per_process}): use --config.batch_size={count * smallest} or smaller"
      )
    return steps

  # ---- tf.data pieces --------------------------------------------------------------------------------------------
  def records_in_order(self, files: list[str]):
    """Every record of ``files``, file after file (the reader's ``records``)."""
    import tensorflow as tf

    no_autograph = tf.autograph.experimental.do_not_convert  # plain tf.data calls: nothing for AutoGraph to convert
    return tf.data.Dataset.from_tensor_slices(files).flat_map(no_autograph(self.reader.records))

  def _piece_records(self, filename, skip, take):
    """The records of one piece of a share (see ``_share``): ``take`` records of a shard after its first ``skip``."""
    return self.reader.records(filename).skip(skip).take(take)

  @property
  def _mapped(self) -> bool:
    """Training reads example positions of memory-mapped shards, the pixels copied out per batch (a pixel set:
    ``PreparedReader.mapped``)."""
    # (Not with the service: its workers run tf.data graphs only, so they read the records: pixel_reader='tfrecord'.)
    return self.device_crop and getattr(self.reader, "mapped", False) and not self.service

  def _train_piece_records(self, filename, skip, take):
    """``_piece_records`` for training: positions instead of records where ``_mapped``."""
    if self._mapped:
      return self.reader.positions(filename).skip(skip).take(take)
    return self._piece_records(filename, skip, take)

  @staticmethod
  def _pieces_dataset(pieces: list[tuple[str, int, int]], order=None):
    """A dataset of (file, skip, take) for ``pieces``, in the order of the index tensor ``order`` if given."""
    import tensorflow as tf

    columns = [tf.constant(c, dtype) for c, dtype in zip(zip(*pieces), (tf.string, tf.int64, tf.int64))]
    if order is not None:
      columns = [tf.gather(c, order) for c in columns]
    return tf.data.Dataset.from_tensor_slices(tuple(columns))

  def _lighting_shift(self, alpha):
    """The paper's [p1 p2 p3][a1 l1, a2 l2, a3 l3]^T for a batch of alphas [B, 3], in 0-255 pixel units."""
    return augment.lighting_shift(alpha, self.eigenvalues, self.eigenvectors)

  def _finish(self, crops, offsets, flips, shift):
    """Either hand the uint8 crops and their parameters to the device, or finish them here in float32."""
    import tensorflow as tf

    if self.device_preprocess:
      return {"image": crops, "offset": offsets, "flip": flips, "shift": shift}
    images = tf.cast(crops, tf.float32)
    if self.normalize == "torchvision":
      return {"image": torchvision_normalize(images + shift[..., None, None, :])}
    if self.subtract_mean:
      mean = tf.constant(self.mean_image)
      c = self.image_size
      windows = tf.map_fn(
        lambda of: tf.cond(
          of[1][0] > 0,
          lambda: tf.reverse(tf.slice(mean, [of[0][0], of[0][1], 0], [c, c, 3]), [1]),
          lambda: tf.slice(mean, [of[0][0], of[0][1], 0], [c, c, 3]),
        ),
        (offsets, tf.reshape(flips, [-1, 1])),
        fn_output_signature=tf.float32,
      )
      images = images - windows
    images = images + shift[..., None, None, :]
    return {"image": images}

  def _train_example(self):
    """Per example only what must be: parse, one stateless draw from (seed, epoch, index) (``augment.train_draw``),
    decode the patch, flip it. The lighting shifts are computed per batch (``_train_batch``). Measured choice
    (benchmarks/RESULTS.md): a per-example ``tf.cond`` flip (a batch-level uint8 ``tf.where`` ran at less than half
    the speed)."""
    import tensorflow as tf

    size, crop = self.view_size, self.image_size

    def fn(record, epoch):
      encoded, label, index = self.reader.parse(record)
      offset, flip, alpha = augment.train_draw(self.seed, epoch, index, **self._draw_kwargs())
      if self.device_crop:  # the stored bytes as they are: decoded a batch at a time, cropped on the device
        return encoded, offset, flip, alpha, label, index
      image = self.reader.decode_patch(encoded, offset, crop, view_size=size, method=self.resize_method)
      image = tf.cond(flip, lambda: tf.reverse(image, [1]), lambda: image)
      return tf.ensure_shape(image, [crop, crop, 3]), offset, flip, alpha, label, index

    return fn

  def _draw_kwargs(self) -> dict:
    return dict(
      size=self.view_size,
      crop=self.image_size,
      random_crop=self.random_crop,
      flip=self.flip,
      lighting_std=self.lighting_std,
    )

  def _train_positions_batch(self, positions, epochs):
    """``_mapped``: a batch of example positions [B] (and their epochs) -> the batch, its pixels still to copy
    (``train_batches``). Nothing runs per example: labels and indices are gathered, the draws made for the batch
    (``augment.train_draws``, the same values as ``_train_example``'s)."""
    import tensorflow as tf

    _, label, index = self.reader.parse_position(positions)
    offsets, flips, alpha = augment.train_draws(self.seed, epochs, index, **self._draw_kwargs())
    return self._to_batch(
      positions[:, None], offsets[:, None], tf.cast(flips, tf.int32)[:, None], self._lighting_shift(alpha), label, index
    )

  def _train_batch(self, images, offsets, flips, alpha, label, index):
    """A batch's lighting shifts, then the common finishing (views of 1). With ``device_crop`` ``images`` are the
    stored bytes, made one uint8 [B, S, S, 3] array here (one copy for the batch)."""
    import tensorflow as tf

    if self.device_crop:
      images = self.reader.decode_views(images)

    return self._to_batch(
      images[:, None], offsets[:, None], tf.cast(flips, tf.int32)[:, None], self._lighting_shift(alpha), label, index
    )

  def _eval_example(self, record):
    import tensorflow as tf

    encoded, label, index = self.reader.parse(record)
    size, crop = self.view_size, self.image_size
    corners = augment.eval_offsets(size, crop, self.eval_crops)
    image = self.reader.decode_view(encoded, view_size=size, method=self.resize_method)
    crops = [image[y : y + crop, x : x + crop] for y, x in corners]
    flips = [0] * len(crops)
    if self.eval_crops == 10:
      crops += [tf.reverse(c, [1]) for c in crops]
      flips += [1] * 5
      corners = corners * 2
    crops = tf.ensure_shape(tf.stack(crops), [len(corners), crop, crop, 3])
    return crops, tf.constant(corners, tf.int32), tf.constant(flips, tf.int32), tf.zeros([3]), label, index

  def _to_batch(self, crops, offsets, flips, shift, label, index):
    """[B, V, ...] per-view tensors -> the batch dict (views squeezed away for training's single view)."""
    import tensorflow as tf

    views = crops.shape[1]
    flat = self._finish(
      tf.reshape(crops, [-1, *crops.shape[2:]]),
      tf.reshape(offsets, [-1, 2]),
      tf.reshape(flips, [-1]),
      tf.repeat(shift, views, axis=0),
    )
    out = {}
    for k, v in flat.items():
      if k == "shift":
        out[k] = shift
      else:
        shape = tf.concat([[tf.shape(crops)[0]], [views] if views > 1 else [], tf.shape(v)[1:]], 0)
        out[k] = tf.reshape(v, shape)
    out["label"] = label
    out["index"] = index  # which stored example each row is (provenance; the step ignores it)
    return out

  def _options(self):
    import tensorflow as tf

    from alexnet_jax.native import tensorflow_devices

    tensorflow_devices.hide_accelerators_from_tensorflow()
    options = tf.data.Options()
    options.deterministic = True
    if self.service and not self.num_threads:  # run by a worker: its own cores, however many it has
      return options, tf.data.AUTOTUNE
    threads = self.num_threads or max(1, os.cpu_count() or 1)
    options.threading.private_threadpool_size = threads
    return options, (threads if self.num_threads else tf.data.AUTOTUNE)

  def _epoch_records(self, pieces: list[tuple[str, int, int]], epoch, num_examples: int):
    """The raw records of one epoch (a tf int64 ``epoch``) in their shuffled order, cut to ``num_examples``: the
    pieces of this process's share (``_share``) in an order drawn from (seed, epoch, process), interleaved, through
    a shuffle buffer seeded the same way."""
    import tensorflow as tf

    seed = mix_seed(tf.constant(self.seed, tf.int64), epoch, jax.process_index())
    order = tf.random.experimental.stateless_shuffle(tf.range(len(pieces)), seed=tf.stack([seed, epoch]))
    ds = self._pieces_dataset(pieces, order)
    ds = ds.interleave(
      tf.autograph.experimental.do_not_convert(self._train_piece_records),  # plain tf.data calls: no AutoGraph
      cycle_length=min(16, len(pieces)),
      block_length=1,
      num_parallel_calls=min(16, len(pieces)),
      deterministic=True,
    )
    if self.shuffle_buffer > 1:
      ds = ds.shuffle(self.shuffle_buffer, seed=seed, reshuffle_each_iteration=False)
    return ds.take(num_examples).map(lambda record: (record, epoch))

  def _train_dataset(
    self, pieces: list[tuple[str, int, int]], *, start_epoch: int, batch: int, per_epoch: int, skip_examples: int = 0
  ):
    """One pipeline for the whole run over a share's ``pieces``: epoch after epoch (each ``per_epoch`` batches),
    from ``start_epoch``.

    Epochs are interleaved two at a time with blocks of a whole epoch, so the order is exactly epoch e, then e + 1,
    ..., but the next epoch's files are opened and its shuffle buffer filled while the current one is read: no stall
    at the boundary (a pipeline per epoch refilled the buffer, and restarted every thread, while training waited).
    The price: two shuffle buffers of encoded images in memory at once (2 x 10,000 x ~25 KB for ImageNet).
    """
    import tensorflow as tf

    options, parallel = self._options()
    n = per_epoch * batch
    epochs = tf.data.Dataset.range(start_epoch, 2**62)
    ds = epochs.interleave(
      lambda e: self._epoch_records(pieces, e, n),
      cycle_length=2,
      block_length=n,
      num_parallel_calls=2,
      deterministic=True,
    )
    ds = ds.skip(skip_examples)  # before decoding: skipping costs only reading
    if self._mapped:  # positions: batched as they are, everything else done a batch at a time
      ds = ds.batch(batch, drop_remainder=True)
      ds = ds.map(self._train_positions_batch, num_parallel_calls=parallel, deterministic=True)
      return ds.with_options(options).prefetch(tf.data.AUTOTUNE)
    ds = ds.map(self._train_example(), num_parallel_calls=parallel, deterministic=True)
    ds = ds.batch(batch, drop_remainder=True).map(self._train_batch, num_parallel_calls=parallel, deterministic=True)
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)

  def _service_epoch(self, pieces: list[tuple[str, int, int]], epoch: int, batch: int):
    """Epoch ``epoch`` of a share's ``pieces`` through the service: what its workers run (every record of the share
    in ``_epoch_records``' order, augmented and batched as ``_train_dataset`` does, a worker's last batch of the
    epoch partial), distributed in dynamic sharding (``service.distribute``: each piece read by exactly one
    worker), and here the rows cut again into full batches of ``batch``."""
    import tensorflow as tf

    from alexnet_jax.data import service

    options, parallel = self._options()
    share = sum(n for _, _, n in pieces)
    ds = self._epoch_records(pieces, tf.constant(epoch, tf.int64), share)
    ds = ds.map(self._train_example(), num_parallel_calls=parallel, deterministic=True)
    ds = ds.batch(batch).map(self._train_batch, num_parallel_calls=parallel, deterministic=True)
    ds = service.distribute(ds.with_options(options).prefetch(tf.data.AUTOTUNE), self.service)
    return ds.rebatch(batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)

  def _service_batches(self, pieces, *, start_epoch: int, skip_steps: int, batch: int, per_epoch: int):
    """Training's batches through the service (``data.service``): epoch after epoch from ``start_epoch``, exactly
    ``per_epoch`` batches each (the first, resumed, ``per_epoch - skip_steps``), the next epoch's job started when
    the current one's is, so that the workers fill it ahead. Raises ``ServiceEpochShortError`` (transient: exit 75,
    a rerun resumes) when the service ends an epoch with fewer rows than that, as it may when a worker is lost:
    never fewer batches than the other processes, which would wait for this one in the collectives."""
    from alexnet_jax.data import service

    service.check_reachable(self.service)
    epoch, want = start_epoch, per_epoch - skip_steps
    current = self._service_epoch(pieces, epoch, batch).as_numpy_iterator()
    while True:
      upcoming = self._service_epoch(pieces, epoch + 1, batch).as_numpy_iterator()
      for got in range(want):
        try:
          yield next(current)
        except StopIteration:
          raise ServiceEpochShortError(
            f"the tf.data service at {self.service} (data.service) ended epoch {epoch} of process "
            f"{jax.process_index()} after {got} of its {want} batches of {batch}: a worker was lost or restarted "
            "mid-epoch and the examples it held with it; rerun: training resumes from the last checkpoint"
          ) from None
      current, epoch, want = upcoming, epoch + 1, per_epoch

  def _eval_dataset(self, pieces: list[tuple[str, int, int]], *, batch: int):
    """A share's pieces in order, every example of them once."""
    import tensorflow as tf

    options, parallel = self._options()
    no_autograph = tf.autograph.experimental.do_not_convert
    ds = self._pieces_dataset(pieces).flat_map(no_autograph(self._piece_records))
    ds = ds.map(self._eval_example, num_parallel_calls=parallel, deterministic=True)
    ds = ds.batch(batch).map(self._to_batch, num_parallel_calls=parallel, deterministic=True)
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)

  # ---- the source interface --------------------------------------------------------------------------------------
  def train_batches(self, start_step: int, global_batch: int) -> Iterator[dict[str, np.ndarray]]:
    local = global_batch // jax.process_count()
    pieces = self._share("train", jax.process_index(), jax.process_count())
    per_epoch = self.steps_per_epoch(global_batch)
    if self._mapped:
      self.reader.open_maps()
    epoch, step_in_epoch = divmod(start_step, per_epoch)
    if self.service:
      batches = self._service_batches(
        pieces, start_epoch=epoch, skip_steps=step_in_epoch, batch=local, per_epoch=per_epoch
      )
      yield from self._named_faults(batches, [f for f, _, _ in pieces])
      return
    ds = self._train_dataset(
      pieces, start_epoch=epoch, batch=local, per_epoch=per_epoch, skip_examples=step_in_epoch * local
    )
    batches = self._named_faults(ds.as_numpy_iterator(), [f for f, _, _ in pieces])
    if self._mapped:
      batches = ({**b, "image": self.reader.gather(b["image"])} for b in batches)
    yield from batches

  def _named_faults(self, batches: Iterator[dict[str, np.ndarray]], files: list[str]):
    """``batches``, with TensorFlow's "corrupted record at N" (which names no file) turned into an error naming the
    damaged shard and what to do about it."""
    import tensorflow as tf

    try:
      yield from batches
    except tf.errors.DataLossError as e:
      raise ValueError(format.damaged_shard_message(files, e.message, self.data_dir)) from None

  def eval_batches(self, global_batch: int) -> Iterator[dict[str, np.ndarray]]:
    """Every validation example once: each process its share (``_share``: floor(N/P) or ceil(N/P) examples), in
    batches padded (mask 0) so that all processes yield the same number, ceil(ceil(N/P) / local batch)."""
    count = jax.process_count()
    local = global_batch // count
    pieces = self._share("val", jax.process_index(), count)
    files = [f for f, _, _ in pieces]
    num_batches = -(-max(self._files("val", p, count)[1] for p in range(count)) // local)
    template = None
    yielded = 0
    if pieces:
      for batch in self._named_faults(self._eval_dataset(pieces, batch=local).as_numpy_iterator(), files):
        n = len(batch["label"])
        template = batch
        yield _pad(batch, local, n)
        yielded += 1
    while yielded < num_batches:  # a process with fewer examples (or none: N < P) keeps step with the others
      if template is None:
        template = next(self._eval_dataset(self._share("val", 0, 1), batch=1).as_numpy_iterator())
      yield _pad(template, local, 0)
      yielded += 1

  @classmethod
  def for_compile(cls, *, image_size: int, stored_size: int = 256, crop_fraction: float | None = None, **kwargs):
    """A source with no reader behind it, for compiling the steps (``aot.py``): the shapes and the on-device
    preprocessing of a set of ``stored_size`` images; its statistics are zeros of the right shapes."""
    self = cls.__new__(cls)
    self.image_size, self.stored_size = image_size, stored_size
    self.view_size = round(image_size / crop_fraction) if crop_fraction else stored_size
    self.mean_image = np.zeros((self.view_size, self.view_size, 3), np.float32)
    self.subtract_mean = kwargs.get("subtract_mean", True)
    self.normalize = kwargs.get("normalize", "mean_image")
    self.device_preprocess = kwargs.get("device_preprocess", True)
    self.eval_crops = kwargs.get("eval_crops", 1)
    self.device_crop = kwargs.get("device_crop", False)
    self.service = ""
    return self

  def batch_spec(self, global_batch: int, train: bool) -> dict[str, jax.ShapeDtypeStruct]:
    """Shapes and dtypes of one global batch as ``_to_batch`` makes it (tested against real batches)."""
    b, c = global_batch, self.image_size
    views = () if train or self.eval_crops == 1 else (self.eval_crops,)
    if self.device_preprocess:
      side = self.stored_size if train and self.device_crop else c  # whole stored images, cropped on the device
      shapes = {
        "image": ((b, *views, side, side, 3), np.uint8),
        "offset": ((b, *views, 2), np.int32),
        "flip": ((b, *views), np.int32),
        "shift": ((b, 3), np.float32),
      }
    else:
      shapes = {"image": ((b, *views, c, c, 3), np.float32)}
    shapes.update({"label": ((b,), np.int32), "index": ((b,), np.int64)})
    if not train:
      shapes["mask"] = ((b,), np.float32)
    return spec(shapes)

  def preprocess(self, batch: dict[str, jax.Array]) -> jax.Array:
    """On the device: uint8 crops -> float, minus the mean image's matching window, plus the lighting shift."""
    image = batch["image"]
    if "offset" not in batch:  # finished on the host
      return image.astype(jnp.float32)
    crop = self.image_size
    if image.shape[-2] != crop:  # whole views (a pixel set's training batch): each example's crop and flip, here
      image = augment.crop_and_flip(image, batch["offset"], batch["flip"], crop)
    x = image.astype(jnp.float32)
    shift = batch["shift"]
    shift = shift.reshape(shift.shape[0], *([1] * (x.ndim - 2)), 3)
    if self.normalize == "torchvision":
      return torchvision_normalize(x + shift)
    if self.subtract_mean:
      mean = jnp.asarray(self.mean_image)

      def window(offset, flip):
        w = jax.lax.dynamic_slice(mean, (offset[0], offset[1], 0), (crop, crop, 3))
        return jnp.where(flip > 0, w[:, ::-1], w)

      windows = jax.vmap(window)(batch["offset"].reshape(-1, 2), batch["flip"].reshape(-1))
      x = x - windows.reshape(x.shape)
    return x + shift


class ServiceEpochShortError(ValueError):
  """The tf.data service ended an epoch before this process had its batches of it (a worker lost mid-epoch).
  ``transient``: a rerun may well not meet it again (alexnet_jax/cli.py exits 75)."""

  transient = True


def _pad(batch: dict[str, np.ndarray], size: int, real: int) -> dict[str, np.ndarray]:
  """``batch`` padded (or cut) to ``size`` rows, with ``mask`` 1 for the first ``real`` rows only."""
  out = {}
  for k, v in batch.items():
    if len(v) >= size:
      out[k] = v[:size]
    else:
      out[k] = np.concatenate([v, np.repeat(v[:1], size - len(v), axis=0)], axis=0)
  out["mask"] = (np.arange(size) < real).astype(np.float32)
  return out
