"""Input wait across epoch boundaries: a per-epoch tf.data pipeline (an older prepared.py) beside the current one.

  git show e45009b:alexnet_jax/input_pipeline/prepared.py > /tmp/old_prepared.py
  python benchmarks/epoch_boundary.py --data_dir=DST --old=/tmp/old_prepared.py --batch_size=64 --step_ms=40

A consumer that "trains" for step_ms per batch (a sleep) reads 3 epochs from each pipeline, alternating twice; each
line gives the share of wall time spent waiting for input and the longest single wait (the epoch boundary).
"""

import argparse
import importlib.util
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from alexnet_jax.data.prepared import prepared_source


def measure(cls, data_dir: str, batch: int, step_ms: float, epochs: int, crop: int) -> dict:
  src = cls(data_dir, image_size=crop, seed=0, shuffle_buffer=6000)
  per = src.steps_per_epoch(batch)
  it = src.train_batches(0, batch)
  next(it), next(it)  # warm-up
  waits = []
  for _ in range(per * epochs):
    t0 = time.perf_counter()
    next(it)
    waits.append(time.perf_counter() - t0)
    time.sleep(step_ms / 1000)
  it.close()
  w = np.array(waits)
  total = w.sum() + len(w) * step_ms / 1000
  return {
    "steps": len(w),
    "steps_per_epoch": per,
    "input_wait_fraction": round(float(w.sum() / total), 4),
    "max_wait_ms": round(float(w.max() * 1000), 1),
    "median_wait_ms": round(float(np.median(w) * 1000), 2),
  }


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--data_dir", required=True)
  p.add_argument("--old", help="an older prepared.py to compare with (optional)")
  p.add_argument("--batch_size", type=int, default=64)
  p.add_argument("--step_ms", type=float, default=40)
  p.add_argument("--epochs", type=int, default=3)
  p.add_argument("--crop", type=int, default=67)
  p.add_argument("--repeats", type=int, default=2)
  a = p.parse_args()
  pipelines = [("one pipeline (current)", prepared_source)]
  if a.old:
    spec = importlib.util.spec_from_file_location("old_prepared", a.old)
    old = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(old)
    pipelines.insert(0, ("per-epoch pipeline (old)", old.PreparedSource))
  for rep in range(a.repeats):
    for name, cls in pipelines:
      row = measure(cls, a.data_dir, a.batch_size, a.step_ms, a.epochs, a.crop)
      print(json.dumps({"pipeline": name, "repeat": rep, **row}), flush=True)


if __name__ == "__main__":
  main()
