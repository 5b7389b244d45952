"""Pixel sets (`prepare --encoding=pixels`, issue 22): made from a class-folder tree and converted from a JPEG set on
the command line, read with nothing to decode, and cropped and flipped on the device; the converted set trains to
bitwise the same batches and losses as the JPEG set it came from."""

import itertools
import json
import subprocess
import sys

import jax
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from alexnet_jax.data import embedded, format
from alexnet_jax.data.prepared import prepared_source
from tests.support import ROOT
from tests.support.tiny import cli_env

STORED, CROP = 76, 67  # configs/demo.py's sizes


def _prepare(*args, timeout=600):
  out = subprocess.run(
    [sys.executable, "-m", "alexnet_jax.prepare", "--num_workers=1", *args],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=timeout,
    env=cli_env(fast_compile=True),
  )
  return out


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
  root = tmp_path_factory.mktemp("pixels")
  raw = root / "raw"
  embedded.generate(str(raw), train_per_class=6, val_per_class=2, size=90, seed=3)
  made = {"raw": raw}
  for name, args in (
    ("jpeg", [f"--input_dir={raw}", "--image_size=76"]),
    ("converted", [f"--input_dir={root / 'jpeg'}", "--encoding=pixels"]),
    ("tree", [f"--input_dir={raw}", "--image_size=76", "--encoding=pixels"]),
  ):
    out = _prepare(*args, f"--output_dir={root / name}")
    assert out.returncode == 0, out.stderr[-3000:]
    made[name] = root / name
  return made


def _records(folder, split):
  meta = json.loads((folder / format.METADATA).read_text())
  for name in meta["splits"][split]["files"]:
    yield from tf.data.TFRecordDataset(str(folder / name)).as_numpy_iterator()


def _pixel_examples(folder, split):
  """{index: (label, uint8 image)} read straight from the bytes, as the format's docstring lays them out."""
  out = {}
  for rec in _records(folder, split):
    pixels, trailer = rec[: STORED * STORED * 3], rec[STORED * STORED * 3 :]
    index = int.from_bytes(trailer[:8], "little", signed=True)
    label = int.from_bytes(trailer[8:12], "little", signed=True)
    assert trailer[12:] == b"\0\0\0\0" and len(trailer) == format.PIXEL_TRAILER_BYTES
    out[index] = (label, np.frombuffer(pixels, np.uint8).reshape(STORED, STORED, 3))
  return out


def test_a_converted_set_holds_exactly_the_pixels_the_jpeg_set_decodes_to(sets):
  for split in ("train", "val"):
    jpeg = {}
    for rec in _records(sets["jpeg"], split):
      f = tf.train.Example.FromString(rec).features.feature
      index, label = f["index"].int64_list.value[0], f["label"].int64_list.value[0]
      jpeg[index] = (label, tf.io.decode_jpeg(f["image"].bytes_list.value[0], channels=3).numpy())
    pixels = _pixel_examples(sets["converted"], split)
    assert sorted(pixels) == sorted(jpeg) and len(pixels) == (60 if split == "train" else 20)
    for index, (label, image) in jpeg.items():
      assert pixels[index][0] == label
      np.testing.assert_array_equal(pixels[index][1], image)
  a, b = (json.loads((sets[k] / format.METADATA).read_text()) for k in ("jpeg", "converted"))
  assert (a["encoding"], b["encoding"]) == ("jpeg", "pixels")
  assert b["splits"] == a["splits"] and b["classes"] == a["classes"] and b["converted_from"] == str(sets["jpeg"])
  sa, sb = (np.load(sets[k] / format.STATS) for k in ("jpeg", "converted"))
  np.testing.assert_array_equal(sa["mean_image"], sb["mean_image"])
  assert not (sets["converted"] / "dataset_info.json").exists()  # TFDS reads JPEG sets only: none is claimed


def test_a_set_from_the_tree_holds_the_resized_originals_and_differs_from_jpeg_by_its_loss(sets):
  pixels = _pixel_examples(sets["tree"], "train")
  classes = sorted(p.name for p in (sets["raw"] / "train").iterdir())
  originals = {}
  for label, cls in enumerate(classes):  # the paper's view made here with PIL: shorter side 76, centre square
    for path in sorted((sets["raw"] / "train" / cls).iterdir()):
      im = Image.open(path).convert("RGB").resize((STORED, STORED), Image.Resampling.BICUBIC, reducing_gap=3.0)
      originals.setdefault(label, []).append(np.asarray(im))
  for label, image in pixels.values():
    assert any(np.array_equal(image, o) for o in originals[label])
  converted = _pixel_examples(sets["converted"], "train")
  diff = np.stack([np.abs(pixels[i][1].astype(int) - converted[i][1].astype(int)) for i in pixels])
  assert 0 < diff.mean() < 6 and diff.max() <= 64  # docs/data.md: mean ~3 levels, max ~40 on these sharp shapes


def _batches(folder, count, reader="mmap", **kwargs):
  source = prepared_source(str(folder), reader, image_size=CROP, seed=5, shuffle_buffer=50, **kwargs)
  preprocess = jax.jit(source.preprocess)
  train = [(b, np.asarray(preprocess(b))) for b in itertools.islice(source.train_batches(7, 16), count)]
  evaluation = [np.asarray(preprocess(b)) for b in source.eval_batches(16)]
  return source, train, evaluation


@pytest.mark.parametrize("eval_crops, reader", [(1, "mmap"), (10, "mmap"), (1, "tfrecord")])
def test_device_crops_of_a_converted_set_equal_the_host_crops_of_its_jpeg_set(sets, eval_crops, reader):
  host, host_train, host_eval = _batches(sets["jpeg"], 5, eval_crops=eval_crops)
  device, device_train, device_eval = _batches(sets["converted"], 5, reader, eval_crops=eval_crops)
  assert not host.device_crop and device.device_crop and device._mapped == (reader == "mmap")
  for (hb, hx), (db, dx) in zip(host_train, device_train):
    assert hb["image"].shape[1:] == (CROP, CROP, 3) and db["image"].shape[1:] == (STORED, STORED, 3)
    np.testing.assert_array_equal(hb["index"], db["index"])
    np.testing.assert_array_equal(hx, dx)  # bitwise: a crop and a flip are copies, the rest the same arithmetic
  assert any(b["flip"].any() for b, _ in device_train) and any((b["offset"] > 0).any() for b, _ in device_train)
  for hx, dx in zip(host_eval, device_eval, strict=True):
    np.testing.assert_array_equal(hx, dx)
  assert device.batch_spec(16, train=True)["image"].shape == (16, STORED, STORED, 3)


def test_host_finished_pixel_batches_equal_device_finished_ones(sets):
  _, on_host, _ = _batches(sets["converted"], 3, device_preprocess=False)
  _, on_device, _ = _batches(sets["converted"], 3)
  for (_, h), (_, d) in zip(on_host, on_device):
    np.testing.assert_allclose(h, d, atol=1e-4)


def _train(data_dir, workdir):
  out = subprocess.run(
    [
      sys.executable,
      "-m",
      "alexnet_jax.main",
      "--config=configs/demo.py",
      f"--workdir={workdir}",
      f"--config.data.dir={data_dir}",
      "--config.batch_size=16",
      "--config.eval_batch_size=16",
      "--config.num_train_steps=6",
      "--config.log_every_steps=1",
      "--config.eval_every_steps=0",
      "--config.data.shuffle_buffer=50",
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=600,
    env=cli_env(fast_compile=True),
  )
  assert out.returncode == 0, out.stderr[-3000:]
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  return [r["train_loss"] for r in rows if "train_loss" in r], [r for r in rows if "eval_loss" in r][-1]


def test_the_converted_set_trains_to_bitwise_the_losses_of_the_jpeg_set(sets, tmp_path):
  jpeg_losses, jpeg_eval = _train(sets["jpeg"], tmp_path / "jpeg_run")
  pixel_losses, pixel_eval = _train(sets["converted"], tmp_path / "pixel_run")
  assert len(jpeg_losses) == 6 and all(np.isfinite(jpeg_losses))
  assert pixel_losses == jpeg_losses
  assert pixel_eval["eval_loss"] == jpeg_eval["eval_loss"]


def test_what_cannot_be_converted_or_mixed_is_refused(sets, tmp_path):
  out = _prepare(f"--input_dir={sets['converted']}", f"--output_dir={tmp_path / 'again'}", "--encoding=pixels")
  assert out.returncode == 1 and "converting goes from 'jpeg' to 'pixels' only" in out.stderr
  out = _prepare(f"--input_dir={sets['raw']}", f"--output_dir={sets['jpeg']}", "--image_size=76", "--encoding=pixels")
  assert out.returncode == 1 and "encoding=jpeg; use those flags, or another --output_dir" in out.stderr
  meta = json.loads((sets["jpeg"] / format.METADATA).read_text())
  meta["encoding"] = "webp"
  (tmp_path / "future").mkdir()
  (tmp_path / "future" / format.METADATA).write_text(json.dumps(meta))
  with pytest.raises(ValueError, match="stored as 'webp'; this version of alexnet_jax reads jpeg, pixels"):
    format.read_metadata(str(tmp_path / "future"))


def test_a_mapped_shard_of_the_wrong_size_is_named_with_what_to_do(sets, tmp_path):
  import shutil

  copy = tmp_path / "copy"
  shutil.copytree(sets["converted"], copy)
  meta = json.loads((copy / format.METADATA).read_text())
  shard = copy / meta["splits"]["train"]["files"][0]
  shard.write_bytes(shard.read_bytes()[:-100])  # cut short, as an interrupted copy leaves it
  source = prepared_source(str(copy), image_size=CROP, seed=5, shuffle_buffer=50)
  with pytest.raises(ValueError, match=rf"{shard.name} holds \d+ bytes, not \d+ records .*prepare"):
    next(source.train_batches(0, 16))
