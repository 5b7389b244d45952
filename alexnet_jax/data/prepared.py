"""A prepared set (``python -m alexnet_jax.prepare``; its format: ``data/format.py``) as a source: its reader,
combined with the paper's augmentation by ``prepared_source``.
"""

from __future__ import annotations

import os

import numpy as np

from alexnet_jax import storage
from alexnet_jax.data import decode, format
from alexnet_jax.data.pipeline import AugmentedSource


class PreparedReader:
  """What a prepared set in ``data_dir`` holds (``meta``, ``stats``: read at once, with the errors that say what to
  run) and how to read it: TFRecord shards of examples (``format.parse_record``) whose images are
  ``meta['encoding']`` squares of ``meta['image_size']``.

  ``pixel_reader``: how training reads a pixel set on a local disk. "mmap" (default): the shards are memory-mapped;
  tf.data draws the order and the augmentation over example positions exactly as over records, and each batch's
  pixels are copied straight out of the mapping (``gather``): one copy of each image's bytes, the floor of any
  input path (TFRecord reading costs two copies and a checksum per record; benchmarks/RESULTS.md). Record lengths
  and every trailer are checked when the reader opens; checksums are not (``prepare`` run again checks them).
  "tfrecord": the records through tf.data, as for JPEG sets (what the tf.data service serves). Evaluation reads
  records either way."""

  reports_resize = True  # its images are stored at one size: say when the recipe resizes them on read

  def __init__(self, data_dir: str, pixel_reader: str = "mmap"):
    if pixel_reader not in ("mmap", "tfrecord"):
      raise ValueError(f"data.pixel_reader must be 'mmap' or 'tfrecord', got {pixel_reader!r}")
    self.data_dir = data_dir
    self.meta = format.read_metadata(data_dir)
    self.stats = format.read_stats(data_dir)
    self.encoding, self.stored_size = self.meta["encoding"], self.meta["image_size"]
    self.mapped = self.encoding == "pixels" and pixel_reader == "mmap" and storage.scheme(data_dir) is None
    self._maps = None  # opened on first use (``open_maps``): a reader made only to compile or count opens nothing

  def records(self, filename):
    """The raw records of one shard (``filename``: a string or a scalar tf.string), in order."""
    import tensorflow as tf

    # Pixel records are ~200 KB: read 8 MB at a time (TFRecord's default 256 KB buffer would hold one record).
    return tf.data.TFRecordDataset(filename, buffer_size=8 << 20 if self.encoding == "pixels" else None)

  def parse(self, record):
    """A record -> (encoded image, label as tf.int32, index as tf.int64)."""
    return format.parse_record(record, self.encoding, self.stored_size)

  @property
  def whole_views(self) -> bool:
    """Whether training may send each stored image whole and leave the crop and flip to the device: a pixel set
    (nothing to decode; a JPEG is best decoded only where it is cropped)."""
    return self.encoding == "pixels"

  def decode_views(self, encoded):
    """A batch [B] of stored images, whole, as uint8 [B, S, S, 3] (pixel sets: ``whole_views``)."""
    return decode.raw_pixels(encoded, self.stored_size)

  def decode_view(self, encoded, *, view_size: int, method: str):
    """The whole view_size x view_size image the crops are cut from: the stored image, resized if need be."""
    return decode.stored_view(
      encoded, encoding=self.encoding, stored_size=self.stored_size, view_size=view_size, method=method
    )

  def decode_patch(self, encoded, offset, crop: int, *, view_size: int, method: str):
    """The crop x crop patch at ``offset`` of the view, decoding only that patch where the encoding allows."""
    return decode.stored_patch(
      encoded, offset, crop, encoding=self.encoding, stored_size=self.stored_size, view_size=view_size, method=method
    )

  # ---- memory-mapped pixel shards (``mapped``) -----------------------------------------------------------------
  def open_maps(self):
    """Map every training shard, once (called before tf.data traces ``positions``, so errors reach the caller);
    per example position (shard after shard, in the metadata's order) its shard, place, label and index. Raises
    ValueError naming a shard whose size is not whole records of this set."""
    if self._maps is None:
      side = self.stored_size
      frame = side * side * 3 + format.PIXEL_TRAILER_BYTES + 16  # TFRecord: length, its CRC, data, data's CRC
      views, shard_of, place, labels, indices, bases, total = [], [], [], [], [], {}, 0
      train = self.meta["splits"]["train"]
      for shard, (path, n) in enumerate(zip(train["files"], train["shard_lengths"])):
        size = os.path.getsize(path)
        if size != n * frame:
          raise ValueError(
            f"{path} holds {size} bytes, not {n} records of {frame}: it is damaged or not of this set: run "
            f"`python -m alexnet_jax.prepare --input_dir={format.prepared_from(self.data_dir)} "
            f"--output_dir={self.data_dir} --encoding=pixels` again (the same flags as before): it checks every "
            "shard and rewrites the damaged ones"
          )
        frames = np.memmap(path, np.uint8, mode="r", shape=(n, frame))
        trailer = np.ascontiguousarray(frames[:, frame - 4 - format.PIXEL_TRAILER_BYTES : frame - 4])
        bases[path], total = total, total + n
        views.append(frames[:, 12 : 12 + side * side * 3].reshape(n, side, side, 3))
        indices.append(trailer[:, :8].copy().view("<i8")[:, 0])
        labels.append(trailer[:, 8:12].copy().view("<i4")[:, 0])
        shard_of.append(np.full(n, shard, np.int32))
        place.append(np.arange(n, dtype=np.int64))
      self._maps = {
        "views": views,
        "shard": np.concatenate(shard_of),
        "place": np.concatenate(place),
        "label": np.concatenate(labels).astype(np.int32),
        "index": np.concatenate(indices).astype(np.int64),
        "base": bases,
      }
    return self._maps

  def positions(self, filename):
    """Training, ``mapped``: the example positions of one shard (a scalar tf.string), in order, as an int64 dataset
    standing in for its records."""
    import tensorflow as tf

    maps = self.open_maps()
    names = list(maps["base"])
    lengths = self.meta["splits"]["train"]["shard_lengths"]
    shard = tf.argmax(tf.cast(tf.equal(tf.constant(names), filename), tf.int32))
    base = tf.gather(tf.constant([maps["base"][n] for n in names], tf.int64), shard)
    return tf.data.Dataset.range(base, base + tf.gather(tf.constant(lengths, tf.int64), shard))

  def parse_position(self, position):
    """Training, ``mapped``: a position -> (the position, label as tf.int32, index as tf.int64), as ``parse``
    gives them for a record."""
    import tensorflow as tf

    maps = self.open_maps()
    return position, tf.gather(maps["label"], position), tf.gather(maps["index"], position)

  def gather(self, positions: np.ndarray) -> np.ndarray:
    """Training, ``mapped``: the whole stored images at ``positions`` [B], uint8 [B, S, S, 3], copied once out of
    the mapped shards."""
    maps = self.open_maps()
    side = self.stored_size
    out = np.empty((len(positions), side, side, 3), np.uint8)
    views, shard, place = maps["views"], maps["shard"], maps["place"]
    for row, p in enumerate(positions):
      out[row] = views[shard[p]][place[p]]
    return out


def prepared_source(data_dir: str, pixel_reader: str = "mmap", **kwargs) -> AugmentedSource:
  """The paper's pipeline over the prepared set in ``data_dir`` (``pixel_reader``: ``PreparedReader``'s;
  ``kwargs``: ``AugmentedSource``'s)."""
  return AugmentedSource(PreparedReader(data_dir, pixel_reader), **kwargs)
