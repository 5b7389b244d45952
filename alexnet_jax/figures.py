r"""The paper's figures for a trained run, as matplotlib figures and as PNGs.

  python -m alexnet_jax.figures --workdir=workdirs/demo --out=workdirs/demo/figures

writes ``fig3_kernels.png`` (Fig. 3: conv1's kernels as an image grid, one row of groups per column of the model
split), ``fig4_predictions.png`` (Fig. 4 left: validation images with their top-5 bars, the true class's bar in
red), ``fig4_neighbours.png`` (Fig. 4 right: query images and the images nearest to them by the Euclidean
distance of their fc7 features; the paper searched the training set, we search the validation set), ``confusion.png``
and ``curves.png`` (loss and error from ``metrics.jsonl``). Every function returns a matplotlib Figure, for
notebooks.
"""

from __future__ import annotations

import json
import math
import os
import sys
from typing import Any

import numpy as np
from absl import flags

from alexnet_jax import cli


def _pyplot():
  import matplotlib

  if "ipykernel" not in sys.modules:  # a script or a test: no display
    matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  return plt


def kernel_grid(kernels: np.ndarray, columns: int = 2) -> np.ndarray:
  """conv1's kernels [count, h, w, 3] as one RGB image: each kernel scaled to [0, 1] on its own (as the paper shows
  them), laid out in rows of count / (columns * rows) with a one-pixel border; the kernels of each model column (the
  paper's GPU 1 and GPU 2: the first and second half of the output channels) are in their own block of rows."""
  count, h, w, _ = kernels.shape
  lo = kernels.min(axis=(1, 2, 3), keepdims=True)
  hi = kernels.max(axis=(1, 2, 3), keepdims=True)
  scaled = (kernels - lo) / np.maximum(hi - lo, 1e-12)
  per_row = max(1, math.ceil(math.sqrt(count / columns) * 2))
  blocks = []
  for block in np.array_split(scaled, columns):
    rows = math.ceil(len(block) / per_row)
    canvas = np.ones((rows * (h + 1) + 1, per_row * (w + 1) + 1, 3))
    for i, k in enumerate(block):
      r, c = divmod(i, per_row)
      canvas[1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + c * (w + 1) : 1 + c * (w + 1) + w] = k
    blocks.append(canvas)
  gap = np.ones((h // 2 + 1, blocks[0].shape[1], 3))
  return np.concatenate([x for b in blocks for x in (b, gap)][:-1], axis=0)


def fig3_kernels(kernels: np.ndarray, columns: int = 2):
  """Fig. 3: the learned conv1 kernels (96 of 11x11x3 in the paper; top half learned on GPU 1, bottom on GPU 2)."""
  plt = _pyplot()
  grid = kernel_grid(kernels, columns)
  fig, ax = plt.subplots(figsize=(8, 8 * grid.shape[0] / grid.shape[1] + 0.6))
  ax.imshow(grid, interpolation="nearest")
  ax.set_axis_off()
  ax.set_title(f"conv1: {kernels.shape[0]} kernels of {kernels.shape[1]}x{kernels.shape[2]}x3")
  fig.tight_layout()
  return fig


def fig4_predictions(
  images: np.ndarray | list[np.ndarray],
  probabilities: np.ndarray,
  labels: np.ndarray | None,
  class_names: list[str],
  titles: list[str] | None = None,
):
  """Fig. 4 left: each image (uint8 [H, W, 3], any size) with its five most probable classes (``probabilities``
  [N, classes]) as bars named by ``class_names``; the correct class's bar in red. ``labels=None``: images whose class
  is not known (your own photos), titled by ``titles`` (default: the most probable class)."""
  plt = _pyplot()
  n = len(images)
  cols = min(4, n)
  rows = math.ceil(n / cols)
  fig, axes = plt.subplots(rows * 2, cols, figsize=(3 * cols, 4.6 * rows), gridspec_kw={"height_ratios": [3, 2] * rows})
  axes = np.asarray(axes).reshape(rows * 2, cols)
  for i in range(rows * cols):
    top, bars = axes[2 * (i // cols), i % cols], axes[2 * (i // cols) + 1, i % cols]
    top.set_axis_off()
    if i >= n:
      bars.set_axis_off()
      continue
    top.imshow(images[i])
    best = np.argsort(probabilities[i])[::-1][:5]  # fewer bars when there are fewer than 5 classes
    title = titles[i] if titles else class_names[labels[i] if labels is not None else best[0]]
    top.set_title(title, fontsize=10)
    colours = ["tab:red" if labels is not None and c == labels[i] else "tab:blue" for c in best]
    bars.barh(range(len(best)), probabilities[i][best], color=colours)
    bars.set_yticks(range(len(best)), [class_names[c] for c in best], fontsize=8)
    bars.invert_yaxis()
    bars.set_xlim(0, 1)
    bars.tick_params(axis="x", labelsize=7)
  known = " (red: the correct class)" if labels is not None else ""
  fig.suptitle(f"Top-{min(5, probabilities.shape[1])} predictions{known}")
  fig.tight_layout()
  return fig


def nearest_neighbours(features: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
  """For each row of ``queries`` (indices into ``features``), the indices of its ``k`` nearest other rows by
  Euclidean distance."""
  sq = np.sum(features**2, axis=1)
  d = sq[queries, None] + sq[None, :] - 2.0 * features[queries] @ features.T
  d[np.arange(len(queries)), queries] = np.inf  # not itself
  return np.argsort(d, axis=1)[:, :k]


def fig4_neighbours(images: np.ndarray, features: np.ndarray, queries: np.ndarray, k: int = 6):
  """Fig. 4 right: a query image (first column) and the ``k`` images whose fc7 feature vectors are nearest to its
  own by Euclidean distance. Pixels are not compared: similar features, not similar pictures."""
  plt = _pyplot()
  neighbours = nearest_neighbours(features, queries, k)
  fig, axes = plt.subplots(len(queries), k + 1, figsize=(1.6 * (k + 1), 1.7 * len(queries)), squeeze=False)
  for r, q in enumerate(queries):
    for c, idx in enumerate([q, *neighbours[r]]):
      ax = axes[r, c]
      ax.imshow(images[idx])
      ax.set_xticks([])
      ax.set_yticks([])
      if c == 0:
        for spine in ax.spines.values():
          spine.set_edgecolor("tab:red")
          spine.set_linewidth(2)
  axes[0, 0].set_title("query", fontsize=9)
  axes[0, 1].set_title(f"{k} nearest by fc7 (Euclidean)", fontsize=9, loc="left")
  fig.tight_layout()
  return fig


def confusion(labels: np.ndarray, predicted: np.ndarray, class_names: list[str]):
  """A confusion matrix (rows: true class, columns: predicted), normalised per true class."""
  plt = _pyplot()
  n = len(class_names)
  counts = np.zeros((n, n))
  np.add.at(counts, (labels, predicted), 1)
  rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
  fig, ax = plt.subplots(figsize=(1 + 0.5 * n, 1 + 0.45 * n))
  im = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
  if n <= 30:
    ax.set_xticks(range(n), class_names, rotation=90, fontsize=8)
    ax.set_yticks(range(n), class_names, fontsize=8)
  ax.set_xlabel("predicted")
  ax.set_ylabel("true")
  ax.set_title(f"Confusion ({len(labels)} images, top-1 error {np.mean(labels != predicted):.1%})")
  fig.colorbar(im, ax=ax, fraction=0.046)
  fig.tight_layout()
  return fig


def read_metrics(path: str) -> list[dict[str, Any]]:
  from alexnet_jax import storage

  with storage.open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def training_curves(rows: list[dict[str, Any]]):
  """Loss and top-1/top-5 error against the step, training (logged windows) and evaluation."""
  plt = _pyplot()
  fig, (loss_ax, err_ax) = plt.subplots(1, 2, figsize=(11, 4))

  def series(key):
    points = [(r["step"], r[key]) for r in rows if key in r and r[key] is not None]
    return ([p[0] for p in points], [p[1] for p in points]) if points else None

  for key, ax, style in (
    ("train_loss", loss_ax, "-"),
    ("eval_loss", loss_ax, "o-"),
    ("train_top1_error", err_ax, "-"),
    ("eval_top1_error", err_ax, "o-"),
    ("train_top5_error", err_ax, "--"),
    ("eval_top5_error", err_ax, "o--"),
  ):
    s = series(key)
    if s:
      ax.plot(*s, style, label=key, markersize=3)
  loss_ax.set_title("loss")
  err_ax.set_title("error")
  err_ax.set_ylim(0, 1)
  for ax in (loss_ax, err_ax):
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.tight_layout()
  return fig


def write_all(workdir: str, out: str, data_dir: str | None = None) -> list[str]:
  """Every figure for the run in ``workdir``, as PNGs in ``out``; returns their paths."""
  from alexnet_jax import storage
  from alexnet_jax.inference import Predictor

  predictor = Predictor.from_workdir(workdir, data_dir=data_dir)
  os.makedirs(out, exist_ok=True)
  images, labels = predictor.validation_images()
  probabilities = predictor.predict(images)
  features = predictor.features(images, "fc7")
  rng = np.random.default_rng(0)
  shown = np.sort(rng.choice(len(images), min(8, len(images)), replace=False))
  queries = np.sort(rng.choice(len(images), min(5, len(images) - 1), replace=False))
  figures = {
    "fig3_kernels.png": fig3_kernels(predictor.conv1_kernels()),
    "fig4_predictions.png": fig4_predictions(images[shown], probabilities[shown], labels[shown], predictor.class_names),
    "fig4_neighbours.png": fig4_neighbours(images, features, queries, k=min(6, len(images) - 1)),
    "confusion.png": confusion(labels, probabilities.argmax(axis=1), predictor.class_names),
  }
  metrics_path = storage.join(storage.resolve(workdir), "metrics.jsonl")
  if storage.exists(metrics_path):
    figures["curves.png"] = training_curves(read_metrics(metrics_path))
  paths = []
  for name, fig in figures.items():
    path = os.path.join(out, name)
    fig.savefig(path, dpi=120)
    _pyplot().close(fig)
    paths.append(path)
  return paths


def define_flags() -> None:
  flags.DEFINE_string("workdir", None, "A training run's workdir (its newest readable checkpoint is used).")
  flags.DEFINE_string("out", None, "Where the PNGs go (default: WORKDIR/figures).")
  flags.DEFINE_string("data_dir", None, "The run's prepared set, if it moved since training.")
  flags.mark_flags_as_required(["workdir"])


def main(argv: list[str]) -> int:
  del argv
  f = flags.FLAGS
  try:
    paths = write_all(f.workdir, f.out or os.path.join(f.workdir, "figures"), data_dir=f.data_dir)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  for path in paths:
    print(path)
  return 0


if __name__ == "__main__":
  define_flags()
  cli.run(main)
