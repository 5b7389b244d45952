"""A synthetic source: images of the network's input shape, made on the devices from the example's index alone.

With ``learnable=True`` each class has its own coarse colour pattern (8x8 cells, blown up to the image size) and
each image is that pattern mixed with per-image noise, so a network can learn it and a loss that falls means the
training loop works; with ``learnable=False`` the pixels are pure noise. No files, no TFDS metadata.

The host makes no pixels: its batches hold each example's ``index``, ``split`` and ``label`` (int32, a few bytes an
example), and ``preprocess``, which runs on the devices inside the jitted step, makes each image from (seed, split,
index) with ``jax.random`` (threefry, integer arithmetic only: the same bits on any backend, device count or process
layout) before normalising it. So the source can feed any accelerator at its full speed. ``images`` makes the same
pixels on the host (the same function, run by JAX on the CPU) for whatever needs to see them.

Its images are made at the network's input size: they are the crops, nothing is cut from them, in training and in
evaluation alike. What the run's config records still holds for every other image: ``preprocess`` applies
``data.normalize`` and ``data.subtract_mean`` as the other sources do (to a batch's ``image`` where it has one, as
``inference.Predictor``'s batches of outside images do), and ``view_size`` (``image_size / data.crop_fraction``) is the
square an outside image is scaled to before its centre crop (``inference.Predictor``).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from alexnet_jax.data.augment import torchvision_normalize
from alexnet_jax.data.batches import eval_index_batches, spec

_TRAIN, _EVAL, _PATTERN = 0, 1, 2
_CELLS = 8
_U64 = 0xFFFF_FFFF_FFFF_FFFF


def _mix(x: np.ndarray) -> np.ndarray:
  """SplitMix64's finaliser (uint64 -> uint64, wrapping): every input bit reaches every output bit."""
  x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58_476D_1CE4_E5B9)
  x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D0_49BB_1331_11EB)
  return x ^ (x >> np.uint64(31))


def synthetic_labels(seed: int, split: int, index: np.ndarray, num_classes: int) -> np.ndarray:
  """The classes of examples ``index`` (integers >= 0, any shape) of ``split`` (0 train, 1 eval): int32 in
  [0, num_classes), the same shape, a hash of (seed, split, index) alone (vectorised NumPy, ~0.1 us an example)."""
  golden = np.uint64(0x9E37_79B9_7F4A_7C15)
  with np.errstate(over="ignore"):
    h = _mix(np.asarray([seed & _U64], np.uint64) + golden)
    h = _mix(h ^ (np.uint64(split) + golden))
    h = _mix(h ^ (np.asarray(index).astype(np.uint64) + golden))
  return (h % np.uint64(num_classes)).astype(np.int32)


def synthetic_images(
  seed: int,
  split: jax.Array,
  index: jax.Array,
  label: jax.Array,
  *,
  num_classes: int,
  image_size: int,
  learnable: bool,
) -> jax.Array:
  """uint8 images [N, image_size, image_size, 3] of examples ``index`` (int32 [N]) of ``split`` (int32 [N]: 0 train,
  1 eval) with classes ``label`` (int32 [N], ``synthetic_labels``'s). Each image is a pure function of (seed, split,
  index): threefry keys folded from the seed, its split and its index, so neither the rest of the batch nor its
  sharding changes a pixel. ``learnable``: (pattern * 3 + noise) // 4 with the class's 8x8 colour pattern (from the
  seed alone) blown up to the image; else the noise alone. Traceable: jit it, or call it inside a jitted step."""
  seed &= _U64  # any int: its 64 bits as threefry's key, high word first (jax.random.key(seed) for 0 <= seed < 2**32)
  base = jax.random.wrap_key_data(np.asarray([seed >> 32, seed & 0xFFFF_FFFF], np.uint32), impl="threefry2x32")
  size = image_size
  count = size * size * 3

  def noise(s, i):
    # 32-bit words cut into their 4 bytes by shifts (defined on every backend): a quarter of the hashes that drawing
    # uint8 directly costs (one per byte), 5x faster on a CPU.
    words = jax.random.bits(jax.random.fold_in(jax.random.fold_in(base, s), i), (-(-count // 4),), jnp.uint32)
    octets = (words[:, None] >> jnp.asarray([0, 8, 16, 24], jnp.uint32)).astype(jnp.uint8)
    return octets.reshape(-1)[:count].reshape(size, size, 3)

  pixels = jax.vmap(noise)(jnp.asarray(split, jnp.int32), jnp.asarray(index, jnp.int32))
  if not learnable:
    return pixels
  patterns = jax.random.bits(jax.random.fold_in(base, _PATTERN), (num_classes, _CELLS, _CELLS, 3), jnp.uint8)
  reps = -(-size // _CELLS)
  pattern = patterns[jnp.asarray(label, jnp.int32)]
  pattern = jnp.repeat(jnp.repeat(pattern, reps, axis=1), reps, axis=2)[:, :size, :size]
  return ((pattern.astype(jnp.uint16) * 3 + pixels) // 4).astype(jnp.uint8)


@functools.partial(jax.jit, static_argnames=("seed", "num_classes", "image_size", "learnable"))
def _jitted_images(split, index, label, *, seed, num_classes, image_size, learnable):
  return synthetic_images(
    seed, split, index, label, num_classes=num_classes, image_size=image_size, learnable=learnable
  )


class SyntheticSource:
  mean_rgb = 127.5  # the mean of the pixel distribution: "subtract the mean activity" (Sec. 2)

  def __init__(
    self,
    *,
    num_classes: int,
    image_size: int,
    num_train_examples: int,
    num_eval_examples: int,
    learnable: bool,
    seed: int,
    normalize: str = "mean_image",
    subtract_mean: bool = True,
    crop_fraction: float | None = None,
  ):
    """``normalize``: 'mean_image' (the pixel values, minus ``mean_rgb`` when ``subtract_mean``) or 'torchvision'
    (RGB / 255 minus torchvision's channel means, over its deviations; ``subtract_mean`` is then unused), as
    ``data.normalize``. ``crop_fraction``: the share of an image's width its centre crop covers (0 or None: the
    image is scaled straight to ``image_size``). Raises ValueError for another ``normalize``."""
    if normalize not in ("mean_image", "torchvision"):
      raise ValueError(f"data.normalize must be 'mean_image' or 'torchvision', got {normalize!r}")
    self.num_classes, self.image_size = num_classes, image_size
    self.normalize, self.subtract_mean = normalize, subtract_mean
    self.view_size = round(image_size / crop_fraction) if crop_fraction else image_size
    self.num_train_examples, self.num_eval_examples = num_train_examples, num_eval_examples
    self.learnable, self.seed = learnable, seed

  def _batch(self, split: int, indices: np.ndarray) -> dict[str, np.ndarray]:
    """The host's part of a batch: int32 [N] ``index``, ``split`` and ``label``; no pixels."""
    indices = np.asarray(indices, np.int32)
    return {
      "index": indices,
      "split": np.full(indices.shape, split, np.int32),
      "label": synthetic_labels(self.seed, split, indices, self.num_classes),
    }

  def steps_per_epoch(self, global_batch: int) -> int:
    return max(1, self.num_train_examples // global_batch)

  def train_batches(self, start_step: int, global_batch: int) -> Iterator[dict[str, np.ndarray]]:
    """This process's rows of the global batch of each step from ``start_step`` on: global rows
    ``step * global_batch + i`` (modulo the examples), process p the p-th contiguous ``global_batch / processes``."""
    local = global_batch // jax.process_count()
    offset = jax.process_index() * local
    step = start_step
    while True:
      first = step * global_batch + offset
      yield self._batch(_TRAIN, np.arange(first, first + local) % self.num_train_examples)
      step += 1

  def eval_batches(self, global_batch: int) -> Iterator[dict[str, np.ndarray]]:
    for indices, mask in eval_index_batches(self.num_eval_examples, global_batch):
      yield {**self._batch(_EVAL, indices), "mask": mask}

  def batch_spec(self, global_batch: int, train: bool) -> dict[str, jax.ShapeDtypeStruct]:
    """Shapes and dtypes of one global batch (what ``aot.py`` compiles for; tested against real batches)."""
    shapes = {key: ((global_batch,), np.int32) for key in ("index", "split", "label")}
    if not train:
      shapes["mask"] = ((global_batch,), np.float32)
    return spec(shapes)

  def device_images(self, batch: dict[str, jax.Array]) -> jax.Array:
    """uint8 [N, S, S, 3]: the images of a batch of this source (its int32 [N] ``index``, ``split``, ``label``),
    made where the computation runs (``synthetic_images``)."""
    return synthetic_images(
      self.seed,
      batch["split"],
      batch["index"],
      batch["label"],
      num_classes=self.num_classes,
      image_size=self.image_size,
      learnable=self.learnable,
    )

  def images(self, batch: dict[str, np.ndarray]) -> np.ndarray:
    """The same images as ``device_images``, on the host: uint8 numpy [N, S, S, 3], made by JAX on the CPU (bit for
    bit what the devices make: integer arithmetic only). For figures and ``inference.Predictor``."""
    cpu = jax.devices("cpu")[0]
    args = [jax.device_put(np.asarray(batch[k], np.int32), cpu) for k in ("split", "index", "label")]
    return np.asarray(
      _jitted_images(
        *args, seed=self.seed, num_classes=self.num_classes, image_size=self.image_size, learnable=self.learnable
      )
    )

  def preprocess(self, batch: dict[str, jax.Array]) -> jax.Array:
    """float32 [N, S, S, 3], normalised as the config says (what the other sources do), from the batch's uint8
    ``image`` [..., H, W, 3] where it has one (outside images: ``inference.Predictor``), else from the images
    ``device_images`` makes of its ``index``, ``split`` and ``label``. Raises KeyError for a batch with neither."""
    x = (batch["image"] if "image" in batch else self.device_images(batch)).astype(jnp.float32)
    if self.normalize == "torchvision":
      return torchvision_normalize(x)
    return x - self.mean_rgb if self.subtract_mean else x
