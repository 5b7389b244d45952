"""A synthetic source: images of the network's input shape, made from the example's index alone.

With ``learnable=True`` each class has its own coarse colour pattern (8x8 cells, blown up to the image size) and
each image is that pattern mixed with per-image noise, so a network can learn it and a loss that falls means the
training loop works; with ``learnable=False`` the pixels are pure noise. No files, no TFDS metadata.

Its images are made at the network's input size: they are the crops, nothing is cut from them, in training and in
evaluation alike. What the run's config records still holds for every other image: ``preprocess`` applies
``data.normalize`` and ``data.subtract_mean`` as the other sources do, and ``view_size`` (``image_size /
data.crop_fraction``) is the square an outside image is scaled to before its centre crop (``inference.Predictor``).
"""

from __future__ import annotations

from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from alexnet_jax.data.augment import torchvision_normalize
from alexnet_jax.data.batches import eval_index_batches, spec

_TRAIN, _EVAL, _PATTERN = 0, 1, 2
_CELLS = 8


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
    rng = np.random.default_rng([seed, _PATTERN])
    self._patterns = rng.integers(0, 256, (num_classes, _CELLS, _CELLS, 3), dtype=np.uint8)

  def _example(self, split: int, index: int) -> tuple[np.ndarray, int]:
    rng = np.random.default_rng([self.seed, split, int(index)])
    label = int(rng.integers(self.num_classes))
    size = self.image_size
    noise = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    if not self.learnable:
      return noise, label
    reps = -(-size // _CELLS)
    pattern = np.repeat(np.repeat(self._patterns[label], reps, 0), reps, 1)[:size, :size]
    return ((pattern.astype(np.uint16) * 3 + noise) // 4).astype(np.uint8), label

  def _batch(self, split: int, indices: np.ndarray) -> dict[str, np.ndarray]:
    examples = [self._example(split, i) for i in indices]
    return {
      "image": np.stack([e[0] for e in examples]),
      "label": np.asarray([e[1] for e in examples], np.int32),
    }

  def steps_per_epoch(self, global_batch: int) -> int:
    return max(1, self.num_train_examples // global_batch)

  def train_batches(self, start_step: int, global_batch: int) -> Iterator[dict[str, np.ndarray]]:
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
    size = self.image_size
    shapes = {"image": ((global_batch, size, size, 3), np.uint8), "label": ((global_batch,), np.int32)}
    if not train:
      shapes["mask"] = ((global_batch,), np.float32)
    return spec(shapes)

  def preprocess(self, batch: dict[str, jax.Array]) -> jax.Array:
    """uint8 images [..., H, W, 3] -> float32, normalised as the config says (what the other sources do)."""
    x = batch["image"].astype(jnp.float32)
    if self.normalize == "torchvision":
      return torchvision_normalize(x)
    return x - self.mean_rgb if self.subtract_mean else x
