"""What a run reports: clu metric collections, and the writers (TensorBoard, log, metrics.jsonl).

(No ``from __future__ import annotations`` here: clu reads the metric classes from the annotations at runtime.)
"""

import json
import os
from collections.abc import Mapping
from typing import Any

import flax
import jax
import numpy as np
from clu import metric_writers, metrics


@flax.struct.dataclass
class TrainMetrics(metrics.Collection):
  loss: metrics.Average.from_output("loss")
  top1_error: metrics.Average.from_output("top1_error")
  top5_error: metrics.Average.from_output("top5_error")
  grad_norm: metrics.Average.from_output("grad_norm")
  learning_rate: metrics.LastValue.from_output("learning_rate")
  finite: metrics.Average.from_output("finite")


@flax.struct.dataclass
class EvalMetrics(metrics.Collection):
  """Averages over the examples whose ``mask`` is 1 (padding rows count for nothing)."""

  loss: metrics.Average.from_output("loss")
  top1_error: metrics.Average.from_output("top1_error")
  top5_error: metrics.Average.from_output("top5_error")
  num_examples: metrics.Average.from_output("mask")  # its count is the number of real examples


def eval_results(collection: EvalMetrics) -> dict[str, float]:
  values = {k: float(v) for k, v in collection.compute().items() if k != "num_examples"}
  values["num_examples"] = int(collection.num_examples.count)
  return values


class JsonlWriter(metric_writers.interface.MetricWriter):
  """Appends one JSON object per write to ``path``: ``{"step": N, key: value, ...}`` (scalars only)."""

  def __init__(self, path: str):
    self._path = path
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    row = {"step": int(step), **{k: float(np.asarray(v)) for k, v in scalars.items()}}
    self._file.write(json.dumps(row) + "\n")

  def write_summaries(self, step, values, metadata=None):
    pass

  def write_images(self, step, images):
    pass

  def write_videos(self, step, videos):
    pass

  def write_audios(self, step, audios, *, sample_rate):
    pass

  def write_texts(self, step, texts):
    pass

  def write_histograms(self, step, arrays, num_buckets=None):
    pass

  def write_hparams(self, hparams):
    pass

  def flush(self) -> None:
    self._file.flush()

  def close(self) -> None:
    self._file.close()


def create_writer(workdir: str) -> metric_writers.MetricWriter:
  """TensorBoard (WORKDIR/tensorboard) + log + WORKDIR/metrics.jsonl on process 0; nothing elsewhere (every process
  computes the same global metrics)."""
  if jax.process_index() > 0:
    return metric_writers.MultiWriter([])
  return metric_writers.MultiWriter(
    [
      metric_writers.LoggingWriter(),
      metric_writers.SummaryWriter(os.path.join(workdir, "tensorboard")),
      JsonlWriter(os.path.join(workdir, "metrics.jsonl")),
    ]
  )
