"""The paper's augmentation and normalisation (Sec. 2, 4.1), as functions a source composes with a reader.

Training: a random crop of the stored image, flipped horizontally at random, plus "fancy PCA" lighting (a shift
along the RGB eigenvectors); each draw a stateless function of (seed, epoch, example index) (``train_draw``).
Evaluation: the centre crop, or the paper's 10 crops (``ten_crop_offsets`` and their mirror images). Then the mean
image is subtracted (by the source, which holds it), or, for imported weights, torchvision's channel
normalisation (``torchvision_normalize``) with its resize filter (``resize_method``).
"""

from __future__ import annotations

import numpy as np

_MIX = 0x9E3779B1  # to spread (seed, epoch, process) over seed space
_PRIME = 2**31 - 1


def mix_seed(*parts):
  """A seed from (seed, epoch, ...): Python ints give an int, any tf tensor among them gives an int64 tensor (the
  same value), so a seed drawn inside the pipeline equals one drawn outside it."""
  h = 0
  for p in parts:
    h = (h * _MIX + p + 1) % _PRIME
  return h


def ten_crop_offsets(stored: int, crop: int) -> list[tuple[int, int]]:
  """Top-left corners of the paper's 5 crops: top-left, top-right, bottom-left, bottom-right, centre."""
  m, c = stored - crop, (stored - crop) // 2
  return [(0, 0), (0, m), (m, 0), (m, m), (c, c)]


def eval_offsets(size: int, crop: int, eval_crops: int) -> list[tuple[int, int]]:
  """Top-left corners of evaluation's crops of a size x size view: the centre (``eval_crops`` 1) or the paper's 5
  (10: each also mirrored)."""
  if eval_crops == 1:
    centre = (size - crop) // 2
    return [(centre, centre)]
  return ten_crop_offsets(size, crop)


def train_draw(seed, epoch, index, *, size: int, crop: int, random_crop: bool, flip: bool, lighting_std: float):
  """One training example's draws, stateless from (seed, epoch, index) (tf scalars inside tf.data): (top-left
  offset of its crop x crop patch of the size x size view, whether to flip it, the lighting alphas [3]). Measured
  choice (benchmarks/RESULTS.md): one draw for crop and flip instead of split + three draws."""
  import tensorflow as tf

  u, alpha = _stateless_draws(tf.stack([mix_seed(tf.constant(seed, tf.int64), epoch), index]), lighting_std)
  return (*_crop_and_flip_draws(u, size, crop, random_crop, flip), alpha)


def train_draws(seed, epochs, indices, *, size: int, crop: int, random_crop: bool, flip: bool, lighting_std: float):
  """``train_draw`` for a batch (tf int64 vectors ``epochs`` and ``indices`` [B]): offsets int32 [B, 2], flips
  bool [B], alphas float32 [B, 3], each row bitwise what ``train_draw`` gives that example. The stateless ops take
  one seed each, so only they run per example (one ``tf.map_fn``); the seeds, and the offsets and flips made of the
  uniform draws, are computed for the batch at once. The memory-mapped pixel path's tf.data work ran 3x faster so
  than with one tf.data map call per example (benchmarks/RESULTS.md)."""
  import tensorflow as tf

  seeds = tf.stack([mix_seed(tf.constant(seed, tf.int64), epochs), indices], axis=1)
  u, alpha = tf.map_fn(lambda s: _stateless_draws(s, lighting_std), seeds, fn_output_signature=(tf.float32,) * 2)
  return (*_crop_and_flip_draws(u, size, crop, random_crop, flip), alpha)


def _stateless_draws(seed, lighting_std: float):
  """One example's stateless draws from its seed [2]: uniforms [3] (crop y, crop x, flip) and lighting alphas [3]."""
  import tensorflow as tf

  u = tf.random.stateless_uniform([3], seed=seed)
  if not lighting_std:
    return u, tf.zeros([3])
  return u, tf.random.stateless_normal([3], seed=seed + tf.constant([1, 0], tf.int64), stddev=lighting_std)


def _crop_and_flip_draws(u, size: int, crop: int, random_crop: bool, flip: bool):
  """Offsets int32 [..., 2] and flips bool [...] from uniforms [..., 3]."""
  import tensorflow as tf

  if random_crop:  # floor(u * n) is uniform over the n valid offsets (u < 1)
    offsets = tf.cast(tf.floor(u[..., :2] * (size - crop + 1)), tf.int32)
  else:
    offsets = tf.fill(tf.concat([tf.shape(u)[:-1], [2]], 0), (size - crop) // 2)
  flips = u[..., 2] < 0.5 if flip else tf.zeros(tf.shape(u)[:-1], tf.bool)
  return offsets, flips


def crop_and_flip(images, offsets, flips, crop: int):
  """On the device (jax): each example's crop x crop patch of its whole view at its top-left ``offset``, mirrored
  left to right where ``flip`` > 0. images uint8 [B, S, S, 3], offsets int32 [B, 2], flips int32 [B] -> uint8
  [B, crop, crop, 3]: the same pixels, bit for bit, as the host's crop and flip of the same draws (a copy, no
  arithmetic). Pixel sets train this way (Sec. 2's random 224/227 crops and reflections, moved off the host)."""
  import jax
  import jax.numpy as jnp

  def one(image, offset, flip):
    patch = jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (crop, crop, image.shape[-1]))
    return jnp.where(flip > 0, patch[:, ::-1], patch)

  return jax.vmap(one)(images, offsets, flips)


def lighting_shift(alpha, eigenvalues: np.ndarray, eigenvectors: np.ndarray):
  """The paper's [p1 p2 p3][a1 l1, a2 l2, a3 l3]^T for a batch of alphas [B, 3], in 0-255 pixel units (eigenvectors
  as columns, of [0, 1] pixel values)."""
  import tensorflow as tf

  return tf.linalg.matmul(alpha * tf.constant(eigenvalues), tf.constant(eigenvectors), transpose_b=True) * 255.0


def resize_method(normalize: str) -> str:
  """The resize filter of the preprocessing ``data.normalize`` names: torchvision's (``Resize`` on a PIL image: PIL's
  bilinear, antialiased) for 'torchvision', so that imported weights see what they were trained on; the paper's
  pipeline's bicubic (antialiased) otherwise."""
  return "bilinear" if normalize == "torchvision" else "bicubic"


TORCHVISION_MEAN = (0.485, 0.456, 0.406)  # ImageNet's RGB channel means and deviations, for pixels in [0, 1]
TORCHVISION_STD = (0.229, 0.224, 0.225)


def torchvision_normalize(pixels):
  """torchvision's normalisation of RGB pixel values in [0, 255] (a tf or jax array): /255, minus the channel
  means, over the channel deviations. The lighting shift, in pixel units, is added before."""
  return (pixels / 255.0 - np.asarray(TORCHVISION_MEAN, np.float32)) / np.asarray(TORCHVISION_STD, np.float32)
