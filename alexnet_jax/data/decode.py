"""Decoding images: any file a user has (``decode_rgb``, ``to_uint8_rgb``, ``square_crop``: PIL and NumPy, what
``prepare`` and ``inference.Predictor`` use), and the stored images of a dataset inside tf.data (``stored_view``,
``stored_patch``, ``any_view``, ``resize_square``: what the sources' readers use).
"""

from __future__ import annotations

import io
import re

import numpy as np


# -----------------------------------------------------------------------------------------------------------------
# Any image file or array (PIL, NumPy).
# -----------------------------------------------------------------------------------------------------------------
def resize_and_center_crop(data: bytes, size: int) -> np.ndarray:
  """Decode any format (``decode_rgb``), rescale the shorter side to ``size`` (bicubic, antialiased) and keep the
  central size x size patch. Raises ValueError for unreadable data."""
  return square_crop(decode_rgb(data), size)


def decode_rgb(data: bytes, *, exif_orientation: bool = False):
  """Any file PIL reads -> an 8-bit RGB PIL image: CMYK, palette and greyscale converted, alpha dropped (as
  torchvision's loader does), 16- and 32-bit channels scaled to 8 bits (PIL's own conversion clips them, which turns
  a 16-bit image white). ``exif_orientation`` turns a photo upright as its camera's EXIF tag says: for a user's own
  photos; ``prepare`` does not, like TFDS and torchvision's ImageFolder, so that a prepared ImageNet holds the pixels
  the standard pipelines see. Raises ValueError for unreadable data, naming what PIL said."""
  from PIL import Image, ImageOps

  if not data:
    raise ValueError("empty file")
  try:
    with Image.open(io.BytesIO(data)) as im:
      im.load()  # a truncated file fails here (PIL does not pad truncated images unless told to)
      if exif_orientation:
        im = ImageOps.exif_transpose(im)
      if im.mode in ("I", "F") or im.mode.startswith("I;16"):
        return Image.fromarray(to_uint8_rgb(np.asarray(im)))
      return im.convert("RGB")
  except Exception as e:
    message = re.sub(r" <_io\.BytesIO object at 0x[0-9a-f]+>", "", str(e))  # PIL names the buffer, not the file
    raise ValueError(f"{type(e).__name__}: {message}") from e


def to_uint8_rgb(image) -> np.ndarray:
  """An image array -> uint8 [H, W, 3]: greyscale ([H, W] or [H, W, 1]) repeated, alpha dropped; uint16 scaled by
  1/257, other integers read as 8-bit values when they fit and as 16-bit otherwise; floats in [0, 1] scaled by 255,
  floats up to 255 kept. Anything else (a normalised tensor, 5 channels) is refused rather than clipped silently."""
  image = np.asarray(image)
  if image.ndim == 3 and image.shape[-1] in (2, 4):  # greyscale + alpha, RGB + alpha
    image = image[..., :1] if image.shape[-1] == 2 else image[..., :3]
  if image.ndim == 3 and image.shape[-1] == 1:
    image = image[..., 0]
  if image.ndim == 2:
    image = np.repeat(image[..., None], 3, axis=-1)
  if image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f"an image of shape {image.shape}: expected [H, W], [H, W, 1], [H, W, 3] or [H, W, 4]")
  if image.dtype == np.uint8:
    return image
  if image.dtype == bool:
    return image.astype(np.uint8) * 255
  lo, hi = (float(image.min()), float(image.max())) if image.size else (0.0, 0.0)
  if np.issubdtype(image.dtype, np.integer):
    if lo < 0 or hi > 65535:
      raise ValueError(f"integer pixel values in [{lo:g}, {hi:g}]: expected 0-255 or 0-65535")
    scale = 1 / 257 if image.dtype == np.uint16 or hi > 255 else 1.0
  elif np.issubdtype(image.dtype, np.floating):
    if not (np.isfinite(lo) and np.isfinite(hi)) or lo < -0.5 or hi > 255.5:
      raise ValueError(
        f"float pixel values in [{lo:g}, {hi:g}]: give uint8 pixels, or floats in [0, 1] or [0, 255] (not "
        "normalised: the run subtracts its own mean)"
      )
    scale = 255.0 if hi <= 1.0 else 1.0
  else:
    raise ValueError(f"pixels of dtype {image.dtype}: expected uint8, uint16, integers or floats")
  return np.clip(np.round(image.astype(np.float64) * scale), 0, 255).astype(np.uint8)


def square_crop(im, size: int) -> np.ndarray:
  """An RGB PIL image with its shorter side rescaled to ``size`` (bicubic, antialiased), central square kept: the
  paper's test-time view (Sec. 2), and what ``inference.Predictor`` does to any image it is given."""
  from PIL import Image

  w, h = im.size
  scale = size / min(w, h)
  nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
  im = im.resize((nw, nh), Image.Resampling.BICUBIC, reducing_gap=3.0)
  left, top = (nw - size) // 2, (nh - size) // 2
  return np.asarray(im.crop((left, top, left + size, top + size)), dtype=np.uint8)


# -----------------------------------------------------------------------------------------------------------------
# Stored images, inside tf.data (``method``: the resize filter, ``augment.resize_method``).
# -----------------------------------------------------------------------------------------------------------------
def resize_square(image, size: int, method: str):
  """A decoded uint8 image resized to size x size (``method``, antialiased, rounded back to uint8)."""
  import tensorflow as tf

  image = tf.image.resize(image, [size] * 2, method=method, antialias=True)
  return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)


def raw_pixels(encoded, stored_size: int):
  """A pixel set's records (a scalar tf.string, or a [B] batch of them) -> uint8 [S, S, 3] (or [B, S, S, 3]): the
  pixels that lead each record (``format.encode_pixel_record``), in one copy, the trailer left out."""
  import tensorflow as tf

  pixels = tf.io.decode_raw(encoded, tf.uint8, fixed_length=stored_size * stored_size * 3)
  return tf.reshape(pixels, [*([-1] if encoded.shape.rank else []), stored_size, stored_size, 3])


def stored_view(encoded, *, encoding: str, stored_size: int, view_size: int, method: str):
  """A stored square image (``encoding``, stored_size x stored_size) decoded whole, resized to view_size if that
  differs."""
  import tensorflow as tf

  _check_encoding(encoding)
  if encoding == "pixels":
    image = raw_pixels(encoded, stored_size)
  else:
    image = tf.io.decode_jpeg(encoded, channels=3)
  if view_size != stored_size:
    image = resize_square(image, view_size, method)
  return tf.ensure_shape(image, [view_size, view_size, 3])


def stored_patch(encoded, offset, crop: int, *, encoding: str, stored_size: int, view_size: int, method: str):
  """The crop x crop patch at ``offset`` of a stored image's view (``stored_view``), decoding only that patch when
  the view is the stored image itself."""
  import tensorflow as tf

  if view_size != stored_size:
    view = stored_view(encoded, encoding=encoding, stored_size=stored_size, view_size=view_size, method=method)
    return view[offset[0] : offset[0] + crop, offset[1] : offset[1] + crop]
  _check_encoding(encoding)
  if encoding == "pixels":
    return raw_pixels(encoded, stored_size)[offset[0] : offset[0] + crop, offset[1] : offset[1] + crop]
  return tf.io.decode_and_crop_jpeg(encoded, tf.concat([offset, [crop, crop]], 0), channels=3)


def _check_encoding(encoding: str) -> None:
  if encoding not in ("jpeg", "pixels"):
    raise ValueError(f"stored images encoded as {encoding!r}: only 'jpeg' and 'pixels' are decoded here")


def any_view(encoded, size: int, method: str):
  """An image of any size and format TensorFlow decodes, through the paper's fixed preprocessing: shorter side to
  ``size`` (``method``, antialiased), and the centre size x size square."""
  import tensorflow as tf

  image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
  shape = tf.cast(tf.shape(image)[:2], tf.float32)
  scale = size / tf.reduce_min(shape)
  new = tf.maximum(tf.cast(tf.round(shape * scale), tf.int32), size)
  image = tf.image.resize(image, new, method=method, antialias=True)  # torchvision's for its runs
  image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
  top, left = (new[0] - size) // 2, (new[1] - size) // 2
  return tf.ensure_shape(image[top : top + size, left : left + size], [size, size, 3])
