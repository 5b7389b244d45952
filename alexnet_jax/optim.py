"""The paper's optimiser (Sec. 5) and learning-rate schedules, as optax pieces.

The update of the paper, with eps the current learning rate:
    v <- 0.9 v - 0.0005 * eps * w - eps * <dL/dw>
    w <- w + v
The learning rate sits inside the velocity, so a drop of the rate affects only new contributions to v (scaling the
whole update after the fact, as ``optax.contrib.reduce_on_plateau`` does, would also shrink the momentum already
built up). It therefore takes the current learning rate as an argument of ``update``.

For large batches, ``lars``: layer-wise adaptive rate scaling (You, Gitman & Ginsburg 2017, Algorithm 1), the same
velocity update with each parameter array's rate scaled by its trust ratio.

The paper's schedule ("divide by 10 when the validation error stopped improving, three times") depends on
evaluations, not on the step; its state is a small pytree kept in the train state (and so in every checkpoint),
updated on the host after each evaluation by the pure function ``plateau_update``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

WEIGHT_DECAY_MODES = ("coupled", "decoupled", "none")
SCHEDULES = ("paper", "step", "cosine", "constant", "poly")
OPTIMIZERS = ("sgd", "lars")
LARS_SCOPES = ("all", "kernels")


class PaperSgdState(NamedTuple):
  velocity: optax.Params


def paper_sgd(
  momentum: float = 0.9,
  weight_decay: float = 5e-4,
  weight_decay_mode: str = "coupled",
  decay_mask: Any = None,
  lr_multipliers: Any = None,
) -> optax.GradientTransformationExtraArgs:
  """SGD with momentum and weight decay as in the paper; ``update(..., learning_rate=eps)``.

  weight_decay_mode:
    ``coupled``   v <- m v - eps*wd*w - eps*g;  w <- w + v            (the paper)
    ``decoupled`` v <- m v - eps*g;             w <- w + v - eps*wd*w (decay outside the velocity, as in SGDW)
    ``none``      v <- m v - eps*g;             w <- w + v
  decay_mask: optional pytree of bools (or a callable params -> pytree) choosing which parameters decay.
  lr_multipliers: optional pytree of floats (or a callable params -> pytree): each parameter's eps is the learning
    rate times its multiplier (cuda-convnet's epsB = 2 epsW for biases); None: 1 for every parameter.
  """
  if weight_decay_mode not in WEIGHT_DECAY_MODES:
    raise ValueError(f"optimizer.weight_decay_mode must be one of {WEIGHT_DECAY_MODES}, got {weight_decay_mode!r}")
  wd = 0.0 if weight_decay_mode == "none" else weight_decay

  def init(params):
    return PaperSgdState(velocity=jax.tree.map(jnp.zeros_like, params))

  def update(grads, state, params=None, *, learning_rate, **extra):
    del extra
    if params is None:
      raise ValueError("paper_sgd needs the parameters (weight decay acts on them)")
    lr = jnp.asarray(learning_rate, jnp.float32)
    mask = decay_mask(params) if callable(decay_mask) else decay_mask
    if mask is None:
      mask = jax.tree.map(lambda _: True, params)
    decay = jax.tree.map(lambda w, m: wd * w if m else jnp.zeros_like(w), params, mask)
    mults = lr_multipliers(params) if callable(lr_multipliers) else lr_multipliers
    eps = jax.tree.map(lambda _: lr, params) if mults is None else jax.tree.map(lambda m: lr * m, mults)
    if weight_decay_mode == "coupled":
      velocity = jax.tree.map(lambda v, g, d, e: momentum * v - e * d - e * g, state.velocity, grads, decay, eps)
      updates = velocity
    else:
      velocity = jax.tree.map(lambda v, g, e: momentum * v - e * g, state.velocity, grads, eps)
      updates = jax.tree.map(lambda v, d, e: v - e * d, velocity, decay, eps)
    return updates, PaperSgdState(velocity=velocity)

  return optax.GradientTransformationExtraArgs(init, update)


class LarsState(NamedTuple):
  velocity: optax.Params


def lars_trust_ratio(w_norm: jax.Array, g_norm: jax.Array, weight_decay: float, eta: float) -> jax.Array:
  """The LARS paper's local learning rate (You, Gitman & Ginsburg 2017, Eq. 6 and Algorithm 1):
      eta * ||w|| / (||g|| + weight_decay * ||w||)
  for one parameter array's L2 norms (float32 scalars). Where ||w|| = 0 (a batch-norm offset or a bias at its
  initial 0) or the denominator is 0: ``eta``, i.e. a step of eta times the global rate (0.01-0.023 at the peak rates
  of 10-23 with eta = 0.001: an ordinary SGD rate), never a full unscaled step. NVCaffe's LARC used 1 there (a full
  step at the global rate) and optax.lars too (docs/DEVIATIONS.md)."""
  denominator = g_norm + weight_decay * w_norm
  defined = (w_norm > 0) & (denominator > 0)
  return jnp.where(defined, eta * w_norm / jnp.where(defined, denominator, 1.0), jnp.asarray(eta, jnp.float32))


def lars(
  momentum: float = 0.9,
  weight_decay: float = 5e-4,
  eta: float = 0.001,
  weight_decay_mode: str = "coupled",
  decay_mask: Any = None,
  lars_mask: Any = None,
  lr_multipliers: Any = None,
) -> optax.GradientTransformationExtraArgs:
  """LARS (You, Gitman & Ginsburg 2017, Algorithm 1) with momentum; ``update(..., learning_rate=gamma)``.

  For each parameter array w with gradient g, the paper's update with the global rate gamma:
      lambda <- lars_trust_ratio(||w||, ||g||, beta, eta)   (1 where ``lars_mask`` is False)
      v <- m v - gamma * mult * lambda * (g + beta * w)
      w <- w + v
  beta is ``weight_decay`` where ``decay_mask`` is True (and ``weight_decay_mode`` is 'coupled'), else 0, in the
  update and in the trust ratio alike. The rate sits inside the velocity as in ``paper_sgd``.

  weight_decay_mode: 'coupled' (the paper) or 'none'; 'decoupled' has no meaning here (ValueError).
  decay_mask, lars_mask, lr_multipliers: optional pytrees (or callables params -> pytree) of bools / floats: which
    arrays decay, which get the trust ratio (the MLPerf/Jia et al. recipe: kernels only; the LARS paper: all),
    each array's rate multiplier (default 1).
  """
  if weight_decay_mode not in ("coupled", "none"):
    raise ValueError(
      f"LARS puts the weight decay inside the trust ratio (the LARS paper's Algorithm 1): "
      f"optimizer.weight_decay_mode must be 'coupled' or 'none', got {weight_decay_mode!r}"
    )
  if eta <= 0:
    raise ValueError(f"the LARS trust coefficient (optimizer.lars_eta) must be positive, got {eta}")
  wd = 0.0 if weight_decay_mode == "none" else weight_decay

  def resolve(tree, params, default):
    tree = tree(params) if callable(tree) else tree
    return jax.tree.map(lambda _: default, params) if tree is None else tree

  def init(params):
    return LarsState(velocity=jax.tree.map(jnp.zeros_like, params))

  def update(grads, state, params=None, *, learning_rate, **extra):
    del extra
    if params is None:
      raise ValueError("lars needs the parameters (the trust ratio and the weight decay act on them)")
    lr = jnp.asarray(learning_rate, jnp.float32)
    decays, scaled = resolve(decay_mask, params, True), resolve(lars_mask, params, True)
    mults = resolve(lr_multipliers, params, 1.0)

    def one(v, g, w, decay, scale, mult):
      beta = wd if decay else 0.0
      g32, w32 = g.astype(jnp.float32), w.astype(jnp.float32)
      direction = g32 + beta * w32
      ratio = lars_trust_ratio(jnp.linalg.norm(w32.ravel()), jnp.linalg.norm(g32.ravel()), beta, eta) if scale else 1.0
      return momentum * v - (lr * mult * ratio) * direction

    velocity = jax.tree.map(one, state.velocity, grads, params, decays, scaled, mults)
    return velocity, LarsState(velocity=velocity)

  return optax.GradientTransformationExtraArgs(init, update)


# ---------------------------------------------------------------------------------------------------------------
# Schedules.
# ---------------------------------------------------------------------------------------------------------------
def base_schedule(
  name: str,
  *,
  learning_rate: float,
  steps_per_epoch: int,
  total_steps: int,
  step_epochs: tuple[float, ...] = (),
  factor: float = 0.1,
  warmup_epochs: float = 0.0,
  power: float = 2.0,
  end_learning_rate: float = 0.0,
) -> optax.Schedule:
  """The step-dependent part of the learning rate; the plateau scale multiplies it (1 unless ``paper``).

  ``warmup_epochs`` > 0: the rate rises linearly over that many epochs' W steps first, on any schedule (the paper has
  none): step s (counted from 0, the first update) uses (s + 1) / W of the rate, so the first update already moves
  the weights (a ramp from exactly 0 would spend step 0 on nothing) and step W - 1 uses the full rate (Goyal et al.
  2017, Sec. 2.2: a linear ramp to the target rate). A cosine schedule decays over the steps after the warm-up.
  ``poly``: the LARS paper's polynomial decay (NVCaffe's 'poly' policy; power 2 in You, Gitman & Ginsburg 2017),
  end + (rate - end) * (1 - t / T)^power over the T steps after the warm-up (t counted from the warm-up's end).
  """
  warmup = int(round(warmup_epochs * steps_per_epoch))
  if name == "cosine":
    decay = optax.cosine_decay_schedule(learning_rate, max(total_steps - warmup, 1))
    schedule = lambda step: decay(jnp.maximum(step - warmup, 0))
  elif name == "poly":
    poly = optax.polynomial_schedule(learning_rate, end_learning_rate, power, max(total_steps - warmup, 1))
    schedule = lambda step: poly(jnp.maximum(step - warmup, 0))
  elif name in ("paper", "constant"):
    schedule = optax.constant_schedule(learning_rate)
  elif name == "step":
    boundaries = {int(round(e * steps_per_epoch)): factor for e in step_epochs}
    schedule = optax.piecewise_constant_schedule(learning_rate, boundaries)
  else:
    raise ValueError(f"schedule.name must be one of {SCHEDULES}, got {name!r}")
  if warmup <= 0:
    return schedule
  return lambda step: schedule(step) * jnp.minimum(1.0, (jnp.asarray(step, jnp.float32) + 1) / warmup)


def plateau_init() -> dict[str, jax.Array]:
  """State of the divide-on-plateau rule: the current scale, the best error so far, evaluations without
  improvement and the number of drops taken."""
  return {
    "scale": jnp.ones((), jnp.float32),
    "best_error": jnp.full((), np.inf, jnp.float32),
    "bad_evals": jnp.zeros((), jnp.int32),
    "num_drops": jnp.zeros((), jnp.int32),
  }


def plateau_update(
  state: dict[str, Any], error: float, *, patience: int, factor: float = 0.1, max_drops: int = 3, min_delta: float = 0.0
) -> dict[str, np.ndarray]:
  """One decision of the paper's rule after an evaluation with validation ``error``.

  An evaluation improves when ``error < best_error - min_delta``. After ``patience`` evaluations in a row without
  improvement the scale is multiplied by ``factor`` (at most ``max_drops`` times) and the count starts again.
  Pure: the same inputs give the same state, so a resumed run makes the same decisions.
  """
  error = float(np.float32(error))  # compare at the precision the state keeps, or an equal error looks better
  best = float(state["best_error"])
  bad = int(state["bad_evals"])
  drops = int(state["num_drops"])
  scale = float(state["scale"])
  if error < best - min_delta:
    best, bad = error, 0
  else:
    bad += 1
    if bad >= patience and drops < max_drops:
      scale, drops, bad = scale * factor, drops + 1, 0
  return {
    "scale": np.float32(scale),
    "best_error": np.float32(best),
    "bad_evals": np.int32(bad),
    "num_drops": np.int32(drops),
  }
