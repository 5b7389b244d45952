"""alexnet_jax.aot: the real train and eval steps compiled for GPUs and TPUs that are not here.

The compiles run in ``.venv-aot`` (``make install-aot``: libtpu, the CUDA plugin and ptxas), in subprocesses with
``JAX_PLATFORMS=cpu`` so that nothing looks for a device. What the compiler produced is read independently of the
module's own summary where that is cheap: the HLO text for the gradient all-reduce, the parameter count for its
bytes.
"""

import json
import os
import subprocess

import pytest

from alexnet_jax import aot

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AOT_PYTHON = os.path.join(ROOT, ".venv-aot", "bin", "python")
PAPER_PARAMS = 60_965_224  # the paper net's parameter count (model.count_params; tests/test_model.py)


def aot_run(*args, timeout=900):
  if not os.path.exists(AOT_PYTHON):
    pytest.fail("the accelerator compilers are not installed: run `make install-aot` (make test does)")
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # no fake CPU devices: the target's devices
  env.update(JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1")
  cmd = [AOT_PYTHON, "-m", "alexnet_jax.aot", *args]
  return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def programs(out) -> dict[str, dict]:
  rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
  return {r["program"]: r for r in rows}


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


# ---- compiles -------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_every_named_target_resolves_to_its_devices():
  code = (
    "from alexnet_jax import aot\n"
    "for t in ['h100:8', 'a100:4', 'v4:2x2x1', 'v5e:2x2', 'v5e:2x4', 'v5p:2x2x1', 'v6e:2x2', 'v5e:4x4']:\n"
    "  r = aot.resolve_target(t)\n"
    "  print(t, len(r.devices), r.num_hosts, r.devices[0].platform)\n"
  )
  env = {**{k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}, "JAX_PLATFORMS": "cpu"}
  out = subprocess.run([AOT_PYTHON, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  got = dict(line.split(" ", 1) for line in out.stdout.strip().splitlines())
  assert got == {
    "h100:8": "8 1 gpu",
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


@pytest.mark.slow
def test_a_tpu_pod_slice_of_four_hosts_all_reduces_every_gradient():
  """v5e:4x4 is 16 chips on 4 hosts; data parallel, so the gradient all-reduce must carry every parameter."""
  out = aot_run(
    "--config=configs/paper.py",
    "--target=v5e:4x4",
    "--config.data.source=synthetic",
    "--config.model.width=0.25",
    "--config.batch_size=64",
    "--config.eval_batch_size=64",
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


def test_an_unknown_target_is_a_command_line_error():
  out = aot_run("--config=configs/paper.py", "--target=tpu9:2x2", timeout=300)
  assert out.returncode == 2 and "expected one of ['a100', 'h100', 'v4', 'v5e', 'v5p', 'v6e']" in out.stderr
