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


# ---------------------------------------------------------------------------------------------------------------
# LARS (You, Gitman & Ginsburg 2017, Algorithm 1) and the polynomial schedule.
# ---------------------------------------------------------------------------------------------------------------
def lars_by_hand(params, grads, lrs, *, eta, wd, decays, scaled, mults, momentum=0.9):
  """Algorithm 1 in float64, one array at a time: lambda = eta ||w|| / (||g|| + beta ||w||) (eta where ||w|| = 0 or
  the denominator is 0; 1 for an array without LARS), v <- m v - lr * mult * lambda * (g + beta w), w <- w + v."""
  w = {k: np.asarray(v, np.float64) for k, v in params.items()}
  v = {k: np.zeros_like(x) for k, x in w.items()}
  for g, lr in zip(grads, lrs):
    for k in w:
      beta = wd if decays[k] else 0.0
      wn, gn = np.linalg.norm(w[k]), np.linalg.norm(g[k])
      if not scaled[k]:
        ratio = 1.0
      elif wn > 0 and gn + beta * wn > 0:
        ratio = eta * wn / (gn + beta * wn)
      else:
        ratio = eta
      v[k] = momentum * v[k] - lr * mults[k] * ratio * (g[k] + beta * w[k])
      w[k] = w[k] + v[k]
  return w


@pytest.mark.parametrize("scope", ["all", "kernels"])
def test_lars_matches_a_hand_computation_with_zero_norms_and_the_kernels_only_mask(scope):
  """A kernel, a bias starting at 0 (||w|| = 0: the rate's eta, not a full step) and a batch-norm scale whose
  gradient is 0 at the second step (||g|| = 0: eta / beta), over a rate change. 'kernels': the bias and scale take
  plain momentum steps at their multiplier's rate, undecayed (decay_biases=False), as Jia et al. and MLPerf do."""
  rng = np.random.default_rng(2)
  params = {"kernel": rng.normal(size=(4, 3)), "bias": np.zeros(3), "scale": 1.0 + 0.1 * rng.normal(size=3)}
  grads = [{k: rng.normal(size=np.shape(v)) for k, v in params.items()} for _ in range(3)]
  grads[1]["scale"] = np.zeros(3)
  lrs = [10.0, 20.0, 5.0]  # the LARS paper's peak rates
  kernels_only = scope == "kernels"
  decays = {"kernel": True, "bias": not kernels_only, "scale": not kernels_only}
  scaled = {"kernel": True, "bias": not kernels_only, "scale": not kernels_only}
  mults = {"kernel": 1.0, "bias": 0.001 if kernels_only else 1.0, "scale": 0.001 if kernels_only else 1.0}
  tx = optim.lars(
    0.9,
    5e-4,
    0.001,
    decay_mask=decays,
    lars_mask=None if scope == "all" else scaled,
    lr_multipliers=mults,
  )
  p = {k: jnp.asarray(v, jnp.float32) for k, v in params.items()}
  state = tx.init(p)
  first_updates = None
  for g, lr in zip(grads, lrs):
    updates, state = tx.update({k: jnp.asarray(v, jnp.float32) for k, v in g.items()}, state, p, learning_rate=lr)
    first_updates = first_updates or jax.device_get(updates)
    p = optax.apply_updates(p, updates)
  expected = lars_by_hand(params, grads, lrs, eta=0.001, wd=5e-4, decays=decays, scaled=scaled, mults=mults)
  for k in params:
    np.testing.assert_allclose(np.asarray(p[k]), expected[k], rtol=1e-5, atol=1e-6, err_msg=k)
  if scope == "all":  # the zero-norm bias's first step: eta * lr * g (0.01 g at lr 10), not lr * g (a 10 g step)
    np.testing.assert_allclose(np.asarray(first_updates["bias"]), -0.001 * 10.0 * grads[0]["bias"], rtol=1e-6)


def test_lars_trust_ratio_rule_where_a_norm_is_zero():
  ratio = lambda w, g, wd=5e-4: float(optim.lars_trust_ratio(jnp.float32(w), jnp.float32(g), wd, 0.001))
  assert ratio(2.0, 4.0) == pytest.approx(0.001 * 2.0 / (4.0 + 5e-4 * 2.0))  # the paper's formula
  assert ratio(0.0, 3.0) == pytest.approx(0.001)  # ||w|| = 0: eta (optax.lars and NVCaffe: 1)
  assert ratio(2.0, 0.0) == pytest.approx(0.001 / 5e-4)  # ||g|| = 0: the formula is defined, eta / beta
  assert ratio(2.0, 0.0, wd=0.0) == pytest.approx(0.001)  # ... and with no decay, 0/0: eta
  assert ratio(0.0, 0.0) == pytest.approx(0.001)
  with pytest.raises(ValueError, match="weight_decay_mode"):
    optim.lars(weight_decay_mode="decoupled")


def test_train_s_lars_scope_chooses_the_arrays_with_a_trust_ratio():
  from alexnet_jax import config_lib, train

  config = config_lib.base_config()
  config.optimizer.name, config.optimizer.weight_decay, config.optimizer.decay_biases = "lars", 0.0, False
  params = {"conv1": {"kernel": jnp.full((2, 2), 3.0), "bias": jnp.full((2,), 3.0), "scale": jnp.full((2,), 3.0)}}
  grads = jax.tree.map(lambda x: jnp.full(x.shape, 1.0), params)
  for scope, non_kernel in (("all", -0.001 * 3.0 * 1.0), ("kernels", -1.0)):  # ratio eta*||w||/||g|| = 0.003, or 1
    config.optimizer.lars_scope = scope
    tx = train.make_optimizer(config)
    updates, _ = tx.update(grads, tx.init(params), params, learning_rate=1.0)
    np.testing.assert_allclose(np.asarray(updates["conv1"]["kernel"]), -0.003, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(updates["conv1"]["bias"]), non_kernel, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(updates["conv1"]["scale"]), non_kernel, rtol=1e-6)


def test_poly_schedule_after_a_linear_warm_up():
  """The LARS paper's schedule: a linear warm-up over W steps, then (peak - end) * (1 - t/T)^2 + end over the T
  steps after it."""
  poly = optim.base_schedule(
    "poly", learning_rate=10.0, steps_per_epoch=10, total_steps=110, warmup_epochs=1, power=2.0, end_learning_rate=0.1
  )
  want = lambda t: (10.0 - 0.1) * (1 - t / 100) ** 2 + 0.1
  assert [float(poly(i)) for i in (0, 4, 9)] == pytest.approx([1.0, 5.0, 10.0 * want(0) / 10.0])
  assert [float(poly(i)) for i in (10, 35, 60, 109, 110, 200)] == pytest.approx(
    [want(0), want(25), want(50), want(99), 0.1, 0.1], rel=1e-5
  )
