"""The pure functions that run on the devices: loss, train step, eval step.

They depend on jax, flax and optax only (no TensorFlow, clu or ml_collections), so the benchmark runs them on
machines that have nothing else. The train state is a plain pytree:
    {"step": int32, "params": nested dict, "opt_state": PaperSgdState, "rng": uint32 key data,
     "plateau": dict of scalars}
and, for float16 compute only, ``"loss_scale": {"scale": float32, "good_steps": int32}`` (``loss_scale.py``);
and, only for a model with batch norm (``alexnet_bn``), "batch_stats": {layer: {"mean", "var", "average_weight"}},
the running statistics (``nnx.BatchStat``). Models without batch norm have no such key, so their state (and every
checkpoint written before batch norm existed) keeps its layout.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from alexnet_jax import loss_scale, optim

State = dict[str, Any]
Batch = dict[str, jax.Array]


def model_variables(state: State) -> dict[str, Any]:
  """What a forward pass needs from a train state: {"params", "batch_stats"} (batch_stats {} without batch norm).
  The eval step's first argument; also accepted: a params-shaped tree of shardings (``state_shardings``)."""
  return {"params": state["params"], "batch_stats": state.get("batch_stats", {})}


def merge_model(graphdef: nnx.GraphDef, variables: dict[str, Any]) -> nnx.Module:
  """The module of ``graphdef`` on ``variables`` (``model_variables``)."""
  return nnx.merge(graphdef, variables["params"], variables["batch_stats"])


def split_model(model: nnx.Module) -> tuple[nnx.GraphDef, Any, Any]:
  """(graphdef, params, batch stats) of a module, the last two as plain nested dicts (batch stats {} without
  batch norm)."""
  graphdef, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
  return graphdef, nnx.to_pure_dict(params), nnx.to_pure_dict(stats)


def topk_errors(logits: jax.Array, labels: jax.Array, ks: tuple[int, ...] = (1, 5)) -> dict[int, jax.Array]:
  """Per-example top-k errors (1.0 when the label is not among the k highest logits; ties count against)."""
  label_logit = jnp.take_along_axis(logits, labels[:, None], axis=-1)
  rank = jnp.sum(logits > label_logit, axis=-1)  # how many classes score strictly higher than the label
  return {k: (rank >= k).astype(jnp.float32) for k in ks}


def global_norm(tree) -> jax.Array:
  return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)))


def layer_norms(tree: dict[str, Any]) -> dict[str, jax.Array]:
  """{layer: the L2 norm of all its arrays (kernel and bias)} for a params-shaped tree {layer: {name: array}}."""
  return {layer: global_norm(sub) for layer, sub in tree.items()}


def relu_alive(activations: dict[str, jax.Array], layers) -> dict[str, jax.Array]:
  """{layer: bool [units], True where the unit's ReLU output is positive for at least one example of the batch}. A
  unit is a channel of a conv layer (at every position) or a neuron of a dense layer."""
  return {layer: jnp.any(activations[layer] > 0, axis=tuple(range(activations[layer].ndim - 1))) for layer in layers}


def dead_fractions(alive: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """{layer: the fraction of its units that are not alive} (``relu_alive``'s masks, possibly OR-ed over
  micro-batches); a layer at 1.0 passes nothing on."""
  return {layer: jnp.mean((~a).astype(jnp.float32)) for layer, a in alive.items()}


def dead_relu_fractions(activations: dict[str, jax.Array], layers) -> dict[str, jax.Array]:
  """{layer: the fraction of its units whose ReLU output is zero for every example of the batch}. A unit is a channel
  of a conv layer (at every position) or a neuron of a dense layer; a layer at 1.0 passes nothing on."""
  return dead_fractions(relu_alive(activations, layers))


RELU_LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7")  # fc8 feeds the softmax: no ReLU


def split_micro_batches(batch: Batch, k: int) -> Batch:
  """Every array [B, ...] of ``batch`` -> [k, B/k, ...]: micro-batch j holds examples j, j + k, j + 2k, ... .

  Strided, not contiguous, so that the split moves no data: with the batch sharded over D devices in contiguous
  blocks of B/D (B divisible by k * D), the [B/k, k] view keeps each device's block on its device, and each
  micro-batch is spread over all D devices (B/(k D) examples on each), never whole micro-batches on some of them.
  Its members do not depend on D, so accumulation on 8 devices computes what it computes on 1. ValueError when k
  does not divide B."""

  def split(x):
    if x.shape[0] % k:
      raise ValueError(
        f"a batch of {x.shape[0]} does not split into optimizer.accumulation_steps={k} equal micro-batches: use a "
        "batch_size divisible by accumulation_steps times the data-parallel devices"
      )
    return jnp.swapaxes(x.reshape(x.shape[0] // k, k, *x.shape[1:]), 0, 1)

  return jax.tree.map(split, batch)


def join_micro_batches(x: jax.Array) -> jax.Array:
  """[k, B/k, ...] -> [B, ...], the inverse of ``split_micro_batches``: each example back in its place."""
  return jnp.swapaxes(x, 0, 1).reshape(x.shape[0] * x.shape[1], *x.shape[2:])


def make_train_step(
  graphdef: nnx.GraphDef,
  tx: optax.GradientTransformationExtraArgs,
  lr_schedule: optax.Schedule,
  preprocess: Callable[[Batch], jax.Array],
  *,
  accumulation_steps: int = 1,
  loss_scaling: loss_scale.DynamicLossScale | None = None,
) -> Callable[[State, Batch], tuple[State, dict[str, jax.Array]]]:
  """A pure ``train_step(state, batch) -> (state, outputs)``; jit it with the shardings you want.

  ``outputs`` holds per-example ``loss``, ``top1_error``, ``top5_error``, scalars ``grad_norm``, ``param_norm``,
  ``learning_rate`` and ``finite``, and the training-health diagnostics of every layer L: ``grad_norm_L``,
  ``param_norm_L`` (after the update), ``update_ratio_L`` (the norm of the update over the norm of the parameters it
  changed) and, for the layers with a ReLU, ``dead_relu_L`` (``dead_relu_fractions``). The norms are reductions fused
  with the passes that already read the gradients and write the parameters. When the loss or the gradient norm is not
  finite the state is returned unchanged (``finite`` = 0, update ratios 0): a bad batch can never reach the
  parameters or a checkpoint. With batch norm the running statistics (``state["batch_stats"]``) move with the batch's
  statistics in the same step (and stay put with a non-finite one).

  ``accumulation_steps`` = k > 1 computes the same update from k micro-batches of B/k examples
  (``split_micro_batches``), one after another in a ``lax.scan``: the gradients of each micro-batch's mean loss are
  summed and divided by k (the mean over the B examples: the full batch's gradient), then one update is applied.
  It is done inside the step, not across calls, so a step is still one update of one ``batch_size`` batch: data
  order, ``num_train_steps``, the schedule and checkpoints keep their meaning, and a checkpoint can never hold
  half-accumulated gradients. Only the activations of one micro-batch are alive at a time (the memory saved); the
  parameters' gradient is one float32 sum. Micro-batch j draws its dropout masks from the step's key folded with j
  (the step stays a function of (state, batch)); its per-example outputs are put back in the batch's order. A unit
  counts as dead over the batch when it is dead in every micro-batch. With batch norm each micro-batch is normalised
  with its own statistics (over its B/k examples, as NVCaffe's iter_size did in the LARS paper's runs), and the
  running statistics take k updates per step, one per micro-batch in order. k = 1 is the plain step, unchanged.

  ``loss_scaling`` (float16 compute, ``loss_scale.DynamicLossScale``; the state then holds ``loss_scale``): the
  loss is multiplied by the state's scale before differentiation and the gradients divided by it after (the sum over
  micro-batches first). A finite loss with non-finite gradients above the minimum scale is an overflow: the update
  is skipped, ``step`` still advances, the scale halves, ``finite`` stays 1 and ``overflow`` is 1 (the gradient
  norms are reported as 0 on that step). A non-finite loss, or an overflow at the minimum scale, is a divergence:
  ``finite`` = 0 and the state is returned unchanged, as without scaling. ``outputs`` then also holds ``loss_scale``
  (the scale this step used) and ``overflow``.
  """
  k = int(accumulation_steps)
  if k < 1:
    raise ValueError(f"optimizer.accumulation_steps must be >= 1, got {accumulation_steps}")

  def gradients(params, batch_stats, batch: Batch, dropout_rng, scale):
    """(gradients of the batch's mean loss (times ``scale`` when given), (per-example loss, logits, relu_alive,
    the running statistics after this batch))."""
    images, labels = preprocess(batch), batch["label"]

    def loss_fn(params):
      model = nnx.merge(graphdef, params, batch_stats)
      logits, acts = model(images, dropout_rng=dropout_rng, train=True, return_activations=True)
      per_example = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
      new_stats = nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))
      loss = per_example.mean() if scale is None else per_example.mean() * scale
      return loss, (per_example, logits, relu_alive(acts, RELU_LAYERS), new_stats)

    (_, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    return grads, aux

  def accumulated_gradients(params, batch_stats, batch: Batch, dropout_rng, scale):
    """``gradients`` of the whole batch, computed over k micro-batches (the mean of their gradients); the running
    statistics pass through the micro-batches in order."""
    micro = split_micro_batches(batch, k)
    first = jax.tree.map(lambda x: x[0], micro)
    grads_shape, (_, _, alive_shape, _) = jax.eval_shape(gradients, params, batch_stats, first, dropout_rng, scale)
    zeros = lambda shapes: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

    def body(carry, xs):
      grads_sum, alive_any, stats = carry
      j, micro_batch = xs
      grads, (per_example, logits, alive, stats) = gradients(
        params, stats, micro_batch, jax.random.fold_in(dropout_rng, j), scale
      )
      carry = (jax.tree.map(jnp.add, grads_sum, grads), jax.tree.map(jnp.logical_or, alive_any, alive), stats)
      return carry, (per_example, logits)

    (grads_sum, alive, stats), (per_example, logits) = jax.lax.scan(
      body, (zeros(grads_shape), zeros(alive_shape), batch_stats), (jnp.arange(k), micro)
    )
    grads = jax.tree.map(lambda g: g / k, grads_sum)
    return grads, (join_micro_batches(per_example), join_micro_batches(logits), alive, stats)

  def train_step(state: State, batch: Batch) -> tuple[State, dict[str, jax.Array]]:
    step = state["step"]
    # The step's randomness is a function of the run's key and the step alone: resuming draws the same masks.
    dropout_rng = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), step)
    labels = batch["label"]
    if loss_scaling is not None and "loss_scale" not in state:
      raise ValueError("loss scaling needs the state's 'loss_scale': build it with init_train_state(loss_scaling=...)")
    scale = state["loss_scale"]["scale"] if loss_scaling is not None else None
    grads_of = gradients if k == 1 else accumulated_gradients
    grads, (per_example, logits, alive, batch_stats) = grads_of(
      state["params"], state.get("batch_stats", {}), batch, dropout_rng, scale
    )
    if scale is not None:
      grads = jax.tree.map(lambda g: g / scale, grads)
    lr = lr_schedule(step) * state["plateau"]["scale"]
    grad_norms = layer_norms(grads)
    grad_norm = global_norm(grad_norms)  # the norm of the layers' norms
    finite = jnp.isfinite(per_example.mean()) & jnp.isfinite(grad_norm)
    apply_update = finite
    if loss_scaling is not None:
      apply_update, overflow, diverged = loss_scale.classify(
        state["loss_scale"], jnp.isfinite(per_example.mean()), jnp.isfinite(grad_norm), loss_scaling
      )
      finite = ~diverged  # an overflow is normal: the run goes on
      grad_norms = {layer: jnp.where(overflow, 0.0, n) for layer, n in grad_norms.items()}
      grad_norm = jnp.where(overflow, 0.0, grad_norm)

    def apply(state: State) -> tuple[State, dict[str, jax.Array]]:
      updates, opt_state = tx.update(grads, state["opt_state"], state["params"], learning_rate=lr)
      params = optax.apply_updates(state["params"], updates)
      before, update_norms, after = layer_norms(state["params"]), layer_norms(updates), layer_norms(params)
      ratios = {layer: update_norms[layer] / jnp.maximum(before[layer], 1e-12) for layer in before}
      new = {**state, "step": step + 1, "params": params, "opt_state": opt_state}
      if "batch_stats" in state:
        new["batch_stats"] = batch_stats
      return new, {"ratio": ratios, "norm": after}

    def skip(state: State) -> tuple[State, dict[str, jax.Array]]:
      norms = layer_norms(state["params"])
      return state, {"ratio": jax.tree.map(jnp.zeros_like, norms), "norm": norms}

    # A non-finite step changes nothing. A conditional, not a select over the whole state: XLA's CPU backend runs an
    # elementwise pass gated by a computed scalar ~4x slower (benchmarks/RESULTS.md).
    new_state, health = jax.lax.cond(apply_update, apply, skip, state)
    errors = topk_errors(logits, labels)
    outputs = {
      "loss": per_example,
      "top1_error": errors[1],
      "top5_error": errors[5],
      "grad_norm": grad_norm,
      "param_norm": global_norm(health["norm"]),
      "learning_rate": lr,
      "finite": finite.astype(jnp.float32),
    }
    if loss_scaling is not None:  # an overflow consumes its step (and batch) without an update
      new_state = {
        **new_state,
        "step": jnp.where(overflow, step + 1, new_state["step"]),
        "loss_scale": loss_scale.adjust(state["loss_scale"], apply_update, overflow, loss_scaling),
      }
      outputs.update(loss_scale=scale, overflow=overflow.astype(jnp.float32))
    for layer in grad_norms:
      outputs[f"grad_norm_{layer}"] = grad_norms[layer]
      outputs[f"param_norm_{layer}"] = health["norm"][layer]
      outputs[f"update_ratio_{layer}"] = health["ratio"][layer]
    outputs.update({f"dead_relu_{layer}": fraction for layer, fraction in dead_fractions(alive).items()})
    return new_state, outputs

  return train_step


def make_eval_step(graphdef, preprocess: Callable[[Batch], jax.Array]) -> Callable[[Any, Batch], dict[str, jax.Array]]:
  """A pure ``eval_step(variables, batch) -> outputs`` with per-example loss and errors and the batch's ``mask``;
  ``variables`` is ``model_variables(state)`` (batch norm uses the running statistics).

  A batch may carry several views of each image (``image`` of shape [batch, views, H, W, C], e.g. the paper's
  10 crops): the softmax is averaged over the views, as in Sec. 4.1. ``graphdef`` and ``variables`` may be tuples of
  several models (an ensemble, like the paper's "5 CNNs"): the softmax is then averaged over the models too.
  """

  def probabilities(graphdef, variables, images):
    model = merge_model(graphdef, variables)
    if images.ndim == 5:
      b, v = images.shape[:2]
      logits = model(images.reshape(b * v, *images.shape[2:])).astype(jnp.float32)
      return jax.nn.softmax(logits).reshape(b, v, -1).mean(axis=1)
    return jax.nn.softmax(model(images).astype(jnp.float32))

  def eval_step(variables, batch: Batch) -> dict[str, jax.Array]:
    images, labels = preprocess(batch), batch["label"]
    if isinstance(graphdef, tuple):
      probs = sum(probabilities(g, v, images) for g, v in zip(graphdef, variables, strict=True)) / len(graphdef)
    else:
      probs = probabilities(graphdef, variables, images)
    log_probs = jnp.log(jnp.maximum(probs, 1e-30))
    per_example = -jnp.take_along_axis(log_probs, labels[:, None], axis=-1)[:, 0]
    errors = topk_errors(probs, labels)
    mask = batch.get("mask", jnp.ones_like(labels, dtype=jnp.float32))
    return {"loss": per_example, "top1_error": errors[1], "top5_error": errors[5], "mask": mask}

  return eval_step


def init_train_state(
  make_model: Callable[..., nnx.Module],
  tx: optax.GradientTransformationExtraArgs,
  seed: int,
  *,
  loss_scaling: loss_scale.DynamicLossScale | None = None,
) -> tuple[nnx.GraphDef, Callable[[], State]]:
  """The model's graphdef, and a pure ``init()`` that builds the whole train state from ``seed`` (with
  ``loss_scaling``, float16's, also its ``loss_scale`` state; without it the state has no such key).

  Jit ``init`` with ``out_shardings`` to create the state directly where it lives (nothing is built on one device
  first); ``jax.eval_shape(init)`` gives its shapes for free.
  """
  graphdef = split_model(nnx.eval_shape(lambda: make_model(rngs=nnx.Rngs(0))))[0]

  def init() -> State:
    params_key, dropout_key = jax.random.split(jax.random.key(seed))
    _, params, batch_stats = split_model(make_model(rngs=nnx.Rngs(params=params_key)))
    state = {
      "step": jnp.zeros((), jnp.int32),
      "params": params,
      "opt_state": tx.init(params),
      "rng": jax.random.key_data(dropout_key),
      "plateau": optim.plateau_init(),
      **({"loss_scale": loss_scaling.init()} if loss_scaling is not None else {}),
    }
    if batch_stats:  # only a model with batch norm: the others keep the layout of every older checkpoint
      state["batch_stats"] = batch_stats
    return state

  return graphdef, init
