r"""Evaluate trained runs: ``python -m alexnet_jax.evaluate --workdir=DIR [--crops=1|10] [--data_dir=DST]``.

Restores the newest checkpoint of DIR (or ``--step``), evaluates every validation example exactly once on the
centre crop or the paper's 10 crops (Sec. 4.1: 4 corners + centre, and their mirrors, softmax averaged), prints the
top-1/top-5 error and writes ``DIR/eval/step<STEP>_<CROPS>crop.json`` with ``step, crops, num_examples, top1_error,
top5_error``. Several comma-separated workdirs are evaluated as one ensemble (softmax averaged over the models, as
the paper's "5 CNNs"); the JSON then goes to the first workdir's ``eval/``.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import ml_collections
from absl import flags, logging

from alexnet_jax import cli


def define_flags() -> None:
  """The command-line flags (defined only when run as a program, so importing this module defines none)."""
  flags.DEFINE_string("workdir", None, "A training workdir, or several comma-separated ones (an ensemble).")
  flags.DEFINE_integer("crops", 10, "1 (centre crop) or 10 (the paper's 10 crops).")
  flags.DEFINE_string("data_dir", None, "A prepared dataset to evaluate on (default: the run's data.dir).")
  flags.DEFINE_integer("step", None, "Which checkpoint (default: the newest).")
  flags.DEFINE_integer("batch_size", None, "Global evaluation batch (default: the run's eval_batch_size).")
  cli.define_process_flags()  # launch/local.py, SLURM, ...: evaluate runs on any number of processes


def config_from_json(saved: dict[str, Any]) -> ml_collections.ConfigDict:
  """A config saved with a checkpoint, back as a ConfigDict over the current defaults (tuples restored)."""
  from alexnet_jax import config_lib

  config = config_lib.base_config()
  for key, value in config_lib.flatten(saved).items():
    try:
      config_lib.set_by_path(config, key, value)
    except (ValueError, KeyError) as e:
      raise ValueError(f"the checkpoint's config has key {key!r}, which this version does not know") from e
  return config


def evaluate_workdirs(
  workdirs: list[str],
  *,
  crops: int = 10,
  data_dir: str | None = None,
  step: int | None = None,
  batch_size: int | None = None,
) -> dict[str, Any]:
  """Evaluate one run or an ensemble of runs; returns (and writes) the result JSON."""
  import jax

  from alexnet_jax import checkpoint as checkpoint_lib
  from alexnet_jax import config_lib, parallel, steps, storage, train, weights
  from alexnet_jax.data import sources

  if crops not in (1, 10):
    raise ValueError(f"--crops must be 1 or 10, got {crops}")
  configs, steps_used = [], []
  for workdir in workdirs:
    if not storage.isdir(storage.join(workdir, "checkpoints")):  # and never create a mistyped workdir
      raise ValueError(f"--workdir={workdir} holds no checkpoints/ folder: train there first, or check the path")
    ckpt = checkpoint_lib.Checkpointer(storage.join(storage.resolve(workdir), "checkpoints"), max_to_keep=10**9)
    try:
      s, saved = ckpt.read_config(step)
    finally:
      ckpt.close()
    config = config_from_json(saved)
    if not data_dir and weights.imported_without_data(workdir, config):
      raise ValueError(
        f"{workdir} holds imported weights written without a dataset (python -m alexnet_jax.weights without "
        "--data_dir): evaluating them would only measure synthetic images. Pass --data_dir=DST, a prepared "
        "ImageNet (python -m alexnet_jax.prepare)"
      )
    if data_dir:
      config.data.dir = data_dir
      config.data.source = "auto"  # whatever that folder holds
    config.data.eval_crops = crops
    config.model.bn_group_size = 0  # evaluation uses the running statistics: training's groups play no part
    if batch_size:
      config.eval_batch_size = batch_size
    config_lib.validate(config)
    configs.append(config)
    steps_used.append(s)
  first = configs[0]
  for w, c in zip(workdirs[1:], configs[1:], strict=True):
    for key in ("model.num_classes", "data.dir", "data.source"):
      if config_lib.flatten(c)[key] != config_lib.flatten(first)[key]:
        raise ValueError(f"ensemble members disagree on {key}: {workdirs[0]} vs {w}")

  mesh = parallel.create_mesh(first.mesh.model)
  parallel.check_batch_size(first.eval_batch_size, mesh, "eval batch size")
  source = sources.create_source(first)
  graphdefs, params, shardings = [], [], []
  for i, (workdir, config) in enumerate(zip(workdirs, configs, strict=True)):
    # --step: exactly that step; otherwise the newest readable one, falling back past damaged ones as training does.
    steps_used[i], state, graphdef = train.load_checkpoint(config, workdir, mesh=mesh, step=step)
    graphdefs.append(graphdef)
    params.append(steps.model_variables(state))  # the parameters and, with batch norm, the running statistics
    shardings.append(jax.tree.map(lambda x: x.sharding, params[-1]))
  eval_step = train.jit_eval_step(tuple(graphdefs), source.preprocess, mesh, tuple(shardings))
  result = train.evaluate(
    eval_step, tuple(params), source.eval_batches(first.eval_batch_size), parallel.batch_sharding(mesh)
  )
  out = {
    "step": steps_used[0] if len(workdirs) == 1 else steps_used,
    "crops": crops,
    "num_examples": result["num_examples"],
    "top1_error": result["top1_error"],
    "top5_error": result["top5_error"],
    "loss": result["loss"],
    "workdirs": [storage.resolve(w) for w in workdirs],
    "data_dir": first.data.dir or None,
    "data_source": sources.resolve_source(first)[0],
  }
  if jax.process_index() == 0:
    eval_dir = storage.join(storage.resolve(workdirs[0]), "eval")
    name = (
      f"step{steps_used[0]}_{crops}crop.json" if len(workdirs) == 1 else f"ensemble{len(workdirs)}_{crops}crop.json"
    )
    try:  # a read-only workdir (an archived run, a shared bucket) still gets its numbers printed
      storage.makedirs(eval_dir)
      with storage.open(storage.join(eval_dir, name), "w") as f:
        json.dump(out, f, indent=1)
      out["path"] = storage.join(eval_dir, name)
    except OSError as e:
      logging.warning("Could not write %s (%s): the result is printed only.", storage.join(eval_dir, name), e)
  return out


def main(argv: list[str]) -> int:
  del argv
  f = flags.FLAGS
  if not f.workdir:
    print("error: give --workdir=DIR (or DIR1,DIR2,... for an ensemble)", file=sys.stderr)
    return 2
  if f.crops not in (1, 10):
    print(f"error: --crops must be 1 or 10, got {f.crops}", file=sys.stderr)
    return 2
  from alexnet_jax.native import library_logs

  library_logs.quiet_library_logs()  # before the backends start
  exit_code = cli.start_processes()
  if exit_code is not None:
    return exit_code
  try:
    out = evaluate_workdirs(
      f.workdir.split(","), crops=f.crops, data_dir=f.data_dir, step=f.step, batch_size=f.batch_size
    )
  except Exception as e:  # one error line: 1, or 75 for a transient one (a rerun may succeed)
    return cli.exit_code_for(e)
  print(
    f"top-1 error {out['top1_error']:.2%}  top-5 error {out['top5_error']:.2%}  ({out['crops']} crop(s), "
    f"{out['num_examples']} images, step {out['step']}) -> {out.get('path') or 'not written (see the warning)'}"
  )
  return 0


if __name__ == "__main__":
  define_flags()
  cli.run(main)
