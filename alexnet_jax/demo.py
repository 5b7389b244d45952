"""``make demo``: train the demo recipe on this machine, evaluate it, and say where the results are."""

from __future__ import annotations

import os
import sys

from absl import app, flags

flags.DEFINE_string("workdir", "workdirs/demo", "Where the demo's checkpoints, metrics and TensorBoard logs go.")


def main(argv: list[str]) -> None:
  del argv
  from alexnet_jax import config_lib, train

  train.quiet_orbax_logs()
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  config = config_lib.load_config_file(os.path.join(root, "configs", "demo.py"))
  workdir = os.path.abspath(flags.FLAGS.workdir)
  result = train.train_and_evaluate(config, workdir)
  chance = 1 - 1 / config.model.num_classes
  lines = [
    "",
    "=== alexnet_jax demo ===",
    f"trained to step {result['step']} ({config.model.name} network at width {config.model.width}, "
    f"{config.data.source} data, {config.model.num_classes} classes)",
  ]
  if "eval_top1_error" in result:
    lines.append(
      f"eval top-1 error {result['eval_top1_error']:.1%} (chance {chance:.0%}), "
      f"top-5 error {result['eval_top5_error']:.1%}, on {result['eval_num_examples']} images"
    )
  lines += [
    f"metrics:      {workdir}/metrics.jsonl",
    f"TensorBoard:  tensorboard --logdir {workdir}/tensorboard",
    f"checkpoints:  {workdir}/checkpoints (run `make demo` again: it resumes, and finds nothing left to do)",
    f"run manifest: {workdir}/run.json",
  ]
  print("\n".join(lines), file=sys.stdout, flush=True)


if __name__ == "__main__":
  app.run(main)
