"""The pure steps (alexnet_jax.steps) against numbers computed here by hand with NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from alexnet_jax import config_lib, loss_scale, parallel, steps, train
from alexnet_jax.data import sources
from tests.support.tiny import tiny_config


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


# ---- Gradient accumulation (optimizer.accumulation_steps) and float16's dynamic loss scale ---------------------------
def tiny_step(config, devices, preprocess=None, **options):
  """(the initial state, a function state -> (state after, outputs) that runs one compiled train step on the first
  batch, the compiled program's HLO text), on ``devices`` (data parallel), states and outputs as host copies;
  ``options`` go to ``steps.make_train_step``. One compilation, however many states it is called with."""
  mesh = parallel.create_mesh(1, devices)
  source = sources.create_source(config)
  graphdef, init, tx, _, shardings = train.plan_state(config, mesh)
  batch = parallel.to_global(next(source.train_batches(0, config.batch_size)), parallel.batch_sharding(mesh))
  pure = steps.make_train_step(
    graphdef, tx, train.make_lr_schedule(config, 10, 10), preprocess or source.preprocess, **options
  )
  state = jax.jit(init, out_shardings=shardings)()
  step = jax.jit(pure, in_shardings=(shardings, parallel.batch_sharding(mesh)), out_shardings=(shardings, None))
  compiled = step.lower(state, batch).compile()
  run = lambda state: jax.device_get(compiled(jax.device_put(state, shardings), batch))
  return jax.device_get(state), run, compiled.as_text()


def test_accumulating_four_micro_batches_is_one_step_of_the_whole_batch():
  """Without dropout (and without batch norm) the mean of the micro-batches' gradients is the batch's gradient: the
  same per-example losses in the same order, the same update, and the same health outputs, to float32 rounding. A
  unit is dead over the batch only when it is dead in every micro-batch, so the dead fractions are the batch's."""
  config = tiny_config(**{"model.dropout_rate": 0.0})
  before, step1, _ = tiny_step(config, jax.devices()[:1])
  whole, out1 = step1(before)
  accumulated, out4 = tiny_step(config, jax.devices()[:1], accumulation_steps=4)[1](before)
  assert out1.keys() == out4.keys()
  np.testing.assert_allclose(out4["loss"], out1["loss"], rtol=1e-5)  # per example, in the batch's order
  assert np.abs(np.diff(out1["loss"])).max() > 1e-3  # ... and the order can be told apart
  for key in out1:
    if key.startswith(("grad_norm", "update_ratio", "param_norm", "dead_relu")) or key in ("finite", "learning_rate"):
      np.testing.assert_allclose(out4[key], out1[key], rtol=2e-5, atol=1e-7, err_msg=key)
  for path, w, a, b in zip(
    jax.tree_util.tree_leaves_with_path(before["params"]),
    jax.tree.leaves(before["params"]),
    jax.tree.leaves(accumulated["params"]),
    jax.tree.leaves(whole["params"]),
    strict=True,
  ):
    update_k, update_1 = a.astype(np.float64) - w, b.astype(np.float64) - w
    tol = 4 * np.spacing(np.abs(b).max()) + 1e-5 * np.abs(update_1).max()
    assert np.abs(update_k - update_1).max() <= tol, (jax.tree_util.keystr(path[0]), np.abs(update_k - update_1).max())
  assert int(accumulated["step"]) == int(whole["step"]) == 1


def test_accumulation_on_eight_devices_is_the_one_device_step_and_spreads_each_micro_batch():
  """k = 2 micro-batches of 8 on 8 devices: each micro-batch is split over all 8 (one example each, seen by the
  preprocessing inside the scan) without moving any example between devices (no all-gather, all-to-all or
  collective-permute in the compiled program), and the step (dropout on: per micro-batch keys) equals the one-device
  step."""
  config = tiny_config()
  source = sources.create_source(config)
  seen = []

  def preprocess(batch):
    jax.debug.inspect_array_sharding(batch["label"], callback=lambda s: seen.append(s))
    return source.preprocess(batch)

  state, step1, _ = tiny_step(config, jax.devices()[:1], accumulation_steps=2)
  one, out1 = step1(state)
  _, step8, program = tiny_step(config, jax.devices(), preprocess=preprocess, accumulation_steps=2)
  eight, out8 = step8(state)
  assert len(jax.devices()) == 8 and seen
  for sharding in seen:  # the micro-batch of 8 examples: one on each device
    assert len(sharding.device_set) == 8 and sharding.shard_shape((8,)) == (1,), sharding
  # ... already where it is: the split moves no data (contiguous micro-batches would be all-gathered to their devices)
  for op in ("all-gather", "all-to-all", "collective-permute"):
    assert f" {op}(" not in program and f" {op}-start(" not in program, op
  np.testing.assert_allclose(out8["loss"], out1["loss"], rtol=1e-5)
  for a, b in zip(jax.tree.leaves(eight["params"]), jax.tree.leaves(one["params"]), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_micro_batches_that_do_not_split_the_batch_are_refused():

  with pytest.raises(ValueError, match=r"does not split into optimizer\.accumulation_steps=3"):
    steps.split_micro_batches({"label": jnp.zeros(16)}, 3)

  with pytest.raises(ValueError, match="accumulation_steps=3 equal micro-batches"):
    config_lib.validate(tiny_config(**{"optimizer.accumulation_steps": 3}))
  with pytest.raises(ValueError, match="must be an integer >= 1"):
    config_lib.validate(tiny_config(**{"optimizer.accumulation_steps": 0}))
  x = jnp.arange(12)
  np.testing.assert_array_equal(
    steps.split_micro_batches({"x": x}, 3)["x"], [[0, 3, 6, 9], [1, 4, 7, 10], [2, 5, 8, 11]]
  )
  np.testing.assert_array_equal(steps.join_micro_batches(steps.split_micro_batches({"x": x}, 3)["x"]), x)


def test_the_loss_scale_rule_halves_on_overflow_grows_after_the_interval_and_stops_at_the_minimum():

  rule = loss_scale.DynamicLossScale(initial=8.0, growth_interval=3)
  t, f = jnp.asarray(True), jnp.asarray(False)

  def step(state, loss_finite, grads_finite):
    apply, overflow, diverged = loss_scale.classify(state, loss_finite, grads_finite, rule)
    return loss_scale.adjust(state, apply, overflow, rule), (bool(apply), bool(overflow), bool(diverged))

  state = rule.init()
  state, kind = step(state, t, f)  # overflow: halve, count reset
  assert kind == (False, True, False) and float(state["scale"]) == 4.0 and int(state["good_steps"]) == 0
  for n in (1, 2):
    state, kind = step(state, t, t)
    assert kind == (True, False, False) and float(state["scale"]) == 4.0 and int(state["good_steps"]) == n
  state, _ = step(state, t, t)  # the third good step in a row: x2
  assert float(state["scale"]) == 8.0 and int(state["good_steps"]) == 0
  state, kind = step(state, f, t)  # a non-finite loss is a divergence, whatever the scale: nothing changes
  assert kind == (False, False, True) and float(state["scale"]) == 8.0
  low = {"scale": jnp.asarray(1.0), "good_steps": jnp.asarray(5)}
  after, kind = step(low, t, f)  # an overflow at the minimum scale: a divergence
  assert kind == (False, False, True) and float(after["scale"]) == 1.0 and int(after["good_steps"]) == 5
  top = {"scale": jnp.asarray(np.finfo(np.float32).max), "good_steps": jnp.asarray(2)}
  assert float(step(top, t, t)[0]["scale"]) == np.finfo(np.float32).max  # never grows to inf


def test_float16_overflow_skips_the_update_and_halves_the_scale_and_good_steps_grow_it():
  """float16 compute with the state's scale set huge (2^100): the scaled gradients overflow float16, the update is
  skipped (parameters and momentum unchanged), the step still counts, the scale halves, and the step is not a
  divergence (finite = 1). At the initial scale the same batch updates, and the 2000th good step doubles it."""
  config = tiny_config(**{"model.dtype": "float16"})
  rule = loss_scale.for_dtype("float16")
  one = jax.devices()[:1]
  before, step, _ = tiny_step(config, one, loss_scaling=rule)
  assert float(before["loss_scale"]["scale"]) == 2.0**15 and int(before["loss_scale"]["good_steps"]) == 0
  huge = {**before, "loss_scale": {"scale": np.float32(2.0**100), "good_steps": np.int32(7)}}
  after, out = step(huge)
  assert (out["overflow"], out["finite"], float(out["loss_scale"])) == (1.0, 1.0, 2.0**100)
  assert np.isfinite(out["loss"]).all() and out["grad_norm"] == 0.0
  assert float(after["loss_scale"]["scale"]) == 2.0**99 and int(after["loss_scale"]["good_steps"]) == 0
  assert int(after["step"]) == 1
  for a, b in zip(
    jax.tree.leaves((before["params"], before["opt_state"])), jax.tree.leaves((after["params"], after["opt_state"]))
  ):
    np.testing.assert_array_equal(a, b)
  nearly = {**before, "loss_scale": {"scale": np.float32(2.0**15), "good_steps": np.int32(rule.growth_interval - 1)}}
  grown, out = step(nearly)
  assert (out["overflow"], out["finite"]) == (0.0, 1.0) and np.isfinite(out["grad_norm"]) and out["grad_norm"] > 0
  assert float(grown["loss_scale"]["scale"]) == 2.0**16 and int(grown["loss_scale"]["good_steps"]) == 0
  assert any(
    not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before["params"]), jax.tree.leaves(grown["params"]))
  )
