"""The paper's optimiser (Sec. 5) and learning-rate schedules, as optax pieces.

The update of the paper, with eps the current learning rate:
    v <- 0.9 v - 0.0005 * eps * w - eps * <dL/dw>
    w <- w + v
The learning rate sits inside the velocity, so a drop of the rate affects only new contributions to v (scaling the
whole update after the fact, as ``optax.contrib.reduce_on_plateau`` does, would also shrink the momentum already
built up). It therefore takes the current learning rate as an argument of ``update``.

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
SCHEDULES = ("paper", "step", "cosine", "constant")


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
) -> optax.Schedule:
  """The step-dependent part of the learning rate; the plateau scale multiplies it (1 unless ``paper``).

  ``warmup_epochs`` > 0: the rate rises linearly over that many epochs' W steps first, on any schedule (the paper has
  none): step s (counted from 0, the first update) uses (s + 1) / W of the rate, so the first update already moves
  the weights (a ramp from exactly 0 would spend step 0 on nothing) and step W - 1 uses the full rate (Goyal et al.
  2017, Sec. 2.2: a linear ramp to the target rate). A cosine schedule decays over the steps after the warm-up.
  """
  warmup = int(round(warmup_epochs * steps_per_epoch))
  if name == "cosine":
    decay = optax.cosine_decay_schedule(learning_rate, max(total_steps - warmup, 1))
    schedule = lambda step: decay(jnp.maximum(step - warmup, 0))
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
