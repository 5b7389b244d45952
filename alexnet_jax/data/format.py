"""The prepared format: what ``python -m alexnet_jax.prepare`` writes into DST and every reader of it relies on.

A prepared set is a folder holding

- ``alexnet_prepared.json`` (``METADATA``), written last: the set is complete once it exists. Its fields:
  ``format_version``, ``layout`` and ``source`` (what it was prepared from), ``image_size`` (the stored square's
  side), ``encoding`` of the stored images (``ENCODINGS``; a set written before the field existed is "jpeg") and
  ``jpeg_quality``, ``classes`` (label = place in the list), ``splits`` (per split its shard ``files``,
  ``shard_lengths`` and ``num_examples``) and ``num_bad_files``. ``read_metadata`` reads and checks it.
- ``stats.npz`` (``STATS``): the training split's mean image (0-255) and its RGB covariance eigenpairs (of [0, 1]
  pixel values, eigenvectors as columns), for the paper's mean subtraction and "fancy PCA" lighting.
- TFRecord shards named ``shard_filename(split, shard, num_shards)``, one record per image, each shard with the
  sidecars ``prepare`` uses to resume (``DONE_SUFFIX``, ``SHARD_STATS_SUFFIX``). The record depends on ``encoding``:
  "jpeg": a ``tf.train.Example`` (``encode_example``: the JPEG, its label, its index in the split and its source
  file name; TFDS reads these shards too). "pixels": no protocol buffer, so nothing is parsed or copied per field
  (``encode_pixel_record``): the image's uint8 pixels, row-major [size, size, 3], then a 16-byte little-endian
  trailer (index int64, label int32, 4 zero bytes), so that a batch of records decodes to pixels in one copy
  (``decode.raw_pixels``); every record of a set has the same length, and TFRecord's framing keeps its checksums.
  TFDS does not read pixel shards (they are not ``tf.train.Example``s).
- ``bad_files.json`` (``BAD_FILES``): the images that could not be read, written after the last shard and before
  the metadata.
- TFDS's ``dataset_info.json`` and ``features.json`` (``write_tfds_metadata``), so ``tfds.builder_from_directory``
  opens it too.

Damage: ``shard_damage`` checks one shard's records and checksums, and ``damaged_shard_message`` turns TensorFlow's
"corrupted record at N" into the damaged shard's name and what to do about it.
"""

from __future__ import annotations

import io
import json
import re

import numpy as np

from alexnet_jax import storage
from alexnet_jax.native import banners

FORMAT_VERSION = 1
METADATA = "alexnet_prepared.json"
STATS = "stats.npz"
BAD_FILES = "bad_files.json"
DATASET_NAME = "alexnet_prepared"
DONE_SUFFIX = ".done.json"  # beside each shard: its commit marker (counts, bad files, the inputs it was made from)
SHARD_STATS_SUFFIX = ".stats.npz"  # beside each training shard: its partial sums for stats.npz
# How the stored images are encoded. A metadata file without the field is "jpeg" (every set written before it was
# recorded); a reader refuses an encoding it does not know.
ENCODINGS = ("jpeg", "pixels")
DEFAULT_ENCODING = "jpeg"
PIXEL_TRAILER_BYTES = 16  # after a pixel record's pixels: index (int64), label (int32), 4 zero bytes; little-endian


# -----------------------------------------------------------------------------------------------------------------
# Shard names.
# -----------------------------------------------------------------------------------------------------------------
def shard_filename(split: str, shard: int, num_shards: int) -> str:
  return f"{DATASET_NAME}-{split}.tfrecord-{shard:05d}-of-{num_shards:05d}"


_SHARD_FILE = re.compile(rf"^{DATASET_NAME}-(\w+)\.tfrecord-(\d{{5}})-of-(\d{{5}})(\..*)?$")


def parse_shard_filename(name: str) -> tuple[str, int, int] | None:
  """(split, shard, num_shards) of a shard's file name or of one of its sidecars (``name.done.json``, ...); None for
  any other name."""
  m = _SHARD_FILE.match(name)
  return (m.group(1), int(m.group(2)), int(m.group(3))) if m else None


# -----------------------------------------------------------------------------------------------------------------
# Records.
# -----------------------------------------------------------------------------------------------------------------
def encode_jpeg(image: np.ndarray, quality: int) -> bytes:
  """A uint8 [H, W, 3] image as the stored JPEG (no chroma subsampling from quality 90 up)."""
  from PIL import Image

  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format="JPEG", quality=quality, subsampling=0 if quality >= 90 else 2)
  return buf.getvalue()


def encode_example(image: bytes, label: int, index: int, name: str) -> bytes:
  """One record: a serialised ``tf.train.Example`` of the encoded image, its label, its index in the split and the
  name of the file it came from."""
  import tensorflow as tf

  feature = {
    "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image])),
    "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
    "index": tf.train.Feature(int64_list=tf.train.Int64List(value=[index])),
    "file_name": tf.train.Feature(bytes_list=tf.train.BytesList(value=[name.encode()])),
  }
  return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def encode_pixel_record(image: np.ndarray, label: int, index: int) -> bytes:
  """One record of a pixel set: the uint8 [S, S, 3] image's bytes, row-major, then the trailer (index, label)."""
  image = np.ascontiguousarray(image, np.uint8)
  if image.ndim != 3 or image.shape[0] != image.shape[1] or image.shape[2] != 3:
    raise ValueError(f"a stored image is a uint8 [S, S, 3] square, got shape {image.shape}")
  return image.tobytes() + np.asarray([index], "<i8").tobytes() + np.asarray([label, 0], "<i4").tobytes()


def parse_pixel_record(record, stored_size: int):
  """A pixel record (a scalar tf.string) of a set stored at ``stored_size`` -> (the record itself, label as
  tf.int32, index as tf.int64), inside tf.data; the record's pixels are decoded by ``decode.raw_pixels`` (a whole
  batch at once where it can), which ignores the trailer."""
  import tensorflow as tf

  trailer = tf.strings.substr(record, stored_size * stored_size * 3, PIXEL_TRAILER_BYTES)
  words = tf.io.decode_raw(trailer, tf.int32, little_endian=True)
  index = tf.bitcast(words[:2], tf.int64)  # the first 8 bytes, little-endian on every host TensorFlow runs on
  return record, words[2], index


def parse_record(record, encoding: str, stored_size: int):
  """A record of a set stored as ``encoding`` at ``stored_size`` -> (encoded image, label as tf.int32, index as
  tf.int64)."""
  return parse_pixel_record(record, stored_size) if encoding == "pixels" else parse_example(record)


def parse_example(record):
  """A record (a scalar tf.string) -> (encoded image, label as tf.int32, index as tf.int64), inside tf.data."""
  import tensorflow as tf

  parsed = tf.io.parse_single_example(
    record,
    {
      "image": tf.io.FixedLenFeature([], tf.string),
      "label": tf.io.FixedLenFeature([], tf.int64),
      "index": tf.io.FixedLenFeature([], tf.int64),
    },
  )
  return parsed["image"], tf.cast(parsed["label"], tf.int32), parsed["index"]


# -----------------------------------------------------------------------------------------------------------------
# Metadata and statistics.
# -----------------------------------------------------------------------------------------------------------------
def metadata(
  *,
  layout: str,
  source: str,
  image_size: int,
  jpeg_quality: int,
  classes: list[str],
  splits: dict,
  num_bad_files: int,
  encoding: str = DEFAULT_ENCODING,
) -> dict:
  """The metadata file's content (``splits``: per split its shard file names, relative to the folder)."""
  return {
    "format_version": FORMAT_VERSION,
    "layout": layout,
    "source": source,
    "image_size": image_size,
    "encoding": encoding,
    "jpeg_quality": jpeg_quality,
    "classes": classes,
    "splits": splits,
    "num_bad_files": num_bad_files,
  }


def encoding_of(meta: dict) -> str:
  """The stored images' encoding that metadata says ("jpeg" when it predates the field)."""
  return meta.get("encoding", DEFAULT_ENCODING)


def read_metadata(data_dir: str) -> dict:
  """The metadata of the prepared set in ``data_dir``, its shard files joined to ``data_dir`` and ``encoding``
  filled in. Raises ValueError, saying what to run, when ``data_dir`` is not a prepared set, and when its images
  are stored in an encoding this version does not read."""
  meta_path = storage.join(data_dir, METADATA)
  if not storage.exists(meta_path):
    raise ValueError(
      f"data.dir={data_dir!r} is not a prepared dataset (no {METADATA}): run "
      f"`python -m alexnet_jax.prepare --input_dir=SRC --output_dir={data_dir or 'DST'}` first"
    )
  with storage.open(meta_path) as f:
    meta = json.load(f)
  meta["encoding"] = encoding_of(meta)
  if meta["encoding"] not in ENCODINGS:
    raise ValueError(
      f"{meta_path} says its images are stored as {meta['encoding']!r}; this version of alexnet_jax reads "
      f"{', '.join(ENCODINGS)}: update alexnet_jax, or prepare the set again with this one"
    )
  meta["splits"] = {
    split: {**m, "files": [storage.join(data_dir, f) for f in m["files"]]} for split, m in meta["splits"].items()
  }
  return meta


def read_stats(data_dir: str) -> dict:
  """The training set's statistics (``STATS``). Raises ValueError, saying what to run, when they are missing."""
  stats = storage.join(data_dir, STATS)
  if not storage.exists(stats):
    raise ValueError(
      f"{stats} is missing (the training set's mean image and colour statistics): run `python -m "
      f"alexnet_jax.prepare --input_dir=SRC --output_dir={data_dir}` again: it rewrites it from the finished shards"
    )
  return storage.load_npz(stats)


def prepared_from(data_dir: str) -> str | None:
  """The --input_dir that ``data_dir`` was prepared from (its metadata records it; SRC when it does not say), or
  None when ``data_dir`` was not made by prepare."""
  path = storage.join(data_dir, METADATA)
  try:
    if not storage.exists(path):
      return None
    with storage.open(path) as f:
      return json.load(f).get("source") or "SRC"
  except (OSError, ValueError):
    return "SRC"


def write_tfds_metadata(output_dir: str, classes: list[str], image_size: int, split_meta: dict) -> None:
  """dataset_info.json + features.json, so ``tfds.builder_from_directory(output_dir)`` reads the shards."""
  import tensorflow_datasets as tfds

  features = tfds.features.FeaturesDict(
    {
      "image": tfds.features.Image(shape=(image_size, image_size, 3), encoding_format="jpeg"),
      "label": tfds.features.ClassLabel(names=classes),
      "index": tfds.features.Scalar(dtype=np.int64),
      "file_name": tfds.features.Text(),
    }
  )
  template = tfds.core.ShardedFileTemplate(
    data_dir=output_dir,
    template="{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}",
    dataset_name=DATASET_NAME,
    filetype_suffix="tfrecord",
  )
  split_infos = [
    tfds.core.SplitInfo(name=split, shard_lengths=meta["shard_lengths"], num_bytes=0, filename_template=template)
    for split, meta in split_meta.items()
  ]
  tfds.folder_dataset.write_metadata(
    data_dir=output_dir, features=features, split_infos=split_infos, filename_template=template, check_data=False
  )


# -----------------------------------------------------------------------------------------------------------------
# Damage.
# -----------------------------------------------------------------------------------------------------------------
def _record_starts_at(path: str, offset: int) -> bool:
  """Whether a record of the TFRecord file ``path`` or its data starts at byte ``offset`` (TensorFlow names the one
  or the other), walking the 12-byte headers only."""
  import struct

  position = 0
  with storage.open(path, "rb") as f:
    while position < offset:
      f.seek(position)
      header = f.read(8)
      if len(header) < 8:
        return False
      if position + 12 == offset:
        return True
      position += 8 + 4 + struct.unpack("<Q", header)[0] + 4  # length, its CRC, the data, its CRC
  return position == offset


def shard_damage(path: str) -> str | None:
  """None if every record of the TFRecord shard at ``path`` reads with its checksums intact; otherwise what is wrong
  ("corrupted record at N", "truncated record at N", or that it cannot be opened). One pass over the file in
  TensorFlow's reader (no Python per record)."""
  import tensorflow as tf

  try:
    with banners.filtered_native_stderr():  # TensorFlow's own "Local rendezvous is aborting" line: we say what it was
      tf.data.TFRecordDataset(path).reduce(np.int64(0), lambda count, _: count + 1).numpy()
  except (tf.errors.DataLossError, tf.errors.NotFoundError, tf.errors.PermissionDeniedError) as e:
    return _record_fault(e.message)
  return None


def _record_fault(message: str) -> str:
  """TensorFlow's DataLossError text down to what it says about the file ("corrupted record at 1997457")."""
  found = re.search(r"\w+ record at \d+", message)
  return found.group(0) if found else message.strip().splitlines()[0]


def damaged_shard_message(files: list[str], message: str, data_dir: str) -> str:
  """Which of ``files`` TensorFlow's DataLossError ("corrupted record at N", "truncated record at N") is about, and
  what to do: the shards whose records reach byte N and fail to read."""
  found = re.search(r"record at (\d+)", message)
  offset = int(found.group(1)) if found else None
  candidates = [p for p in files if offset is None or _record_starts_at(p, offset)]
  damaged = [p for p in candidates if shard_damage(p)]
  what = _record_fault(message)
  source = prepared_from(data_dir)
  if source is None:  # not made by prepare: a TFDS dataset folder
    where = f"damaged shard {', '.join(damaged)}" if damaged else f"a damaged shard in {data_dir}"
    return (
      f"{where} ({what}): this TFDS dataset has to be built again with tensorflow-datasets (or its images "
      "prepared with `python -m alexnet_jax.prepare` into a new --output_dir)"
    )
  if not damaged:
    return f"a shard of {data_dir} is damaged ({what}) and none could be singled out: prepare into a new --output_dir"
  return (
    f"damaged shard {', '.join(damaged)} ({what}): run `python -m alexnet_jax.prepare --input_dir={source} "
    f"--output_dir={data_dir}` again (the same flags as before); it checks every shard and rewrites exactly the "
    "damaged ones"
  )
