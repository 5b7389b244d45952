r"""AlexNet-BN with LARS at batch 1,024 against the paper's SGD at 128 on real photographs, the same epochs (issue 23).

The photographs are early_dynamics.py's (one class per colour photograph shipped in the scikit-image and scikit-learn
wheels, each example a random crop of it; training crops from the left three quarters, validation crops from the
right quarter), built with enough crops that an epoch holds several batches of 1,024:

  pip download --no-deps -d WHEELS scikit-image==0.26.0 scikit-learn==1.9.1
  python benchmarks/early_dynamics.py build --wheels=WHEELS --out=/tmp/study_data \
    --train_per_class=820 --val_per_class=100
  XLA_FLAGS=--xla_force_host_platform_device_count=1 \
    python benchmarks/large_batch_study.py run --data=/tmp/study_data/prepared --out=/tmp/large_batch_study
  python benchmarks/large_batch_study.py summary --out=/tmp/large_batch_study

``run`` trains each recipe once per seed through the real command line (early_dynamics.run: the commands are checked
against the configs first, a finished run is not rerun), both at the same reduced scale (``--width`` of every layer,
``--image_size`` crops of images resized to image_size / (227/256), 10 classes) and the same number of epochs:

- ``sgd_128``: ``configs/paper.py`` as it stands (the authors' recipe: batch 128, momentum SGD at 0.01, the rate
  divided by 10 when the once-an-epoch validation error stops improving);
- ``lars_1024``: ``configs/large_batch.py:8k`` at a global batch of 1,024 as 8 accumulated micro-batches of 128
  (AlexNet-BN, batch norm over each micro-batch; LARS with trust coefficient 0.001, momentum 0.9, weight decay 5e-4,
  on every array; one epoch of linear warm-up, then polynomial decay of power 2 to 0; dropout 0.5; float32 on the
  CPU); peak rate 3.4, the LARS paper's AlexNet-BN rates (2 at 512, 10 at 4K) interpolated as a power of the batch.

``summary`` prints the table for benchmarks/RESULTS.md (final 1-crop validation top-1 error of every run, from its
metrics.jsonl) and the verdict: whether the large-batch mean lies within the larger of the two recipes' seed
differences of SGD's mean.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import early_dynamics  # benchmarks/ is not a package: found through sys.path

LARS_PEAK = 3.4  # 2 * (1024 / 512) ** (log 5 / log 8): the LARS paper's 2 at 512 and 10 at 4K on one power law

# recipe -> (config, flags, effective batch, micro-batch): every choice under study spelled out.
RECIPES = {
  "sgd_128": ("configs/paper.py", {"config.batch_size": 128}, 128, 128),
  "lars_1024": (
    "configs/large_batch.py:8k",  # AlexNet-BN, LARS (eta 0.001, momentum 0.9, decay 5e-4, every array), poly power 2
    {
      "config.batch_size": 1024,
      "config.optimizer.accumulation_steps": 8,
      "config.optimizer.learning_rate": LARS_PEAK,
      "config.schedule.warmup_epochs": 1.0,
      "config.health.max_steps_at_chance": 500,  # the same warning as configs/paper.py's (a warning only)
    },
    1024,
    128,
  ),
}


def commands(data: str, out: str, epochs: float, seeds: list[int], width: float, image_size: int, recipes: list[str]):
  """(recipe, seed, workdir, command) of every run, in the form early_dynamics.run takes."""
  runs = []
  for seed in seeds:  # seed by seed: a cut-short study still has both recipes at the first seed
    for name in recipes:
      config, own, _, _ = RECIPES[name]
      flags = {
        "config.data.dir": data, "config.model.num_classes": 10, "config.model.width": width,
        "config.model.image_size": image_size, "config.model.dtype": "float32", "config.num_epochs": epochs,
        "config.num_train_steps": -1, "config.eval_every_steps": -1, "config.eval_batch_size": 100,
        "config.log_every_steps": 8, "config.checkpoint_every_steps": 100_000, "config.seed": seed, **own,
      }  # fmt: skip
      workdir = os.path.join(out, f"{name}_seed{seed}")
      cmd = [sys.executable, "-m", "alexnet_jax.main", f"--config={config}", f"--workdir={workdir}"]
      runs.append((name, seed, workdir, cmd + [f"--{k}={v}" for k, v in flags.items()]))
  return runs


def results(out: str) -> list[dict]:
  """One row per finished run: its recipe, seed, exit code, batch, steps, epochs and final validation top-1 error."""
  rows = []
  for _, meta, train, evals in early_dynamics.finished_runs(out):
    rows.append({
      "recipe": meta["variant"], "seed": meta["seed"], "rc": meta["rc"],
      "batch": RECIPES[meta["variant"]][2], "micro": RECIPES[meta["variant"]][3],
      "steps": train[-1]["step"] if train else 0, "epochs": train[-1]["epoch"] if train else 0.0,
      "train_loss": train[-1]["train_loss"] if train else float("nan"),
      "error": evals[-1]["eval_top1_error"] if evals else float("nan"),
      "best": min(r["eval_top1_error"] for r in evals) if evals else float("nan"),
      "last_lr": train[-1]["learning_rate"] if train else float("nan"),
    })  # fmt: skip
  return rows


def verdict(rows: list[dict], large: str = "lars_1024", small: str = "sgd_128") -> str:
  """The large-batch mean against SGD's, within the larger of the two recipes' seed differences (max - min)?"""
  errors = {name: [r["error"] for r in rows if r["recipe"] == name and r["rc"] == 0] for name in (large, small)}
  if any(len(e) < 2 for e in errors.values()):
    return f"no verdict: fewer than two finished seeds of a recipe ({ {k: len(v) for k, v in errors.items()} })"
  mean = {k: sum(v) / len(v) for k, v in errors.items()}
  spread = {k: max(v) - min(v) for k, v in errors.items()}
  tolerance = max(spread.values())
  gap = mean[large] - mean[small]
  within = abs(gap) <= tolerance
  return (
    f"{large} mean top-1 error {mean[large]:.3f}, {small} mean {mean[small]:.3f}: difference {gap:+.3f}; seed "
    f"differences {spread[large]:.3f} ({large}) and {spread[small]:.3f} ({small}), the larger {tolerance:.3f}. "
    + (
      f"The large-batch mean IS within {tolerance:.3f} of SGD's."
      if within
      else f"The large-batch mean is NOT within {tolerance:.3f} of SGD's."
    )
  )


def summary(out: str) -> str:
  rows = results(out)
  lines = [
    "| recipe | effective batch (micro-batch) | steps | epochs | seed | train loss, last log | final val top-1 error "
    "(1 crop) | best val top-1 error | exit |",
    "|---|---|---|---|---|---|---|---|---|",
  ]
  for r in rows:
    lines.append(
      f"| {r['recipe']} | {r['batch']:,} ({r['micro']}) | {r['steps']} | {r['epochs']:.2f} | {r['seed']} | "
      f"{r['train_loss']:.3f} | {r['error']:.3f} | {r['best']:.3f} | {r['rc']} |"
    )
  return "\n".join(lines) + "\n\n" + verdict(rows)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest="command", required=True)
  r = sub.add_parser("run")
  r.add_argument("--data", required=True, help="early_dynamics.py build's OUT/prepared")
  r.add_argument("--out", required=True)
  r.add_argument("--epochs", type=float, default=8.0)
  r.add_argument("--seeds", default="0,1")
  r.add_argument("--width", type=float, default=0.25)
  r.add_argument("--image_size", type=int, default=67)
  r.add_argument("--recipes", default=",".join(RECIPES))
  r.add_argument("--dry_run", action="store_true", help="check and print the commands, run nothing")
  s = sub.add_parser("summary")
  s.add_argument("--out", required=True)
  args = parser.parse_args()
  if args.command == "run":
    names = [n for n in args.recipes.split(",") if n]
    unknown = [n for n in names if n not in RECIPES]
    if unknown:
      raise SystemExit(f"unknown recipes {unknown}; known: {list(RECIPES)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    runs = commands(args.data, args.out, args.epochs, seeds, args.width, args.image_size, names)
    if args.dry_run:
      early_dynamics.check(runs)
      print("\n".join(" ".join(cmd) for *_, cmd in runs))
    else:
      early_dynamics.run(runs)
  else:
    print(summary(args.out))


if __name__ == "__main__":
  main()
