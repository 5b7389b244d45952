"""The step-time model (alexnet_jax/step_time.py) and the per-core input rates (alexnet_jax/input_rates.py), against
figures worked out by hand from their formulas."""

import json
import os
import platform
import subprocess
import sys

import pytest
from flax import nnx

from alexnet_jax import benchmark, input_rates, step_time
from alexnet_jax import model as M
from tests.support import ROOT

PAPER_TRAIN_FLOPS_PER_IMAGE = 4_346_440_896  # benchmarks/RESULTS.md; tests/unit/test_benchmark.py counts it by layer


# ---- the step time ----------------------------------------------------------------------------------------------
def test_the_paper_nets_train_flops_per_image():
  paper = nnx.eval_shape(lambda: M.AlexNet("paper", rngs=nnx.Rngs(0)))
  assert step_time.train_flops_per_image(paper) == PAPER_TRAIN_FLOPS_PER_IMAGE
  assert benchmark.layer_flops is step_time.layer_flops  # one implementation


def test_the_peaks_table_keeps_what_the_benchmark_had():
  # benchmark.PEAK_TFLOPS as it was written out before the table moved (NVIDIA datasheets, dense).
  assert benchmark.PEAK_TFLOPS == {
    ("H100", "bfloat16"): 989.0,
    ("H100", "float32"): 494.0,
    ("H200", "bfloat16"): 989.0,
    ("H200", "float32"): 494.0,
    ("A100", "bfloat16"): 312.0,
    ("A100", "float32"): 156.0,
  }
  with pytest.raises(ValueError, match="float16"):
    step_time.PEAKS["h100"].flops("float16")


def test_the_roofline_where_the_compiler_reports_costs():
  """The v5e:2x4 train step of docs/aot.md (libtpu's costs): 6,878,446,080 bytes at 819 GB/s = 8.3986 ms, longer
  than 63,103,721,472 FLOPs at 197 TFLOP/s = 0.3203 ms: memory bound; the same figure aot printed before the model
  moved here (0.008398591062271062)."""
  est = step_time.train_step_time(
    step_time.PEAKS["v5e"],
    "bfloat16",
    own_flops_per_device=1.0,  # not used: the compiler's costs come first
    mfu=0.15,
    reported_flops_per_device=63103721472.0,
    reported_bytes_per_device=6878446080.0,
  )
  assert est.basis == "roofline" and est.bound == "memory"
  assert est.seconds == pytest.approx(0.008398591062271062, rel=1e-12)
  assert est.compute_seconds == pytest.approx(0.00032032346, rel=1e-8)
  assert step_time.images_per_sec_needed(128, est) == pytest.approx(15240.65, rel=1e-6)
  compute_bound = step_time.roofline(step_time.PEAKS["v5e"], "bfloat16", 197e12, 1.0)
  assert compute_bound.bound == "compute" and compute_bound.seconds == pytest.approx(1.0)


def test_our_flop_count_at_an_mfu_where_the_compiler_reports_none():
  """h100:8, the paper net, batch 128: 16 images a device x 4,346,440,896 FLOPs = 69,543,054,336 FLOPs over 0.15 x
  989 TFLOP/s (bf16) = 0.46877 ms, 273,051 images/s; in float32 against TF32's 494 TFLOP/s."""
  h100 = step_time.PEAKS["h100"]
  per_device = PAPER_TRAIN_FLOPS_PER_IMAGE * 128 / 8
  est = step_time.train_step_time(h100, "bfloat16", own_flops_per_device=per_device, mfu=0.15)
  assert est.basis == "mfu" and est.memory_seconds is None and est.communication_seconds == 0
  assert est.seconds == pytest.approx(69_543_054_336 / 148.35e12, rel=1e-12)
  assert step_time.images_per_sec_needed(128, est) == pytest.approx(273_051.0, abs=0.5)
  f32 = step_time.train_step_time(h100, "float32", own_flops_per_device=per_device, mfu=0.21)
  assert f32.seconds == pytest.approx(69_543_054_336 / (0.21 * 494e12), rel=1e-12)
  assert step_time.describe(est, 0.15) == {"step_seconds": est.seconds, "step_time_basis": "mfu", "mfu_assumed": 0.15}


def test_the_all_reduce_term_and_what_is_refused():
  h100 = step_time.PEAKS["h100"]
  plain = step_time.train_step_time(h100, "bfloat16", own_flops_per_device=1e12, mfu=0.5)
  # 243,880,064 bytes (the paper's float32 gradients) at 400 GB/s: 0.6097 ms, added to the compute
  with_ar = step_time.train_step_time(
    h100,
    "bfloat16",
    own_flops_per_device=1e12,
    mfu=0.5,
    all_reduce_bytes_per_device=243_880_064,
    interconnect_bytes_per_second=400e9,
  )
  assert with_ar.communication_seconds == pytest.approx(0.00060970016)
  assert with_ar.seconds == pytest.approx(plain.seconds + 0.00060970016)
  for bad in (0.0, 1.5):
    with pytest.raises(ValueError, match="mfu must be in"):
      step_time.train_step_time(h100, "bfloat16", own_flops_per_device=1e12, mfu=bad)
  with pytest.raises(ValueError, match="interconnect_bytes_per_second"):
    step_time.train_step_time(h100, "bfloat16", own_flops_per_device=1e12, mfu=0.5, all_reduce_bytes_per_device=8)
  with pytest.raises(ValueError, match="own_flops_per_device must be positive"):
    step_time.train_step_time(h100, "bfloat16", own_flops_per_device=0, mfu=0.5)


# ---- the time to train ------------------------------------------------------------------------------------------
def test_the_ring_all_reduce_sends_two_n_minus_one_over_n_of_the_buffer():
  # The paper net's bf16 gradients as v5e:2x4's HLO holds them (docs/aot.md): 121,941,212 bytes.
  assert step_time.ring_all_reduce_bytes(121_941_212, 1) == 0
  assert step_time.ring_all_reduce_bytes(121_941_212, 2) == pytest.approx(121_941_212)
  assert step_time.ring_all_reduce_bytes(121_941_212, 8) == pytest.approx(213_397_121)  # x 14/8
  assert step_time.ring_all_reduce_bytes(121_941_212, 256) == pytest.approx(242_929_758.3, rel=1e-9)  # x 510/256
  with pytest.raises(ValueError, match="num_devices must be at least 1"):
    step_time.ring_all_reduce_bytes(8, 0)


def test_the_bandwidth_the_all_reduce_runs_at():
  """One H100 host: NVLink each way, 450 GB/s. Across hosts the host's network: 8 GPUs x 50 GB/s (8 x 400 Gb/s
  InfiniBand) = 400 GB/s, below NVLink; 4 GPUs a host, 200 GB/s. A TPU slice is all ICI, however many hosts."""
  h100, v5e = step_time.INTERCONNECTS["h100"], step_time.INTERCONNECTS["v5e"]
  assert step_time.all_reduce_bandwidth(h100, 1, 8) == 450e9
  assert step_time.all_reduce_bandwidth(h100, 8, 8) == 400e9
  assert step_time.all_reduce_bandwidth(h100, 2, 4) == 200e9
  assert step_time.all_reduce_bandwidth(step_time.INTERCONNECTS["a100"], 4, 8) == 200e9
  assert step_time.all_reduce_bandwidth(v5e, 64, 4) == step_time.all_reduce_bandwidth(v5e, 1, 4) == 200e9
  assert step_time.INTERCONNECTS["v4"].bytes_per_second == pytest.approx(268.55e9, rel=1e-4)  # 1.1 PB/s / 4,096
  assert set(step_time.INTERCONNECTS) <= set(step_time.PEAKS)
  with pytest.raises(ValueError, match="at least one host"):
    step_time.all_reduce_bandwidth(h100, 0, 8)


def test_time_to_train_by_hand():
  """v5e:16x16 at batch 32,768 (128 a chip), with made-up libtpu costs: 1e13 FLOPs (50.76 ms at 197 TFLOP/s) and
  2e10 bytes (24.42 ms at 819 GB/s): compute bound, 50.761 ms. The bf16 gradients, 121,941,212 bytes, sent 510/256
  of them at 200 GB/s: 1.2146 ms. Step 51.976 ms; 630,444 images/s; 90 epochs of 1,281,167 // 32,768 = 39 steps is
  3,510 steps: 182.44 s."""
  step = step_time.train_step_time(
    step_time.PEAKS["v5e"],
    "bfloat16",
    own_flops_per_device=1.0,
    mfu=0.15,
    reported_flops_per_device=1e13,
    reported_bytes_per_device=2e10,
    all_reduce_bytes_per_device=step_time.ring_all_reduce_bytes(121_941_212, 256),
    interconnect_bytes_per_second=step_time.all_reduce_bandwidth(step_time.INTERCONNECTS["v5e"], 64, 4),
  )
  assert step.bound == "compute" and step.compute_seconds == pytest.approx(0.0507614, rel=1e-5)
  assert step.communication_seconds == pytest.approx(0.00121465, rel=1e-5)
  assert step.seconds == pytest.approx(0.0519760, rel=1e-5)
  total = step_time.time_to_train(step, 32768, 90)
  assert (total.steps, total.epochs) == (3510, 90)
  assert total.images_per_sec == pytest.approx(630_444, rel=1e-5)
  assert total.seconds == pytest.approx(182.436, rel=1e-5)
  # The GPU form: h100:8x8 at 65,536 (1,024 a GPU), the paper net at 0.15 MFU: 4.451 TFLOPs a GPU over 148.35
  # TFLOP/s = 30.002 ms; the same gradients sent 126/64 at 400 GB/s = 0.6002 ms. 95 epochs of 19 steps: 1,805 steps,
  # 55.24 s (Jia et al.: 95 epochs at 64K in 4 minutes on 1,024 P40s).
  gpu = step_time.train_step_time(
    step_time.PEAKS["h100"],
    "bfloat16",
    own_flops_per_device=PAPER_TRAIN_FLOPS_PER_IMAGE * 1024,
    mfu=0.15,
    all_reduce_bytes_per_device=step_time.ring_all_reduce_bytes(121_941_212, 64),
    interconnect_bytes_per_second=step_time.all_reduce_bandwidth(step_time.INTERCONNECTS["h100"], 8, 8),
  )
  assert gpu.compute_seconds == pytest.approx(0.0300017, rel=1e-5)
  assert gpu.communication_seconds == pytest.approx(0.000600179, rel=1e-5)
  total = step_time.time_to_train(gpu, 65536, 95)
  assert total.steps == 1805 and total.seconds == pytest.approx(55.2364, rel=1e-5)
  with pytest.raises(ValueError, match="epochs must be positive"):
    step_time.time_to_train(gpu, 65536, 0)
  with pytest.raises(ValueError, match="larger than the 1281167 training examples"):
    step_time.time_to_train(gpu, 2**21, 1)


# ---- the input rates --------------------------------------------------------------------------------------------
ROWS = [  # benchmark --input_only's rows as the lead's version prints them (fabricated figures)
  {"what": "input", "pipeline": "jpeg", "threads": 1, "images_per_sec": 1400.0, "images_per_sec_per_core": 1400.0},
  {"what": "input", "pipeline": "jpeg", "threads": 2, "images_per_sec": 2600.0, "images_per_sec_per_core": 1300.0},
  {"what": "input", "pipeline": "pixels", "threads": 1, "images_per_sec": 5200.0, "images_per_sec_per_core": 5200.0},
  {"what": "input", "pipeline": "floor", "threads": 1, "images_per_sec": 90000.0, "images_per_sec_per_core": 90000.0},
  {"what": "input", "pipeline": "naive", "threads": 1, "images_per_sec": 900.0, "images_per_sec_per_core": 900.0},
  {"what": "input", "ratio_tf_data_to_naive_per_core": 1.5},
]


def test_the_defaults_where_nothing_was_recorded(tmp_path):
  rates = input_rates.load(str(tmp_path / "none.json"))
  assert rates["jpeg"] == 1500.0 and rates["pixels"] == 25000.0
  assert "default" in rates["source"]["jpeg"] and "26,480" in rates["source"]["pixels"]


def test_recorded_rates_round_trip_with_where_they_were_measured(tmp_path):
  path = str(tmp_path / "sub" / "rates.json")
  assert input_rates.record(ROWS, path) == path
  with open(path) as f:
    saved = json.load(f)["rates"]
  assert set(saved) == {"jpeg", "pixels", "floor"}  # single-thread rows of known pipelines only
  assert saved["jpeg"]["images_per_sec_per_core"] == 1400.0  # the one-thread row, not the two-thread one
  assert saved["jpeg"]["machine"] == platform.node() and saved["jpeg"]["cpu_count"] == os.cpu_count()
  assert saved["jpeg"]["versions"]["python"] == platform.python_version() and "numpy" in saved["jpeg"]["versions"]
  rates = input_rates.load(path)
  assert (rates["jpeg"], rates["pixels"]) == (1400.0, 5200.0)
  assert platform.node() in rates["source"]["jpeg"] and path in rates["source"]["pixels"]
  # A later run that measured JPEG alone replaces that rate and keeps the pixel one.
  input_rates.record([{**ROWS[0], "images_per_sec": 1600.0, "images_per_sec_per_core": 1600.0}], path)
  assert (input_rates.load(path)["jpeg"], input_rates.load(path)["pixels"]) == (1600.0, 5200.0)


def test_a_rate_is_recorded_per_core_the_path_kept_busy(tmp_path):
  """The memory-mapped pixel path's one tf.data thread is joined by the thread that copies the pixels: the benchmark
  says how many cores were busy (``cpu_cores_used``) and the rate kept is per core so used (never per more than
  one core for less than one busy)."""
  path = str(tmp_path / "rates.json")
  rows = [
    {**ROWS[2], "images_per_sec": 45000.0, "images_per_sec_per_core": 45000.0, "cpu_cores_used": 1.8},
    {**ROWS[0], "cpu_cores_used": 0.7},
  ]
  input_rates.record(rows, path)
  rates = input_rates.load(path)
  assert rates["pixels"] == pytest.approx(25000.0) and rates["jpeg"] == 1400.0


def test_only_jpeg_recorded_leaves_the_pixel_default(tmp_path):
  path = str(tmp_path / "rates.json")
  input_rates.record(ROWS[:1], path)
  rates = input_rates.load(path)
  assert (rates["jpeg"], rates["pixels"]) == (1400.0, 25000.0) and "26,480" in rates["source"]["pixels"]


def test_where_the_record_lives(tmp_path, monkeypatch):
  monkeypatch.delenv(input_rates.ENV_VAR, raising=False)
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  assert input_rates.default_path() == str(tmp_path / "xdg" / "alexnet_jax" / "input_rates.json")
  monkeypatch.delenv("XDG_CACHE_HOME")
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  assert input_rates.default_path() == str(tmp_path / "home" / ".cache" / "alexnet_jax" / "input_rates.json")
  monkeypatch.setenv(input_rates.ENV_VAR, str(tmp_path / "mine.json"))
  input_rates.record(ROWS, None)  # written where the variable says, read back from there
  assert os.path.exists(tmp_path / "mine.json") and input_rates.load()["pixels"] == 5200.0


def test_what_is_refused(tmp_path):
  with pytest.raises(ValueError, match="no single-thread row"):
    input_rates.record([ROWS[1], ROWS[4]], str(tmp_path / "r.json"))
  with pytest.raises(ValueError, match="must be positive"):
    input_rates.record([{**ROWS[0], "images_per_sec_per_core": 0.0}], str(tmp_path / "r.json"))
  bad = tmp_path / "bad.json"
  bad.write_text("{not json")
  with pytest.raises(ValueError, match="is not a record of input rates"):
    input_rates.load(str(bad))
  with pytest.raises(ValueError, match="is not a record of input rates"):
    input_rates.record(ROWS, str(bad))
  assert bad.read_text() == "{not json"  # not overwritten


def test_cores_needed_by_hand():
  rates = {"jpeg": 1500.0, "pixels": 4000.0, "source": {}}
  assert input_rates.cores_needed(273_051.0, rates) == pytest.approx({"jpeg": 182.034, "pixels": 68.26275})
  assert input_rates.cores_needed(60_000.0, rates, hosts=4) == pytest.approx({"jpeg": 10.0, "pixels": 3.75})


def test_neither_module_imports_tensorflow_or_jax():
  """.venv-aot has no TensorFlow, and aot reads both before any compiler is loaded."""
  code = (
    "import sys\nfrom alexnet_jax import input_rates, step_time\n"
    "print(sorted(m for m in ('tensorflow', 'jax', 'flax') if m in sys.modules))"
  )
  out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.strip() == "[]"
