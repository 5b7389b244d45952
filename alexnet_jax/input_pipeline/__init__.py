"""Input sources. Each yields, per process, numpy batches of its own slice of every global batch.

A source has: ``num_classes``, ``image_size``, ``num_train_examples``, ``num_eval_examples``,
``steps_per_epoch(global_batch)``,
``train_batches(start_step, global_batch)`` (an endless iterator; the batch of step s is a pure function of
(seed, s), so a resumed run sees exactly what an unbroken run would), ``eval_batches(global_batch)`` (every
example exactly once, the last batch padded and ``mask``ed), and ``preprocess(batch)``: the pure function, run on
the devices inside the step, that turns a batch's uint8 ``image`` into the network's float input.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import jax
import numpy as np


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


def create_source(config):
  """The source named by ``config.data.source``."""
  if config.data.source == "synthetic":
    from alexnet_jax.input_pipeline.synthetic import SyntheticSource

    return SyntheticSource(
      num_classes=config.model.num_classes,
      image_size=config.model.image_size or _default_image_size(config.model.name),
      num_train_examples=config.data.num_train_examples,
      num_eval_examples=config.data.num_eval_examples,
      learnable=config.data.learnable,
      seed=config.seed,
    )
  if config.data.source in ("prepared", "tfds"):
    from alexnet_jax.input_pipeline.prepared import PreparedSource
    from alexnet_jax.input_pipeline.tfds_source import TfdsSource

    d = config.data
    if config.data.source == "prepared" and not d.dir:
      raise ValueError("data.source='prepared' needs --config.data.dir=DST (a directory made by alexnet_jax.prepare)")
    if config.data.source == "tfds" and not (d.dir or d.tfds_name):
      raise ValueError(
        "data.source='tfds' needs --config.data.tfds_name=NAME (and data.dir=its TFDS data_dir), or "
        "data.dir=a TFDS dataset folder"
      )
    make = functools.partial(TfdsSource, d.tfds_name) if config.data.source == "tfds" else PreparedSource
    return make(
      d.dir,
      image_size=config.model.image_size or _default_image_size(config.model.name),
      seed=config.seed,
      random_crop=d.random_crop,
      flip=d.flip,
      lighting_std=d.lighting_std,
      subtract_mean=d.subtract_mean,
      device_preprocess=d.device_preprocess,
      shuffle_buffer=d.shuffle_buffer,
      eval_crops=d.eval_crops,
      num_classes=config.model.num_classes,
    )
  raise ValueError(f"data.source={config.data.source!r} is not known")


def _default_image_size(model_name: str) -> int:
  from alexnet_jax.model import ARCHITECTURES

  return ARCHITECTURES[model_name].image_size
