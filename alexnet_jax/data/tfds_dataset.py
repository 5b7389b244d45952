"""Any TFDS image-classification dataset, straight from its TFRecord shards, through the paper's pipeline: its
reader (``TfdsReader``), combined with the paper's augmentation by ``tfds_source``.

``data.source='tfds'`` with ``data.tfds_name='imagenet2012'`` (or ``'imagenette'``, ...) and ``data.dir`` the TFDS
``data_dir`` that holds the built dataset; or ``data.tfds_name=''`` and ``data.dir`` a dataset folder
(``tfds.builder_from_directory``). Nothing is downloaded: build the dataset with TFDS first.

Differences from the ``prepared`` source (docs/DEVIATIONS.md): the paper's fixed preprocessing (shorter side to
256, centre 256x256) runs on every read instead of once, so it costs more CPU per image; and, as a TFDS dataset
carries no statistics of its own, the mean image is ImageNet's per-channel mean and the lighting eigenpairs are
ImageNet's published RGB PCA. For your own statistics, run ``prepare`` and use ``data.source='prepared'``.
"""

from __future__ import annotations

import numpy as np

from alexnet_jax.data import decode
from alexnet_jax.data.pipeline import AugmentedSource

# ImageNet's per-channel mean in 0-255 pixel units, R, G, B: the VGG networks' Caffe mean (published in B, G, R
# order as 103.939, 116.779, 123.68), as TF-slim's preprocessing/vgg_preprocessing.py holds it (_R_MEAN = 123.68,
# _G_MEAN = 116.78, _B_MEAN = 103.94).
IMAGENET_MEAN_RGB = (123.68, 116.78, 103.94)
# ImageNet's RGB covariance eigenpairs on [0, 1] pixel values, as published with fb.resnet.torch
# (datasets/imagenet.lua, `pca`), in its layout: eigenvalues largest first, and a 3x3 matrix whose rows are R, G, B
# and whose COLUMNS are the eigenvectors (its transforms.lua Lighting computes rgb = eigvec * (alpha .* eigval)).
# The first column, (-0.5675, -0.5808, -0.5836), is brightness.
IMAGENET_EIGENVALUES = (0.2175, 0.0188, 0.0045)
IMAGENET_EIGENVECTORS = ((-0.5675, 0.7192, 0.4009), (-0.5808, -0.0045, -0.8140), (-0.5836, -0.6948, 0.4203))
STORED_SIZE = 256
EVAL_SPLITS = ("validation", "val", "test")


class TfdsReader:
  """What the TFDS dataset ``name`` in ``data_dir`` (or, for ``name`` '', the dataset folder ``data_dir``) holds
  (``meta``, with 256 as the stored size every image is resized to on read; ``stats``: ImageNet's published ones)
  and how to read it. Raises ValueError, saying what to do, for a dataset it cannot read."""

  whole_views = False  # its images are JPEGs: decoded (and cropped) on the host
  reports_resize = False  # every TFDS image is resized on read anyway (to the view size directly)

  def __init__(self, name: str, data_dir: str):
    self.tfds_name = name
    self.data_dir = data_dir
    self.meta, self.stats = self._load(data_dir)

  def records(self, filename):
    """The raw records of one shard, in order. TFRecord shards through TensorFlow's reader; ArrayRecord shards (a
    TFDS dataset built with ``file_format='array_record'``, which tf.data cannot read) through the ``array_record``
    package that TFDS installs, record by record in file order."""
    import tensorflow as tf

    if self.file_format != "array_record":
      return tf.data.TFRecordDataset(filename)

    def read(path: bytes):
      from array_record.python import array_record_module

      reader = array_record_module.ArrayRecordReader(path.decode())
      try:
        for _ in range(reader.num_records()):
          yield reader.read()
      finally:
        reader.close()

    spec = tf.TensorSpec([], tf.string)
    return tf.data.Dataset.from_generator(read, args=(filename,), output_signature=spec)

  @property
  def service_problem(self) -> str | None:
    """Why the tf.data service cannot serve this dataset (None: it can). Its workers run tf.data graphs only, and
    ArrayRecord shards are read in Python (``from_generator``), which a graph cannot carry."""
    if self.file_format == "array_record":
      return (
        f"{self.tfds_name or self.data_dir} is stored as ArrayRecord, which tf.data reads only through Python "
        "(from_generator) and the tf.data service cannot run: train without data.service, or build the dataset "
        "again with TFDS's file_format='tfrecord' (or prepare it: `python -m alexnet_jax.prepare`)"
      )
    return None

  def _load(self, data_dir: str) -> tuple[dict, dict]:
    from alexnet_jax.native import compat

    problem = compat.tfds_problem()
    if problem:
      raise ValueError(f"data.source='tfds' needs tensorflow_datasets, which cannot be used here: {problem}")
    import tensorflow_datasets as tfds

    try:
      builder = (
        tfds.builder(self.tfds_name, data_dir=data_dir or None, try_gcs=False)
        if self.tfds_name
        else tfds.builder_from_directory(data_dir)
      )
      info = builder.info
      splits = info.splits
      if not splits:
        raise ValueError("it has no splits")
    except Exception as e:
      what = (
        f"TFDS dataset {self.tfds_name!r} in data_dir={data_dir!r}" if self.tfds_name else f"TFDS folder {data_dir!r}"
      )
      raise ValueError(
        f"cannot open the {what} ({type(e).__name__}: {e}). Build it with TFDS first (nothing is "
        "downloaded at training time), or use data.source='prepared'."
      ) from e
    self.file_format = getattr(getattr(info, "file_format", None), "value", None) or "tfrecord"
    if self.file_format not in ("tfrecord", "array_record"):
      raise ValueError(
        f"{info.full_name} is stored as {self.file_format}: this pipeline reads TFRecord and ArrayRecord shards. "
        "Build it again with TFDS's file_format='tfrecord'."
      )
    if "image" not in info.features or "label" not in info.features:
      raise ValueError(f"{info.full_name} has no 'image' and 'label' features: not an image-classification dataset")
    eval_split = next((s for s in EVAL_SPLITS if s in splits), None)
    if "train" not in splits or eval_split is None:
      raise ValueError(f"{info.full_name} needs a 'train' split and one of {EVAL_SPLITS}; it has {list(splits)}")

    def split_meta(name):
      s = splits[name]
      return {
        "files": [str(p) for p in s.filepaths],
        "shard_lengths": list(s.shard_lengths),
        "num_examples": s.num_examples,
      }

    meta = {
      "image_size": STORED_SIZE,
      "classes": list(info.features["label"].names),
      "splits": {"train": split_meta("train"), "val": split_meta(eval_split)},
    }
    stats = {
      "mean_image": np.broadcast_to(np.asarray(IMAGENET_MEAN_RGB, np.float32), (STORED_SIZE, STORED_SIZE, 3)),
      "eigenvalues": np.asarray(IMAGENET_EIGENVALUES, np.float32),
      "eigenvectors": np.asarray(IMAGENET_EIGENVECTORS, np.float32),  # columns, as published (not transposed)
    }
    return meta, stats

  def parse(self, record):
    """TFDS stores the encoded image under 'image' and the class under 'label'; the example's identity (for its
    random draws) is a hash of its bytes, since TFDS records carry no index."""
    import tensorflow as tf

    parsed = tf.io.parse_single_example(
      record,
      {
        "image": tf.io.FixedLenFeature([], tf.string),
        "label": tf.io.FixedLenFeature([], tf.int64),
      },
    )
    index = tf.strings.to_hash_bucket_fast(parsed["image"], 2**62)
    return parsed["image"], tf.cast(parsed["label"], tf.int32), index

  def decode_view(self, encoded, *, view_size: int, method: str):
    """Decode any size, then the paper's fixed preprocessing: shorter side to the size the crops are cut from (256
    for 227x227 crops; bicubic, or bilinear for ``data.normalize='torchvision'``, antialiased), and the centre
    square (``decode.any_view``)."""
    return decode.any_view(encoded, view_size, method)

  def decode_patch(self, encoded, offset, crop: int, *, view_size: int, method: str):
    return self.decode_view(encoded, view_size=view_size, method=method)[
      offset[0] : offset[0] + crop, offset[1] : offset[1] + crop
    ]


def tfds_source(name: str, data_dir: str, **kwargs) -> AugmentedSource:
  """The paper's pipeline over a TFDS dataset (``TfdsReader``; ``kwargs``: ``AugmentedSource``'s)."""
  return AugmentedSource(TfdsReader(name, data_dir), **kwargs)
