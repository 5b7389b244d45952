"""The pure steps (alexnet_jax.steps) against numbers computed here by hand with NumPy."""

import jax.numpy as jnp
import numpy as np
from flax import nnx

from alexnet_jax import steps


class MeanColourNet(nnx.Module):
  """A known network: logits = (mean colour of the view) @ w, so each view's logits can be computed by hand."""

  def __init__(self, w: np.ndarray):
    self.w = nnx.Param(jnp.asarray(w))

  def __call__(self, x):
    return x.mean(axis=(1, 2)) @ self.w[...]


def softmax(z):
  e = np.exp(z - z.max(axis=-1, keepdims=True))
  return e / e.sum(axis=-1, keepdims=True)


def test_ten_crop_evaluation_averages_the_softmax_of_the_ten_views():
  """Sec. 4.1: the prediction is the softmax averaged over the ten views, not any one view's and not the softmax of
  averaged logits. The views are drawn so that the first view alone and the logit average both get other answers."""
  rng = np.random.default_rng(0)
  b, v, size, classes = 6, 10, 4, 5
  w = rng.normal(size=(3, classes)).astype(np.float32) * 4
  views = rng.normal(size=(b, v, size, size, 3)).astype(np.float32)
  graphdef, params = nnx.split(MeanColourNet(w))
  # The oracle, by hand: each view's logits, its softmax, the mean over views.
  logits = views.mean(axis=(2, 3)) @ w  # [b, v, classes]
  probs = softmax(logits.astype(np.float64)).mean(axis=1)
  labels = np.argsort(-probs, axis=1)[:, 1].astype(np.int32)  # the second choice: top-1 wrong, top-5 right
  labels[:3] = probs[:3].argmax(axis=1)  # ... and right for the first three
  want_loss = -np.log(probs[np.arange(b), labels])
  first_view = softmax(logits[:, 0].astype(np.float64))
  assert np.abs(-np.log(first_view[np.arange(b), labels]) - want_loss).max() > 0.1  # the check can fail
  of_mean_logits = softmax(logits.mean(axis=1).astype(np.float64))
  assert np.abs(-np.log(of_mean_logits[np.arange(b), labels]) - want_loss).max() > 0.01

  eval_step = steps.make_eval_step(graphdef, lambda batch: batch["image"])
  out = eval_step({"params": params, "batch_stats": {}}, {"image": jnp.asarray(views), "label": jnp.asarray(labels)})
  np.testing.assert_allclose(np.asarray(out["loss"]), want_loss, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(np.asarray(out["top1_error"]), (probs.argmax(1) != labels).astype(np.float32))
  np.testing.assert_array_equal(np.asarray(out["top1_error"]), [0, 0, 0, 1, 1, 1])
  np.testing.assert_array_equal(np.asarray(out["top5_error"]), np.zeros(b))
  np.testing.assert_array_equal(np.asarray(out["mask"]), np.ones(b))
