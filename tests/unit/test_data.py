"""Data preparation and the paper's input pipeline, on data the project generates itself."""

import io
import itertools
import json
import logging
import os

import jax
import numpy as np
import pytest
from PIL import Image

from alexnet_jax import config_lib
from alexnet_jax.data import decode, embedded, format, prepare, sources
from alexnet_jax.data.pipeline import AugmentedSource
from alexnet_jax.data.prepared import prepared_source
from alexnet_jax.data.tfds_dataset import tfds_source

STORED, CROP = 40, 32


@pytest.fixture(scope="module")
def raw_tree(tmp_path_factory):
  """A small shapes tree plus the known bad files of ImageNet, each in a class folder of train/."""
  root = tmp_path_factory.mktemp("raw")
  embedded.generate(str(root), train_per_class=12, val_per_class=3, size=48, seed=1)
  rgb = embedded.draw(0, np.random.default_rng(5), 60)
  folder = root / "train" / embedded.CLASSES[0]
  Image.fromarray(rgb).convert("CMYK").save(folder / "cmyk.JPEG", format="JPEG")
  Image.fromarray(rgb).save(folder / "png_named.JPEG", format="PNG")
  Image.fromarray(rgb).convert("L").save(folder / "grey.JPEG", format="JPEG")
  buf = io.BytesIO()
  Image.fromarray(rgb).save(buf, format="JPEG")
  (folder / "truncated.JPEG").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
  (folder / "empty.JPEG").write_bytes(b"")
  return root


@pytest.fixture(scope="module")
def prepared_dir(raw_tree, tmp_path_factory):
  """The module's prepared set, written by 2 worker processes (the multi-process path; the other tests that prepare
  use one, in-process: a spawned worker costs ~14 s of CPU to import TensorFlow, and the shards are the same)."""
  out = tmp_path_factory.mktemp("prepared")
  prepare.prepare(
    str(raw_tree), str(out), image_size=STORED, jpeg_quality=95, examples_per_shard=16, num_workers=2, max_bad=2
  )
  return out


def source(prepared_dir, **kw):
  args = dict(image_size=CROP, seed=0, shuffle_buffer=64)
  args.update(kw)
  return prepared_source(str(prepared_dir), **args)


# ---- preparation ----------------------------------------------------------------------------------------------------
def test_prepare_round_trip_with_bad_files(raw_tree, prepared_dir):
  meta = json.loads((prepared_dir / format.METADATA).read_text())
  assert meta["splits"]["train"]["num_examples"] == 120 + 3  # CMYK, PNG-named-JPEG and greyscale converted
  assert meta["splits"]["val"]["num_examples"] == 30
  assert sum(meta["splits"]["train"]["shard_lengths"]) == 123 and len(meta["splits"]["train"]["files"]) == 8
  bad = json.loads((prepared_dir / "bad_files.json").read_text())
  assert sorted(os.path.basename(b["file"]) for b in bad) == ["empty.JPEG", "truncated.JPEG"]
  # The stored pixels are the picture the CMYK file was made from, 60x60 scaled to 40x40 (up to the CMYK round trip's
  # and JPEG's loss). By hand: each stored pixel covers 1.5 x 1.5 source pixels, so the mean of each 3 x 3 block of
  # the picture at twice its size (a box filter; prepare's bicubic differs from it only along edges).
  import tensorflow as tf

  examples = {}
  for f in meta["splits"]["train"]["files"]:
    for rec in tf.data.TFRecordDataset(str(prepared_dir / f)).as_numpy_iterator():
      ex = tf.train.Example.FromString(rec)
      examples[ex.features.feature["file_name"].bytes_list.value[0].decode()] = ex
  name = f"{embedded.CLASSES[0]}/cmyk.JPEG"
  stored = tf.io.decode_jpeg(examples[name].features.feature["image"].bytes_list.value[0]).numpy()
  picture = embedded.draw(0, np.random.default_rng(5), 60).astype(float)  # as raw_tree drew it
  expected = picture.repeat(2, 0).repeat(2, 1).reshape(STORED, 3, STORED, 3, 3).mean(axis=(1, 3))
  assert stored.shape == (STORED, STORED, 3)
  assert np.abs(stored - expected).mean() < 8  # measured 4.8; the picture upside down would be 17 off, mirrored 43
  assert examples[name].features.feature["label"].int64_list.value[0] == sorted(embedded.CLASSES).index(
    embedded.CLASSES[0]
  )


RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def three_panels(short: int, landscape: bool) -> np.ndarray:
  """A 3:1 picture in three flat squares, red | green | blue (top to bottom when portrait): the centre is green."""
  panels = [np.full((short, short, 3), c, np.uint8) for c in (RED, GREEN, BLUE)]
  return np.concatenate(panels, axis=1 if landscape else 0)


def test_prepare_keeps_the_central_square_of_any_picture(tmp_path):
  """Sec. 2: the shorter side rescaled to the stored size, then the central square cropped out. Pictures whose
  left, centre and right (top, centre, bottom) differ: every stored pixel is the centre's green, read back from the
  shards prepare wrote; rescaled ones too, away from the resampling's blur at the panel edges."""
  import tensorflow as tf

  size = 32
  pictures = {"land": three_panels(size, True), "port": three_panels(size, False),
              "land_big": three_panels(3 * size, True), "port_big": three_panels(2 * size, False)}  # fmt: skip
  for split in ("train", "val"):
    for name, picture in pictures.items():
      folder = tmp_path / "raw" / split / name  # one class per picture
      folder.mkdir(parents=True)
      Image.fromarray(picture).save(folder / f"{name}.png")
  meta = prepare.prepare(str(tmp_path / "raw"), str(tmp_path / "out"), image_size=size, jpeg_quality=95, num_workers=1)
  stored = {}
  for f in meta["splits"]["val"]["files"]:
    for record in tf.data.TFRecordDataset(str(tmp_path / "out" / f)).as_numpy_iterator():
      ex = tf.train.Example.FromString(record)
      name = ex.features.feature["file_name"].bytes_list.value[0].decode().split("/")[0]
      stored[name] = tf.io.decode_jpeg(ex.features.feature["image"].bytes_list.value[0]).numpy().astype(int)
  assert sorted(stored) == sorted(pictures)
  for name, image in stored.items():
    assert image.shape == (size, size, 3), name
    inner = image if "big" not in name else (image[:, 4:-4] if name.startswith("land") else image[4:-4])
    assert np.abs(inner - GREEN).max() <= 12, (name, inner.reshape(-1, 3).mean(0))


def test_too_many_bad_files_is_a_clear_error(raw_tree, tmp_path):
  with pytest.raises(prepare.PrepareError, match=r"2 images could not be read \(more than --max_bad=1\)"):
    prepare.prepare(str(raw_tree), str(tmp_path), image_size=STORED, examples_per_shard=64, num_workers=1, max_bad=1)
  # Training on what that run left says why it is not a dataset yet, not "run prepare first".
  config = config_lib.base_config()
  config.data.dir = str(tmp_path)
  with pytest.raises(ValueError, match=r"a prepare run that did not finish: .* found 2 it could not read"):
    sources.resolve_source(config)


def _encoded(image: Image.Image, fmt: str, **kw) -> bytes:
  buffer = io.BytesIO()
  image.save(buffer, fmt, **kw)
  return buffer.getvalue()


def test_every_pixel_format_decodes_to_the_picture_it_holds():
  """16-bit greyscale (PIL's own RGB conversion clips it to white), alpha, CMYK, palette, greyscale; EXIF orientation
  only when asked (a user's photo), never for prepare (as TFDS and torchvision read ImageNet)."""
  ramp = np.linspace(0, 1, 64 * 48).reshape(48, 64)
  cases = {
    "16-bit PNG": Image.fromarray(np.round(ramp * 65535).astype(np.uint16)),
    "RGBA PNG": Image.fromarray(
      np.dstack([np.round(ramp * 255).astype(np.uint8)] * 3 + [np.full((48, 64), 9, np.uint8)])
    ),
    "greyscale PNG": Image.fromarray(np.round(ramp * 255).astype(np.uint8)),
    "palette PNG": Image.fromarray(np.round(ramp * 255).astype(np.uint8)).convert("P"),
  }
  for name, image in cases.items():
    rgb = np.asarray(decode.decode_rgb(_encoded(image, "PNG")))
    assert rgb.shape == (48, 64, 3) and rgb.dtype == np.uint8, name
    np.testing.assert_allclose(rgb[..., 1] / 255.0, ramp, atol=1 / 255 + 1e-9, err_msg=name)
  cmyk = np.asarray(decode.decode_rgb(_encoded(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG")))
  assert cmyk[..., 0].min() > 200 and cmyk[..., 1:].max() < 60  # red
  wide = Image.fromarray(np.zeros((20, 40, 3), np.uint8))
  exif = wide.getexif()
  exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to view
  photo = _encoded(wide, "JPEG", exif=exif.tobytes())
  assert decode.decode_rgb(photo).size == (40, 20)
  assert decode.decode_rgb(photo, exif_orientation=True).size == (20, 40)
  with pytest.raises(ValueError, match=r"^UnidentifiedImageError: cannot identify image file$"):
    decode.decode_rgb(b"\xff\xd8\xff not a picture")


def test_image_arrays_are_read_in_their_own_range_or_refused():
  ramp = np.linspace(0, 1, 12).reshape(3, 4)
  expected = np.repeat(np.round(ramp * 255).astype(np.uint8)[..., None], 3, -1)
  for array in (ramp, ramp * 255, np.round(ramp * 65535).astype(np.uint16), np.round(ramp * 255).astype(np.int64)):
    np.testing.assert_array_equal(decode.to_uint8_rgb(array), expected, err_msg=str(array.dtype))
  np.testing.assert_array_equal(decode.to_uint8_rgb(np.dstack([expected, expected[..., :1]])), expected)
  with pytest.raises(ValueError, match="not normalised"):
    decode.to_uint8_rgb((ramp - 0.5) / 0.25)
  with pytest.raises(ValueError, match=r"shape \(3, 4, 5\)"):
    decode.to_uint8_rgb(np.zeros((3, 4, 5), np.uint8))


def test_bad_input_layouts(tmp_path):
  what_to_give = r"give the folder that holds the official ILSVRC2012 tars .*or a tree train/<class>/<image>"
  with pytest.raises(prepare.PrepareError, match=r"does not exist or is not a directory: " + what_to_give):
    prepare.find_images(str(tmp_path / "nope"))
  (tmp_path / "junk").mkdir()
  with pytest.raises(prepare.PrepareError, match="neither of the two layouts"):
    prepare.find_images(str(tmp_path / "junk"))
  (tmp_path / "ILSVRC2012_img_train.tar").write_bytes(b"")
  with pytest.raises(prepare.PrepareError, match=r"ILSVRC2012_img_val\.tar"):
    prepare.find_images(str(tmp_path))


def test_hidden_and_system_folders_and_files_are_never_classes_or_images(tmp_path, caplog):
  """Jupyter's .ipynb_checkpoints, macOS's __MACOSX and ._name AppleDouble files, .DS_Store: skipped in train/ and
  val/ and in class folders, and logged; class folders are not searched further down (also logged)."""
  root = tmp_path / "src"
  for split, n in (("train", 3), ("val", 1)):
    for label, cls in enumerate(["cat", "dog", "fox"]):
      (root / split / cls).mkdir(parents=True)
      for i in range(n):
        Image.fromarray(embedded.draw(label, np.random.default_rng([label, i]), 24)).save(
          root / split / cls / f"{i}.png"
        )
      (root / split / cls / "._0.png").write_bytes(b"\x00\x05\x16\x07")  # AppleDouble: not a PNG
    (root / split / ".ipynb_checkpoints").mkdir()  # empty, as Jupyter leaves it
    (root / split / "__MACOSX" / "cat").mkdir(parents=True)
    (root / split / "__MACOSX" / "cat" / "._0.png").write_bytes(b"\x00\x05\x16\x07")
    (root / split / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
  (root / "train" / "cat" / "more").mkdir()
  (root / "train" / "cat" / "more" / "9.png").write_bytes((root / "train" / "cat" / "0.png").read_bytes())
  (root / "train" / "cat" / "notes.txt").write_text("not an image")
  with caplog.at_level(logging.INFO):
    layout, classes, splits = prepare.find_images(str(root))
  assert layout == "class_folders" and classes == ["cat", "dog", "fox"]
  for split, n in (("train", 3), ("val", 1)):
    assert [(r.label, r.name) for r in splits[split]] == [
      (c, f"{cls}/{i}.png") for c, cls in enumerate(classes) for i in range(n)
    ]
  log = caplog.text
  assert "skipped 12 system files and folders" in log  # 2 per split, and one ._0.png per class folder
  for entry in ("train/.ipynb_checkpoints", "val/.ipynb_checkpoints", "train/__MACOSX", "val/.DS_Store"):
    assert entry in log, entry
  assert "train/cat/more" in log and "not searched further down" in log and "train/cat/notes.txt" in log
  meta = prepare.prepare(str(root), str(tmp_path / "out"), image_size=16, examples_per_shard=8, num_workers=1)
  assert meta["classes"] == ["cat", "dog", "fox"] and meta["num_bad_files"] == 0
  assert (meta["splits"]["train"]["num_examples"], meta["splits"]["val"]["num_examples"]) == (9, 3)


@pytest.mark.parametrize("split", ["train", "val"])
def test_a_folder_without_images_is_never_a_class(tmp_path, caplog, split):
  """QA of issue 20, item 2: empty folders that are not hidden (ext4's lost+found, Synology's @eaDir, Windows'
  $RECYCLE.BIN, a user's empty folder, a folder of text files) never become classes, in train/ or val/: the classes
  stay the three that hold images, with their labels, and a warning names the folders that are not system ones."""
  root = tmp_path / "src"
  for s in ("train", "val"):
    for label, cls in enumerate(["cat", "dog", "fox"]):
      (root / s / cls).mkdir(parents=True)
      Image.fromarray(embedded.draw(label, np.random.default_rng(label), 24)).save(root / s / cls / "0.png")
  for name in ("lost+found", "@eaDir", "$RECYCLE.BIN", "System Volume Information", "aardvark", "notes"):
    (root / split / name).mkdir()
  (root / split / "@eaDir" / "0.png@SynoEAStream").write_bytes(b"\x00")
  (root / split / "notes" / "readme.txt").write_text("no images here")
  with caplog.at_level(logging.INFO):
    _, classes, splits = prepare.find_images(str(root))
  assert classes == ["cat", "dog", "fox"]
  assert [(r.label, r.name) for r in splits[split]] == [(0, "cat/0.png"), (1, "dog/0.png"), (2, "fox/0.png")]
  warned = " ".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)
  assert f"{split}/aardvark/" in warned and f"{split}/notes/" in warned and "holding no images" in warned, warned
  for name in ("lost+found", "@eaDir", "$RECYCLE.BIN", "System Volume Information"):
    assert prepare.is_system_entry(name), name
    assert f"{split}/{name}" in caplog.text and f"{split}/{name}" not in warned, name
  assert not prepare.is_system_entry("cat") and not prepare.is_system_entry("n01440764")


def test_not_enough_disk_space_is_refused(raw_tree, tmp_path, monkeypatch):
  monkeypatch.setattr(prepare, "estimate_bytes", lambda *a: 10**18)
  with pytest.raises(prepare.PrepareError, match="GiB free"):
    prepare.prepare(str(raw_tree), str(tmp_path), image_size=STORED)


def test_rerun_keeps_finished_shards(raw_tree, tmp_path):
  kw = dict(image_size=STORED, examples_per_shard=64, num_workers=1, max_bad=2)
  prepare.prepare(str(raw_tree), str(tmp_path), **kw)
  shards = sorted(p for p in tmp_path.iterdir() if p.name.endswith(tuple(f"{i:05d}" for i in range(10))))
  mtimes = {p.name: p.stat().st_mtime_ns for p in shards}
  os.remove(str(shards[0]) + ".done.json")  # as if interrupted while writing this shard
  prepare.prepare(str(raw_tree), str(tmp_path), **kw)
  changed = [p.name for p in shards if p.stat().st_mtime_ns != mtimes[p.name]]
  assert changed == [shards[0].name]


def test_mean_image_and_eigenpairs_match_numpy(raw_tree, prepared_dir):
  _, _, splits = prepare.find_images(str(raw_tree))
  images = []
  for record in splits["train"]:
    try:
      images.append(decode.resize_and_center_crop(prepare.read_bytes(record), STORED))
    except ValueError:
      pass
  images = np.stack(images).astype(np.float64)
  stats = np.load(prepared_dir / format.STATS)
  assert int(stats["num_images"]) == len(images) == 123
  np.testing.assert_allclose(stats["mean_image"], images.mean(0), rtol=1e-5, atol=1e-3)
  pixels = images.reshape(-1, 3) / 255.0
  cov = np.cov(pixels, rowvar=False, bias=True)
  np.testing.assert_allclose(stats["rgb_covariance"], cov, rtol=1e-6, atol=1e-9)
  vals, vecs = stats["eigenvalues"], stats["eigenvectors"]
  assert vals[0] >= vals[1] >= vals[2] > 0
  np.testing.assert_allclose(vecs @ np.diag(vals) @ vecs.T, cov, atol=1e-9)
  np.testing.assert_allclose(sorted(vals), np.linalg.eigvalsh(cov), rtol=1e-6)


# ---- training input -------------------------------------------------------------------------------------------------
def first_batches(src, n, start_step=0, batch=16):
  it = src.train_batches(start_step, batch)
  out = [next(it) for _ in range(n)]
  it.close()
  return out


def test_crops_cover_the_valid_range_and_flips_half_the_time(prepared_dir):
  batches = first_batches(source(prepared_dir), 7 * 4)  # 4 epochs of 7 batches (123 // 16)
  offsets = np.concatenate([b["offset"] for b in batches])
  flips = np.concatenate([b["flip"] for b in batches])
  assert offsets.min() == 0 and offsets.max() == STORED - CROP  # the whole valid range, and never beyond it
  assert set(np.unique(offsets[:, 0])) == set(range(STORED - CROP + 1))
  assert set(np.unique(offsets[:, 1])) == set(range(STORED - CROP + 1))
  assert 0.4 < flips.mean() < 0.6
  assert batches[0]["image"].dtype == np.uint8 and batches[0]["image"].shape == (16, CROP, CROP, 3)


def test_crop_and_flip_are_the_stored_pixels(prepared_dir):
  import tensorflow as tf

  batch = first_batches(source(prepared_dir, lighting_std=0.0), 1)[0]
  stored = {}
  meta = json.loads((prepared_dir / format.METADATA).read_text())
  for f in meta["splits"]["train"]["files"]:
    for rec in tf.data.TFRecordDataset(str(prepared_dir / f)).as_numpy_iterator():
      ex = tf.train.Example.FromString(rec)
      stored[ex.features.feature["index"].int64_list.value[0]] = tf.io.decode_jpeg(
        ex.features.feature["image"].bytes_list.value[0]
      ).numpy()
  for i in range(16):
    (y, x), full = batch["offset"][i], stored[int(batch["index"][i])]
    window = full[y : y + CROP, x : x + CROP]
    expected = window[:, ::-1] if batch["flip"][i] else window
    np.testing.assert_array_equal(batch["image"][i], expected)


@pytest.mark.parametrize("random_crop,flip,lighting_std", [(True, True, 0.1), (False, False, 0.0), (True, False, 0.3)])
def test_draws_made_a_batch_at_a_time_are_each_examples_own(random_crop, flip, lighting_std):
  """The memory-mapped pixel path draws a batch at a time (``augment.train_draws``), the others one example at a
  time (``train_draw``): every example gets the same crop, flip and lighting either way, whatever batch it is in."""
  import tensorflow as tf

  from alexnet_jax.data import augment

  kw = dict(size=40, crop=33, random_crop=random_crop, flip=flip, lighting_std=lighting_std)
  epochs = np.array([0, 0, 1, 5, 2**40, 3], np.int64)
  indices = np.array([0, 7, 7, 123_456, 3, 2**33], np.int64)
  batch = [d.numpy() for d in augment.train_draws(11, tf.constant(epochs), tf.constant(indices), **kw)]
  reversed_batch = [d.numpy()[::-1] for d in augment.train_draws(11, epochs[::-1], indices[::-1], **kw)]
  for i, (e, n) in enumerate(zip(epochs, indices)):
    alone = [d.numpy() for d in augment.train_draw(11, tf.constant(e), tf.constant(n), **kw)]
    for got, other, want in zip(batch, reversed_batch, alone):
      np.testing.assert_array_equal(got[i], want)
      np.testing.assert_array_equal(other[i], want)
  offsets, flips, alphas = batch
  assert offsets.dtype == np.int32 and offsets.shape == (6, 2) and flips.dtype == bool and alphas.shape == (6, 3)
  assert offsets.min() >= 0 and offsets.max() <= 7
  if not random_crop:
    assert np.all(offsets == 3)
  if not flip:
    assert not flips.any()
  assert np.all(alphas == 0) == (lighting_std == 0.0)


def test_lighting_noise_has_the_covariance_the_formula_implies(prepared_dir):
  src = source(prepared_dir)
  shifts = np.concatenate([b["shift"] for b in first_batches(src, 7 * 6)])  # 672 draws
  p, lam = src.eigenvectors.astype(np.float64), src.eigenvalues.astype(np.float64)
  alpha = (shifts / 255.0) @ p / lam  # invert shift = 255 * P (alpha * lambda)
  assert abs(alpha.std() - 0.1) < 0.01 and np.abs(alpha.mean(0)).max() < 0.015
  expected = 255.0**2 * 0.1**2 * p @ np.diag(lam**2) @ p.T
  np.testing.assert_allclose(np.cov(shifts, rowvar=False), expected, rtol=0.25, atol=0.05 * expected.max())
  off = source(prepared_dir, lighting_std=0.0)
  assert np.all(first_batches(off, 1)[0]["shift"] == 0)


def test_same_seed_epoch_index_same_pixels_new_epoch_new_ones(prepared_dir):
  a = first_batches(source(prepared_dir), 9)
  b = first_batches(source(prepared_dir), 9)
  for x, y in zip(a, b):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
  # Resuming at step 8 gives exactly the 9th batch of an unbroken stream (epoch 1, second batch).
  resumed = first_batches(source(prepared_dir), 1, start_step=8)[0]
  for k in resumed:
    np.testing.assert_array_equal(resumed[k], a[8][k])
  # Epoch 1 sees the same examples in another order, with other crops.
  epoch0 = np.concatenate([x["index"] for x in a[:7]])
  epoch1 = np.concatenate([x["index"] for x in a[7:9]])
  assert not np.array_equal(epoch0[:32], epoch1)
  other_seed = first_batches(source(prepared_dir, seed=1), 1)[0]
  assert not np.array_equal(other_seed["index"], a[0]["index"])


@pytest.fixture(scope="module")
def tree_of_120(tmp_path_factory):
  """120 training and 30 validation images: 120 is a whole number of global batches of 12 for 1, 2 and 3 processes."""
  root = tmp_path_factory.mktemp("tree120")
  embedded.generate(str(root), train_per_class=12, val_per_class=3, size=48, seed=2)
  return root


def stored_indices(folder, split: str) -> list[int]:
  """The oracle: every record's stored index, read straight from the split's shards with TensorFlow's reader."""
  import tensorflow as tf

  meta = json.loads((folder / format.METADATA).read_text())
  out = []
  for f in meta["splits"][split]["files"]:
    for rec in tf.data.TFRecordDataset(str(folder / f)).as_numpy_iterator():
      out.append(tf.train.Example.FromString(rec).features.feature["index"].int64_list.value[0])
  return out


def as_process(monkeypatch, process: int, count: int):
  monkeypatch.setattr(jax, "process_count", lambda: count)
  monkeypatch.setattr(jax, "process_index", lambda: process)


@pytest.mark.parametrize("layout", ["1 shard", "3 unequal shards", "8 unequal shards, 123 images"])
def test_processes_share_examples_not_shards(layout, tree_of_120, prepared_dir, tmp_path, monkeypatch):
  """Issue 20 item 6: P processes on a set of S shards (S < P, S not a multiple of P, shards of unequal sizes) train
  on equal batches, an epoch covers every example once across them but the N mod batch of its last partial global
  batch, a resumed process reads what an unbroken one does, and evaluation counts every example once."""
  if layout == "8 unequal shards, 123 images":
    folder = prepared_dir  # shards of 16, the last of 11
  else:  # the default --examples_per_shard (1,024): one shard; 48: shards of 48, 48, 24
    per_shard = 1024 if layout == "1 shard" else 48
    folder = tmp_path / "prepared"
    prepare.prepare(str(tree_of_120), str(folder), image_size=STORED, examples_per_shard=per_shard, num_workers=1)
  meta = json.loads((folder / format.METADATA).read_text())
  assert len(meta["splits"]["train"]["files"]) == {"1 shard": 1, "3 unequal shards": 3}.get(layout, 8)
  train_all, val_all = stored_indices(folder, "train"), stored_indices(folder, "val")
  n, batch = len(train_all), 12
  for count in (2, 3):
    epochs = [[], []]
    evaluated, eval_batches = [], set()
    for process in range(count):
      as_process(monkeypatch, process, count)
      src = source(folder)
      steps = src.steps_per_epoch(batch)
      assert steps == n // batch  # the same on every process, whatever its shards
      got = first_batches(src, 2 * steps + 1, batch=batch)
      assert all(len(b["index"]) == batch // count for b in got)  # equal batches: jit needs them
      for e in (0, 1):
        epochs[e] += np.concatenate([b["index"] for b in got[e * steps : (e + 1) * steps]]).tolist()
      resumed = first_batches(source(folder), 1, start_step=steps, batch=batch)[0]
      for k in resumed:  # bitwise what the unbroken stream gave at that step (epoch 1's first batch)
        np.testing.assert_array_equal(resumed[k], got[steps][k])
      rows = list(source(folder).eval_batches(batch))
      eval_batches.add(len(rows))
      real = np.concatenate([r["index"][r["mask"] > 0] for r in rows]).tolist()
      assert len(real) in (len(val_all) // count, -(-len(val_all) // count))  # balanced shares
      evaluated += real
    for seen in epochs:
      assert len(seen) == len(set(seen)) == n - n % batch, (count, len(seen), len(set(seen)))
      assert set(seen) <= set(train_all)
    assert epochs[0] != epochs[1]  # a new order each epoch
    assert len(eval_batches) == 1  # every process the same number of eval batches
    assert sorted(evaluated) == sorted(val_all)  # every validation example exactly once


def test_tfds_source_shares_examples_between_processes(tree_of_120, tmp_path, monkeypatch):
  """The TFDS source shares a one-shard TFDS dataset folder between 2 processes the same way (its examples carry no
  index: a hash of their bytes identifies them); the oracle is one process reading the whole epoch."""

  folder = tmp_path / "prepared"  # a prepared set is also a TFDS dataset folder
  prepare.prepare(str(tree_of_120), str(folder), image_size=STORED, num_workers=1)
  make = lambda: tfds_source("", str(folder), image_size=CROP, crop_fraction=CROP / STORED, seed=0, shuffle_buffer=64)
  whole = np.concatenate([b["index"] for b in first_batches(make(), 10, batch=12)]).tolist()
  assert len(set(whole)) == 120
  together, evaluated = [], 0
  for process in (0, 1):
    as_process(monkeypatch, process, 2)
    together += np.concatenate([b["index"] for b in first_batches(make(), 10, batch=12)]).tolist()
    evaluated += sum(int(r["mask"].sum()) for r in make().eval_batches(12))
  assert sorted(together) == sorted(whole)
  assert evaluated == 30


def test_a_batch_larger_than_the_set_says_which_batch_fits(tree_of_120, tmp_path, monkeypatch):
  folder = tmp_path / "prepared"
  prepare.prepare(str(tree_of_120), str(folder), image_size=STORED, num_workers=1)
  as_process(monkeypatch, 0, 3)
  with pytest.raises(
    ValueError,
    match=r"batch_size=126 is larger .* \(120 images; 40 for each of the 3 processes\)"
    r": use --config.batch_size=120 or smaller",
  ):
    source(folder).steps_per_epoch(126)
  as_process(monkeypatch, 0, 121)  # more processes than images: no batch size helps, and the message says so
  with pytest.raises(ValueError, match=r"has 120 images, fewer than the 121 processes: train it with fewer processes"):
    source(folder).steps_per_epoch(121)


@pytest.mark.parametrize("normalize", ["mean_image", "torchvision"])
def test_device_preprocessing_gives_identical_numbers(prepared_dir, normalize):
  on_device = source(prepared_dir, normalize=normalize)
  on_host = source(prepared_dir, device_preprocess=False, normalize=normalize)
  a, b = first_batches(on_device, 2), first_batches(on_host, 2)
  for x, y in zip(a, b):
    assert x["image"].dtype == np.uint8 and y["image"].dtype == np.float32
    got, want = np.asarray(on_device.preprocess(x)), np.asarray(on_host.preprocess(y))
    if normalize == "mean_image":
      np.testing.assert_array_equal(got, want)
    else:  # a division by 255 and by the deviations, in XLA on one side and TensorFlow on the other
      np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
  out = np.asarray(on_device.preprocess(a[0]))
  if normalize == "mean_image":
    assert abs(float(out.mean())) < 20  # the mean image really came off
  else:  # torchvision's: (pixels / 255 - channel mean) / channel deviation, plus the lighting shift in pixels
    pixels = a[0]["image"].astype(np.float32) + a[0]["shift"][:, None, None, :]
    want = (pixels / 255 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)


# ---- evaluation input -----------------------------------------------------------------------------------------------
def test_ten_crops_are_the_corners_centre_and_mirrors(prepared_dir):
  import tensorflow as tf

  src = source(prepared_dir, eval_crops=10)
  batch = next(src.eval_batches(8))
  meta = json.loads((prepared_dir / format.METADATA).read_text())
  rec = next(tf.data.TFRecordDataset(str(prepared_dir / meta["splits"]["val"]["files"][0])).as_numpy_iterator())
  full = tf.io.decode_jpeg(tf.train.Example.FromString(rec).features.feature["image"].bytes_list.value[0]).numpy()
  m, c = STORED - CROP, (STORED - CROP) // 2
  corners = [(0, 0), (0, m), (m, 0), (m, m), (c, c)]
  expected = [full[y : y + CROP, x : x + CROP] for y, x in corners]
  expected += [e[:, ::-1] for e in expected]
  assert batch["image"].shape == (8, 10, CROP, CROP, 3)
  for v in range(10):
    np.testing.assert_array_equal(batch["image"][0, v], expected[v])
  assert batch["flip"][0].tolist() == [0] * 5 + [1] * 5


@pytest.mark.parametrize("batch", [16, 24])
def test_eval_batches_cover_every_example_once(prepared_dir, batch):
  src = source(prepared_dir)
  rows = list(src.eval_batches(batch))
  mask = np.concatenate([r["mask"] for r in rows]).astype(bool)
  index = np.concatenate([r["index"] for r in rows])[mask]
  assert all(len(r["mask"]) == batch for r in rows)
  assert sorted(index.tolist()) == list(range(30))  # 30 validation images, padded up to whole batches


def test_official_tar_layout_is_read_without_extracting(tmp_path, monkeypatch):
  """ILSVRC2012_img_train.tar of per-class tars + ILSVRC2012_img_val.tar, labels from TFDS's files."""
  import tarfile

  synsets = ["n01440764", "n01443537", "n01484850"]
  (tmp_path / "labels.txt").write_text("\n".join(synsets) + "\n")
  val_labels = ["n01443537", "n01440764", "n01484850", "n01443537"]
  (tmp_path / "validation_labels.txt").write_text("\n".join(val_labels) + "\n")
  monkeypatch.setattr(prepare, "_tfds_imagenet_file", lambda name: str(tmp_path / name))

  def jpeg(label, i):
    buf = io.BytesIO()
    Image.fromarray(embedded.draw(label, np.random.default_rng([label, i]), 50)).save(buf, format="JPEG")
    return buf.getvalue()

  def add(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))

  src = tmp_path / "src"
  src.mkdir()
  with tarfile.open(src / "ILSVRC2012_img_train.tar", "w") as outer:
    for label, synset in enumerate(synsets):
      inner_buf = io.BytesIO()
      with tarfile.open(fileobj=inner_buf, mode="w") as inner:
        for i in range(4):
          add(inner, f"{synset}_{i}.JPEG", jpeg(label, i))
        add(inner, f"./._{synset}_0.JPEG", b"\x00\x05\x16\x07")  # AppleDouble members, as macOS's tar adds them
      add(outer, f"{synset}.tar", inner_buf.getvalue())
      add(outer, f"./._{synset}.tar", b"\x00\x05\x16\x07")
  with tarfile.open(src / "ILSVRC2012_img_val.tar", "w") as tar:
    for i, synset in enumerate(val_labels):
      add(tar, f"ILSVRC2012_val_{i + 1:08d}.JPEG", jpeg(synsets.index(synset), 100 + i))
    add(tar, "./._ILSVRC2012_val_00000001.JPEG", b"\x00\x05\x16\x07")
    add(tar, "__MACOSX/ILSVRC2012_val_00000002.JPEG", b"\x00\x05\x16\x07")

  layout, classes, splits = prepare.find_images(str(src))
  assert layout == "ilsvrc2012_tars" and classes == synsets
  assert [r.label for r in splits["val"]] == [1, 0, 2, 1]
  assert sorted({r.label for r in splits["train"]}) == [0, 1, 2] and len(splits["train"]) == 12
  # A record's bytes, read at its offset inside the (nested) tar, are exactly the image that was put there.
  assert prepare.read_bytes(splits["train"][5]) == jpeg(1, 1)
  meta = prepare.prepare(str(src), str(tmp_path / "out"), image_size=STORED, examples_per_shard=8, num_workers=2)
  assert meta["splits"]["train"]["num_examples"] == 12 and meta["splits"]["val"]["num_examples"] == 4
  assert meta["num_bad_files"] == 0  # the AppleDouble members were never read as images


# ---- the TFDS source ------------------------------------------------------------------------------------------------
def test_tfds_source_reads_a_tfds_dataset_folder(prepared_dir):
  """The prepared folder is also a TFDS dataset: read through TFDS's own metadata, with on-the-fly 256 resizing."""

  src = tfds_source("", str(prepared_dir), image_size=227, seed=0, shuffle_buffer=64)
  assert src.num_classes == 10 and src.num_train_examples == 123 and src.num_eval_examples == 30
  assert src.stored_size == 256 and src.mean_image.shape == (256, 256, 3)
  a, b = first_batches(src, 2), first_batches(src, 2)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x["image"], y["image"])  # deterministic in (seed, epoch, example)
  assert a[0]["image"].shape == (16, 227, 227, 3) and a[0]["offset"].max() <= 256 - 227
  rows = list(tfds_source("", str(prepared_dir), image_size=227, seed=0, eval_crops=10).eval_batches(16))
  assert rows[0]["image"].shape == (16, 10, 227, 227, 3)
  assert sum(int(r["mask"].sum()) for r in rows) == 30


def build_tfds_dataset(raw_tree, data_dir, file_format: str) -> str:
  """The shapes tree as a dataset built by TFDS's own builder (variable-size PNGs, greyscale among them), in
  ``file_format``; returns its dataset folder."""
  import tensorflow_datasets as tfds

  classes = sorted(p.name for p in (raw_tree / "train").iterdir())

  class Shapes(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    VERSION = tfds.core.Version("1.0.0")
    code_path = None  # a builder defined in a test has no source folder of checksums (TFDS looks for one)

    def _info(self):
      features = {"image": tfds.features.Image(), "label": tfds.features.ClassLabel(names=classes)}
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples("train"), "validation": self._generate_examples("val")}

    def _generate_examples(self, split):
      for i, path in enumerate(sorted((raw_tree / split).glob("*/*"))):
        try:
          image = np.asarray(Image.open(path).convert("RGB"))
        except OSError:
          continue  # the tree's truncated and empty files
        size = 30 + i % 20  # not square, not the stored size: the source resizes on read
        yield i, {"image": image[:size], "label": path.parent.name}

  builder = Shapes(data_dir=str(data_dir), file_format=file_format)
  builder.download_and_prepare()
  return str(builder.data_dir)


def test_tfds_source_reads_datasets_built_by_tfds_in_either_file_format(raw_tree, tmp_path):
  """A TFDS dataset built as TFRecord (TFDS's default) and as ArrayRecord (file_format='array_record', which tf.data
  cannot read: it used to end in a 'damaged shard' error) give the same batches."""

  got = {}
  for fmt in ("tfrecord", "array_record"):
    folder = build_tfds_dataset(raw_tree, tmp_path / fmt, fmt)
    assert any(fmt in name for name in os.listdir(folder))
    src = tfds_source("", folder, image_size=CROP, seed=0, shuffle_buffer=64)
    assert src.num_classes == 10 and src.num_eval_examples == 30
    evals = list(src.eval_batches(16))
    assert sum(int(b["mask"].sum()) for b in evals) == 30
    got[fmt] = (first_batches(src, 3), evals)
  for a, b in zip(got["tfrecord"][0] + got["tfrecord"][1], got["array_record"][0] + got["array_record"][1]):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])


def test_tfds_source_missing_dataset_is_a_clear_error(tmp_path):

  with pytest.raises(ValueError, match=r"cannot open the TFDS dataset 'imagenet2012'.*Build it with TFDS first"):
    tfds_source("imagenet2012", str(tmp_path), image_size=227, seed=0)


# ---- no silent misconfiguration -------------------------------------------------------------------------------------
def test_source_is_inferred_from_data_dir_and_nothing_is_ignored(prepared_dir, tmp_path):
  import shutil

  def resolve(**kw):
    c = config_lib.base_config()
    for k, v in kw.items():
      config_lib.set_by_path(c, k, v)
    return sources.resolve_source(c)[0]

  assert resolve(**{"data.dir": str(prepared_dir)}) == "prepared"  # data.source='auto', the default
  tfds_only = tmp_path / "tfds_folder"  # a TFDS dataset folder (prepare writes one; drop its own marker)
  shutil.copytree(prepared_dir, tfds_only)
  (tfds_only / format.METADATA).unlink()
  assert resolve(**{"data.dir": str(tfds_only)}) == "tfds"
  assert resolve(**{"data.source": "synthetic"}) == "synthetic"
  with pytest.raises(ValueError, match=r"data\.source='synthetic' never reads it"):
    resolve(**{"data.source": "synthetic", "data.dir": str(prepared_dir)})
  with pytest.raises(ValueError, match=r"give --config\.data\.dir=DST .* or --config\.data\.source=synthetic"):
    resolve()
  with pytest.raises(ValueError, match="is neither a prepared dataset nor a TFDS dataset folder"):
    resolve(**{"data.dir": str(tmp_path)})
  with pytest.raises(ValueError, match="does not exist"):
    resolve(**{"data.dir": str(tmp_path / "typo")})
  from alexnet_jax import train

  config = config_lib.base_config()
  config.data.dir = str(tmp_path / "typo")
  with pytest.raises(ValueError, match="does not exist"):  # before the workdir is made: no empty folder left behind
    train.train_and_evaluate(config, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()


def test_num_classes_must_match_the_data(prepared_dir):
  with pytest.raises(ValueError, match=r"num_classes=1000 but .* has 10 classes: set --config\.model\.num_classes=10"):
    source(prepared_dir, num_classes=1000)


def test_crops_cover_crop_fraction_of_any_stored_size(prepared_dir, caplog):
  """Stored at 40, crops of 16 with crop_fraction 0.8: the images are resized to 20 on read, so a crop covers 80% of
  the scene (cropping the stored 40 directly would cover 40%); the mean image is resized alike."""
  import logging

  import tensorflow as tf

  with caplog.at_level(logging.INFO):
    src = source(prepared_dir, image_size=16, crop_fraction=0.8, lighting_std=0.0)
  assert (src.stored_size, src.view_size) == (STORED, 20) and src.mean_image.shape == (20, 20, 3)
  assert "resized to 20x20 on read" in caplog.text
  batch = first_batches(src, 1)[0]
  assert batch["offset"].max() <= 20 - 16 and batch["image"].shape == (16, 16, 16, 3)
  meta = json.loads((prepared_dir / format.METADATA).read_text())
  stored = {}
  for f in meta["splits"]["train"]["files"]:
    for rec in tf.data.TFRecordDataset(str(prepared_dir / f)).as_numpy_iterator():
      ex = tf.train.Example.FromString(rec)
      stored[ex.features.feature["index"].int64_list.value[0]] = ex.features.feature["image"].bytes_list.value[0]
  for i in range(4):
    view = decode.resize_square(
      tf.io.decode_jpeg(stored[int(batch["index"][i])], channels=3), src.view_size, src.resize_method
    ).numpy()
    (y, x) = batch["offset"][i]
    window = view[y : y + 16, x : x + 16]
    np.testing.assert_array_equal(batch["image"][i], window[:, ::-1] if batch["flip"][i] else window)
  ten = next(source(prepared_dir, image_size=16, crop_fraction=0.8, eval_crops=10).eval_batches(8))
  assert ten["image"].shape == (8, 10, 16, 16, 3) and ten["offset"].max() == 4
  # A recipe that needs more detail than was stored is warned about (and still trains).
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    big = source(prepared_dir, image_size=64, crop_fraction=0.8)
  assert big.view_size == 80 and "upsampled 2.0x" in caplog.text and "--image_size=80" in caplog.text
  with pytest.raises(ValueError, match="larger than the stored images"):
    source(prepared_dir, image_size=64)  # crop_fraction None: crop the stored 40x40 as they are


# ---- the batch shapes aot.py compiles for ---------------------------------------------------------------------------
@pytest.mark.parametrize(
  "kw", [{}, {"device_preprocess": False}, {"eval_crops": 10}, {"crop_fraction": 0.9, "eval_crops": 10}]
)
def test_batch_spec_is_what_the_pipeline_yields(prepared_dir, kw):
  """``batch_spec`` (what alexnet_jax.aot compiles for, with no data) against real batches, train and eval, and a
  data-less source's preprocessing against the real one's output shape."""
  import jax

  real = source(prepared_dir, **kw)
  fake = AugmentedSource.for_compile(image_size=CROP, stored_size=STORED, **kw)
  for train, batch in ((True, first_batches(real, 1)[0]), (False, next(iter(real.eval_batches(16))))):
    spec = fake.batch_spec(16, train=train)
    got = {k: (v.shape, jax.dtypes.canonicalize_dtype(v.dtype)) for k, v in batch.items()}
    assert got == {k: (v.shape, v.dtype) for k, v in spec.items()}, (train, kw)
    assert jax.eval_shape(fake.preprocess, spec).shape == real.preprocess(batch).shape


def test_synthetic_batch_spec_is_what_the_source_yields():
  import jax

  from alexnet_jax.data.synthetic import SyntheticSource

  src = SyntheticSource(
    num_classes=5, image_size=35, num_train_examples=40, num_eval_examples=10, learnable=True, seed=0
  )
  for train, batch in ((True, next(src.train_batches(0, 8))), (False, next(src.eval_batches(8)))):
    got = {k: (v.shape, jax.dtypes.canonicalize_dtype(v.dtype)) for k, v in batch.items()}
    assert got == {k: (v.shape, v.dtype) for k, v in src.batch_spec(8, train=train).items()}
    network_input = jax.eval_shape(src.preprocess, src.batch_spec(8, train=train))
    assert (network_input.shape, network_input.dtype) == ((8, 35, 35, 3), np.float32)


# ---- the synthetic source: images made on the devices ---------------------------------------------------------------
def synthetic(**kw):
  from alexnet_jax.data.synthetic import SyntheticSource

  args = dict(num_classes=5, image_size=67, num_train_examples=1000, num_eval_examples=30, learnable=True, seed=0)
  return SyntheticSource(**{**args, **kw})


def test_the_synthetic_hosts_batches_hold_no_image():
  """The host yields a few int32s an example (index, split, label; eval adds the mask), never pixels: the images are
  made inside the step (at full size, 512 images would be 79 MB a batch for the host to make and copy)."""
  src = synthetic(image_size=227, num_classes=1000)
  for batch, keys in ((next(src.train_batches(3, 512)), set()), (next(src.eval_batches(512)), {"mask"})):
    assert set(batch) == {"index", "split", "label"} | keys
    assert all(v.shape == (512,) and v.dtype.itemsize == 4 for v in batch.values())
  assert set(next(src.train_batches(0, 8))["split"]) == {0} and set(next(src.eval_batches(8))["split"]) == {1}


def test_synthetic_images_depend_on_seed_split_and_index_alone():
  """An example's pixels are the same whatever batch holds it, at whatever row, on however many devices or processes,
  on the host (``images``) or in the jitted step; and differ between train and eval, seeds and indices. Everything on
  the CPU here, 8 devices."""
  from alexnet_jax import parallel

  src = synthetic()
  first = next(src.train_batches(0, 8))  # examples 0..7
  second = next(src.train_batches(1, 4))  # examples 4..7, rows 0..3
  assert first["index"][4:].tolist() == second["index"].tolist()
  made_one = np.asarray(jax.jit(src.device_images)(second))  # on one device
  for model_axis in (1, 2):  # 8 devices: the batch split 8 ways, or 4 ways and each half on 2 devices
    mesh = parallel.create_mesh(model_axis, jax.devices()[:8])
    made_sharded = np.asarray(jax.jit(src.device_images)(parallel.to_global(first, parallel.batch_sharding(mesh))))
    np.testing.assert_array_equal(made_sharded[4:], made_one)
  np.testing.assert_array_equal(src.images(first), made_sharded)  # the host's copy: the same bits
  # The step's input is those pixels normalised (preprocess = device_images, then mean_image's - 127.5).
  np.testing.assert_array_equal(np.asarray(jax.jit(src.preprocess)(second)), made_one.astype(np.float32) - 127.5)
  # Two processes: each makes its half of the global batch (process p, rows p * 4 ...), together step 0's batch.
  halves = []
  for process in (0, 1):
    with pytest.MonkeyPatch.context() as m:
      as_process(m, process, 2)
      halves.append(next(src.train_batches(0, 8)))
  for k in first:
    np.testing.assert_array_equal(np.concatenate([h[k] for h in halves]), first[k])
  # Resuming at step 1 yields step 1's batch.
  resumed, unbroken = next(src.train_batches(1, 8)), list(itertools.islice(src.train_batches(0, 8), 2))[1]
  assert all(np.array_equal(resumed[k], unbroken[k]) for k in resumed)
  # Different examples, splits and seeds: different pixels (each differs from its neighbour nearly everywhere).
  evaluation = src.images(next(src.eval_batches(8)))
  other_seed = synthetic(seed=1).images(first)
  for a, b in ((made_sharded[:-1], made_sharded[1:]), (made_sharded, evaluation), (made_sharded, other_seed)):
    assert (a != b).mean() > 0.9


def cell_ranges(images: np.ndarray, reps: int) -> tuple[np.ndarray, np.ndarray]:
  """(min, max) over the images and over each 8x8 cell's pixels, per cell and channel: [8, 8, 3] each."""
  n, size = len(images), images.shape[1]
  padded = np.full((n, 8 * reps, 8 * reps, 3), -1, np.int32)
  padded[:, :size, :size] = images
  cells = padded.reshape(n, 8, reps, 8, reps, 3).transpose(1, 3, 0, 2, 4, 5).reshape(8, 8, -1, 3)
  return np.where(cells < 0, 256, cells).min(2), cells.max(2)


def test_synthetic_learnable_images_carry_their_class_pattern():
  """learnable: pixel = (3 p + noise) // 4 with p the class's colour in that cell (8x8 cells of ceil(67 / 8) = 9
  pixels, the last cut to 4), so each cell of every image of a class, train or eval, spans at most 65 values from
  (3p) // 4, while two classes' cells together span more: the pattern follows the label. Without learnable, pure noise:
  every cell spans (nearly) all 256 values."""
  src = synthetic()
  batches = [next(src.train_batches(0, 64)), next(src.eval_batches(30))]
  images = np.concatenate([src.images(b) for b in batches]).astype(np.int32)
  labels = np.concatenate([b["label"] for b in batches])
  assert set(labels.tolist()) == set(range(5))  # every class drawn
  centres = []
  for c in range(5):
    low, high = cell_ranges(images[labels == c], 9)
    assert (high - low).max() <= 64, c
    assert (high - low).mean() > 50  # the noise is there
    centres.append((low + high) / 2)
  for a in range(5):
    for b in range(a):
      assert np.abs(centres[a] - centres[b]).mean() > 20, (a, b)  # each class its own pattern
  noise = synthetic(learnable=False)
  low, high = cell_ranges(noise.images(next(noise.train_batches(0, 16))).astype(np.int32), 9)
  assert (high - low).min() > 200


# ---- damaged shards -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("damage", ["flip", "truncate"])
@pytest.mark.parametrize("split", ["train", "val"])
def test_a_damaged_shard_is_named_and_prepare_rewrites_it(raw_tree, prepared_dir, tmp_path, damage, split):
  import shutil

  data = tmp_path / "prepared"
  shutil.copytree(prepared_dir, data)
  meta = json.loads((data / format.METADATA).read_text())
  victim = data / meta["splits"][split]["files"][-1]
  blob = bytearray(victim.read_bytes())
  if damage == "flip":
    blob[len(blob) // 2] ^= 0x40  # one bit inside an image's bytes
  else:
    blob = blob[: len(blob) - 100]
  victim.write_bytes(bytes(blob))
  src = source(data)
  with pytest.raises(ValueError) as e:
    if split == "train":
      first_batches(src, 7 * 2)
    else:
      list(src.eval_batches(16))
  message = str(e.value)
  assert f"damaged shard {victim} (" in message and "record at" in message
  assert f"run `python -m alexnet_jax.prepare --input_dir={raw_tree} --output_dir={data}` again" in message
  # What the message says to do works: the same prepare again checks every shard, rewrites the damaged one (and only
  # it: the others keep their bytes) and reading succeeds.
  others = {p: p.read_bytes() for p in data.glob("*.tfrecord-*") if p != victim and not p.name.endswith(".json")}
  prepare.prepare(str(raw_tree), str(data), image_size=STORED, jpeg_quality=95, examples_per_shard=16, max_bad=2)
  import tensorflow as tf

  assert sum(1 for _ in tf.data.TFRecordDataset(str(victim))) == meta["splits"][split]["shard_lengths"][-1]
  assert {p: p.read_bytes() for p in others} == others
  batches = first_batches(source(data), 7 * 2) if split == "train" else list(source(data).eval_batches(16))
  assert batches


def test_a_broken_tensorflow_datasets_costs_only_its_own_metadata(raw_tree, tmp_path, monkeypatch, caplog):
  """Colab's versions as listed (protobuf 5.29.6) beside pip's newest tensorflow-metadata: tfds fails at first use.
  prepare still writes a set that trains (without TFDS's dataset_info.json), and says so once."""
  from alexnet_jax.native import compat

  problem = "VersionError: Detected incompatible Protobuf Gencode/Runtime versions"
  monkeypatch.setattr(compat, "tfds_problem", lambda: problem)
  with caplog.at_level(logging.WARNING):
    prepare.prepare(str(raw_tree), str(tmp_path), image_size=STORED, jpeg_quality=95, examples_per_shard=64, max_bad=2)
  warned = [r.getMessage() for r in caplog.records if "no TFDS metadata written" in r.getMessage()]
  assert len(warned) == 1 and problem in warned[0]
  assert not (tmp_path / "dataset_info.json").exists() and (tmp_path / format.METADATA).exists()
  assert first_batches(source(tmp_path), 7 * 2)
  with pytest.raises(ValueError, match=r"data\.source='tfds' needs tensorflow_datasets, which cannot be used here"):
    tfds_source("", str(tmp_path), image_size=CROP, seed=0)


def test_a_missing_stats_file_says_how_to_get_it_back(raw_tree, prepared_dir, tmp_path):
  import shutil

  data = tmp_path / "prepared"
  shutil.copytree(prepared_dir, data)
  os.remove(data / format.STATS)
  with pytest.raises(ValueError, match=r"stats.npz is missing .* run `python -m alexnet_jax.prepare"):
    source(data)
  prepare.prepare(str(raw_tree), str(data), image_size=STORED, jpeg_quality=95, examples_per_shard=16, max_bad=2)
  np.testing.assert_allclose(source(data).mean_image, source(prepared_dir).mean_image)


def test_a_rerun_reads_the_input_again_and_rebuilds_exactly_the_shards_that_changed(raw_tree, tmp_path):
  """After removing the bad files (as prepare's message says) and adding new images, a rerun succeeds, counts every
  current image and no file that is gone; a rerun with nothing changed rewrites nothing."""
  import shutil

  raw, dst = tmp_path / "raw", tmp_path / "prepared"
  shutil.copytree(raw_tree, raw)
  args = dict(image_size=STORED, jpeg_quality=95, examples_per_shard=16, num_workers=1)
  with pytest.raises(prepare.PrepareError, match="2 images could not be read"):
    prepare.prepare(str(raw), str(dst), **args)
  folder = raw / "train" / embedded.CLASSES[0]
  os.remove(folder / "truncated.JPEG")
  os.remove(folder / "empty.JPEG")
  Image.fromarray(embedded.draw(0, np.random.default_rng(9), 48)).save(folder / "new_one.jpg", quality=95)
  meta = prepare.prepare(str(raw), str(dst), **args)
  assert meta["splits"]["train"]["num_examples"] == 120 + 3 + 1 and meta["num_bad_files"] == 0
  assert json.loads((dst / "bad_files.json").read_text()) == []
  shards = sorted(dst.glob("*.tfrecord-*"))
  before = {p.name: p.stat().st_mtime_ns for p in shards}
  prepare.prepare(str(raw), str(dst), **args)
  assert {p.name: p.stat().st_mtime_ns for p in sorted(dst.glob("*.tfrecord-*"))} == before
  # One changed image rebuilds the shard that holds it, and no other.
  victim = raw / "val" / embedded.CLASSES[1]
  image = sorted(victim.iterdir())[0]
  Image.fromarray(embedded.draw(1, np.random.default_rng(11), 48)).save(image, format="JPEG", quality=90)
  prepare.prepare(str(raw), str(dst), **args)
  after = {p.name: p.stat().st_mtime_ns for p in sorted(dst.glob("*.tfrecord-*"))}
  assert [n for n in after if after[n] != before[n]] != [] and all("-val." in n for n in after if after[n] != before[n])
  assert sum(after[n] != before[n] for n in after if n.endswith(tuple("0123456789"))) == 1


@pytest.mark.parametrize("index", [0, 7, 2**31 + 5, 2**40 + 3])
def test_a_pixel_record_round_trips_with_its_index_and_label(index):
  import tensorflow as tf

  rng = np.random.default_rng(index % 1000)
  image = rng.integers(0, 256, (5, 5, 3), dtype=np.uint8)
  record = format.encode_pixel_record(image, 917, index)
  assert len(record) == 5 * 5 * 3 + format.PIXEL_TRAILER_BYTES and record[:75] == image.tobytes()
  encoded, label, got = format.parse_record(tf.constant(record), "pixels", 5)
  assert (int(label), int(got)) == (917, index)
  np.testing.assert_array_equal(decode.raw_pixels(encoded, 5).numpy(), image)
  batch = decode.raw_pixels(tf.constant([record, format.encode_pixel_record(image[::-1], 1, 2)]), 5).numpy()
  np.testing.assert_array_equal(batch, np.stack([image, image[::-1]]))
  with pytest.raises(ValueError, match=r"uint8 \[S, S, 3\] square"):
    format.encode_pixel_record(image[:4], 1, 2)


def test_crop_and_flip_on_the_device_cuts_what_numpy_cuts():
  from alexnet_jax.data import augment

  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (4, 9, 9, 3), dtype=np.uint8)
  offsets = np.array([[0, 0], [4, 4], [2, 3], [4, 0]], np.int32)
  flips = np.array([0, 1, 1, 0], np.int32)
  got = np.asarray(augment.crop_and_flip(images, offsets, flips, 5))
  for i, ((y, x), f) in enumerate(zip(offsets, flips)):
    want = images[i, y : y + 5, x : x + 5]
    np.testing.assert_array_equal(got[i], want[:, ::-1] if f else want)
