"""A trained run, ready to use: ``Predictor.from_workdir(DIR)`` gives the network of DIR's newest readable
checkpoint with the run's own preprocessing, for notebooks, figures and your own images.

  p = Predictor.from_workdir("workdirs/demo")
  probs = p.predict(images)             # uint8 [N, H, W, 3] of any size (or a list of such) -> [N, classes]
  fc7 = p.features(images, "fc7")       # any layer of model.LAYER_NAMES, or pool1/pool2/pool5
  images, labels = p.validation_images(16)  # the run's own validation images (a prepared set), stored size

Preprocessing is the run's evaluation path, as its config records it, whatever its data source: an image is
rescaled so that its shorter side is the prepared set's stored size and its central square kept (what ``prepare``
did), resized to the size the run cut crops from (``data.crop_fraction``), centre-cropped to the network's input,
and normalised by the source's ``preprocess`` (``data.normalize``: the run's mean image subtracted, or
torchvision's channel normalisation). A run without a prepared set (the synthetic source: a run of imported weights
written without ``--data_dir``) scales the shorter side straight to ``model.image_size / data.crop_fraction``.
Resizing uses the filter of the preprocessing the config records (``prepared.resize_method``): bicubic for the
paper's runs, and for ``data.normalize='torchvision'`` (imported weights) torchvision's own: ``Resize(256)`` (PIL's
bilinear, which antialiases) then ``CenterCrop(224)``, step for step.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass
class Predictor:
  config: Any  # the run's ml_collections config, as saved with the checkpoint
  step: int
  params: Any
  graphdef: Any
  source: Any  # the run's data source (its preprocessing, its classes)
  class_names: list[str]
  batch_stats: Any = dataclasses.field(default_factory=dict)  # batch norm's running statistics ({} without)

  @classmethod
  def from_workdir(cls, workdir: str, step: int | None = None, data_dir: str | None = None) -> Predictor:
    """The run in ``workdir`` (its newest readable checkpoint, or ``step``). ``data_dir``: where the run's prepared
    set is now, if it moved (its mean image and class names are read from there)."""
    from alexnet_jax import checkpoint as checkpoint_lib
    from alexnet_jax import evaluate, parallel, storage, train
    from alexnet_jax.data import sources

    checkpoints = storage.join(storage.resolve(workdir), "checkpoints")
    if not storage.isdir(checkpoints):
      raise ValueError(f"{workdir} holds no checkpoints/ folder: train there first, or check the path")
    ckpt = checkpoint_lib.Checkpointer(checkpoints, max_to_keep=10**9)
    try:
      _, saved = ckpt.read_config(step)
    finally:
      ckpt.close()
    config = evaluate.config_from_json(saved)
    if data_dir:
      config.data.dir, config.data.source = data_dir, "auto"
    config.data.eval_crops = 1
    mesh = parallel.create_mesh(1, devices=jax.devices()[:1])  # one device: a notebook's, or this machine's first
    config.mesh.model = 1
    config.model.bn_group_size = 0  # inference uses the running statistics: training's groups play no part
    step_used, state, graphdef = train.load_checkpoint(config, workdir, mesh=mesh, step=step)
    source = sources.create_source(config)
    meta = getattr(source, "meta", None)
    names = list(meta["classes"]) if meta else _workdir_class_names(workdir, config.model.num_classes)
    return cls(
      config,
      step_used,
      jax.device_get(state["params"]),
      graphdef,
      source,
      names,
      jax.device_get(state.get("batch_stats", {})),
    )

  # ---- the network ------------------------------------------------------------------------------------------------
  @property
  def image_size(self) -> int:
    return self.source.image_size

  def batch(self, images: np.ndarray | Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    """Images of any size -> the batch the run's ``preprocess`` takes (uint8 crops and where they were cut). An image
    is an array: uint8, or floats in [0, 1] or [0, 255], greyscale or RGB(A) (``decode.to_uint8_rgb``)."""
    from alexnet_jax.data import decode
    from alexnet_jax.data.augment import resize_method

    crop = self.image_size
    stored = getattr(self.source, "stored_size", None)
    view = getattr(self.source, "view_size", crop)
    method = resize_method(getattr(self.source, "normalize", "mean_image"))
    crops = []
    for image in as_images(images):
      image = decode.to_uint8_rgb(image)
      if stored:  # what prepare did, then the run's resize on read
        image = _square(image, stored)
        if view != stored:
          image = _resize(image, view, method)
      elif method == "bilinear":  # torchvision's own Resize(view) + CenterCrop(crop), exactly
        crops.append(_torchvision_resize_and_crop(image, view, crop))
        continue
      else:
        image = _square(image, view)
      centre = (image.shape[0] - crop) // 2
      crops.append(image[centre : centre + crop, centre : centre + crop])
    n = len(crops)
    out = {"image": np.stack(crops)}
    if stored:
      centre = (view - crop) // 2
      out.update(
        offset=np.full((n, 2), centre, np.int32), flip=np.zeros((n,), np.int32), shift=np.zeros((n, 3), np.float32)
      )
    return out

  def _forward(self, images, with_activations: bool):
    batch = {k: jnp.asarray(v) for k, v in self.batch(images).items()}
    variables = {"params": self.params, "batch_stats": self.batch_stats}
    return _run_network(self.graphdef, variables, self.source.preprocess, batch, with_activations)

  def predict(self, images: np.ndarray | Sequence[np.ndarray], batch_size: int = 64) -> np.ndarray:
    """Class probabilities [N, classes] (softmax of the logits; no dropout). One image alone gives [1, classes]."""
    images = as_images(images)
    return np.concatenate(
      [
        np.asarray(jax.nn.softmax(self._forward(images[i : i + batch_size], False)))
        for i in _chunks(images, batch_size)
      ]
    )

  def features(self, images: np.ndarray | Sequence[np.ndarray], layer: str = "fc7", batch_size: int = 64) -> np.ndarray:
    """One layer's activations for each image, flattened to [N, features]: ``fc7`` is the paper's 4096-d feature
    (before dropout) that Fig. 4 compares by Euclidean distance."""
    images = as_images(images)
    out = []
    for i in _chunks(images, batch_size):
      _, acts = self._forward(images[i : i + batch_size], True)
      if layer not in acts:
        raise ValueError(f"no layer {layer!r}: choose one of {sorted(acts)}")
      out.append(np.asarray(acts[layer]).reshape(len(images[i : i + batch_size]), -1))
    return np.concatenate(out)

  def conv1_kernels(self) -> np.ndarray:
    """conv1's kernels as [count, height, width, 3] (the paper's Fig. 3)."""
    return np.asarray(self.params["conv1"]["kernel"]).transpose(3, 0, 1, 2)

  # ---- the run's own data -----------------------------------------------------------------------------------------
  def validation_images(self, count: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, S, S, 3] at the stored size, labels [N]) from the run's validation split, in order."""
    meta = getattr(self.source, "meta", None)
    if not meta:  # the synthetic source: its evaluation images (made here, on the CPU), which are the crops ...
      batch = next(self.source.eval_batches(count or 16))
      real = int(batch["mask"].sum())
      images = self.source.images(batch)[:real]
      # ... reflected outward to the square the crop is cut from, so that ``predict``'s centre crop of them is
      # exactly what evaluation fed the network.
      before = (self.source.view_size - self.image_size) // 2
      after = self.source.view_size - self.image_size - before
      return np.pad(images, ((0, 0), (before, after), (before, after), (0, 0)), mode="reflect"), batch["label"][:real]
    from alexnet_jax.data import decode
    from alexnet_jax.native import compat

    compat.require_tensorflow("reading the prepared validation images")

    images, labels = [], []
    files, _ = self.source._files("val", 0, 1)  # the shards as the source reads them (paths already resolved)
    for record in self.source.records_in_order(files):
      jpeg, label, _ = self.source.reader.parse(record)
      # A prepared set's images are stored squares already; a TFDS set's come in any size: made square as prepare does.
      images.append(decode.square_crop(decode.decode_rgb(jpeg.numpy()), self.source.stored_size))
      labels.append(int(label))
      if count and len(images) >= count:
        break
    return np.stack(images), np.asarray(labels, np.int32)


@functools.partial(jax.jit, static_argnums=(0, 2, 4))
def _run_network(graphdef, variables, preprocess, batch, with_activations: bool):
  from alexnet_jax import steps

  model = steps.merge_model(graphdef, variables)
  x = preprocess(batch)
  return model(x, return_activations=True) if with_activations else model(x)


CLASS_NAMES_FILE = "class_names.txt"  # in a workdir without a dataset's class names: one name a line, in class order


def _workdir_class_names(workdir: str, num_classes: int) -> list[str]:
  """The names the workdir's ``class_names.txt`` gives (``weights`` writes ImageNet's for 1000 classes), else
  ``class 0`` ... Raises ValueError when the file's count is not the run's."""
  from alexnet_jax import storage

  path = storage.join(storage.resolve(workdir), CLASS_NAMES_FILE)
  if not storage.exists(path):
    return [f"class {i}" for i in range(num_classes)]
  with storage.open(path) as f:
    names = [line.rstrip("\n") for line in f if line.strip() and not line.startswith("#")]
  if len(names) != num_classes:
    raise ValueError(
      f"{path} names {len(names)} classes but the run has {num_classes}: fix or delete it (one name a line)"
    )
  return names


def _chunks(images, batch_size: int) -> range:
  return range(0, len(images), batch_size)


def as_images(images: np.ndarray | Sequence[np.ndarray]) -> np.ndarray | Sequence[np.ndarray]:
  """``images`` as a sequence of images. A sequence, or an array [N, H, W, C] or [N, H, W] (greyscale), is taken
  as it is; one image given alone, an array [H, W, 3 or 4] (RGB(A)) or [H, W] (greyscale), becomes a batch of one
  (without this, each of its rows would be read as a greyscale image). ValueError for arrays of other ranks."""
  if not isinstance(images, np.ndarray) and not hasattr(images, "__array_interface__"):
    return images
  images = np.asarray(images)
  if images.ndim == 2 or (images.ndim == 3 and images.shape[-1] in (3, 4)):
    return images[None]
  if images.ndim in (3, 4):
    return images
  raise ValueError(
    f"images of shape {images.shape}: give one image [H, W, 3] or [H, W], a batch [N, H, W, 3] or [N, H, W], or a "
    "list of images"
  )


def _square(image: np.ndarray, size: int) -> np.ndarray:
  """The shorter side rescaled to ``size`` and the central square kept (what ``prepare`` does)."""
  from PIL import Image

  from alexnet_jax.data import decode

  return decode.square_crop(Image.fromarray(image), size)


def _resize(image: np.ndarray, size: int, method: str = "bicubic") -> np.ndarray:
  """A square image resized to size x size with the run's filter (``prepared.resize_method``), antialiased."""
  from PIL import Image

  if method == "bilinear":
    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR))
  return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BICUBIC, reducing_gap=3.0))


def _torchvision_resize_and_crop(image: np.ndarray, size: int, crop: int) -> np.ndarray:
  """torchvision's ``Resize(size)`` + ``CenterCrop(crop)`` of a PIL image: the shorter side to ``size`` and the
  longer to ``int(size * long / short)``, PIL's bilinear filter (antialiased when it shrinks), then the crop at
  ``round((side - crop) / 2)``."""
  from PIL import Image

  im = Image.fromarray(image)
  w, h = im.size
  new = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
  if new != (w, h):
    im = im.resize(new, Image.Resampling.BILINEAR)
  w, h = im.size
  top, left = int(round((h - crop) / 2.0)), int(round((w - crop) / 2.0))
  return np.asarray(im.crop((left, top, left + crop, top + crop)), dtype=np.uint8)
