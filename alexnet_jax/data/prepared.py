"""A prepared set (``python -m alexnet_jax.prepare``; its format: ``data/format.py``) as a source: its reader,
combined with the paper's augmentation by ``prepared_source``.
"""

from __future__ import annotations

from alexnet_jax.data import decode, format
from alexnet_jax.data.pipeline import AugmentedSource


class PreparedReader:
  """What a prepared set in ``data_dir`` holds (``meta``, ``stats``: read at once, with the errors that say what to
  run) and how to read it: TFRecord shards of examples (``format.parse_example``) whose images are
  ``meta['encoding']`` squares of ``meta['image_size']``."""

  reports_resize = True  # its images are stored at one size: say when the recipe resizes them on read

  def __init__(self, data_dir: str):
    self.data_dir = data_dir
    self.meta = format.read_metadata(data_dir)
    self.stats = format.read_stats(data_dir)
    self.encoding, self.stored_size = self.meta["encoding"], self.meta["image_size"]

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


def prepared_source(data_dir: str, **kwargs) -> AugmentedSource:
  """The paper's pipeline over the prepared set in ``data_dir`` (``kwargs``: ``AugmentedSource``'s)."""
  return AugmentedSource(PreparedReader(data_dir), **kwargs)
