"""The paper's update rule and the learning-rate schedules, against hand-written NumPy."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from alexnet_jax import optim


def numpy_reference(w, grads, lrs, mode, momentum=0.9, wd=5e-4):
  v = np.zeros_like(w)
  for g, lr in zip(grads, lrs):
    if mode == "coupled":  # v <- 0.9 v - 0.0005 eps w - eps g;  w <- w + v
      v = momentum * v - wd * lr * w - lr * g
      w = w + v
    elif mode == "decoupled":
      v = momentum * v - lr * g
      w = w + v - lr * wd * w
    else:
      v = momentum * v - lr * g
      w = w + v
  return w


@pytest.mark.parametrize("mode", ["coupled", "decoupled", "none"])
def test_paper_sgd_matches_numpy_loop_across_a_learning_rate_drop(mode):
  rng = np.random.default_rng(0)
  w0 = rng.normal(size=(5, 3)).astype(np.float64)
  grads = [rng.normal(size=(5, 3)) for _ in range(8)]
  lrs = [0.01] * 4 + [0.001] * 4  # divided by 10 halfway
  tx = optim.paper_sgd(0.9, 5e-4, mode)
  params = {"w": jnp.asarray(w0, jnp.float32)}
  state = tx.init(params)
  for g, lr in zip(grads, lrs):
    updates, state = tx.update({"w": jnp.asarray(g, jnp.float32)}, state, params, learning_rate=lr)
    params = optax.apply_updates(params, updates)
  expected = numpy_reference(w0, grads, lrs, mode)
  np.testing.assert_allclose(np.asarray(params["w"]), expected, rtol=1e-5, atol=1e-6)


def test_learning_rate_lives_inside_the_velocity():
  """A rate drop must not shrink the momentum already accumulated (unlike scaling the whole update)."""
  tx = optim.paper_sgd(0.9, 0.0, "coupled")
  params = {"w": jnp.zeros(())}
  state = tx.init(params)
  _, state = tx.update({"w": jnp.ones(())}, state, params, learning_rate=1.0)  # v = -1
  updates, _ = tx.update({"w": jnp.zeros(())}, state, params, learning_rate=0.1)
  assert float(updates["w"]) == pytest.approx(-0.9)  # 0.9 * v, untouched by the new rate


def test_decay_mask_spares_biases():
  tx = optim.paper_sgd(0.9, 0.5, "coupled", decay_mask={"kernel": True, "bias": False})
  params = {"kernel": jnp.ones(()), "bias": jnp.ones(())}
  updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params, learning_rate=1.0)
  assert float(updates["kernel"]) == pytest.approx(-0.5) and float(updates["bias"]) == 0.0


@pytest.mark.parametrize("mode", ["coupled", "decoupled", "none"])
def test_bias_learning_rate_multiplier_is_that_parameter_s_own_rate(mode):
  """cuda-convnet's epsB = 2 epsW: a parameter with multiplier m follows the reference loop at rate m * eps,
  across a rate drop; the others are untouched by it."""
  rng = np.random.default_rng(1)
  w0, b0 = rng.normal(size=(4, 3)), rng.normal(size=(3,))
  grads = [(rng.normal(size=(4, 3)), rng.normal(size=(3,))) for _ in range(6)]
  lrs = [0.01] * 3 + [0.001] * 3
  tx = optim.paper_sgd(0.9, 5e-4, mode, lr_multipliers=lambda p: {"kernel": 1.0, "bias": 2.0})
  params = {"kernel": jnp.asarray(w0, jnp.float32), "bias": jnp.asarray(b0, jnp.float32)}
  state = tx.init(params)
  for (gw, gb), lr in zip(grads, lrs):
    g = {"kernel": jnp.asarray(gw, jnp.float32), "bias": jnp.asarray(gb, jnp.float32)}
    updates, state = tx.update(g, state, params, learning_rate=lr)
    params = optax.apply_updates(params, updates)
  expected_w = numpy_reference(w0, [g for g, _ in grads], lrs, mode)
  expected_b = numpy_reference(b0, [g for _, g in grads], [2 * lr for lr in lrs], mode)
  np.testing.assert_allclose(np.asarray(params["kernel"]), expected_w, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(params["bias"]), expected_b, rtol=1e-5, atol=1e-6)


def test_train_s_optimizer_gives_biases_their_multiplier_and_spares_their_decay():
  import ml_collections

  from alexnet_jax import config_lib, train

  config = config_lib.base_config()
  config.optimizer = ml_collections.ConfigDict(
    {**config.optimizer.to_dict(), "bias_lr_multiplier": 2.0, "decay_biases": False, "weight_decay": 0.5}
  )
  tx = train.make_optimizer(config)
  params = {"fc6": {"kernel": jnp.ones(()), "bias": jnp.ones(())}}
  grads = {"fc6": {"kernel": jnp.ones(()), "bias": jnp.ones(())}}
  updates, _ = tx.update(grads, tx.init(params), params, learning_rate=0.1)
  assert float(updates["fc6"]["kernel"]) == pytest.approx(-0.1 - 0.1 * 0.5)  # eps g + eps wd w
  assert float(updates["fc6"]["bias"]) == pytest.approx(-0.2)  # 2 eps g, no decay


def test_plateau_decisions():
  s = optim.plateau_init()
  scales, drops = [], []
  errors = [0.9, 0.8, 0.8, 0.81, 0.7, 0.7, 0.7, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6]
  for e in errors:
    s = optim.plateau_update(s, e, patience=2, factor=0.1, max_drops=3)
    scales.append(float(s["scale"]))
    drops.append(int(s["num_drops"]))
  # no improvement at evals 3-4 -> drop; at 6-7 -> drop; at 9-10 -> drop; then capped at 3 drops.
  assert drops == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3]
  np.testing.assert_allclose(scales[-1], 1e-3, rtol=1e-6)
  assert float(s["best_error"]) == pytest.approx(0.6)


def test_plateau_count_starts_again_after_each_drop():
  """The error never improves again: with patience 2 the rule drops at evaluations 3, 5 and 7, two evaluations apart
  (the count starts again after a drop), not at 3, 4, 5. Stepped by hand: (scale, bad evaluations, drops)."""
  want = [(1, 0, 0), (1, 1, 0), (0.1, 0, 1), (0.1, 1, 1), (0.01, 0, 2), (0.01, 1, 2), (0.001, 0, 3), (0.001, 1, 3)]
  s, got = optim.plateau_init(), []
  for _ in want:
    s = optim.plateau_update(s, 0.5, patience=2, factor=0.1, max_drops=3)
    got.append((float(s["scale"]), int(s["bad_evals"]), int(s["num_drops"])))
  np.testing.assert_allclose([g[0] for g in got], [w[0] for w in want], rtol=1e-6)
  assert [g[1:] for g in got] == [w[1:] for w in want]


def test_plateau_min_delta():
  s = optim.plateau_update(optim.plateau_init(), 0.5, patience=1, min_delta=0.01)
  s = optim.plateau_update(s, 0.495, patience=1, min_delta=0.01)  # better, but not by min_delta
  assert int(s["num_drops"]) == 1


def test_step_and_cosine_schedules():
  step = optim.base_schedule("step", learning_rate=0.1, steps_per_epoch=10, total_steps=100, step_epochs=(3, 6))
  assert [float(step(i)) for i in (0, 29, 30, 59, 60)] == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001])
  # Warm-up over W steps: step s (0 = the first update) at (s + 1) / W of the rate, never 0, full from step W - 1.
  cos = optim.base_schedule("cosine", learning_rate=0.1, steps_per_epoch=10, total_steps=100, warmup_epochs=1)
  half_way = 0.1 * 0.5 * (1 + math.cos(math.pi * 45 / 90))  # cosine decay over the 90 steps after the warm-up
  assert [float(cos(i)) for i in (0, 9, 10, 55, 100)] == pytest.approx([0.01, 0.1, 0.1, half_way, 0.0])
  warm = optim.base_schedule("paper", learning_rate=0.1, steps_per_epoch=10, total_steps=100, warmup_epochs=2)
  assert [float(warm(i)) for i in (0, 4, 9, 19, 20, 50)] == pytest.approx([0.005, 0.025, 0.05, 0.1, 0.1, 0.1])
  warm_step = optim.base_schedule(
    "step", learning_rate=0.1, steps_per_epoch=10, total_steps=100, step_epochs=(3,), warmup_epochs=1
  )
  assert [float(warm_step(i)) for i in (0, 4, 10, 30)] == pytest.approx([0.01, 0.05, 0.1, 0.01])
  with pytest.raises(ValueError, match=r"schedule\.name"):
    optim.base_schedule("exp", learning_rate=0.1, steps_per_epoch=1, total_steps=1)
