"""``make demo``: the whole real path on this machine, with no download.

generate the embedded shapes dataset -> prepare it (resize, shards, mean image, RGB eigenpairs) -> train
``configs/demo.py`` -> evaluate with the paper's 10 crops -> say what came out and where everything is. Each stage
is skipped when its output is already there, so a second ``make demo`` is quick.
"""

from __future__ import annotations

import os
import sys
import time

from absl import flags

flags.DEFINE_string("workdir", "workdirs/demo", "Where the demo's checkpoints, metrics and TensorBoard logs go.")
flags.DEFINE_string("data_root", "demo_data", "Where the generated and the prepared dataset go.")
flags.DEFINE_integer(
  "num_train_steps", 0, "Train this many steps (0: configs/demo.py's own, ~4 min on 2 cores).", lower_bound=0
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def say(message: str) -> None:
  print(f"[demo] {message}", file=sys.stderr, flush=True)


def main(argv: list[str]) -> None:
  del argv
  from alexnet_jax import config_lib, evaluate, train
  from alexnet_jax.data import embedded, format, prepare
  from alexnet_jax.native import library_logs

  library_logs.quiet_library_logs()
  data_root = os.path.abspath(flags.FLAGS.data_root)
  raw, prepared = os.path.join(data_root, "shapes"), os.path.join(data_root, "shapes_prepared")
  t0 = time.time()
  made = not os.path.exists(os.path.join(prepared, format.METADATA))
  if not os.path.isdir(os.path.join(raw, "val")):
    say(f"generating the shapes dataset into {raw}")
    embedded.generate(raw)
  if made:
    say(f"preparing {raw} -> {prepared}")
    prepare.prepare(raw, prepared, image_size=76, examples_per_shard=500)
  t1 = time.time()

  config = config_lib.load_config_file(os.path.join(ROOT, "configs", "demo.py"))
  config.data.dir = prepared
  if flags.FLAGS.num_train_steps:
    config.num_train_steps = flags.FLAGS.num_train_steps
  workdir = os.path.abspath(flags.FLAGS.workdir)
  say(f"training configs/demo.py in {workdir}")
  result = train.train_and_evaluate(config, workdir)
  t2 = time.time()
  say("evaluating with the paper's 10 crops")
  ten = evaluate.evaluate_workdirs([workdir], crops=10)
  t3 = time.time()

  chance = 1 - 1 / config.model.num_classes
  data_note = f"generated and prepared in {t1 - t0:.0f} s" if made else "made by an earlier run, reused"
  if result["start_step"] >= result["step"]:
    trained_note = f"by an earlier run; delete {workdir} to train again"
  elif result["start_step"]:
    trained_note = f"resumed from step {result['start_step']}, {t2 - t1:.0f} s"
  else:
    trained_note = f"{t2 - t1:.0f} s"
  print(
    "\n".join(
      [
        "",
        "=== alexnet_jax demo ===",
        f"data:        {prepared} ({config.model.num_classes} classes, {data_note})",
        f"trained:     step {result['step']} of the paper's network at width {config.model.width}, "
        f"{config.model.image_size}x{config.model.image_size} crops ({trained_note})",
        f"10-crop:     top-1 error {ten['top1_error']:.1%} (chance {chance:.0%}), top-5 error {ten['top5_error']:.1%}, "
        f"{ten['num_examples']} validation images ({t3 - t2:.0f} s)",
        f"eval JSON:   {ten['path']}",
        f"metrics:     {workdir}/metrics.jsonl",
        f"TensorBoard: tensorboard --logdir {workdir}/tensorboard",
        f"checkpoints: {workdir}/checkpoints",
      ]
    ),
    flush=True,
  )


if __name__ == "__main__":
  from alexnet_jax import cli

  cli.run(main)  # a bad flag value: one `error:` line, exit 2
