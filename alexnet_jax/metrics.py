"""What a run reports: clu metric collections, and the writers (TensorBoard, log, metrics.jsonl).

(No ``from __future__ import annotations`` here: clu reads the metric classes from the annotations at runtime.)
"""

import json
import time
from collections.abc import Mapping
from typing import Any

import flax
import jax
import numpy as np
from absl import logging
from clu import metric_writers, metrics

from alexnet_jax import storage
from alexnet_jax.model import LAYER_NAMES
from alexnet_jax.native import compat
from alexnet_jax.steps import RELU_LAYERS

HEALTH_KINDS = ("grad_norm", "param_norm", "update_ratio", "dead_relu")


def _train_metrics(loss_scaling: bool = False) -> type[metrics.Collection]:
  """The train step's outputs, averaged over a logging window; the parameter norms are those after its last step.
  With ``loss_scaling`` (float16) also ``loss_scale`` (the last step's) and ``overflow`` (the fraction of the
  window's steps whose update was skipped for a loss-scale overflow)."""
  fields = {
    "loss": metrics.Average.from_output("loss"),
    "top1_error": metrics.Average.from_output("top1_error"),
    "top5_error": metrics.Average.from_output("top5_error"),
    "grad_norm": metrics.Average.from_output("grad_norm"),
    "param_norm": metrics.LastValue.from_output("param_norm"),
    "learning_rate": metrics.LastValue.from_output("learning_rate"),
    "finite": metrics.Average.from_output("finite"),
  }
  for layer in LAYER_NAMES:
    fields[f"grad_norm_{layer}"] = metrics.Average.from_output(f"grad_norm_{layer}")
    fields[f"param_norm_{layer}"] = metrics.LastValue.from_output(f"param_norm_{layer}")
    fields[f"update_ratio_{layer}"] = metrics.Average.from_output(f"update_ratio_{layer}")
  for layer in RELU_LAYERS:
    fields[f"dead_relu_{layer}"] = metrics.Average.from_output(f"dead_relu_{layer}")
  if loss_scaling:
    fields["loss_scale"] = metrics.LastValue.from_output("loss_scale")
    fields["overflow"] = metrics.Average.from_output("overflow")
  return metrics.Collection.create(**fields)


TrainMetrics = _train_metrics()
TrainMetricsLossScaled = _train_metrics(loss_scaling=True)  # float16 runs (steps.make_train_step's loss_scaling)


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
  """Appends one JSON object per write to ``path``: ``{"step": N, key: value, ...}`` (scalars only).

  On local disk every row is flushed at once (a crash must not lose rows whose checkpoints exist). Cloud storage has
  no append: the whole file is uploaded again, at most every ``upload_seconds`` and at every flush and close.
  """

  def __init__(self, path: str, upload_seconds: float = 30.0):
    self._path, self._upload_seconds = path, upload_seconds
    storage.makedirs(storage.dirname(path) or ".")
    self._file = None
    if storage.is_url(path):
      self._rows = []
      if storage.exists(path):
        with storage.open(path) as f:
          self._rows = [f.read()]
      self._uploaded = time.monotonic()
    else:
      self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    row = json.dumps({"step": int(step), **{k: float(np.asarray(v)) for k, v in scalars.items()}}) + "\n"
    if self._file is not None:
      self._file.write(row)
      self._file.flush()
      return
    self._rows.append(row)
    if time.monotonic() - self._uploaded >= self._upload_seconds:
      self.flush()

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
    if self._file is not None:
      self._file.flush()
      return
    with storage.open(self._path, "w") as f:
      f.write("".join(self._rows))
    self._uploaded = time.monotonic()

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
    else:
      self.flush()


def health_tag(key: str) -> str | None:
  """``train_grad_norm_conv1`` -> ``grad_norm/conv1`` (TensorBoard groups a tag by what precedes its '/': one
  group per kind, one curve per layer); None for any other key."""
  for kind in HEALTH_KINDS:
    prefix = f"train_{kind}_"
    if key.startswith(prefix) and key[len(prefix) :] in LAYER_NAMES:
      return f"{kind}/{key[len(prefix) :]}"
  return None


class _Renamed(metric_writers.MetricWriter):
  """A writer that passes scalars on under other names (``rename`` -> None drops a key)."""

  def __init__(self, writer: metric_writers.MetricWriter, rename):
    self._writer, self._rename = writer, rename

  def write_scalars(self, step, scalars):
    renamed = {self._rename(k): v for k, v in scalars.items() if self._rename(k) is not None}
    if renamed:
      self._writer.write_scalars(step, renamed)

  def write_summaries(self, step, values, metadata=None):
    self._writer.write_summaries(step, values, metadata)

  def write_images(self, step, images):
    self._writer.write_images(step, images)

  def write_videos(self, step, videos):
    self._writer.write_videos(step, videos)

  def write_audios(self, step, audios, *, sample_rate):
    self._writer.write_audios(step, audios, sample_rate=sample_rate)

  def write_texts(self, step, texts):
    self._writer.write_texts(step, texts)

  def write_histograms(self, step, arrays, num_buckets=None):
    self._writer.write_histograms(step, arrays, num_buckets)

  def write_hparams(self, hparams):
    self._writer.write_hparams(hparams)

  def flush(self):
    self._writer.flush()

  def close(self):
    self._writer.close()


def create_writer(workdir: str, tensorboard: bool = True) -> metric_writers.MetricWriter:
  """TensorBoard (WORKDIR/tensorboard) + log + WORKDIR/metrics.jsonl on process 0; nothing elsewhere (every process
  computes the same global metrics). The per-layer health scalars go to metrics.jsonl as they are, to TensorBoard
  grouped by kind (``grad_norm/conv1``, ...), and not to the log line (31 of them at every log step)."""
  if jax.process_index() > 0:
    return metric_writers.MultiWriter([])
  writers = [_Renamed(metric_writers.LoggingWriter(), lambda k: None if health_tag(k) else k)]
  if tensorboard and not compat.has_tensorflow():
    logging.warning("No TensorBoard summaries: %s metrics.jsonl has every row.", compat.TENSORFLOW_HINT)
  elif tensorboard:
    board = metric_writers.SummaryWriter(storage.join(workdir, "tensorboard"))
    writers.append(_Renamed(board, lambda k: health_tag(k) or k))
  return metric_writers.MultiWriter([*writers, JsonlWriter(storage.join(workdir, "metrics.jsonl"))])
