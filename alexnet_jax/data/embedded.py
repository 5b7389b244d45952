r"""The embedded dataset: procedurally drawn objects and textures, written as a class-folder tree of JPEGs.

  python -m alexnet_jax.shapes --output_dir=demo_data/shapes [--train_per_class=600] [--val_per_class=100]

Ten classes (disc, square, triangle, cross, ring, star, horizontal stripes, vertical stripes, checkerboard,
diagonal stripes), each drawn at a random position, scale, rotation and colour over a random background (flat,
gradient or noise), with a distractor blob in some images. Deterministic: the same seed gives the same bytes. It
needs no download, so `make demo` runs the real path (generate -> prepare -> train -> 10-crop evaluate) anywhere.
The task is learnable but not trivial: colour and position carry no information about the class, only shape and
texture do.
"""

from __future__ import annotations

import json
import math
import os
import sys

import numpy as np
from absl import flags

MARKER = "shapes.json"  # the arguments of a finished set, written last
CLASSES = ("disc", "square", "triangle", "cross", "ring", "star", "hstripes", "vstripes", "checker", "dstripes")


def _colour(rng: np.random.Generator) -> tuple[int, int, int]:
  return tuple(int(c) for c in rng.integers(0, 256, 3))


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
  kind = rng.integers(3)
  if kind == 0:
    return np.broadcast_to(np.asarray(_colour(rng), np.uint8), (size, size, 3)).copy()
  if kind == 1:
    a, b = np.asarray(_colour(rng), np.float32), np.asarray(_colour(rng), np.float32)
    t = np.linspace(0, 1, size, dtype=np.float32)[:, None, None]
    grad = a * (1 - t) + b * t
    if rng.integers(2):
      grad = grad.transpose(1, 0, 2)
    return np.broadcast_to(grad, (size, size, 3)).astype(np.uint8)
  base = np.asarray(_colour(rng), np.int16)
  return np.clip(base + rng.integers(-60, 61, (size, size, 3)), 0, 255).astype(np.uint8)


def _polygon(cx: float, cy: float, r: float, angle: float, points: list[tuple[float, float]]):
  ca, sa = math.cos(angle), math.sin(angle)
  return [(cx + r * (x * ca - y * sa), cy + r * (x * sa + y * ca)) for x, y in points]


def _texture(kind: str, size: int, period: float, phase: float) -> np.ndarray:
  y, x = np.mgrid[0:size, 0:size].astype(np.float32)
  if kind == "hstripes":
    return ((y + phase) // period) % 2 == 0
  if kind == "vstripes":
    return ((x + phase) // period) % 2 == 0
  if kind == "dstripes":
    return ((x + y + phase) // (period * 1.4)) % 2 == 0
  return (((x + phase) // period) + ((y + phase) // period)) % 2 == 0  # checker


def draw(label: int, rng: np.random.Generator, size: int = 96) -> np.ndarray:
  """One image of class ``label`` as a (size, size, 3) uint8 array."""
  from PIL import Image, ImageDraw

  kind = CLASSES[label]
  image = Image.fromarray(_background(rng, size))
  d = ImageDraw.Draw(image)
  fg, fg2 = _colour(rng), _colour(rng)
  r = size * rng.uniform(0.18, 0.38)
  cx, cy = rng.uniform(r, size - r), rng.uniform(r, size - r)
  angle = rng.uniform(0, 2 * math.pi)
  if rng.random() < 0.5:  # a distractor blob that says nothing about the class
    br = size * rng.uniform(0.05, 0.12)
    bx, by = rng.uniform(0, size), rng.uniform(0, size)
    d.ellipse([bx - br, by - br, bx + br, by + br * rng.uniform(0.5, 1.5)], fill=_colour(rng))
  if kind == "disc":
    d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fg)
  elif kind == "ring":
    d.ellipse([cx - r, cy - r, cx + r, cy + r], outline=fg, width=max(2, int(r * 0.3)))
  elif kind == "square":
    d.polygon(_polygon(cx, cy, r, angle, [(-0.8, -0.8), (0.8, -0.8), (0.8, 0.8), (-0.8, 0.8)]), fill=fg)
  elif kind == "triangle":
    d.polygon(_polygon(cx, cy, r, angle, [(0, -1), (0.87, 0.5), (-0.87, 0.5)]), fill=fg)
  elif kind == "cross":
    w = 0.3
    arm = [(-w, -1), (w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1), (-w, 1), (-w, w), (-1, w), (-1, -w), (-w, -w)]
    d.polygon(_polygon(cx, cy, r, angle, arm), fill=fg)
  elif kind == "star":
    pts = [
      (
        (1.0 if i % 2 == 0 else 0.4) * math.cos(i * math.pi / 5),
        (1.0 if i % 2 == 0 else 0.4) * math.sin(i * math.pi / 5),
      )
      for i in range(10)
    ]
    d.polygon(_polygon(cx, cy, r, angle, pts), fill=fg)
  else:  # a textured patch: the texture, not the patch's outline, is the class
    period = size * rng.uniform(0.05, 0.1)
    mask = _texture(kind, size, period, rng.uniform(0, 2 * period))
    patch = np.zeros((size, size), bool)
    y, x = np.mgrid[0:size, 0:size]
    patch[(np.abs(x - cx) < r * 1.1) & (np.abs(y - cy) < r * 1.1)] = True
    arr = np.asarray(image).copy()
    arr[patch & mask] = fg
    arr[patch & ~mask] = fg2
    image = Image.fromarray(arr)
  return np.asarray(image)


def generate(
  output_dir: str,
  *,
  train_per_class: int = 600,
  val_per_class: int = 100,
  size: int = 96,
  seed: int = 0,
  quality: int = 92,
) -> dict[str, int]:
  """Write ``output_dir/{train,val}/<class>/<n>.jpg``; returns the number of images per split. The arguments are
  recorded last in ``output_dir/MARKER``: a folder that holds a finished set of the same arguments is left as it is
  (its files and their times unchanged, so that a prepared copy of it stays current)."""
  from PIL import Image

  args = dict(train_per_class=train_per_class, val_per_class=val_per_class, size=size, seed=seed, quality=quality)
  marker = os.path.join(output_dir, MARKER)
  if os.path.exists(marker):
    with open(marker) as f:
      done = json.load(f)
    if done.get("arguments") == args:
      return done["counts"]
    os.remove(marker)
  counts = {}
  for split, per_class, split_id in (("train", train_per_class, 0), ("val", val_per_class, 1)):
    for label, name in enumerate(CLASSES):
      folder = os.path.join(output_dir, split, name)
      os.makedirs(folder, exist_ok=True)
      for i in range(per_class):
        rng = np.random.default_rng([seed, split_id, label, i])
        Image.fromarray(draw(label, rng, size)).save(os.path.join(folder, f"{i:05d}.jpg"), quality=quality)
    counts[split] = per_class * len(CLASSES)
  with open(marker, "w") as f:
    json.dump({"arguments": args, "counts": counts}, f)
  return counts


def define_flags() -> None:
  """The command-line flags (defined only when run as a program, so importing this module defines none)."""
  flags.DEFINE_string("output_dir", "demo_data/shapes", "Where the class-folder tree goes.")
  flags.DEFINE_integer("train_per_class", 600, "Training images per class.")
  flags.DEFINE_integer("val_per_class", 100, "Validation images per class.")
  flags.DEFINE_integer("size", 96, "Side of the generated square images.")
  flags.DEFINE_integer("seed", 0, "Same seed, same images.")


def main(argv: list[str]) -> None:
  del argv
  f = flags.FLAGS
  counts = generate(
    f.output_dir, train_per_class=f.train_per_class, val_per_class=f.val_per_class, size=f.size, seed=f.seed
  )
  print(f"{f.output_dir} holds {counts} images of {len(CLASSES)} classes", file=sys.stderr)


if __name__ == "__main__":
  from alexnet_jax import cli

  define_flags()
  cli.run(main)  # a bad flag value: one `error:` line, exit 2
