"""A fake ILSVRC-2012 in the official layout, for rehearsing the real path: ``ILSVRC2012_img_train.tar`` holding
1,000 per-class tars (ImageNet's own synsets, from the class list tensorflow-datasets ships) of a few small JPEGs, and
``ILSVRC2012_img_val.tar`` with the first ``num_val`` validation images, named and labelled as ImageNet's are.

Among the training images are the odd files ImageNet really holds: a CMYK JPEG, a PNG named ``.JPEG`` and a
greyscale JPEG (prepare converts all three to RGB).
"""

from __future__ import annotations

import io
import os
import tarfile

import numpy as np
from PIL import Image


def _imagenet_file(name: str) -> list[str]:
  import tensorflow_datasets as tfds

  path = os.path.join(os.path.dirname(tfds.__file__), "datasets", "imagenet2012", name)
  with open(path) as f:
    return [line.strip() for line in f if line.strip()]


def _picture(label: int, i: int, rng: np.random.Generator) -> Image.Image:
  """A small non-square picture whose colours depend on its class (so a network could tell classes apart)."""
  h, w = 30 + (i % 3) * 4, 40
  base = np.array([(label * 37) % 256, (label * 91) % 256, (label * 53) % 256], np.float32)
  noise = rng.normal(0, 40, (h, w, 3))
  return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))


def _encode(image: Image.Image, fmt: str = "JPEG") -> bytes:
  buf = io.BytesIO()
  image.save(buf, format=fmt)
  return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
  info = tarfile.TarInfo(name)
  info.size = len(data)
  tar.addfile(info, io.BytesIO(data))


def make_fake_ilsvrc2012(root: str, *, per_class: int = 2, num_val: int = 50, seed: int = 0) -> dict[str, int]:
  """Write the two official tars into ``root``; returns the image counts per split."""
  os.makedirs(root, exist_ok=True)
  synsets = _imagenet_file("labels.txt")
  val_labels = _imagenet_file("validation_labels.txt")
  rng = np.random.default_rng(seed)
  with tarfile.open(os.path.join(root, "ILSVRC2012_img_train.tar"), "w") as outer:
    for label, synset in enumerate(synsets):
      inner_buf = io.BytesIO()
      with tarfile.open(fileobj=inner_buf, mode="w") as inner:
        for i in range(per_class):
          picture = _picture(label, i, rng)
          if (label, i) == (0, 0):
            data = _encode(picture.convert("CMYK"))  # ImageNet has a few CMYK JPEGs
          elif (label, i) == (1, 0):
            data = _encode(picture, "PNG")  # and one PNG named .JPEG
          elif (label, i) == (2, 0):
            data = _encode(picture.convert("L"))  # and greyscale ones
          else:
            data = _encode(picture)
          _add(inner, f"{synset}_{i + 1}.JPEG", data)
      _add(outer, f"{synset}.tar", inner_buf.getvalue())
  with tarfile.open(os.path.join(root, "ILSVRC2012_img_val.tar"), "w") as tar:
    for n in range(1, num_val + 1):
      label = synsets.index(val_labels[n - 1])
      _add(tar, f"ILSVRC2012_val_{n:08d}.JPEG", _encode(_picture(label, n, rng)))
  return {"train": per_class * len(synsets), "val": num_val}


def make_fake_imagenet_tree(root: str, *, per_class: int = 2, num_val: int = 20, seed: int = 0) -> dict[str, int]:
  """The same fake ImageNet as a class-folder tree: ``root/train/<synset>/<image>`` for all 1,000 synsets, and the
  first ``num_val`` validation images under ``root/val/<synset>/``."""
  synsets = _imagenet_file("labels.txt")
  val_labels = _imagenet_file("validation_labels.txt")
  rng = np.random.default_rng(seed)
  for label, synset in enumerate(synsets):
    folder = os.path.join(root, "train", synset)
    os.makedirs(folder, exist_ok=True)
    for i in range(per_class):
      _picture(label, i, rng).save(os.path.join(folder, f"{synset}_{i + 1}.JPEG"), format="JPEG")
  for n in range(1, num_val + 1):
    folder = os.path.join(root, "val", val_labels[n - 1])
    os.makedirs(folder, exist_ok=True)
    _picture(synsets.index(val_labels[n - 1]), n, rng).save(os.path.join(folder, f"ILSVRC2012_val_{n:08d}.JPEG"))
  return {"train": per_class * len(synsets), "val": num_val}
