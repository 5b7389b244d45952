"""Dynamic loss scaling for float16 compute (GPUs without bfloat16, e.g. Colab's T4): the rule and its state.

float16 keeps 5 exponent bits: gradients below ~6e-8 flush to zero and values above 65504 overflow. Multiplying the
loss by a scale S before the backward pass moves the small gradients into range; the float32 gradients of the
(float32) parameters are divided by S before the update (Micikevicius et al. 2018, "Mixed Precision Training",
Sec. 3.2). The dynamic rule (Sec. 3.2's automatic choice, as TensorFlow's ``DynamicLossScale`` and DeepMind's
``jmp.DynamicLossScale`` implement it):

- start at ``initial`` = 2**15 (TensorFlow's default: about half of float16's largest value);
- a step whose scaled gradients hold an inf or NaN while its loss is finite **overflowed**: its update is skipped
  (parameters and optimizer state unchanged; the step still counts, so data order and the schedule go on) and the
  scale is divided by ``factor`` = 2, never below ``min_scale`` = 1 (jmp's ``min_loss_scale``);
- after ``growth_interval`` = 2000 steps in a row without overflow (TensorFlow's ``increment_period``, jmp's
  ``period``, PyTorch's ``growth_interval``) the scale is multiplied by ``factor`` (kept if that would be inf).

A real divergence is not an overflow and stops the run as in float32 and bfloat16: a non-finite loss (the forward
pass itself, which the scale does not touch, broke), or non-finite gradients at the minimum scale (there is nothing
left to lower). The state, ``{"scale": float32 [], "good_steps": int32 []}``, lives in the train state under
``loss_scale`` and in its checkpoints; float32 and bfloat16 runs have no such key (their state is as before).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class DynamicLossScale(NamedTuple):
  """The dynamic rule's constants (see the module docstring for their sources)."""

  initial: float = 2.0**15
  growth_interval: int = 2000  # steps in a row without overflow before the scale grows
  factor: float = 2.0  # the scale is multiplied by this to grow, divided by it on an overflow
  min_scale: float = 1.0  # an overflow at this scale is a divergence

  def init(self) -> dict[str, jax.Array]:
    """The state at step 0: ``{"scale": float32 [], "good_steps": int32 []}``."""
    return {"scale": jnp.asarray(self.initial, jnp.float32), "good_steps": jnp.zeros((), jnp.int32)}


def for_dtype(dtype: str) -> DynamicLossScale | None:
  """The rule for a compute dtype (``model.dtype``): float16 scales its loss; float32 and bfloat16 (float32's
  exponent range) do not (None)."""
  return DynamicLossScale() if dtype == "float16" else None


def classify(
  state: dict[str, jax.Array], loss_finite: jax.Array, grads_finite: jax.Array, rule: DynamicLossScale
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(apply, overflow, diverged), bool scalars, for a step whose loss and unscaled gradients are or are not finite.

  ``apply``: everything finite, the update is applied. ``overflow``: a finite loss but non-finite gradients above
  the minimum scale: skip the update and lower the scale (normal). ``diverged``: a non-finite loss, or an overflow at
  the minimum scale: the run must stop. Exactly one of the three is true.
  """
  apply = loss_finite & grads_finite
  overflow = loss_finite & ~grads_finite & (state["scale"] > rule.min_scale)
  return apply, overflow, ~(apply | overflow)


def adjust(
  state: dict[str, jax.Array], apply: jax.Array, overflow: jax.Array, rule: DynamicLossScale
) -> dict[str, jax.Array]:
  """The state after a step: an applied step counts towards growth (the scale x ``factor`` and the count reset once
  it reaches ``growth_interval``); an overflow divides the scale by ``factor`` (not below ``min_scale``) and resets
  the count; a divergence changes nothing (the run stops)."""
  scale, good = state["scale"], state["good_steps"]
  good_after = good + 1
  grow = good_after >= rule.growth_interval
  grown = scale * rule.factor
  grown = jnp.where(jnp.isfinite(grown), grown, scale)
  applied = {"scale": jnp.where(grow, grown, scale), "good_steps": jnp.where(grow, 0, good_after)}
  lowered = {"scale": jnp.maximum(scale / rule.factor, rule.min_scale), "good_steps": jnp.zeros_like(good)}
  return jax.tree.map(lambda a, o, s: jnp.where(apply, a, jnp.where(overflow, o, s)), applied, lowered, state)
