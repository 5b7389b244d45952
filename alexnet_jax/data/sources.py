"""Which source a config reads (``resolve_source``) and making it (``create_source``). What a source is:
``data/batches.py``.
"""

from __future__ import annotations

import functools
import json

from alexnet_jax import storage
from alexnet_jax.data import format

TFDS_MARKER = "dataset_info.json"


def resolve_source(config) -> tuple[str, str]:
  """(the source a config reads, why): ``data.source='auto'`` decided from what ``data.dir`` holds.

  Nothing is ignored silently: a ``data.dir`` that the named source would not read, or a folder that is neither a
  prepared set nor a TFDS dataset, is an error that says what to pass.
  """
  d = config.data
  if d.source == "synthetic":
    if d.dir or d.tfds_name:
      given = f"data.dir={d.dir!r}" if d.dir else f"data.tfds_name={d.tfds_name!r}"
      raise ValueError(
        f"{given} is set but data.source='synthetic' never reads it: drop it to train on synthetic images, or "
        "set --config.data.source=auto (or prepared/tfds) to train on it."
      )
    if d.service:
      raise ValueError(
        f"data.service={d.service!r} is set but synthetic images are made on the trainer, not read: drop it, or "
        "train on a prepared set or a TFDS dataset through the service"
      )
    return "synthetic", "data.source='synthetic'"
  if d.source == "tfds" or (d.source == "auto" and d.tfds_name):
    if not (d.dir or d.tfds_name):
      raise ValueError(
        "data.source='tfds' needs --config.data.tfds_name=NAME (and data.dir=its TFDS data_dir), or "
        "data.dir=a TFDS dataset folder"
      )
    return "tfds", f"data.tfds_name={d.tfds_name!r}" if d.tfds_name else "data.source='tfds'"
  if not d.dir:
    raise ValueError(
      f"data.source={d.source!r} needs data: give --config.data.dir=DST (a directory made by "
      "`python -m alexnet_jax.prepare`, or a TFDS dataset folder), or --config.data.source=synthetic to train on "
      "synthetic images."
    )
  if d.source == "prepared":
    return "prepared", "data.source='prepared'"
  if storage.exists(storage.join(d.dir, format.METADATA)):
    return "prepared", f"{d.dir} holds {format.METADATA} (made by alexnet_jax.prepare)"
  if storage.exists(storage.join(d.dir, TFDS_MARKER)):
    return "tfds", f"{d.dir} holds {TFDS_MARKER} (a TFDS dataset folder)"
  what = "does not exist" if not storage.exists(d.dir) else "is neither a prepared dataset nor a TFDS dataset folder"
  bad_list = storage.join(d.dir, format.BAD_FILES)
  if storage.exists(bad_list):  # prepare writes it after the last shard and before its metadata
    with storage.open(bad_list) as f:
      bad = json.load(f)
    raise ValueError(
      f"data.dir={d.dir!r} holds a prepare run that did not finish: it read every image, found {len(bad)} it could "
      f"not read (listed in {bad_list}) and stopped before writing {format.METADATA}. Fix or remove those files, "
      "or run prepare again with a higher --max_bad; it keeps the finished shards."
    )
  raise ValueError(
    f"data.dir={d.dir!r} {what} (no {format.METADATA}, no {TFDS_MARKER}): run `python -m alexnet_jax.prepare "
    f"--input_dir=SRC --output_dir={d.dir}` first, or point data.dir at a prepared dataset."
  )


def create_source(config):
  """The source ``config.data`` asks for (``auto``: the one its ``data.dir`` holds; logged)."""
  from absl import logging

  name, why = resolve_source(config)
  logging.info("Data source: %s (%s)", name, why)
  image_size = config.model.image_size or default_image_size(config.model.name)
  if name == "synthetic":
    from alexnet_jax.data.synthetic import SyntheticSource

    return SyntheticSource(
      num_classes=config.model.num_classes,
      image_size=image_size,
      num_train_examples=config.data.num_train_examples,
      num_eval_examples=config.data.num_eval_examples,
      learnable=config.data.learnable,
      seed=config.seed,
      normalize=config.data.normalize,
      subtract_mean=config.data.subtract_mean,
      crop_fraction=config.data.crop_fraction or None,
    )
  from alexnet_jax.native import compat

  compat.require_tensorflow(f"data.source={name!r}")
  from alexnet_jax.data.prepared import prepared_source
  from alexnet_jax.data.tfds_dataset import tfds_source

  d = config.data
  if name == "tfds":
    make = functools.partial(tfds_source, d.tfds_name)
  else:
    make = functools.partial(prepared_source, pixel_reader=d.pixel_reader)
  return make(
    d.dir,
    image_size=image_size,
    crop_fraction=d.crop_fraction or None,
    seed=config.seed,
    random_crop=d.random_crop,
    flip=d.flip,
    lighting_std=d.lighting_std,
    subtract_mean=d.subtract_mean,
    normalize=d.normalize,
    device_preprocess=d.device_preprocess,
    shuffle_buffer=d.shuffle_buffer,
    eval_crops=d.eval_crops,
    num_classes=config.model.num_classes,
    service=d.service,
  )


def default_image_size(model_name: str) -> int:
  from alexnet_jax.model import ARCHITECTURES

  return ARCHITECTURES[model_name].image_size
