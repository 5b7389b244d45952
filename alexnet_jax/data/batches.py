"""What a source is. Each yields, per process, numpy batches of its own slice of every global batch.

A source has: ``num_classes``, ``image_size``, ``num_train_examples``, ``num_eval_examples``,
``steps_per_epoch(global_batch)``,
``train_batches(start_step, global_batch)`` (an endless iterator; the batch of step s is a pure function of
(seed, s), so a resumed run sees exactly what an unbroken run would), ``eval_batches(global_batch)`` (every
example exactly once, the last batch padded and ``mask``ed), ``batch_spec(global_batch, train)`` (the shapes and
dtypes of one global batch) and ``preprocess(batch)``: the pure function, run on the devices inside the step, that
turns a batch's uint8 ``image`` (the synthetic source: its examples' indices) into the network's float input.

The sources: ``synthetic.SyntheticSource`` (images made on the devices from their index), and
``pipeline.AugmentedSource`` over a reader of a prepared set (``prepared.prepared_source``) or of a TFDS dataset
(``tfds_dataset.tfds_source``). ``sources.create_source`` makes the one a config asks for.
"""

from __future__ import annotations

from collections.abc import Iterator

import jax
import numpy as np


def spec(shapes: dict[str, tuple[tuple[int, ...], object]]) -> dict[str, jax.ShapeDtypeStruct]:
  """{key: ShapeDtypeStruct} from {key: (shape, numpy dtype)}, dtypes as JAX holds them (int64 -> int32 unless x64)."""
  return {k: jax.ShapeDtypeStruct(shape, jax.dtypes.canonicalize_dtype(dtype)) for k, (shape, dtype) in shapes.items()}


def eval_index_batches(num_examples: int, global_batch: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """(indices, mask) of this process's rows of each padded global eval batch.

  Every process yields the same number of batches (so collectives line up); padding rows repeat index 0 and carry
  mask 0, so every example counts exactly once whatever the device and process counts.
  """
  local = global_batch // jax.process_count()
  start = jax.process_index() * local
  for begin in range(0, num_examples, global_batch):
    idx = np.arange(begin + start, begin + start + local)
    mask = idx < num_examples
    yield np.where(mask, idx, 0), mask.astype(np.float32)
