#!/usr/bin/env python3
r"""The same AlexNet and the same optimiser in PyTorch, timed beside ``python -m alexnet_jax.benchmark``.

  python benchmarks/torch_reference.py --model=paper --batch_size=32 --dtype=float32 --steps=3 --windows=3
  python benchmarks/torch_reference.py --variants=eager,channels_last,compile --jax_flags="--conv_impl=grouped"

Each PyTorch variant (``eager``; ``channels_last``; ``compile``: ``torch.compile`` of the whole step, where it
works; with ``--dtype=bfloat16`` every variant runs under bf16 autocast) times the full train step (forward,
backward, SGD with momentum 0.9 and weight decay 5e-4) on one device-resident batch: warm-up excluded, median of
``--windows`` windows of ``--steps`` steps, device synchronised. Then the JAX benchmark runs right after in a
subprocess with the same model, batch and dtype (``--repeats`` alternations), and the last JSON line is the ratio
of JAX's images/s to the best PyTorch variant's.

The network is ours exactly (``alexnet_jax.model``): same layers, LRN with alpha as printed (PyTorch's
``LocalResponseNorm`` divides alpha by n, so it gets alpha*n), dropout after fc6 and fc7, NHWC-order flatten made
unnecessary by loading weights through ``load_jax_params``. ``tests/unit/test_torch_reference.py`` checks that both
compute the same logits, gradients and update.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch
from torch import nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

sys.path.insert(0, ROOT)  # the layer tables come from alexnet_jax.model (jax-only, no install needed)
from alexnet_jax.model import ARCHITECTURES, _scaled  # noqa: E402


class TorchAlexNet(nn.Module):
  def __init__(self, name="paper", num_classes=1000, image_size=None, width=1.0, dropout=0.5, lrn_alpha=1e-4):
    super().__init__()
    arch = ARCHITECTURES[name]
    self.image_size = image_size or arch.image_size
    layers, in_ch, size = [], 3, self.image_size
    for ch, k, s, p, g, lrn, pool in zip(
      arch.conv_channels,
      arch.conv_kernels,
      arch.conv_strides,
      arch.conv_paddings,
      arch.conv_groups,
      arch.lrn_after,
      arch.pool_after,
      strict=True,
    ):
      out = _scaled(ch, width)
      layers += [nn.Conv2d(in_ch, out, k, s, p, groups=g), nn.ReLU(inplace=True)]
      size = (size + 2 * p - k) // s + 1
      if lrn:  # b = a / (k + alpha/n * sum a^2)^beta in PyTorch: alpha*n gives the paper's formula as printed
        layers.append(nn.LocalResponseNorm(5, alpha=lrn_alpha * 5, beta=0.75, k=2.0))
      if pool:
        layers.append(nn.MaxPool2d(3, 2))
        size = (size - 3) // 2 + 1
      in_ch = out
    self.features = nn.Sequential(*layers)
    self.pool = nn.AdaptiveAvgPool2d(arch.pooled_size) if arch.pooled_size else nn.Identity()
    spatial = arch.pooled_size or size
    hidden6, hidden7 = (_scaled(f, width) for f in arch.fc_features)
    self.fc6 = nn.Linear(spatial * spatial * in_ch, hidden6)
    self.fc7 = nn.Linear(hidden6, hidden7)
    self.fc8 = nn.Linear(hidden7, num_classes)
    self.drop = nn.Dropout(dropout)

  def forward(self, x):
    x = self.pool(self.features(x))
    x = x.permute(0, 2, 3, 1).flatten(1)  # NHWC order, as the JAX model flattens: same fc6 weights
    x = self.drop(torch.relu(self.fc6(x)))
    x = self.drop(torch.relu(self.fc7(x)))
    return self.fc8(x)


class TorchvisionAlexNet(nn.Module):
  """torchvision's ``models.AlexNet`` module for module, so that its state_dict has torchvision's exact names and
  shapes (``features.0.weight`` ... ``classifier.6.bias``) and its forward pass is torchvision's: NCHW input,
  adaptive average pooling to 6x6, NCHW flatten, dropout before fc6 and fc7. (torchvision itself is not installed
  here; this is its architecture, written out.)"""

  def __init__(self, num_classes: int = 1000, dropout: float = 0.5):
    super().__init__()
    self.features = nn.Sequential(
      nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),
      nn.ReLU(inplace=True),
      nn.MaxPool2d(kernel_size=3, stride=2),
      nn.Conv2d(64, 192, kernel_size=5, padding=2),
      nn.ReLU(inplace=True),
      nn.MaxPool2d(kernel_size=3, stride=2),
      nn.Conv2d(192, 384, kernel_size=3, padding=1),
      nn.ReLU(inplace=True),
      nn.Conv2d(384, 256, kernel_size=3, padding=1),
      nn.ReLU(inplace=True),
      nn.Conv2d(256, 256, kernel_size=3, padding=1),
      nn.ReLU(inplace=True),
      nn.MaxPool2d(kernel_size=3, stride=2),
    )
    self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
    self.classifier = nn.Sequential(
      nn.Dropout(p=dropout),
      nn.Linear(256 * 6 * 6, 4096),
      nn.ReLU(inplace=True),
      nn.Dropout(p=dropout),
      nn.Linear(4096, 4096),
      nn.ReLU(inplace=True),
      nn.Linear(4096, num_classes),
    )

  def forward(self, x):
    x = torch.flatten(self.avgpool(self.features(x)), 1)
    return self.classifier(x)


def load_jax_params(net: TorchAlexNet, params) -> None:
  """Copy a JAX parameter tree (``nnx.to_pure_dict`` of ``alexnet_jax.model.AlexNet``) into ``net``."""
  import numpy as np

  convs = [m for m in net.features if isinstance(m, nn.Conv2d)]
  with torch.no_grad():
    for i, conv in enumerate(convs):
      p = params[f"conv{i + 1}"]
      conv.weight.copy_(torch.tensor(np.array(p["kernel"]).transpose(3, 2, 0, 1)))  # HWIO -> OIHW
      conv.bias.copy_(torch.tensor(np.array(p["bias"])))
    for name in ("fc6", "fc7", "fc8"):
      getattr(net, name).weight.copy_(torch.tensor(np.array(params[name]["kernel"]).T))
      getattr(net, name).bias.copy_(torch.tensor(np.array(params[name]["bias"])))


def make_optimizer(net: nn.Module, lr=0.01, momentum=0.9, weight_decay=5e-4) -> torch.optim.Optimizer:
  """The paper's update with a constant rate: v <- m v - lr (wd w + g); w <- w + v, which is PyTorch's SGD."""
  return torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay, foreach=True)


def make_step(net, opt, dtype: str, device: str):
  loss_fn = nn.CrossEntropyLoss()

  def step(images, labels):
    opt.zero_grad(set_to_none=True)
    with torch.autocast(device, dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
      loss = loss_fn(net(images).float(), labels)
    loss.backward()
    opt.step()
    return loss

  return step


def bench(variant: str, args, device: str) -> dict:
  torch.manual_seed(0)
  net = TorchAlexNet(args.model).to(device)
  size = net.image_size
  images = torch.randn(args.batch_size, 3, size, size, device=device)
  labels = torch.randint(0, 1000, (args.batch_size,), device=device)
  if variant in ("channels_last", "compile"):
    net = net.to(memory_format=torch.channels_last)
    images = images.contiguous(memory_format=torch.channels_last)
  opt = make_optimizer(net)
  step = make_step(net, opt, args.dtype, device)
  if variant == "compile":
    step = torch.compile(step)
  sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
  t0 = time.perf_counter()
  for _ in range(2):  # warm-up (and compilation)
    step(images, labels).item()
  warmup = time.perf_counter() - t0
  times = []
  for _ in range(args.windows):
    sync()
    t0 = time.perf_counter()
    for _ in range(args.steps):
      loss = step(images, labels)
    loss.item()
    sync()
    times.append((time.perf_counter() - t0) / args.steps)
  ms = statistics.median(times) * 1e3
  memory = torch.cuda.max_memory_allocated() if device == "cuda" else None
  return {
    "what": "train_step",
    "framework": "pytorch",
    "variant": variant,
    "model": args.model,
    "batch_size": args.batch_size,
    "dtype": args.dtype,
    "images_per_sec": args.batch_size / (ms / 1e3),
    "ms_per_step": ms,
    "ms_per_step_windows": [t * 1e3 for t in times],
    "warmup_sec": warmup,
    "peak_memory_bytes": memory,
    "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
    "threads": torch.get_num_threads(),
    "torch": torch.__version__,
  }


def jax_bench(args) -> dict:
  cmd = [
    sys.executable, "-m", "alexnet_jax.benchmark", f"--model={args.model}", f"--batch_size={args.batch_size}",
    f"--dtype={args.dtype}", f"--steps={args.steps}", f"--windows={args.windows}", *args.jax_flags.split(),
  ]  # fmt: skip
  out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
  if out.returncode:
    raise SystemExit(f"the JAX benchmark failed: {' '.join(cmd)}\n{out.stderr[-3000:]}")
  rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
  return {**rows[-1], "framework": "jax", "command": " ".join(cmd[1:])}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--model", default="paper", choices=sorted(ARCHITECTURES))
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  parser.add_argument("--steps", type=int, default=3)
  parser.add_argument("--windows", type=int, default=3)
  parser.add_argument("--variants", default="eager,channels_last", help="eager, channels_last, compile")
  parser.add_argument("--repeats", type=int, default=1, help="alternations of PyTorch and JAX")
  parser.add_argument("--jax_flags", default="", help="extra flags for python -m alexnet_jax.benchmark")
  parser.add_argument("--no_jax", action="store_true", help="PyTorch only")
  args = parser.parse_args(argv)
  device = "cuda" if torch.cuda.is_available() else "cpu"
  if device == "cuda":
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True

  torch_rows, jax_rows = [], []
  for _ in range(args.repeats):
    for variant in args.variants.split(","):
      try:
        row = bench(variant, args, device)
      except Exception as e:  # torch.compile does not work everywhere: say so and go on
        row = {"what": "train_step", "framework": "pytorch", "variant": variant, "error": f"{type(e).__name__}: {e}"}
      torch_rows.append(row)
      print(json.dumps(row), flush=True)
    if not args.no_jax:
      jax_rows.append(jax_bench(args))
      print(json.dumps(jax_rows[-1]), flush=True)
  # Each side's figure is its median over the repeats (the best PyTorch variant by that median), so that neither
  # side is credited with its luckiest window on a noisy machine.
  medians = {}
  for variant in args.variants.split(","):
    rates = [r["images_per_sec"] for r in torch_rows if r.get("variant") == variant and "images_per_sec" in r]
    if rates:
      medians[variant] = statistics.median(rates)
  if jax_rows and medians:
    best = max(medians, key=medians.get)
    jax_rate = statistics.median(r["images_per_sec"] for r in jax_rows)
    print(
      json.dumps(
        {
          "what": "ratio",
          "jax_images_per_sec": jax_rate,
          "jax_images_per_sec_repeats": [r["images_per_sec"] for r in jax_rows],
          "pytorch_images_per_sec_median": medians,
          "best_pytorch_variant": best,
          "ratio_jax_to_best_pytorch": jax_rate / medians[best],
          "model": args.model,
          "batch_size": args.batch_size,
          "dtype": args.dtype,
          "repeats": args.repeats,
        }
      ),
      flush=True,
    )
  return 0


if __name__ == "__main__":
  sys.exit(main())
