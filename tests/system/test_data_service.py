"""The tf.data service (issue 22): a dispatcher and 2 worker processes on 127.0.0.1 (``python -m
alexnet_jax.data_service``) serve a prepared set; an epoch through them holds every example exactly once, each
augmented exactly as the local pipeline augments it; training runs a few steps through them; a short epoch, an
unreachable dispatcher and sources the service cannot serve are clear errors."""

import json
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest

from alexnet_jax import config_lib
from alexnet_jax.data import embedded, prepare
from alexnet_jax.data.pipeline import AugmentedSource, ServiceEpochShortError
from alexnet_jax.data.prepared import prepared_source
from alexnet_jax.data.service import LocalService, check_reachable
from tests.support import ROOT
from tests.support.tiny import TINY_FLAGS, cli_env

BATCH = 16


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  """80 training images (5 batches of 16: an epoch uses every one) in 10 shards of 8, as JPEG and as pixels."""
  root = tmp_path_factory.mktemp("service")
  embedded.generate(str(root / "raw"), train_per_class=8, val_per_class=2, size=80, seed=3)
  prepare.prepare(str(root / "raw"), str(root / "jpeg"), image_size=76, examples_per_shard=8, num_workers=1)
  prepare.prepare(str(root / "jpeg"), str(root / "pixels"), examples_per_shard=8, num_workers=1, encoding="pixels")
  return root


@pytest.fixture(scope="module")
def service():
  with LocalService(workers=2) as address:
    yield address


def _source(folder, address, **kwargs):
  return prepared_source(str(folder), image_size=67, seed=5, shuffle_buffer=20, service=address, **kwargs)


def test_an_epoch_through_two_workers_holds_every_example_once_augmented_as_locally(data, service):
  served = _source(data / "jpeg", service)
  assert served.steps_per_epoch(BATCH) == 5
  batches = served.train_batches(0, BATCH)
  epochs = [[next(batches) for _ in range(5)] for _ in range(2)]
  local = _source(data / "jpeg", "").train_batches(0, BATCH)
  local_rows = {}
  for epoch in range(2):
    for b in (next(local) for _ in range(5)):
      for i, index in enumerate(b["index"]):
        local_rows[epoch, int(index)] = {k: v[i] for k, v in b.items()}
  for epoch, got in enumerate(epochs):
    indices = np.concatenate([b["index"] for b in got])
    assert sorted(indices.tolist()) == list(range(80)), Counter(indices.tolist()).most_common(3)
    for b in got:
      assert {k: v.shape[0] for k, v in b.items()} == dict.fromkeys(b, BATCH)
      for i, index in enumerate(b["index"]):  # crop, flip, lighting, pixels: drawn from (seed, epoch, index)
        for k, v in local_rows[epoch, int(index)].items():
          message = f"{k} of example {index}, epoch {epoch}"
          if k == "shift":  # the lighting's matrix product runs a batch at a time: other batch mates, other rounding
            np.testing.assert_allclose(b[k][i], v, rtol=1e-6, atol=1e-6, err_msg=message)
          else:
            np.testing.assert_array_equal(b[k][i], v, err_msg=message)


def test_a_mapped_pixel_set_is_served_from_its_records(data, service):
  served = _source(data / "pixels", service)
  assert served.reader.mapped and not served._mapped  # the workers read records (pixel_reader='tfrecord')
  batches = served.train_batches(0, BATCH)
  got = [next(batches) for _ in range(5)]
  assert sorted(np.concatenate([b["index"] for b in got]).tolist()) == list(range(80))
  assert got[0]["image"].shape == (BATCH, 76, 76, 3)  # whole stored images, cropped on the device


def test_an_epoch_the_service_ends_short_is_an_error_not_fewer_batches(data, service):
  served = _source(data / "jpeg", service)
  pieces = served._share("train", 0, 1)
  # Ask for more batches than the share holds: after the 5 there are, an error, never a 6th from the next epoch.
  batches = served._service_batches(pieces, start_epoch=0, skip_steps=0, batch=BATCH, per_epoch=6)
  for _ in range(5):
    next(batches)
  with pytest.raises(ServiceEpochShortError, match="ended epoch 0 of process 0 after 5 of its 6 batches") as e:
    next(batches)
  assert e.value.transient  # exit 75: a rerun resumes from the last checkpoint
  # Resumed mid-epoch: the rest of that epoch's batches, then whole epochs.
  resumed = served._service_batches(pieces, start_epoch=3, skip_steps=2, batch=BATCH, per_epoch=5)
  assert len([next(resumed) for _ in range(3 + 5)]) == 8


def _train(data, service, workdir, steps):
  return subprocess.run(
    [
      sys.executable,
      "-m",
      "alexnet_jax.main",
      "--config=configs/demo.py",
      f"--workdir={workdir}",
      *TINY_FLAGS,
      f"--config.data.dir={data / 'jpeg'}",
      f"--config.data.service={service}",
      f"--config.num_train_steps={steps}",
      "--config.checkpoint_every_steps=7",
      "--config.eval_every_steps=0",
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
    env=cli_env(fast_compile=True),
  )


def test_training_runs_and_resumes_through_the_service(data, service, tmp_path):
  out = _train(data, service, tmp_path / "run", 7)  # an epoch is 5 steps: into the second one
  assert out.returncode == 0, out.stderr[-3000:]
  out = _train(data, service, tmp_path / "run", 9)  # resumed at step 7, mid-epoch
  assert out.returncode == 0, out.stderr[-3000:]
  rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
  steps = [r["step"] for r in rows if "train_loss" in r]
  assert steps == list(range(1, 10)) and all(np.isfinite([r["train_loss"] for r in rows if "train_loss" in r]))


def test_what_the_service_cannot_serve_or_reach_is_refused(data, tmp_path):
  from alexnet_jax.data.tfds_dataset import TfdsReader

  reader = TfdsReader.__new__(TfdsReader)
  reader.tfds_name, reader.data_dir, reader.file_format = "imagenette", str(tmp_path), "array_record"
  with pytest.raises(ValueError, match=r"stored as ArrayRecord.*tf.data service cannot run.*file_format='tfrecord'"):
    AugmentedSource(reader, image_size=67, seed=0, service="127.0.0.1:5050")
  with pytest.raises(ConnectionError, match=r"dispatcher at 127.0.0.1:1 .*not reachable.*--role=dispatcher"):
    check_reachable("127.0.0.1:1", timeout=2)
  config = config_lib.base_config()
  for bad in ("grpc://host:5050", "host", "host:0", "host:99999"):
    config.data.service = bad
    with pytest.raises(ValueError, match="is not HOST:PORT"):
      config_lib.validate(config)
  config.data.service = "10.0.0.2:5050"
  config_lib.validate(config)
  config.data.source = "synthetic"
  with pytest.raises(ValueError, match="synthetic images are made on the trainer"):
    from alexnet_jax.data.sources import resolve_source

    resolve_source(config)


def test_the_command_line_reports_bad_flags_as_one_error_line():
  out = subprocess.run(
    [sys.executable, "-m", "alexnet_jax.data_service", "--role=worker"],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=120,
    env=cli_env(fast_compile=True),
  )
  assert out.returncode == 2 and "error: --role=worker needs --dispatcher=HOST:PORT" in out.stderr
