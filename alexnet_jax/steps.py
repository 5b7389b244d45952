"""The pure functions that run on the devices: loss, train step, eval step.

They depend on jax, flax and optax only (no TensorFlow, clu or ml_collections), so the benchmark runs them on
machines that have nothing else. The train state is a plain pytree:
    {"step": int32, "params": nested dict, "opt_state": PaperSgdState, "rng": uint32 key data,
     "plateau": dict of scalars}
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

from alexnet_jax import optim

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


def dead_relu_fractions(activations: dict[str, jax.Array], layers) -> dict[str, jax.Array]:
  """{layer: the fraction of its units whose ReLU output is zero for every example of the batch}. A unit is a channel
  of a conv layer (at every position) or a neuron of a dense layer; a layer at 1.0 passes nothing on."""
  out = {}
  for layer in layers:
    a = activations[layer]
    alive = jnp.any(a > 0, axis=tuple(range(a.ndim - 1)))
    out[layer] = jnp.mean((~alive).astype(jnp.float32))
  return out


RELU_LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7")  # fc8 feeds the softmax: no ReLU


def make_train_step(
  graphdef: nnx.GraphDef,
  tx: optax.GradientTransformationExtraArgs,
  lr_schedule: optax.Schedule,
  preprocess: Callable[[Batch], jax.Array],
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
  """

  def train_step(state: State, batch: Batch) -> tuple[State, dict[str, jax.Array]]:
    step = state["step"]
    # The step's randomness is a function of the run's key and the step alone: resuming draws the same masks.
    dropout_rng = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), step)
    images, labels = preprocess(batch), batch["label"]

    def loss_fn(params):
      model = nnx.merge(graphdef, params, state.get("batch_stats", {}))
      logits, acts = model(images, dropout_rng=dropout_rng, train=True, return_activations=True)
      per_example = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
      batch_stats = nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))  # the running statistics after this batch
      return per_example.mean(), (per_example, logits, dead_relu_fractions(acts, RELU_LAYERS), batch_stats)

    (_, (per_example, logits, dead, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    lr = lr_schedule(step) * state["plateau"]["scale"]
    grad_norms = layer_norms(grads)
    grad_norm = global_norm(grad_norms)  # the norm of the layers' norms
    finite = jnp.isfinite(per_example.mean()) & jnp.isfinite(grad_norm)

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
    new_state, health = jax.lax.cond(finite, apply, skip, state)
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
    for layer in grad_norms:
      outputs[f"grad_norm_{layer}"] = grad_norms[layer]
      outputs[f"param_norm_{layer}"] = health["norm"][layer]
      outputs[f"update_ratio_{layer}"] = health["ratio"][layer]
    outputs.update({f"dead_relu_{layer}": fraction for layer, fraction in dead.items()})
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
  make_model: Callable[..., nnx.Module], tx: optax.GradientTransformationExtraArgs, seed: int
) -> tuple[nnx.GraphDef, Callable[[], State]]:
  """The model's graphdef, and a pure ``init()`` that builds the whole train state from ``seed``.

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
    }
    if batch_stats:  # only a model with batch norm: the others keep the layout of every older checkpoint
      state["batch_stats"] = batch_stats
    return state

  return graphdef, init
