r"""Prepare ImageNet (or any class-folder image set) once, the paper's way (Sec. 2):

  python -m alexnet_jax.prepare --input_dir=SRC --output_dir=DST [--image_size=256] [--jpeg_quality=90]
  python -m alexnet_jax.prepare --input_dir=SRC_or_DST --output_dir=DST_pixels --encoding=pixels

SRC is either the official ILSVRC2012 tar files (``ILSVRC2012_img_train.tar`` of per-class tars and
``ILSVRC2012_img_val.tar``; the class list and validation labels come from tensorflow-datasets' ``imagenet2012``
folder) or a tree ``SRC/train/<class>/<image>`` + ``SRC/val/<class>/<image>`` in any format PIL reads. What systems
and tools leave beside the data (hidden names such as ``.ipynb_checkpoints``, ``._name`` AppleDouble files,
``__MACOSX``, ``lost+found``, Synology's ``@eaDir``: ``is_system_entry``) is never a class or an image, in either
layout, nor is a folder that holds no images; the log lists what was skipped (``find_images``).

Every image is rescaled so its shorter side is ``image_size`` and the central ``image_size`` square is kept, then
stored as JPEG in TFRecord shards that TFDS can read (``tfds.builder_from_directory(DST)``), or with
``--encoding=pixels`` as raw pixels (nothing to decode when training; ``convert`` makes them from a JPEG set,
exactly its decoded pixels). One streaming pass over
the training split computes the per-pixel mean image and the 3x3 RGB covariance with its eigenpairs (for "fancy
PCA" lighting), stored in ``DST/stats.npz``. Shards are written by every core, each committed by an atomic rename:
an interrupted run re-run with the same flags keeps the finished shards. Bad files (CMYK, PNG named .JPEG and
greyscale images are converted; truncated, empty or unreadable ones are not) are listed in ``DST/bad_files.json``;
more than ``--max_bad`` of them is an error.

This is the tool; what it writes is ``data/format.py``'s to define, and how it reads a picture ``data/decode.py``'s.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import json
import multiprocessing
import os
import re
import sys
import tarfile
import time

import numpy as np
from absl import flags, logging

from alexnet_jax import cli, storage
from alexnet_jax.data import format
from alexnet_jax.data.decode import resize_and_center_crop
from alexnet_jax.native import compat

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")
TRAIN_TAR, VAL_TAR = "ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar"


class PrepareError(ValueError):
  """Something about the input or output a user must fix; the message says what."""


@dataclasses.dataclass(frozen=True)
class Record:
  """One source image: a whole file (offset -1) or ``size`` bytes at ``offset`` inside a tar file."""

  path: str
  offset: int
  size: int
  label: int
  name: str


# -----------------------------------------------------------------------------------------------------------------
# Finding the images.
# -----------------------------------------------------------------------------------------------------------------
SYSTEM = "system files and folders (hidden names, __MACOSX, lost+found, @eaDir, $RECYCLE.BIN, ...)"
# What file systems, NAS boxes and operating systems put in any folder: ext4's fsck folder, Synology's thumbnail
# folders, Windows' recycle bin, volume information and thumbnail cache, Explorer's folder settings.
SYSTEM_NAMES = frozenset(
  ("__MACOSX", "lost+found", "@eaDir", "$RECYCLE.BIN", "System Volume Information", "Thumbs.db", "desktop.ini")
)
# A worker process pays ~10 s of CPU to start (TensorFlow's import) before its first image, a few hundred images'
# decoding at most: with num_workers=0 (automatic) each worker gets at least this many images, so a small set is
# prepared in this process alone (measured: 350 images, 16 s in one process, 32 s of CPU with two workers).
IMAGES_PER_WORKER = 2000

NO_IMAGES = "folders holding no images (a class without images cannot be learned)"


def is_system_entry(name: str) -> bool:
  """Whether a file or folder name (one path component) is what operating systems and tools leave beside the data,
  never a class or an image: hidden names (``.ipynb_checkpoints`` that Jupyter writes, ``.git``, ``.DS_Store``,
  ``._photo.jpg``, the AppleDouble files that macOS's tar and zip add), ``__MACOSX`` (macOS's zip), ``lost+found``
  (ext4), ``@eaDir`` (Synology), ``$RECYCLE.BIN`` and ``System Volume Information`` (Windows) and the like
  (``SYSTEM_NAMES``). ``prepare`` skips them everywhere it lists a folder or a tar, and logs what it skipped."""
  return name.startswith(".") or name in SYSTEM_NAMES


def _holds_images(folder: str) -> bool:
  """Whether ``folder`` holds an image file (not a system entry; not searched further down), as ``_tree_split``
  reads them."""
  with os.scandir(folder) as entries:
    return any(
      not is_system_entry(e.name) and e.name.lower().endswith(IMAGE_EXTENSIONS) and not e.is_dir() for e in entries
    )


def _class_folders(root: str, split: str, skipped: dict[str, list[str]]) -> list[str]:
  """The class folders of ``root/split`` that hold images, sorted; system entries, folders without images (an empty
  folder is never a class: it cannot be learned, and would shift every label after it) and loose files are noted
  in ``skipped``."""
  folders = []
  for name in sorted(os.listdir(os.path.join(root, split))):
    if is_system_entry(name):
      skipped[SYSTEM].append(f"{split}/{name}")
    elif os.path.isdir(os.path.join(root, split, name)):
      if _holds_images(os.path.join(root, split, name)):
        folders.append(name)
      else:
        skipped[NO_IMAGES].append(f"{split}/{name}/")
    else:
      skipped[f"files outside a class folder ({split}/<class>/<image> is read)"].append(f"{split}/{name}")
  return folders


def _tree_split(root: str, split: str, classes: list[str], skipped: dict[str, list[str]]) -> list[Record]:
  """The images of ``root/split/<class>/`` (not searched further down), labelled by the class's place in
  ``classes``; what is not read is noted in ``skipped``."""
  records = []
  for label, cls in enumerate(classes):
    folder = os.path.join(root, split, cls)
    if not os.path.isdir(folder):
      continue
    for name in sorted(os.listdir(folder)):
      where = f"{split}/{cls}/{name}"
      if is_system_entry(name):
        skipped[SYSTEM].append(where)
      elif os.path.isdir(os.path.join(folder, name)):
        skipped["folders inside a class folder (class folders are not searched further down)"].append(where)
      elif name.lower().endswith(IMAGE_EXTENSIONS):
        records.append(Record(os.path.join(folder, name), -1, -1, label, f"{cls}/{name}"))
      else:
        skipped[f"files without an image extension ({', '.join(IMAGE_EXTENSIONS)})"].append(where)
  return records


def _log_skipped(root: str, skipped: dict[str, list[str]]) -> None:
  """One log line per kind of entry that ``find_images`` did not read: how many, and the first few names."""
  for what, names in skipped.items():
    if names:
      shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
      log = logging.info if what == SYSTEM else logging.warning  # expected beside any data; the others may be mistakes
      log("%s: skipped %d %s: %s", root, len(names), what, shown)


def _tfds_imagenet_file(name: str) -> str:
  """A data file that tensorflow-datasets ships, found without importing it (an install whose protobuf does not
  match its tensorflow-metadata imports broken, and these are plain text files)."""
  import importlib.util

  spec = importlib.util.find_spec("tensorflow_datasets")
  folders = list(spec.submodule_search_locations or []) if spec else []
  path = os.path.join(folders[0] if folders else "tensorflow_datasets", "datasets", "imagenet2012", name)
  if not os.path.exists(path):
    raise PrepareError(
      f"tensorflow-datasets has no {path}; install tensorflow-datasets>=4.9 (it ships ImageNet's "
      "class list and validation labels)"
    )
  return path


def _val_number(name: str) -> int | None:
  """n of ``ILSVRC2012_val_<n>.JPEG`` (the label file's line n), or None."""
  match = re.fullmatch(r"(?:.*/)?ILSVRC2012_val_(\d{8})\.JPEG", name)
  return int(match.group(1)) if match and int(match.group(1)) > 0 else None


def _is_system_member(name: str) -> bool:
  """Whether a tar member's path has a system component (``is_system_entry``): ``./._x.JPEG``, ``__MACOSX/...``."""
  return any(is_system_entry(part) for part in name.split("/") if part not in ("", "."))


def _tar_split(
  root: str, allow_partial_val: bool = False, skipped: dict[str, list[str]] | None = None
) -> tuple[list[str], dict[str, list[Record]]]:
  """Index the official tars without extracting them: each image becomes (tar path, byte offset, size). System
  members (``_is_system_member``) and members of the training tar that are not per-class tars are noted in
  ``skipped``."""
  skipped = collections.defaultdict(list) if skipped is None else skipped
  with open(_tfds_imagenet_file("labels.txt")) as f:
    classes = [line.strip() for line in f if line.strip()]
  index = {c: i for i, c in enumerate(classes)}
  train: list[Record] = []
  train_tar = os.path.join(root, TRAIN_TAR)
  with tarfile.open(train_tar) as outer:
    for member in outer:
      if not member.isfile():
        continue
      if _is_system_member(member.name):
        skipped[SYSTEM].append(f"{TRAIN_TAR}:{member.name}")
        continue
      if not member.name.endswith(".tar"):
        skipped[f"members of {TRAIN_TAR} that are not per-class tars"].append(member.name)
        continue
      synset = os.path.basename(member.name)[: -len(".tar")]
      if synset not in index:
        raise PrepareError(f"{train_tar} holds {member.name}, which is not an ILSVRC2012 class")
      with tarfile.open(fileobj=outer.extractfile(member)) as inner:
        for m in inner:
          if m.isfile() and _is_system_member(m.name):
            skipped[SYSTEM].append(f"{TRAIN_TAR}:{member.name}:{m.name}")
          elif m.isfile():
            train.append(
              Record(train_tar, member.offset_data + m.offset_data, m.size, index[synset], f"{synset}/{m.name}")
            )
  with open(_tfds_imagenet_file("validation_labels.txt")) as f:
    val_labels = [index[line.strip()] for line in f if line.strip()]
  val_tar = os.path.join(root, VAL_TAR)
  with tarfile.open(val_tar) as tar:
    members = sorted((m for m in tar if m.isfile()), key=lambda m: m.name)
  skipped[SYSTEM] += [f"{VAL_TAR}:{m.name}" for m in members if _is_system_member(m.name)]
  members = [m for m in members if not _is_system_member(m.name)]
  numbers = [_val_number(m.name) for m in members]
  if None in numbers or len(set(numbers)) != len(numbers) or max(numbers, default=0) > len(val_labels):
    bad = next(
      (m.name for m, n in zip(members, numbers, strict=True) if n is None or n > len(val_labels)), "duplicates"
    )
    raise PrepareError(
      f"{val_tar} is not ILSVRC2012's validation tar: {bad!r} is not ILSVRC2012_val_<n>.JPEG with n in 1.."
      f"{len(val_labels)}"
    )
  if len(members) != len(val_labels) and not allow_partial_val:
    raise PrepareError(
      f"{val_tar} holds {len(members)} of ImageNet's {len(val_labels)} validation images: the tar is incomplete "
      "(download it again), or pass --allow_partial_val to prepare just these (each labelled by its number)"
    )
  val = [
    Record(val_tar, m.offset_data, m.size, val_labels[n - 1], m.name) for m, n in zip(members, numbers, strict=True)
  ]
  return classes, {"train": train, "val": val}


def find_images(root: str, allow_partial_val: bool = False) -> tuple[str, list[str], dict[str, list[Record]]]:
  """(layout, classes, {'train': [...], 'val': [...]}) with a clear error (PrepareError) for anything else.

  Classes are the folders of ``root/train`` (sorted names; label = place in that order) or ImageNet's 1,000
  synsets in TFDS's order; system entries (``is_system_entry``: hidden names such as ``.ipynb_checkpoints``,
  ``__MACOSX``, ``lost+found``, ``@eaDir``) are never classes or images, anywhere, and a folder holding no images is
  never a class (a warning names it). Class folders are not searched further down. Everything not read is logged,
  one line per kind."""
  skipped: dict[str, list[str]] = collections.defaultdict(list)
  try:
    return _find_images(root, allow_partial_val, skipped)
  finally:  # also when the layout is refused: what was skipped may be why
    _log_skipped(root, skipped)


def _find_images(
  root: str, allow_partial_val: bool, skipped: dict[str, list[str]]
) -> tuple[str, list[str], dict[str, list[Record]]]:
  if not os.path.isdir(root):
    raise PrepareError(
      f"--input_dir={root} does not exist or is not a directory: give the folder that holds the official "
      f"ILSVRC2012 tars ({TRAIN_TAR}, {VAL_TAR}) or a tree train/<class>/<image> (val/ beside it)"
    )
  if os.path.exists(os.path.join(root, TRAIN_TAR)) or os.path.exists(os.path.join(root, VAL_TAR)):
    missing = [t for t in (TRAIN_TAR, VAL_TAR) if not os.path.exists(os.path.join(root, t))]
    if missing:
      raise PrepareError(f"{root} has one of the official tars but not {missing}: put both in --input_dir")
    classes, splits = _tar_split(root, allow_partial_val, skipped)
    return "ilsvrc2012_tars", classes, splits
  train_dir = os.path.join(root, "train")
  if not os.path.isdir(train_dir):
    raise PrepareError(
      f"{root} is neither of the two layouts prepare reads: the official {TRAIN_TAR} + {VAL_TAR}, or a tree "
      f"{root}/train/<class>/<image> (+ {root}/val/<class>/<image>). Found: {sorted(os.listdir(root))[:10]}"
    )
  classes = _class_folders(root, "train", skipped)
  if not classes:
    raise PrepareError(f"{train_dir} has no class folders: expected {train_dir}/<class>/<image>")
  val_dir = os.path.join(root, "val")
  if os.path.isdir(val_dir):
    unknown = sorted(set(_class_folders(root, "val", skipped)) - set(classes))
    if unknown:
      raise PrepareError(f"{val_dir} has classes that train/ lacks: {unknown[:5]}")
  splits = {"train": _tree_split(root, "train", classes, skipped), "val": _tree_split(root, "val", classes, skipped)}
  if not splits["train"]:
    raise PrepareError(f"no images under {train_dir}/<class>/ (extensions read: {', '.join(IMAGE_EXTENSIONS)})")
  return "class_folders", classes, splits


# -----------------------------------------------------------------------------------------------------------------
# One image's bytes (decoded, rescaled and cropped by ``decode.resize_and_center_crop``).
# -----------------------------------------------------------------------------------------------------------------
def read_bytes(record: Record) -> bytes:
  with open(record.path, "rb") as f:
    if record.offset < 0:
      return f.read()
    f.seek(record.offset)
    return f.read(record.size)


# -----------------------------------------------------------------------------------------------------------------
# Shards (run in worker processes).
# -----------------------------------------------------------------------------------------------------------------
def shard_inputs(chunk: list[tuple[int, Record]]) -> list[list]:
  """What a shard is made of, without reading an image: per record its index, label, name and either the file's
  size and modification time or its place in a tar. A rerun rebuilds a shard whose list differs."""
  out = []
  for index, record in chunk:
    if record.offset >= 0:
      where = [record.offset, record.size]
    else:
      try:
        stat = os.stat(record.path)
        where = [stat.st_size, stat.st_mtime_ns]
      except OSError:
        where = [-1, -1]
    out.append([index, record.label, record.name, *where])
  return out


def encode_record(image: np.ndarray, label: int, index: int, name: str, *, encoding: str, quality: int) -> bytes:
  """One stored record of ``encoding`` (``format.ENCODINGS``) for a uint8 [S, S, 3] image."""
  if encoding == "pixels":
    return format.encode_pixel_record(image, label, index)
  return format.encode_example(format.encode_jpeg(image, quality), label, index, name)


def write_shard(
  path: str,
  records: list[tuple[int, Record]],
  size: int,
  quality: int,
  stats: bool,
  inputs: list | None = None,
  encoding: str = format.DEFAULT_ENCODING,
) -> dict:
  """Write one shard (atomically) and its sidecar ``.done.json`` with counts, bad files, the inputs it was made
  from and partial statistics."""
  from alexnet_jax.native import banners

  banners.quiet_tensorflow_logs("3")
  import tensorflow as tf

  tf.config.set_visible_devices([], "GPU")
  pixel_sum = np.zeros(3, np.float64)
  outer_sum = np.zeros((3, 3), np.float64)
  image_sum = np.zeros((size, size, 3), np.float64)
  bad, count = [], 0
  tmp = path + ".tmp"
  with tf.io.TFRecordWriter(tmp) as writer:
    for index, record in records:
      try:
        image = resize_and_center_crop(read_bytes(record), size)
      except (ValueError, OSError) as e:
        bad.append({"file": record.name, "reason": str(e)[:200]})
        continue
      writer.write(encode_record(image, record.label, index, record.name, encoding=encoding, quality=quality))
      count += 1
      if stats:
        image_sum += image
        rgb = image.reshape(-1, 3).astype(np.float64) / 255.0  # PCA on [0, 1] pixel values (docs/DEVIATIONS.md)
        pixel_sum += rgb.sum(0)
        outer_sum += rgb.T @ rgb
  storage.save_npz(
    path + format.SHARD_STATS_SUFFIX, image_sum=image_sum, pixel_sum=pixel_sum, outer_sum=outer_sum, count=count
  )
  return _commit_shard(path, tmp, {"num_examples": count, "bad": bad, "inputs": inputs})


def _commit_shard(path: str, tmp: str, summary: dict) -> dict:
  """Move the finished shard ``tmp`` into place, then write its commit marker (``summary``) last."""
  with storage.open(path + format.DONE_SUFFIX + ".tmp", "w") as f:
    json.dump(summary, f)
  storage.replace(tmp, path)
  storage.replace(path + format.DONE_SUFFIX + ".tmp", path + format.DONE_SUFFIX)
  return summary


def _shard_done(path: str, inputs: list) -> bool:
  """Whether the shard at ``path`` is committed (its marker exists), was made from exactly ``inputs``, and is still
  intact (a damaged one is named in a warning: it is written again)."""
  if not storage.exists(path + format.DONE_SUFFIX):
    return False
  with storage.open(path + format.DONE_SUFFIX) as f:
    if json.load(f).get("inputs") != inputs:
      return False
  damage = format.shard_damage(path)
  if damage:
    logging.warning("%s is damaged (%s): writing it again", path, damage)
  return damage is None


def convert_shard(source: str, path: str, stored_size: int, inputs: list) -> dict:
  """One shard of a prepared JPEG set rewritten as pixel records (same examples, same order, same index and label):
  each image exactly as TensorFlow decodes it in training (``tf.io.decode_jpeg``, RGB). Atomic, with its
  ``.done.json`` as ``write_shard``'s."""
  from alexnet_jax.native import banners

  banners.quiet_tensorflow_logs("3")
  import tensorflow as tf

  tf.config.set_visible_devices([], "GPU")

  def decode(record):
    encoded, label, index = format.parse_example(record)
    return tf.io.decode_jpeg(encoded, channels=3), label, index

  count, tmp = 0, path + ".tmp"
  with tf.io.TFRecordWriter(tmp) as writer:
    for image, label, index in tf.data.TFRecordDataset(source).map(decode).as_numpy_iterator():
      if image.shape != (stored_size, stored_size, 3):
        raise PrepareError(f"{source} holds a {image.shape} image; its metadata says {stored_size}x{stored_size}")
      writer.write(format.encode_pixel_record(image, int(label), int(index)))
      count += 1
  return _commit_shard(path, tmp, {"num_examples": count, "bad": [], "inputs": inputs})


def _remove_stale_shards(output_dir: str, current: set[tuple[str, int, int]]) -> None:
  """Remove the shards (and their markers) of an earlier run that this run's layout does not have (the input grew or
  shrank past a shard boundary), so the folder holds one dataset."""
  if not storage.isdir(output_dir):
    return
  for name in storage.listdir(output_dir):
    shard = format.parse_shard_filename(name)
    if shard and shard not in current:
      storage.remove(storage.join(output_dir, name))


# -----------------------------------------------------------------------------------------------------------------
# The whole preparation.
# -----------------------------------------------------------------------------------------------------------------
def estimate_bytes(num_images: int, size: int, quality: int, encoding: str = format.DEFAULT_ENCODING) -> int:
  """A generous estimate of the output size: JPEG of natural images at ~0.5-1.5 bits per pixel; pixels exactly
  (3 bytes a pixel and 32 bytes of trailer and framing a record: ImageNet's 1,331,167 images at 256 take 262 GB)."""
  if encoding == "pixels":
    return num_images * (size * size * 3 + format.PIXEL_TRAILER_BYTES + 16)
  bits_per_pixel = 0.6 + 1.4 * max(0, quality - 50) / 50
  return int(num_images * (size * size * bits_per_pixel / 8 + 2048))


def compute_stats(partials: list[dict]) -> dict[str, np.ndarray]:
  """Mean image and RGB covariance eigenpairs from the shards' partial sums (exact, not an average of averages)."""
  n_images = sum(int(p["count"]) for p in partials)
  if n_images == 0:
    raise PrepareError("no training image could be read: nothing to compute the mean image from")
  image_sum = sum(p["image_sum"] for p in partials)
  n_pixels = n_images * image_sum.shape[0] * image_sum.shape[1]
  mean_rgb = sum(p["pixel_sum"] for p in partials) / n_pixels
  cov = sum(p["outer_sum"] for p in partials) / n_pixels - np.outer(mean_rgb, mean_rgb)
  eigvals, eigvecs = np.linalg.eigh(cov)
  order = np.argsort(eigvals)[::-1]
  return {
    "mean_image": (image_sum / n_images).astype(np.float32),  # 0-255 scale, as the network sees pixels
    "mean_rgb": (mean_rgb * 255).astype(np.float32),
    "rgb_covariance": cov,  # of [0, 1] pixel values
    "eigenvalues": eigvals[order],
    "eigenvectors": eigvecs[:, order],  # columns
    "num_images": np.int64(n_images),
  }


def prepare(
  input_dir: str,
  output_dir: str,
  *,
  image_size: int = 256,
  jpeg_quality: int = 90,
  examples_per_shard: int = 1024,
  num_workers: int = 0,
  max_bad: int = 0,
  check_disk: bool = True,
  allow_partial_val: bool = False,
  encoding: str = format.DEFAULT_ENCODING,
) -> dict:
  """Prepare ``input_dir`` into ``output_dir``, its images stored as ``encoding`` ("jpeg" or "pixels"); returns the
  metadata written to ``DST/alexnet_prepared.json``. ``input_dir`` may itself be a prepared JPEG set: then it is
  converted (``convert``). Raises PrepareError saying what to change."""
  if encoding not in format.ENCODINGS:
    raise PrepareError(f"--encoding={encoding!r}: choose one of {', '.join(format.ENCODINGS)}")
  if storage.exists(storage.join(input_dir, format.METADATA)):
    return convert(input_dir, output_dir, encoding=encoding, num_workers=num_workers, check_disk=check_disk)
  started = time.time()
  layout, classes, splits = find_images(input_dir, allow_partial_val)
  total = sum(len(v) for v in splits.values())
  logging.info(
    "%s: %s layout, %d classes, %s",
    input_dir,
    layout,
    len(classes),
    ", ".join(f"{k} {len(v)} images" for k, v in splits.items()),
  )
  output_dir = storage.resolve(output_dir)
  storage.makedirs(output_dir)
  if check_disk and storage.free_bytes(output_dir) is not None:
    need, free = estimate_bytes(total, image_size, jpeg_quality, encoding), storage.free_bytes(output_dir)
    if need > free:
      raise PrepareError(
        f"{output_dir} has {free / 2**30:.1f} GiB free; the prepared data needs about "
        f"{need / 2**30:.1f} GiB. Free space or choose another --output_dir."
      )
  meta_path = storage.join(output_dir, format.METADATA)
  if storage.exists(meta_path):
    with storage.open(meta_path) as f:
      old = json.load(f)
    was = (old.get("image_size"), old.get("jpeg_quality"), format.encoding_of(old))
    if was != (image_size, jpeg_quality, encoding):
      raise PrepareError(
        f"{output_dir} was prepared with image_size={was[0]}, jpeg_quality={was[1]}, encoding={was[2]}; use those "
        "flags, or another --output_dir"
      )

  jobs = []
  for split, records in splits.items():
    num_shards = max(1, -(-len(records) // examples_per_shard)) if records else 0
    indexed = list(enumerate(records))
    for shard in range(num_shards):  # round robin: shards differ in size by at most one
      jobs.append((split, shard, num_shards, indexed[shard::num_shards]))
  inputs = {j[:3]: shard_inputs(j[3]) for j in jobs}
  _remove_stale_shards(output_dir, set(inputs))

  todo = [j for j in jobs if not _shard_done(storage.join(output_dir, format.shard_filename(*j[:3])), inputs[j[:3]])]
  logging.info("%d shards, %d already done from the same inputs and checked intact", len(jobs), len(jobs) - len(todo))

  workers = auto_workers(num_workers, sum(len(j[3]) for j in todo))
  if todo and workers == 1:  # in this process (also what keeps a process-local file system such as ram:// whole)
    for i, (split, shard, n, chunk) in enumerate(todo, 1):
      path = storage.join(output_dir, format.shard_filename(split, shard, n))
      write_shard(path, chunk, image_size, jpeg_quality, split == "train", inputs[split, shard, n], encoding)
      logging.info("shard %d/%d done (%s %d)", i, len(todo), split, shard)
  elif todo:
    ctx = multiprocessing.get_context("spawn")  # never fork a process that has TensorFlow or JAX loaded
    with concurrent.futures.ProcessPoolExecutor(max_workers=min(workers, len(todo)), mp_context=ctx) as pool:
      futures = {
        pool.submit(
          write_shard,
          storage.join(output_dir, format.shard_filename(split, shard, n)),
          chunk,
          image_size,
          jpeg_quality,
          split == "train",
          inputs[split, shard, n],
          encoding,
        ): (split, shard)
        for split, shard, n, chunk in todo
      }
      done_images, logged = 0, time.time()
      for i, future in enumerate(concurrent.futures.as_completed(futures), 1):
        summary = future.result()
        done_images += summary["num_examples"] + len(summary["bad"])
        if i == len(todo) or time.time() - logged >= 10:  # progress as log lines, at most one per 10 s
          rate = done_images / max(time.time() - started, 1e-9)
          logging.info("%d/%d shards done (last: %s %d), %.0f images/s", i, len(todo), *futures[future], rate)
          logged = time.time()

  split_meta, bad, partials = {}, [], []
  for split, shard, n, _ in jobs:
    base = storage.join(output_dir, format.shard_filename(split, shard, n))
    with storage.open(base + format.DONE_SUFFIX) as f:
      summary = json.load(f)
    bad += [{"split": split, **b} for b in summary["bad"]]
    entry = split_meta.setdefault(split, {"num_examples": 0, "files": [], "shard_lengths": []})
    entry["files"].append(storage.basename(base))
    entry["shard_lengths"].append(summary["num_examples"])
    entry["num_examples"] += summary["num_examples"]
    if split == "train":
      partials.append(storage.load_npz(base + format.SHARD_STATS_SUFFIX))
  with storage.open(storage.join(output_dir, format.BAD_FILES), "w") as f:
    json.dump(bad, f, indent=1)
  if len(bad) > max_bad:
    listing = "; ".join(f"{b['file']} ({b['reason']})" for b in bad[:5])
    raise PrepareError(
      f"{len(bad)} images could not be read (more than --max_bad={max_bad}): {listing}"
      f"{' ...' if len(bad) > 5 else ''}. Full list: {output_dir}/{format.BAD_FILES}. Fix or remove "
      "them, or raise --max_bad to skip them."
    )
  stats = compute_stats(partials)
  storage.save_npz(storage.join(output_dir, format.STATS), **stats)
  metadata = format.metadata(
    layout=layout,
    source=os.path.abspath(input_dir),
    image_size=image_size,
    jpeg_quality=jpeg_quality,
    classes=classes,
    splits=split_meta,
    num_bad_files=len(bad),
    encoding=encoding,
  )
  tfds_problem = compat.tfds_problem()
  if encoding != "jpeg":
    logging.info("%s: no TFDS metadata written (TFDS reads the JPEG encoding only)", output_dir)
  elif storage.tensorflow_only(output_dir):  # TFDS reads and writes through epath, which has no such scheme
    logging.info("%s: no TFDS metadata written (TFDS cannot open this kind of path)", output_dir)
  elif tfds_problem:  # the metadata is for tfds.builder_from_directory; alexnet_jax reads the set without it
    logging.warning(
      "%s: no TFDS metadata written, so tfds.builder_from_directory cannot open it (alexnet_jax reads it all the "
      "same): tensorflow_datasets cannot be used here: %s",
      output_dir,
      tfds_problem,
    )
  else:
    format.write_tfds_metadata(output_dir, classes, image_size, split_meta)
  with storage.open(meta_path, "w") as f:
    json.dump(metadata, f, indent=1)
  logging.info("prepared %s in %.0f s", output_dir, time.time() - started)
  return metadata


def auto_workers(num_workers: int, num_images: int) -> int:
  """Worker processes for ``num_images`` images: ``num_workers`` when given (> 0), else one per core with at least
  IMAGES_PER_WORKER images each (1: in this process)."""
  if num_workers > 0:
    return num_workers
  return max(1, min(os.cpu_count() or 1, num_images // IMAGES_PER_WORKER))


def convert(input_dir: str, output_dir: str, *, encoding: str, num_workers: int = 0, check_disk: bool = True) -> dict:
  """A prepared JPEG set ``input_dir`` rewritten into ``output_dir`` as ``encoding`` ("pixels"), without the
  original images: the same shards (names, lengths, examples in order), each image exactly the pixels training
  decodes from the JPEG, and the same statistics, classes and bad-file list, so both sets train to the same
  batches. Resumable like ``prepare`` (a shard is kept when its marker names the same source shard, size and
  time). Raises PrepareError for a source that is not JPEG or a target that is."""
  started = time.time()
  meta = format.read_metadata(input_dir)  # shard files joined to input_dir
  if meta["encoding"] != "jpeg" or encoding == "jpeg":
    raise PrepareError(
      f"{input_dir} is a prepared set stored as {meta['encoding']}; converting goes from 'jpeg' to 'pixels' only: "
      f"give --input_dir a JPEG set and --encoding=pixels (or the original images with any --encoding)"
    )
  size, output_dir = meta["image_size"], storage.resolve(output_dir)
  storage.makedirs(output_dir)
  total = sum(m["num_examples"] for m in meta["splits"].values())
  free = storage.free_bytes(output_dir) if check_disk else None
  need = estimate_bytes(total, size, 0, encoding)
  if free is not None and need > free:
    raise PrepareError(
      f"{output_dir} has {free / 2**30:.1f} GiB free; the {encoding} set needs {need / 2**30:.1f} GiB. Free space "
      "or choose another --output_dir."
    )
  meta_path = storage.join(output_dir, format.METADATA)
  if storage.exists(meta_path):
    with storage.open(meta_path) as f:
      old = json.load(f)
    if (old.get("converted_from"), format.encoding_of(old)) != (os.path.abspath(input_dir), encoding):
      raise PrepareError(f"{output_dir} already holds another prepared set: choose another --output_dir")
  jobs = []  # (source shard, target shard, its marker's [name, mtime] of the source, number of examples)
  for m in meta["splits"].values():
    for source, length in zip(m["files"], m["shard_lengths"]):
      where = [storage.basename(source), storage.mtime(source)]
      jobs.append((source, storage.join(output_dir, storage.basename(source)), where, length))
  parsed = {format.parse_shard_filename(storage.basename(j[1])) for j in jobs}
  _remove_stale_shards(output_dir, parsed)

  todo = [j for j in jobs if not _shard_done(j[1], j[2])]
  logging.info("converting %s to %s: %d shards, %d already done", input_dir, encoding, len(jobs), len(jobs) - len(todo))
  workers = min(auto_workers(num_workers, sum(j[3] for j in todo)), max(1, len(todo)))
  if workers == 1:
    for source, path, where, _ in todo:
      convert_shard(source, path, size, where)
  elif todo:
    ctx = multiprocessing.get_context("spawn")  # never fork a process that has TensorFlow or JAX loaded
    with concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
      futures = [pool.submit(convert_shard, s, p, size, w) for s, p, w, _ in todo]
      for future in concurrent.futures.as_completed(futures):
        future.result()
  for name in (format.STATS, format.BAD_FILES):  # the same statistics: both sets subtract the same mean
    if storage.exists(storage.join(input_dir, name)):
      storage.copy_file(storage.join(input_dir, name), storage.join(output_dir, name))
  splits = {split: {**m, "files": [storage.basename(f) for f in m["files"]]} for split, m in meta["splits"].items()}
  metadata = format.metadata(
    layout=meta["layout"],
    source=meta["source"],
    image_size=size,
    jpeg_quality=meta["jpeg_quality"],
    classes=meta["classes"],
    splits=splits,
    num_bad_files=meta["num_bad_files"],
    encoding=encoding,
  )
  metadata["converted_from"] = os.path.abspath(input_dir)
  with storage.open(meta_path, "w") as f:
    json.dump(metadata, f, indent=1)
  logging.info("converted %s in %.0f s", output_dir, time.time() - started)
  return metadata


# -----------------------------------------------------------------------------------------------------------------
# Command line.
# -----------------------------------------------------------------------------------------------------------------
def define_flags() -> None:
  """The command-line flags (defined only when run as a program, so importing this module defines none)."""
  flags.DEFINE_string("input_dir", None, "The official ILSVRC2012 tars, or a tree SRC/train/<class>/<image> (+ val/).")
  flags.DEFINE_string("output_dir", None, "Where the prepared dataset goes (then usable as --config.data.dir).")
  flags.DEFINE_integer("image_size", 256, "Shorter side rescaled to this, then the central square kept (paper: 256).")
  flags.DEFINE_integer("jpeg_quality", 90, "JPEG quality of the stored images.")
  flags.DEFINE_enum(
    "encoding",
    format.DEFAULT_ENCODING,
    list(format.ENCODINGS),
    "How images are stored: jpeg (~25 KB each at 256) or pixels (raw uint8, 192 KB each: nothing to decode when "
    "training; docs/data.md#feeding-an-accelerator). With a prepared JPEG set as --input_dir, pixels converts it.",
  )
  flags.DEFINE_integer("examples_per_shard", 1024, "Images per TFRecord shard.")
  flags.DEFINE_integer("num_workers", 0, "Worker processes (0: one per core, at most one per 2,000 images).")
  flags.DEFINE_integer("max_bad", 0, "How many unreadable images to skip before failing.")
  flags.DEFINE_bool(
    "allow_partial_val",
    False,
    "Official tars: accept a validation tar with only some of the 50,000 images (each labelled by its number).",
  )


def main(argv: list[str]) -> int:
  del argv
  f = flags.FLAGS
  if not f.input_dir or not f.output_dir:
    print("error: give --input_dir=SRC and --output_dir=DST", file=sys.stderr)
    return 2
  try:
    compat.require_tensorflow("prepare")
  except compat.TensorFlowMissing as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  try:
    meta = prepare(
      f.input_dir,
      f.output_dir,
      image_size=f.image_size,
      jpeg_quality=f.jpeg_quality,
      examples_per_shard=f.examples_per_shard,
      num_workers=f.num_workers,
      max_bad=f.max_bad,
      allow_partial_val=f.allow_partial_val,
      encoding=f.encoding,
    )
  except PrepareError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  counts = ", ".join(f"{k}: {v['num_examples']}" for k, v in meta["splits"].items())
  print(
    f"prepared {f.output_dir} ({counts}; {meta['num_bad_files']} bad files skipped). "
    f"Train with --config.data.dir={f.output_dir}"
  )
  if not meta["splits"].get("val", {}).get("num_examples"):
    print(
      f"warning: {f.input_dir} has no validation images (no {f.input_dir}/val/<class>/<image>): training evaluates "
      "on a validation split and will refuse this set until it has one. Add val/ and run the same command again.",
      file=sys.stderr,
    )
  return 0


if __name__ == "__main__":
  define_flags()
  cli.run(main)
