"""alexnet_jax.aot: the real train and eval steps compiled for GPUs and TPUs that are not here.

The compiles run in ``.venv-aot`` (``make install-aot``: libtpu, the CUDA plugin and ptxas), in subprocesses with
the environment a user's shell has (no ``JAX_PLATFORMS``: the module itself keeps jax off any local device, and
with no GPU here the CUDA plugin must not take the GPU targets down with it). What the compiler produced is read
independently of the module's own summary where that is cheap: the HLO text for the gradient all-reduce, the
parameter count for its bytes.
"""

import json
import os
import re
import shlex
import subprocess

import pytest

from alexnet_jax import aot, config_lib
from tests.support import ROOT, documented

AOT_PYTHON = os.path.join(ROOT, ".venv-aot", "bin", "python")
PAPER_PARAMS = 60_965_224  # the paper net's parameter count (model.count_params; tests/unit/test_model.py)
PAPER_TRAIN_FLOPS_PER_IMAGE = 4_346_440_896  # forward + backward, one image (tests/unit/test_benchmark.py, by layer)
# Dense peak FLOP/s and HBM bytes/s, from the datasheets (NVIDIA H100 SXM) and Google's Cloud TPU pages (v5e).
H100_BF16_FLOPS, V5E_BF16_FLOPS, V5E_HBM_BYTES_PER_SECOND = 989e12, 197e12, 819e9


def user_env() -> dict[str, str]:
  """A user's environment: no fake CPU devices (the target's devices count), no JAX_PLATFORMS and no compilation
  cache (conftest sets them for the tests): every program here is compiled for its target, never read back."""
  return {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS") and not k.startswith("JAX_")}


def aot_run(*args, timeout=900, input_rates=None):
  """``python -m alexnet_jax.aot ARGS`` in .venv-aot; ``input_rates``: the record of per-core input rates it reads
  (``$ALEXNET_JAX_INPUT_RATES``; default: the user's own)."""
  if not os.path.exists(AOT_PYTHON):
    pytest.fail("the accelerator compilers are not installed: run `make install-aot` (make test does)")
  env = user_env()
  env.update(TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1")
  if input_rates is not None:
    env["ALEXNET_JAX_INPUT_RATES"] = str(input_rates)
  cmd = [AOT_PYTHON, "-m", "alexnet_jax.aot", *args]
  return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def programs(out) -> dict[str, dict]:
  rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
  return {r["program"]: r for r in rows}


# ---- what the paper's layout allows, from the layer sizes ----------------------------------------------------------
# Each conv layer's output channels, by the output's spatial size (conv3, conv4 and conv5 are all 13 x 13).
PAPER_CONV_CHANNELS = {55: [96], 27: [256], 13: [384, 384, 256]}
# Where the paper's two GPUs exchanged activations, per example: conv2's maps into conv3, pool5 into fc6, and the
# fully connected layers' 4096 + 1000 outputs; plus the LRN's halo of n//2 = 2 channels each way at the split, after
# conv1 (55 x 55) and conv2 (27 x 27). Forward and backward, at most float32.
EXCHANGED_PER_EXAMPLE = 2 * 4 * (13 * 13 * 256 + 6 * 6 * 256 + 4096 + 1000)
HALO_PER_EXAMPLE = 2 * 4 * 2 * 2 * (55 * 55 + 27 * 27)
# One array result: "= bf16[64,13,13,256]{layout} all-gather(" (read here, independently of aot.py's reader).
RESULT = re.compile(r"=\s*(?P<dtype>[a-z]+\d*)\[(?P<dims>[\d,]*)\]\S*\s+(?P<op>[a-z][\w\-]*)\(")


def collective_budget(*, model: int, data: int, batch_per_device: int) -> int:
  """The most a train step may move per device: one float32 copy of this device's parameters for the gradient
  all-reduce (when there is more than one data-parallel replica), the paper's activation exchanges (when the
  model is split), and 1 MiB for the metrics and scalars."""
  grads = 4 * (PAPER_PARAMS // model + 4096) if data > 1 else 0
  activations = (EXCHANGED_PER_EXAMPLE + HALO_PER_EXAMPLE) * batch_per_device if model > 1 else 0
  return grads + activations + 2**20


def result_shapes(hlo: str, ops: tuple[str, ...]) -> list[tuple[str, tuple[int, ...]]]:
  """(dtype, dims) of every instruction ``ops`` with one array as its result."""
  found = []
  for m in RESULT.finditer(hlo):
    if m.group("op") in ops:
      found.append((m.group("dtype"), tuple(int(d) for d in m.group("dims").split(",") if d)))
  return found


def assert_paper_layout(hlo: str, train: dict, *, model: int, data: int, batch: int, halo: bool = False):
  """What the compiled train step of the paper net must show, read from its HLO. ``halo``: the LRN spans all
  channels across the split (configs/paper.py:text); otherwise each column is normalised apart (the authors' code,
  configs/paper.py) and nothing but the paper's exchanges and the gradients cross devices."""
  b = batch // data
  forward = [c for c in aot.convolutions(hlo) if not c["backward"]]
  # Every conv layer's output as this device computes it: the layer's channels / model, each exactly once. With the
  # split, conv2, conv4 and conv5 are one group each (128, 192, 128): no device computes a full-width group layer.
  by_size: dict[int, list[int]] = {}
  for c in forward:
    assert c["shape"][0] == b, c  # this device's share of the batch
    by_size.setdefault(c["spatial"][0], []).append(c["features"])
  assert {k: sum(v) for k, v in by_size.items()} == {k: sum(v) // model for k, v in PAPER_CONV_CHANNELS.items()}
  if model == 2:
    assert {k: sorted(v) for k, v in by_size.items()} == {55: [48], 27: [128], 13: [128, 192, 192]}
  # conv1 is the accelerator's convolution (11 x 11, stride 4), not the CPU's matrix-product 'patches' path.
  assert any(c["window"] == "11x11" and c["stride"] == "4x4" for c in forward)
  # All-gathers move activations (batch-major: this device's examples), never a kernel.
  for dtype, dims in result_shapes(hlo, ("all-gather", "all-gather-done")):
    assert dims and dims[0] == b, (dtype, dims)
  # The LRN's halo is the only neighbour exchange (collective-permute): there with the text's all-channel LRN under
  # the split, absent per column and without a split.
  assert ("collective-permute" in train["collectives"]) == (halo and model > 1), train["collectives"]
  moved = sum(v["bytes"] for v in train["collectives"].values())
  assert moved <= collective_budget(model=model, data=data, batch_per_device=b), train["collectives"]
  # The LRN (rsqrt), the softmax (exp) and the loss (log) are computed in float32, whatever the model's dtype.
  special = result_shapes(hlo, ("rsqrt", "exponential", "log"))
  assert special and {dtype for dtype, _ in special} == {"f32"}, special


# ---- the HLO reading, on hand-written lines -------------------------------------------------------------------------
def test_collectives_are_counted_once_with_their_result_bytes():
  hlo = "\n".join(
    [
      "  %all-reduce.1 = f32[1000]{0} all-reduce(f32[1000]{0} %p), replica_groups={{0,1}}, to_apply=%add",
      "  %ag-start = (bf16[64,13,13,128]{3,2,1,0}, bf16[128,13,13,128]{3,2,1,0}) all-gather-start(%x), dimensions={0}",
      "  %ag-done = bf16[128,13,13,128]{3,2,1,0} all-gather-done(%ag-start)",
      "  ROOT %tuple-ar = (f32[10]{0}, bf16[4,4]{1,0}) all-reduce(%a, %b), to_apply=%add",
      "  %cp = s32[2]{0} collective-permute(%c), source_target_pairs={{0,1},{1,0}}",
      "  %not-a-collective = f32[8]{0} add(%a, %b)",
    ]
  )
  assert aot.collectives(hlo) == {
    "all-reduce": {"count": 2, "bytes": 4000 + 40 + 32},
    "all-gather": {"count": 1, "bytes": 128 * 13 * 13 * 128 * 2},
    "collective-permute": {"count": 1, "bytes": 8},
  }


def test_collectives_inside_loops_count_once_per_iteration():
  """Accumulation's micro-batches run in a while loop: an all-reduce in its body runs once per iteration (XLA's
  known_trip_count), nested loops multiply, a loop without a stated count runs once, the entry's own once."""
  while_line = (
    '  %w{i} = (s32[], f32[8]{{0}}) while(%t), condition=%cond{i}, body=%{body}, backend_config={{"known_induction_'
    'variable":{{"tuple_index":"0"}},"known_trip_count":{{"n":"{n}"}}}}'
  )
  hlo = "\n".join(
    [
      "%inner (p: (s32[], f32[8])) -> (s32[], f32[8]) {",
      "  %ar.inner = f32[8]{0} all-reduce(%x), to_apply=%add",
      "}",
      "%outer (p: (s32[], f32[8])) -> (s32[], f32[8]) {",
      "  %ar.outer = f32[100]{0} all-reduce(%y), to_apply=%add",
      while_line.format(i=1, body="inner", n=3),
      "}",
      "%unknown (p: (s32[], f32[8])) -> (s32[], f32[8]) {",
      "  %ag = f32[2]{0} all-gather(%z), dimensions={0}",
      "}",
      "ENTRY %main (a: f32[8]) -> f32[8] {",
      while_line.format(i=2, body="outer", n=4),
      "  %w3 = (s32[], f32[8]{0}) while(%t), condition=%cond3, body=%unknown",
      "  ROOT %ar.entry = f32[1]{0} all-reduce(%a), to_apply=%add",
      "}",
    ]
  )
  assert aot.loop_trip_counts(hlo) == {"inner": 12, "outer": 4, "unknown": 1}
  assert aot.collectives(hlo) == {
    "all-reduce": {"count": 12 + 4 + 1, "bytes": 12 * 32 + 4 * 400 + 4},
    "all-gather": {"count": 1, "bytes": 8},
  }


def test_a_cost_analysis_that_counted_the_micro_batch_loop_once_is_scaled_by_k():
  """k = 4 micro-batches: reported FLOPs near a quarter of our count are scaled x4 (and the bytes, and the
  roofline); reported FLOPs near our count are left alone; k = 1 rows are never touched."""
  config = config_lib.base_config()
  config.optimizer.accumulation_steps = 4
  chip = aot.CHIPS["v5e"]
  own = aot.train_flops_per_image(config) * 128 / 4
  row = {"batch_size": 128, "num_devices": 4, "dtype": "float32", "flops_per_device": own / 4 * 1.05}
  row["bytes_accessed_per_device"] = 1e9
  scaled = aot.count_loop_costs(row, chip, config)
  assert scaled["cost_analysis_loop_scale"] == 4 and scaled["flops_per_device"] == pytest.approx(own * 1.05)
  assert scaled["bytes_accessed_per_device"] == 4e9
  assert scaled["roofline_seconds"] == pytest.approx(max(own * 1.05 / 197e12, 4e9 / 819e9), rel=0.01)
  counted = aot.count_loop_costs({**row, "flops_per_device": own * 0.9}, chip, config)
  assert counted["cost_analysis_loop_scale"] == 1 and counted["flops_per_device"] == own * 0.9
  config.optimizer.accumulation_steps = 1
  assert aot.count_loop_costs(row, chip, config) == row


# ---- compiles -------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_every_named_target_resolves_to_its_devices():
  code = (
    "from alexnet_jax import aot\n"
    "for t in ['h100:8', 'h100:8x8', 'a100:4', 'v4:2x2x1', 'v5e:2x2', 'v5e:2x4', 'v5p:2x2x1', 'v6e:2x2', 'v5e:4x4']:\n"
    "  r = aot.resolve_target(t)\n"
    "  print(t, len(r.devices), r.num_hosts, r.devices[0].platform)\n"
  )
  out = subprocess.run([AOT_PYTHON, "-c", code], cwd=ROOT, env=user_env(), capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  got = dict(line.split(" ", 1) for line in out.stdout.strip().splitlines())
  assert got == {
    "h100:8": "8 1 gpu",
    "h100:8x8": "64 8 gpu",  # 8 hosts of 8 GPUs
    "a100:4": "4 1 gpu",
    "v4:2x2x1": "4 1 tpu",
    "v5e:2x2": "4 1 tpu",
    "v5e:2x4": "8 1 tpu",
    "v5p:2x2x1": "4 1 tpu",
    "v6e:2x2": "4 1 tpu",
    "v5e:4x4": "16 4 tpu",
  }


@pytest.mark.slow
def test_paper_net_on_two_h100s_with_the_model_split(tmp_path):
  """The paper's run as a user would check it before paying for it: full size, bfloat16, batch 128, mesh.model=2."""
  hlo = tmp_path / "train.hlo"
  out = aot_run(
    "--config=configs/paper.py",
    "--target=h100:2",
    "--config.mesh.model=2",
    "--config.model.dtype=bfloat16",
    f"--hlo_out={hlo}",
  )
  assert out.returncode == 0, out.stderr[-3000:]
  got = programs(out)
  train, evaluate = got["train"], got["eval"]
  assert train["num_devices"] == 2 and train["mesh"] == {"data": 1, "model": 2} and train["batch_size"] == 128
  assert train["dtype"] == "bfloat16" and train["flops_per_device"] is None  # XLA:GPU reports no cost analysis
  assert train["bytes_accessed_per_device"] is None
  assert train["fits"] and train["device_memory_bytes"] > 80 * 10**9
  # Each device holds about half of the parameters and their momentum, in float32.
  assert 0.4 * PAPER_PARAMS * 8 < train["argument_bytes"] < 0.6 * PAPER_PARAMS * 8 + 128 * 227 * 227 * 3
  assert train["peak_bytes"] >= train["argument_bytes"] and evaluate["peak_bytes"] < train["peak_bytes"]
  text = hlo.read_text()
  assert "HloModule" in text and "__cudnn$conv" in text  # XLA:GPU's program (cuDNN convolutions), not the CPU's
  assert aot.collectives(text) == train["collectives"]
  assert_paper_layout(text, train, model=2, data=1, batch=128)


# docs/aot.md's commands, run here as written (the documentation tests leave them to this file: one compile each).
DOCUMENTED = [c for block in documented.run_by("tests/system/test_aot.py") for c in documented.commands_of(block.text)]
AOT_COMMAND = ".venv-aot/bin/python -m alexnet_jax.aot "
ID_FLAGS = ("config", "target", "config.mesh.model")  # what names a case


def key_values(args: list[str]) -> dict[str, str]:
  """{"target": "v5e:2x4", ...} of the ``--key=value`` arguments in ``args``."""
  return dict(a.removeprefix("--").split("=", 1) for a in args if a.startswith("--") and "=" in a)


def test_the_documented_compiles_are_here():
  assert len(DOCUMENTED) == 3 and all(c.startswith(AOT_COMMAND) for c in DOCUMENTED), DOCUMENTED


@pytest.mark.slow
@pytest.mark.parametrize(
  "args",
  [
    *[shlex.split(c.removeprefix(AOT_COMMAND)) for c in DOCUMENTED],  # docs/aot.md's: h100:8, v5e:2x4, v5e:2x2 split
    # The text's LRN across the split (a halo exchange), on a TPU slice of data 2 x model 2.
    ["--config=configs/paper.py:text", "--target=v5e:2x2", "--config.mesh.model=2", "--config.model.dtype=bfloat16",
     "--config.eval_batch_size=64"],
  ],
  ids=lambda args: "-".join(v for k, v in key_values(args).items() if k in ID_FLAGS),
)  # fmt: skip
def test_the_paper_layout_in_what_the_compiler_produced(tmp_path, args):
  """The model split on a TPU slice (per column, the authors' code; and the text's LRN across the split), and data
  parallelism on 8 GPUs and 8 TPU chips; and the input each train step needs (no per-core rates recorded: the pixel
  default; the JPEG rate given as a flag)."""
  hlo = tmp_path / "train.hlo"
  args = [a for a in args if not a.startswith("--hlo_out=")] + [f"--hlo_out={hlo}"]
  out = aot_run(*args, "--jpeg_images_per_sec_per_core=1000", input_rates=tmp_path / "no_rates_recorded.json")
  assert out.returncode == 0, out.stderr[-3000:]
  flags = key_values(args)
  train = programs(out)["train"]
  model = train["mesh"]["model"]
  assert model == int(flags.get("config.mesh.model", 1))  # configs/paper.py leaves the mesh to the flag
  data = train["num_devices"] // model
  assert train["mesh"] == {"data": data, "model": model} and train["fits"]
  assert train["num_devices"] == {"h100:8": 8, "v5e:2x4": 8, "v5e:2x2": 4}[flags["target"]]
  assert programs(out)["eval"]["fits"]
  text = hlo.read_text()
  assert aot.collectives(text) == train["collectives"]
  assert_paper_layout(text, train, model=model, data=data, batch=128, halo=flags["config"].endswith(":text"))
  if data > 1:  # the gradient all-reduce carries every parameter this device holds (bf16 at least)
    assert train["collectives"]["all-reduce"]["bytes"] >= 2 * PAPER_PARAMS // model
  if flags["target"].startswith("v5e"):  # libtpu's cost analysis gives the roofline estimate
    assert train["roofline_seconds"] > 0 and train["roofline_bound"] in ("compute", "memory")
  assert_input_needs(train, gpu=flags["target"].startswith("h100"))


def assert_input_needs(train: dict, *, gpu: bool):
  """The step time worked out here from its formula: on the GPU (no cost analysis) our FLOP count over 0.15 of the
  bf16 peak; on TPU the longer of libtpu's FLOPs at the peak and its bytes at the HBM bandwidth. The input rate is
  the batch over it; the cores at 1,000 images/s per core (the flag) and 25,000 (the pixel default)."""
  if gpu:
    step = PAPER_TRAIN_FLOPS_PER_IMAGE * train["batch_size"] / train["num_devices"] / (0.15 * H100_BF16_FLOPS)
    assert train["step_time_basis"] == "mfu" and train["mfu_assumed"] == 0.15
  else:
    compute = train["flops_per_device"] / V5E_BF16_FLOPS
    step = max(compute, train["bytes_accessed_per_device"] / V5E_HBM_BYTES_PER_SECOND)
    assert train["step_time_basis"] == "roofline" and train["mfu_assumed"] is None
    assert train["step_seconds"] == train["roofline_seconds"]
  assert train["step_seconds"] == pytest.approx(step, rel=1e-9)
  needed = train["batch_size"] / step
  assert train["images_per_sec_needed"] == pytest.approx(needed, abs=0.05) and needed > 0
  hosts = train["num_hosts"]
  assert train["host_cores_needed"] == pytest.approx(
    {"jpeg": needed / 1000 / hosts, "pixels": needed / 25000 / hosts}, abs=0.005
  )
  assert train["host_cores_needed_total"] == pytest.approx({"jpeg": needed / 1000, "pixels": needed / 25000}, abs=0.005)
  assert train["input_images_per_sec_per_core"] == {"jpeg": 1000.0, "pixels": 25000.0}
  assert train["input_rates_source"]["jpeg"] == "--jpeg_images_per_sec_per_core"
  assert "26,480" in train["input_rates_source"]["pixels"]


@pytest.mark.slow
def test_a_tpu_pod_slice_of_four_hosts_all_reduces_every_gradient():
  """v5e:4x4 is 16 chips on 4 hosts; data parallel, so the gradient all-reduce must carry every parameter."""
  out = aot_run(
    "--config=configs/paper.py",
    "--target=v5e:4x4",
    "--config.data.source=synthetic",
    "--config.model.width=0.25",
    "--config.batch_size=64",
    "--programs=train",
  )
  assert out.returncode == 0, out.stderr[-3000:]
  train = programs(out)["train"]
  assert train["num_devices"] == 16 and train["num_hosts"] == 4 and train["mesh"] == {"data": 16, "model": 1}
  assert train["flops_per_device"] > 0 and train["bytes_accessed_per_device"] > 0  # libtpu's cost analysis
  params = 4_587_592  # the paper net at width 0.25 (model.count_params)
  assert train["collectives"]["all-reduce"]["bytes"] >= 4 * params  # float32 gradients, all of them


@pytest.mark.slow
def test_a_batch_that_does_not_fit_names_the_need_and_the_largest_batch_that_does():
  out = aot_run(
    "--config=configs/paper.py", "--target=h100:1", "--config.data.source=synthetic", "--config.batch_size=32768"
  )
  assert out.returncode == 1, out.stderr[-3000:]
  train = programs(out)["train"]
  assert not train["fits"] and train["peak_bytes"] > train["device_memory_bytes"]
  line = next(line for line in out.stderr.splitlines() if line.startswith("error: the train step"))
  assert f"needs {train['peak_bytes'] / 2**30:.2f} GiB per device; a h100 device has 79.10 GiB" in line
  largest = int(line.rsplit("the largest batch_size that fits is ", 1)[1].rstrip("."))
  assert 1024 <= largest < 32768


TINY_AOT = [  # tests/support/tiny.py's network (1/8 width, 67 px, 10 classes): seconds to compile
  "--config=configs/paper.py",
  "--config.data.source=synthetic",
  "--config.model.width=0.125",
  "--config.model.image_size=67",
  "--config.model.num_classes=10",
  "--config.batch_size=64",
  "--programs=train",
  "--epochs=2",
]


@pytest.mark.slow
@pytest.mark.parametrize(
  "target,devices,hosts,bandwidth",
  [
    ("v5e:2x2", 4, 1, 200e9),  # ICI, 200 GB/s each way
    ("h100:2x4", 8, 2, 200e9),  # two hosts: 4 GPUs x 50 GB/s of InfiniBand, below NVLink's 450 GB/s
  ],
)
def test_the_time_to_train_estimate_is_printed_and_adds_up(target, devices, hosts, bandwidth):
  """The estimate's fields on a TPU (libtpu's roofline) and a two-host GPU target (our FLOP count at 0.15 MFU),
  worked out here from the row's own compiled figures: the all-reduce's bytes from its HLO, x 2(n-1)/n over the
  bandwidth, plus the step; 2 epochs of 1,281,167 // 64 = 20,018 steps."""
  out = aot_run(*TINY_AOT, f"--target={target}", timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  train = programs(out)["train"]
  assert (train["num_devices"], train["num_hosts"]) == (devices, hosts)
  n = train["mesh"]["data"]
  assert train["gradient_all_reduce_bytes"] == train["collectives"]["all-reduce"]["bytes"]
  sent = 2 * (n - 1) / n * train["gradient_all_reduce_bytes"]
  assert train["all_reduce_sent_bytes_per_device"] == pytest.approx(sent)
  assert train["all_reduce_bytes_per_second"] == bandwidth
  assert train["communication_seconds_estimate"] == pytest.approx(sent / bandwidth)
  assert train["compute_seconds_estimate"] == pytest.approx(train["step_seconds"])  # the input's step, unchanged
  step = train["step_seconds"] + sent / bandwidth
  assert train["step_seconds_estimate"] == pytest.approx(step)
  assert train["images_per_sec_estimate"] == pytest.approx(64 / step, abs=0.05)
  assert train["epochs"] == 2 and train["train_steps"] == 2 * (1_281_167 // 64)
  assert train["time_to_train_seconds_estimate"] == pytest.approx(train["train_steps"] * step, abs=0.05)
  sources = train["estimate_sources"]
  assert sources["compute"].startswith("roofline" if target.startswith("v5e") else "mfu")
  assert sources["gradient_bytes"].startswith("compiled HLO") and "summed" in sources["overlap"]
  assert ("InfiniBand" in sources["bandwidth"]) == target.startswith("h100")


@pytest.mark.slow
def test_large_batch_accumulation_on_a_tpu_counts_the_micro_batch_loop_k_times():
  """configs/large_batch.py (AlexNet-BN, LARS) at tiny size with 4 micro-batches, compiled for a v5e 2x2: libtpu's
  cost analysis counts the loop's body once, so aot scales it by 4 (its FLOPs are then within 30% of our own count
  of the whole step's, not a quarter of it), and the estimate is printed."""
  tiny = [a for a in TINY_AOT if not a.startswith("--config=")]
  out = aot_run(
    "--config=configs/large_batch.py:32k", *tiny, "--config.optimizer.accumulation_steps=4", "--target=v5e:2x2"
  )
  assert out.returncode == 0, out.stderr[-3000:]
  train = programs(out)["train"]
  assert train["cost_analysis_loop_scale"] == 4, train
  config = config_lib.load_config_file(os.path.join(ROOT, "configs", "large_batch.py") + ":32k")
  config.model.width, config.model.image_size, config.model.num_classes = 0.125, 67, 10  # TINY_AOT's network
  own = aot.train_flops_per_image(config) * 64 / 4  # TINY_AOT's batch of 64 over 4 chips
  assert 0.7 < train["flops_per_device"] / own < 1.3, (train["flops_per_device"], own)
  assert train["time_to_train_seconds_estimate"] > 0 and train["epochs"] == 2


def test_malformed_multi_host_gpu_targets_are_refused_with_the_forms():
  for spec in ("h100:2x", "h100:0x8", "h100:2x2x2", "h100:x8", "a100:8xN"):
    with pytest.raises(ValueError, match=r"is \w+:N \(N GPUs on one host\) or \w+:HxN \(H hosts of N GPUs each\)"):
      aot.resolve_target(spec)


def test_an_unknown_target_is_a_command_line_error():
  out = aot_run("--config=configs/paper.py", "--target=tpu9:2x2", timeout=300)
  assert out.returncode == 2 and "expected one of ['a100', 'h100', 'v4', 'v5e', 'v5p', 'v6e']" in out.stderr


def test_an_impossible_mfu_or_input_rate_is_a_command_line_error(tmp_path):
  """Refused before anything is compiled: an MFU outside (0, 1], a per-core rate that is not positive, a record of
  rates that is no record."""
  out = aot_run(
    "--config=configs/paper.py", "--target=h100:1", "--mfu=0", timeout=300, input_rates=tmp_path / "none.json"
  )
  assert out.returncode == 2 and "--mfu=0.0: a fraction of the peak, in (0, 1]" in out.stderr, out.stderr[-2000:]
  out = aot_run(
    "--config=configs/paper.py",
    "--target=h100:1",
    "--pixels_images_per_sec_per_core=-5",
    timeout=300,
    input_rates=tmp_path / "none.json",
  )
  assert out.returncode == 2 and "--pixels_images_per_sec_per_core must be positive" in out.stderr, out.stderr[-2000:]
  damaged = tmp_path / "rates.json"
  damaged.write_text("[1, 2")
  out = aot_run("--config=configs/paper.py", "--target=h100:1", timeout=300, input_rates=damaged)
  assert out.returncode == 2 and "is not a record of input rates" in out.stderr, out.stderr[-2000:]
