"""Workdirs and prepared sets in cloud storage: gs:// against a GCS emulator on localhost, and TensorFlow's ram://.

The gs:// runs are real subprocesses whose epath (metrics.jsonl, run.json, the lease, eval JSON) talks to the
emulator through fsspec/gcsfs and whose orbax checkpoints talk to it through tensorstore. TensorFlow's own GCS client
(TensorBoard event files, tf.data shards) has no endpoint setting, so those are exercised here on ram://, which goes
through the same TensorFlow file-system layer.
"""

import json
import os
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from alexnet_jax import storage, train
from alexnet_jax.data import embedded, format, prepare
from tests.support import ROOT
from tests.support.tiny import TINY_FLAGS, cli_env, tiny_config

BUCKET = "alexnet-test"


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
  """A GCS emulator on a free localhost port; yields the environment that points every client at it."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  cmd = [
    sys.executable,
    "-m",
    "tests.support.gcs_emulator",
    "start",
    "--host=127.0.0.1",
    f"--port={port}",
    "--in-memory",
  ]
  log = tmp_path_factory.mktemp("gcs") / "emulator.log"  # a file, not a pipe: a full pipe would stall the server
  cmd.append(f"--default-bucket={BUCKET}")
  server = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=ROOT)
  deadline = time.time() + 60
  while True:
    try:
      socket.create_connection(("127.0.0.1", port), timeout=1).close()
      break
    except OSError:
      if time.time() > deadline or server.poll() is not None:
        server.kill()
        pytest.fail(f"the GCS emulator did not start: {log.read_text()[-2000:]}")
      time.sleep(0.2)
  url = f"http://127.0.0.1:{port}"
  env = {
    "STORAGE_EMULATOR_HOST": url,  # gcsfs (epath's gs:// backend when TensorFlow is not used for it)
    "TENSORSTORE_GCS_HTTP_URL": url,  # orbax's array data
    "EPATH_USE_TF": "false",  # TensorFlow's GCS client cannot be pointed at an emulator
    "GOOGLE_CLOUD_PROJECT": "test",
    "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",  # no zonal buckets to look for (it asks for credentials)
  }
  yield env
  server.kill()
  server.wait()


def run_python(code: str, env: dict, devices=None) -> subprocess.CompletedProcess:
  return subprocess.run(
    [sys.executable, "-c", textwrap.dedent(code)],
    cwd=ROOT,
    env={**cli_env(devices, fast_compile=True), **env},
    capture_output=True,
    text=True,
    timeout=600,
  )


STORAGE_ROUND_TRIP = """
  import json, time
  from alexnet_jax import storage
  root = ROOT
  d = storage.join(root, "a", "b")
  storage.makedirs(d)
  with storage.open(storage.join(d, "x.json"), "w") as f:
    json.dump({"v": 1}, f)
  with storage.open(storage.join(d, "y.bin"), "wb") as f:
    f.write(bytes(range(256)))
  assert storage.exists(storage.join(d, "x.json")) and storage.isdir(d) and not storage.isdir(storage.join(d, "x.json"))
  assert storage.listdir(d) == ["x.json", "y.bin"], storage.listdir(d)
  assert abs(storage.mtime(storage.join(d, "x.json")) - time.time()) < 600 or root.startswith("ram://")  # none kept
  storage.replace(storage.join(d, "x.json"), storage.join(d, "z.json"))
  assert storage.listdir(d) == ["y.bin", "z.json"]
  storage.move_tree(storage.join(root, "a"), storage.join(root, "moved", "a"))
  assert not storage.exists(storage.join(d, "y.bin"))
  with storage.open(storage.join(root, "moved", "a", "b", "y.bin"), "rb") as f:
    assert f.read() == bytes(range(256))
  with storage.open(storage.join(root, "moved", "a", "b", "z.json")) as f:
    assert json.load(f) == {"v": 1}
  storage.remove(storage.join(root, "moved", "a", "b", "z.json"))
  try:
    storage.remove(storage.join(root, "moved", "a", "b", "z.json"))
    raise AssertionError("removing a missing file must raise FileNotFoundError")
  except FileNotFoundError:
    pass
  assert storage.dirname(storage.join(root, "moved")) == root and storage.basename(storage.join(root, "m")) == "m"
  print("ok")
"""


@pytest.mark.parametrize("kind", ["local", "ram"])
def test_storage_round_trip_local_and_ram(kind, tmp_path):
  root = str(tmp_path) if kind == "local" else f"ram://storage_test_{os.getpid()}"
  exec(compile(textwrap.dedent(STORAGE_ROUND_TRIP).replace("ROOT", repr(root)), "round_trip", "exec"), {})


def test_storage_round_trip_gcs(gcs):
  out = run_python(STORAGE_ROUND_TRIP.replace("ROOT", repr(f"gs://{BUCKET}/round_trip")), gcs)
  assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]


def test_urls_are_kept_local_paths_made_absolute(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert storage.resolve("gs://b/run/") == "gs://b/run" and storage.resolve("run") == str(tmp_path / "run")
  assert storage.join("gs://b/run", "checkpoints") == "gs://b/run/checkpoints"
  assert storage.dirname("gs://b/run/x") == "gs://b/run" and storage.scheme("/a/b:c") is None
  with pytest.raises(ValueError, match=r"not ram:// \(orbax cannot write there\)"):
    train.prepare_workdir("ram://run")


@pytest.mark.slow
def test_a_run_in_a_gcs_workdir_trains_resumes_and_evaluates(gcs):
  """metrics.jsonl, run.json, the lease, checkpoints and the eval JSON in gs://, through the command line."""
  workdir = f"gs://{BUCKET}/runs/tiny"
  base = [sys.executable, "-m", "alexnet_jax.main", "--config=configs/synthetic.py", f"--workdir={workdir}"]
  flags = [*TINY_FLAGS, "--config.checkpoint_every_steps=2", "--config.tensorboard=False"]
  env = {**cli_env(8, fast_compile=True), **gcs}

  def run(cmd):
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)

  first = run([*base, *flags, "--config.num_train_steps=2"])
  assert first.returncode == 0, first.stderr[-3000:]
  second = run([*base, *flags, "--config.num_train_steps=4"])
  assert second.returncode == 0, second.stderr[-3000:]
  assert "Resuming from the checkpoint at step 2 (next step: 3)" in second.stderr
  evaluated = run([sys.executable, "-m", "alexnet_jax.evaluate", f"--workdir={workdir}", "--crops=1"])
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  assert f"-> {workdir}/eval/step4_1crop.json" in evaluated.stdout

  listing = run_python(
    f"""
    import json
    from alexnet_jax import storage
    w = {workdir!r}
    rows = [json.loads(line) for line in storage.open(w + "/metrics.jsonl").read().splitlines()]
    print(json.dumps({{
      "names": storage.listdir(w),
      "steps": storage.listdir(w + "/checkpoints"),
      "train_steps": [r["step"] for r in rows if "train_loss" in r],
      "eval": json.load(storage.open(w + "/eval/step4_1crop.json")),
      "run": json.load(storage.open(w + "/run.json"))["resumed_from_step"],
    }}))
    """,
    gcs,
  )
  assert listing.returncode == 0, listing.stderr[-3000:]
  found = json.loads(listing.stdout.strip().splitlines()[-1])
  assert {"checkpoints", "metrics.jsonl", "run.json", "eval"} <= set(found["names"])
  assert "lock.json" not in found["names"]  # the lease is released at the end
  assert {"2", "4"} <= set(found["steps"])
  assert found["train_steps"] == [1, 2, 3, 4]
  assert found["eval"]["num_examples"] == 20 and found["run"] == 2


@pytest.mark.slow
def test_a_live_lease_in_a_gcs_workdir_refuses_a_second_run(gcs):
  workdir = f"gs://{BUCKET}/runs/held"
  holder = {"host": socket.gethostname(), "pid": os.getpid(), "start_ticks": None, "heartbeat": time.time()}
  put = run_python(
    f"""
    import json
    from alexnet_jax import storage
    storage.makedirs({workdir!r})
    with storage.open({workdir!r} + "/lock.json", "w") as f:
      json.dump({holder!r}, f)
    """,
    gcs,
  )
  assert put.returncode == 0, put.stderr[-3000:]
  cmd = [sys.executable, "-m", "alexnet_jax.main", "--config=configs/synthetic.py", f"--workdir={workdir}"]
  out = subprocess.run(
    [*cmd, *TINY_FLAGS, "--config.num_train_steps=2"],
    cwd=ROOT,
    env={**cli_env(8, fast_compile=True), **gcs},
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert out.returncode == 1, out.stderr[-3000:]
  assert f"is in use by another run (pid {os.getpid()} on host {socket.gethostname()}" in out.stderr


@pytest.mark.slow
def test_prepare_to_ram_then_train_and_evaluate_from_it(tmp_path):
  """prepare --output_dir and data.dir on a URL (ram://: TensorFlow's file systems, as for gs://)."""
  raw = tmp_path / "raw"
  embedded.generate(str(raw), train_per_class=8, val_per_class=2, size=48, seed=3)
  dst = f"ram://prepared_{os.getpid()}"
  meta = prepare.prepare(str(raw), dst, image_size=76, examples_per_shard=32, num_workers=1, check_disk=False)
  assert meta["splits"]["train"]["num_examples"] == 8 * len(embedded.CLASSES)
  assert storage.exists(storage.join(dst, format.METADATA)) and storage.exists(storage.join(dst, format.STATS))
  config = tiny_config(
    **{
      "data.source": "auto",
      "data.dir": dst,
      "model.num_classes": len(embedded.CLASSES),
      "num_train_steps": 2,
    }
  )
  result = train.train_and_evaluate(config, str(tmp_path / "run"))
  assert result["step"] == 2
  assert result["eval_num_examples"] == 2 * len(embedded.CLASSES)
