"""Training and evaluation, told top to bottom: ``train_and_evaluate(config, workdir)``.

Importable from a notebook, a test or a benchmark; ``main.py`` only parses flags and calls it. The run reads in
phases (``_run``: mesh, input, model and optimiser, checkpoint, steps, writers, then ``_Loop``'s steps, logs,
evaluations and saves). Around it, each in its own module: the input thread (``prefetch.py``), SIGTERM
(``preemption.py``), ``run.json`` (``manifest.py``) and the native libraries' environment (``native/``).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import jax
import ml_collections
import numpy as np
from absl import logging

from alexnet_jax import checkpoint as checkpoint_lib
from alexnet_jax import config_lib, health, loss_scale, manifest, optim, parallel, steps, storage, workdir_lock
from alexnet_jax import metrics as metrics_lib
from alexnet_jax import model as model_lib
from alexnet_jax.data import sources
from alexnet_jax.native import tensorflow_devices
from alexnet_jax.preemption import PreemptionFlag
from alexnet_jax.prefetch import prefetch


class NonFiniteError(RuntimeError):
  """The loss or the gradient norm became NaN or infinite."""


class ConfigChangedError(ValueError):
  """A resume would change keys that alter the computation."""


# -----------------------------------------------------------------------------------------------------------------
# Pieces built from the config (also used by evaluate.py and the tests).
# -----------------------------------------------------------------------------------------------------------------
def make_model_fn(config: ml_collections.ConfigDict, mesh) -> Callable[..., model_lib.AlexNet]:
  """The model's constructor for ``mesh``: its platform resolves 'auto' implementations, and a 'model' axis > 1
  splits the conv layers over devices as the paper did (``model.AlexNet._columns``). Batch norm's statistics groups
  (``model.bn_group_size`` devices of the 'data' axis each; 0: the whole global batch) are counted on ``mesh``."""
  m = config.model
  conv_impl, conv1_impl = conv_impls(config, mesh.devices.flat[0].platform)
  return functools.partial(
    model_lib.AlexNet,
    m.name,
    num_classes=m.num_classes,
    image_size=m.image_size or None,
    width=m.width,
    dropout_rate=m.dropout_rate,
    lrn_alpha_over_n=m.lrn_alpha_over_n,
    lrn_per_column=m.lrn_per_column,
    conv_impl=conv_impl,
    conv1_impl=conv1_impl,
    init=m.init or None,
    dtype=m.dtype,
    mesh=mesh,
    bn_groups=bn_groups(config, mesh),
    bn_momentum=m.bn_momentum,
    bn_epsilon=m.bn_epsilon,
  )


def bn_groups(config: ml_collections.ConfigDict, mesh) -> int:
  """How many batch-norm statistics groups the training batch makes on ``mesh``: 1 for ``model.bn_group_size=0``
  (the whole global batch), else the 'data' axis's devices over ``bn_group_size``. Raises ValueError when it does
  not divide them."""
  size, data = config.model.bn_group_size, mesh.shape["data"]
  if size == 0:
    return 1
  if data % size:
    divisors = [d for d in range(1, data + 1) if data % d == 0]
    raise ValueError(
      f"model.bn_group_size={size} does not divide the {data} devices of the mesh's 'data' axis (batch norm's "
      f"statistics groups are whole sets of devices): use one of {divisors}, or 0 for the whole global batch"
    )
  return data // size


def conv_impls(config: ml_collections.ConfigDict, platform: str | None = None) -> tuple[str, str]:
  """(conv_impl, conv1_impl) for this config on ``platform`` (default: this backend), 'auto' resolved
  (``model.resolve_conv_impls``)."""
  m = config.model
  return model_lib.resolve_conv_impls(m.conv_impl, m.conv1_impl, platform)


def make_optimizer(config: ml_collections.ConfigDict):
  """The optimiser of ``optimizer.name``: the paper's SGD, or LARS. "Biases" (``decay_biases``,
  ``bias_lr_multiplier``) are every parameter that is not a kernel: the biases, and batch norm's scale and offset."""
  o = config.optimizer
  is_bias = lambda params: jax.tree_util.tree_map_with_path(
    lambda path, _: getattr(path[-1], "key", None) != "kernel", params
  )
  decay_mask = None if o.decay_biases else lambda params: jax.tree.map(lambda b: not b, is_bias(params))
  lr_multipliers = None
  if o.bias_lr_multiplier != 1.0:
    lr_multipliers = lambda params: jax.tree.map(lambda b: o.bias_lr_multiplier if b else 1.0, is_bias(params))
  if o.name == "lars":
    lars_mask = None if o.lars_scope == "all" else lambda params: jax.tree.map(lambda b: not b, is_bias(params))
    return optim.lars(
      o.momentum, o.weight_decay, o.lars_eta, o.weight_decay_mode, decay_mask, lars_mask, lr_multipliers
    )
  return optim.paper_sgd(o.momentum, o.weight_decay, o.weight_decay_mode, decay_mask, lr_multipliers)


class Schedule(NamedTuple):
  steps_per_epoch: int
  num_train_steps: int
  eval_every: int  # steps between scheduled evaluations


def schedule_steps(config: ml_collections.ConfigDict, steps_per_epoch: int) -> Schedule:
  """(steps_per_epoch, num_train_steps, eval_every_steps) for this config and epoch length."""
  total = config.num_train_steps if config.num_train_steps > 0 else int(round(config.num_epochs * steps_per_epoch))
  eval_every = {-1: steps_per_epoch, 0: total}.get(config.eval_every_steps, config.eval_every_steps)
  return Schedule(steps_per_epoch, total, max(1, eval_every))


class StatePlan(NamedTuple):
  """Everything about the train state that is known before any array exists."""

  graphdef: Any
  init: Callable[[], dict[str, Any]]  # pure; jit it with out_shardings=shardings
  tx: Any
  abstract: Any  # jax.ShapeDtypeStruct pytree
  shardings: Any  # NamedSharding pytree on the given mesh


def plan_state(config: ml_collections.ConfigDict, mesh) -> StatePlan:
  """Model, optimiser, the state's shapes (``jax.eval_shape``) and where each array lives on ``mesh`` (the model
  built for the mesh's platform, which ``aot.py`` makes a GPU or TPU that is not here)."""
  tx = make_optimizer(config)
  loss_scaling = loss_scale.for_dtype(config.model.dtype)
  graphdef, init = steps.init_train_state(make_model_fn(config, mesh), tx, config.seed, loss_scaling=loss_scaling)
  abstract = jax.eval_shape(init)
  return StatePlan(graphdef, init, tx, abstract, parallel.state_shardings(mesh, abstract))


def make_lr_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int, total_steps: int):
  s = config.schedule
  return optim.base_schedule(
    s.name,
    learning_rate=config.optimizer.learning_rate,
    steps_per_epoch=steps_per_epoch,
    total_steps=total_steps,
    step_epochs=tuple(s.step_epochs),
    factor=s.factor,
    warmup_epochs=s.warmup_epochs,
    power=s.power,
    end_learning_rate=s.end_learning_rate,
  )


@jax.jit
def merge_metrics(total, new):
  """``total.merge(new)`` as one compiled program: clu's eager merge dispatches one small device op per metric field
  (~40 here) each step; one program instead is 1.5x the steps/s of a tiny network on CPU (benchmarks/RESULTS.md)."""
  return total.merge(new)


@functools.cache
def _cpu_devices_in_lockstep() -> bool:
  return jax.default_backend() == "cpu" and jax.local_device_count() > 1


def settle(outputs):
  """``outputs`` once ready, on XLA:CPU with several devices (the fake devices of tests and laptops); elsewhere as
  is. XLA:CPU's all-reduce across in-process devices deadlocks at random (jax 0.10.2) when another program is
  dispatched while a step's collectives run: 2 of 4 runs of 300 steps, two side by side, in one measurement
  (benchmarks/RESULTS.md). Waiting for each step there costs only the overlap of dispatch with compute."""
  if _cpu_devices_in_lockstep():
    jax.block_until_ready(outputs)
  return outputs


def evaluate(eval_step, variables, batches: Iterator[dict[str, np.ndarray]], sharding) -> dict[str, float]:
  """Run ``eval_step`` on ``variables`` (``steps.model_variables``) over every batch; averages over real (unmasked)
  examples only."""
  total = None
  for batch in batches:
    out = settle(eval_step(variables, parallel.to_global(batch, sharding)))
    total = out if total is None else merge_metrics(total, out)
  if total is None:
    raise ValueError("the evaluation split is empty")
  return metrics_lib.eval_results(total)


def train_step_options(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The keyword arguments of ``steps.make_train_step`` (and ``jit_train_step``) that the config sets:
  ``accumulation_steps`` (optimizer.accumulation_steps) and ``loss_scaling`` (float16's dynamic loss scale)."""
  return {
    "accumulation_steps": config.optimizer.accumulation_steps,
    "loss_scaling": loss_scale.for_dtype(config.model.dtype),
  }


def jit_train_step(graphdef, tx, lr_schedule, preprocess, mesh, shardings, **options):
  """The update step as training runs it: (state, batch) -> (state, TrainMetrics), the state donated. Also what
  ``aot.py`` compiles for accelerators that are not here. ``options``: ``train_step_options(config)``."""
  pure_train_step = steps.make_train_step(graphdef, tx, lr_schedule, preprocess, **options)
  collection = metrics_lib.TrainMetricsLossScaled if options.get("loss_scaling") else metrics_lib.TrainMetrics

  def train_step(state, batch):
    state, outputs = pure_train_step(state, batch)
    return state, collection.single_from_model_output(**outputs)

  return jax.jit(
    train_step,
    in_shardings=(shardings, parallel.batch_sharding(mesh)),
    out_shardings=(shardings, parallel.replicated(mesh)),
    donate_argnums=0,
  )


def jit_eval_step(graphdef, preprocess, mesh, variables_shardings):
  """The evaluation step as training runs it: (variables, batch) -> EvalMetrics; ``variables`` and
  ``variables_shardings`` are ``steps.model_variables`` of the state and of its shardings."""

  def eval_step(variables, batch):
    outputs = steps.make_eval_step(graphdef, preprocess)(variables, batch)
    return metrics_lib.EvalMetrics.single_from_model_output(**outputs)

  return jax.jit(
    eval_step,
    in_shardings=(variables_shardings, parallel.batch_sharding(mesh)),
    out_shardings=parallel.replicated(mesh),
  )


def load_checkpoint(
  config: ml_collections.ConfigDict, workdir: str, mesh=None, step: int | None = None
) -> tuple[int, dict[str, Any], Any]:
  """(step, train state, graphdef) of the newest readable checkpoint in ``workdir`` (or of ``step``), laid out on
  ``mesh`` (default: every device). For evaluation, notebooks and tests."""
  plan = plan_state(config, mesh or parallel.create_mesh(config.mesh.model))
  target = checkpoint_lib.abstract_with_shardings(plan.abstract, plan.shardings)
  ckpt = checkpoint_lib.Checkpointer(storage.join(storage.resolve(workdir), "checkpoints"), max_to_keep=10**9)
  try:
    restored = ckpt.restore_step(step, target) if step is not None else ckpt.restore_latest(target)
  finally:
    ckpt.close()
  if restored is None:
    raise ValueError(f"no checkpoint in {workdir}/checkpoints: train first, or check --workdir")
  return restored[0], restored[1], plan.graphdef


# -----------------------------------------------------------------------------------------------------------------
# The workdir.
# -----------------------------------------------------------------------------------------------------------------
def prepare_workdir(workdir: str) -> str:
  """The workdir, absolute (or a URL), created and proven writable before anything is computed."""
  workdir = storage.resolve(workdir)
  storage.check_checkpoint_location(workdir, "--workdir")
  try:
    storage.makedirs(workdir)
    probe = storage.join(workdir, f".write_probe_{jax.process_index()}")
    with storage.open(probe, "w") as f:
      f.write("ok")
    storage.remove(probe)
  except Exception as e:  # OSError locally; the cloud clients raise their own kinds
    raise ValueError(
      f"workdir {workdir!r} is not writable ({getattr(e, 'strerror', None) or e}); choose a directory you can write to "
      "with --workdir=DIR."
    ) from e
  return workdir


# -----------------------------------------------------------------------------------------------------------------
# The run.
# -----------------------------------------------------------------------------------------------------------------
def train_and_evaluate(
  config: ml_collections.ConfigDict, workdir: str, *, allow_config_change: bool = False
) -> dict[str, Any]:
  """Train (resuming from ``workdir`` if it holds a checkpoint) and evaluate; returns the final metrics.

  The returned dict has ``step`` (the last), ``start_step`` (where this call began: 0, or the step it resumed from),
  ``status`` ('completed' or 'preempted') and the last ``eval_*`` values (none when nothing was left to train). A second
  run on a workdir that a live run holds stops at once (``workdir_lock.WorkdirLockedError``, naming the holder).
  """
  # ---- Config and workdir: one writer per workdir --------------------------------------------------------------
  config_lib.validate(config)
  sources.resolve_source(config)  # a data.dir that is no data set is refused before the workdir is made
  workdir = prepare_workdir(workdir)
  with PreemptionFlag() as preemption:  # from here on SIGTERM stops the run cleanly, during setup too
    lock = workdir_lock.hold(workdir)
    try:
      return _run(config, workdir, allow_config_change, preemption)
    finally:
      if lock is not None:
        lock.release()


def _run(
  config: ml_collections.ConfigDict, workdir: str, allow_config_change: bool, preemption: PreemptionFlag
) -> dict[str, Any]:
  # clu's writers import TensorFlow: keep it off the accelerators first
  tensorflow_devices.hide_accelerators_from_tensorflow()

  # ---- Mesh -----------------------------------------------------------------------------------------------------
  mesh = _create_mesh(config)

  # ---- Input ----------------------------------------------------------------------------------------------------
  source = sources.create_source(config)
  schedule = schedule_steps(config, source.steps_per_epoch(config.batch_size))

  # ---- Model and optimiser: shapes first, then the state created where it lives --------------------------------
  plan = plan_state(config, mesh)
  lr_schedule = make_lr_schedule(config, schedule.steps_per_epoch, schedule.num_train_steps)
  num_params = model_lib.count_params(plan.abstract["params"])
  logging.info("Model %s: %d parameters", config.model.name, num_params)

  # ---- Checkpoint: resume, or start afresh ----------------------------------------------------------------------
  config_json = config_lib.to_json(config)
  ckpt = checkpoint_lib.Checkpointer(storage.join(workdir, "checkpoints"), max_to_keep=config.keep_checkpoints)
  state, resumed = _restore_or_init(ckpt, plan, config_json, workdir, allow_config_change)
  step = int(state["step"])

  # ---- Update and eval steps ------------------------------------------------------------------------------------
  train_step = jit_train_step(
    plan.graphdef, plan.tx, lr_schedule, source.preprocess, mesh, plan.shardings, **train_step_options(config)
  )
  eval_step = jit_eval_step(plan.graphdef, source.preprocess, mesh, steps.model_variables(plan.shardings))

  # ---- Writers: metrics, run.json, progress reports and the profiler ---------------------------------------------
  writer = metrics_lib.create_writer(workdir, tensorboard=config.tensorboard)
  manifest.write_manifest(
    workdir,
    config,
    num_params=num_params,
    num_train_steps=schedule.num_train_steps,
    steps_per_epoch=schedule.steps_per_epoch,
    resumed_from_step=step if resumed else None,
  )
  hooks = _periodic_actions(config, workdir, writer, schedule.num_train_steps)

  # ---- Loop: train, log, evaluate, save; stop at the last step or after SIGTERM --------------------------------
  if step >= schedule.num_train_steps:
    logging.info("Already trained to step %d >= num_train_steps=%d: nothing to do.", step, schedule.num_train_steps)
    ckpt.close()
    writer.close()
    return {"step": step, "start_step": step, "status": "completed"}
  loop = _Loop(config, config_json, schedule, source, mesh, plan.shardings, state, train_step, eval_step, ckpt, writer)
  return loop.run(hooks, preemption)


def _create_mesh(config: ml_collections.ConfigDict):
  """Every device, in a ('data', 'model') mesh; both batch sizes checked to split evenly over it (the train batch
  into optimizer.accumulation_steps micro-batches that each split evenly over it)."""
  mesh = parallel.create_mesh(config.mesh.model)
  parallel.check_batch_size(config.batch_size, mesh, "batch_size")
  parallel.check_micro_batches(config.batch_size, config.optimizer.accumulation_steps, mesh)
  parallel.check_batch_size(config.eval_batch_size, mesh, "eval_batch_size")
  bn_groups(config, mesh)  # batch norm's statistics groups divide the data-parallel devices
  logging.info("Mesh %s over %d devices in %d process(es)", dict(mesh.shape), jax.device_count(), jax.process_count())
  return mesh


def _restore_or_init(
  ckpt: checkpoint_lib.Checkpointer,
  plan: StatePlan,
  config_json: dict[str, Any],
  workdir: str,
  allow_config_change: bool,
) -> tuple[dict[str, Any], bool]:
  """(state, resumed): the newest readable checkpoint laid out on the mesh, or a fresh state created there. A saved
  config whose computation differs is refused (before any array is read) unless the change is allowed."""

  def refuse_a_changed_config(step: int, saved_config: dict[str, Any]) -> None:  # before any array is read
    changed = config_lib.changed_keys(saved_config, config_json)
    if changed and not allow_config_change:
      details = "; ".join(
        f"{k}: {config_lib.flatten(saved_config).get(k)!r} -> {config_lib.flatten(config_json).get(k)!r}"
        for k in changed
      )
      raise ConfigChangedError(
        f"{workdir} holds a run with a different config (step {step}: {details}). Use a new --workdir, restore the "
        "old values, or pass --allow_config_change to resume anyway."
      )

  try:
    restored = ckpt.restore_latest(
      checkpoint_lib.abstract_with_shardings(plan.abstract, plan.shardings), check_config=refuse_a_changed_config
    )
  except Exception:
    ckpt.close()
    raise
  if restored is None:
    state = jax.jit(plan.init, out_shardings=plan.shardings)()
    logging.info("No checkpoint in %s: starting from step 0", ckpt.directory)
    return state, False
  restored_step, state, saved_config = restored
  changed = config_lib.changed_keys(saved_config, config_json)
  if changed:
    logging.warning("Resuming with changed config keys (allowed): %s", changed)
  logging.info("Resuming from the checkpoint at step %d (next step: %d)", restored_step, restored_step + 1)
  return state, True


def _periodic_actions(config: ml_collections.ConfigDict, workdir: str, writer, num_train_steps: int) -> list[Any]:
  """clu's hooks, called after every step: progress reports (steps/s) and, if asked for, a profile."""
  from clu import periodic_actions

  hooks: list[Any] = [
    periodic_actions.ReportProgress(
      num_train_steps=num_train_steps, writer=writer, every_steps=config.log_every_steps, every_secs=None
    )
  ]
  if config.profile.enabled and jax.process_index() == 0:
    hooks.append(
      periodic_actions.Profile(
        logdir=workdir,
        first_profile=config.profile.first_step,
        num_profile_steps=config.profile.num_steps,
        every_secs=None,
      )
    )
  return hooks


class _Loop:
  """The training loop and what it carries from step to step: the state, the metrics since the last log line, the
  newest checkpoint known to be good. ``run`` is the loop; each of its other methods is one thing a step may do."""

  def __init__(
    self, config, config_json, schedule: Schedule, source, mesh, shardings, state, train_step, eval_step, ckpt, writer
  ):
    self.config, self.config_json, self.schedule, self.source = config, config_json, schedule, source
    self.batch_sharding, self.plateau_sharding = parallel.batch_sharding(mesh), shardings["plateau"]
    self.train_step, self.eval_step, self.ckpt, self.writer = train_step, eval_step, ckpt, writer
    self.state, self.step = state, int(state["step"])
    self.train_metrics = None  # merged since the last log line; None right after one
    h = config.health
    self.detector = health.CollapseDetector(
      config.model.num_classes,
      chance_margin=h.chance_margin,
      vanishing_grad=h.vanishing_grad,
      patience=h.patience,
      max_steps_at_chance=h.max_steps_at_chance,
    )
    self.input_wait_monitor = health.InputWaitMonitor(config.data.input_wait_warning)
    self.last_good_ckpt = ckpt.all_steps()[-1] if ckpt.all_steps() else None
    self.window_start, self.window_steps, self.input_wait = time.perf_counter(), 0, 0.0

  def run(self, hooks: list[Any], preemption: PreemptionFlag) -> dict[str, Any]:
    config, num_train_steps = self.config, self.schedule.num_train_steps
    result: dict[str, Any] = {"step": self.step, "start_step": self.step, "status": "completed"}
    batches = prefetch(
      self.source.train_batches(self.step, config.batch_size), config.data.prefetch, self.batch_sharding
    )
    try:
      if preemption.reached(self.step, 1):  # SIGTERM during setup: nothing new to save
        result["status"] = "preempted"
        logging.warning(
          "Stopped before training step %d after SIGTERM; rerun the same command to resume.", self.step + 1
        )
      while self.step < num_train_steps and result["status"] != "preempted":
        self.train_one_step(batches)
        for hook in hooks:
          hook(self.step)

        last = self.step == num_train_steps
        # The step by which the loss must have left chance is always a log step, whatever log_every_steps is.
        if self.step % config.log_every_steps == 0 or last or self.step == config.health.max_steps_at_chance:
          self.log_train_metrics()

        scheduled_eval = self.step % self.schedule.eval_every == 0
        if scheduled_eval or last:
          result.update({f"eval_{k}": v for k, v in self.run_eval(scheduled_eval).items()})

        preempted = preemption.reached(self.step, config.log_every_steps) and not last  # at the end: finished anyway
        if self.step % config.checkpoint_every_steps == 0 or last or preempted:
          self.save()
        if preempted:
          result["status"] = "preempted"
          logging.warning(
            "Stopped at step %d after SIGTERM; the checkpoint is being committed. Rerun the same command to resume.",
            self.step,
          )
          break
    finally:  # on every path, errors included: pending saves commit, files close, the input thread stops
      batches.close()
      self.ckpt.close()
      self.writer.flush()
      self.writer.close()
    result["step"] = self.step
    logging.info("Finished at step %d: %s", self.step, {k: v for k, v in result.items() if k.startswith("eval_")})
    return result

  def train_one_step(self, batches: Iterator[dict[str, jax.Array]]) -> None:
    t0 = time.perf_counter()
    batch = next(batches)
    self.input_wait += time.perf_counter() - t0
    with jax.profiler.StepTraceAnnotation("train", step_num=self.step):
      self.state, step_metrics = settle(self.train_step(self.state, batch))
    self.step += 1
    self.window_steps += 1
    self.train_metrics = step_metrics if self.train_metrics is None else merge_metrics(self.train_metrics, step_metrics)

  def log_train_metrics(self) -> None:
    """The train metrics since the last log line, written; finiteness and the collapse detector checked on them."""
    values = self.train_metrics.compute()
    self.check_finite(values)
    elapsed = time.perf_counter() - self.window_start
    scalars = {f"train_{k}": v for k, v in values.items() if k not in ("learning_rate", "finite", "loss_scale")}
    if "loss_scale" in values:  # float16: the dynamic loss scale, like the rate a setting of the step
      scalars["loss_scale"] = values["loss_scale"]
    scalars.update(
      learning_rate=values["learning_rate"],
      images_per_sec=self.window_steps * self.config.batch_size / elapsed,
      input_wait_fraction=self.input_wait / elapsed,
      epoch=self.step / self.schedule.steps_per_epoch,
    )
    peak = parallel.peak_memory_bytes()
    if peak is not None:  # GPUs and TPUs: the most device memory held so far, beside aot.py's plan
      scalars["peak_memory_bytes"] = peak
    self.writer.write_scalars(self.step, scalars)
    if starved := self.input_wait_monitor.update(self.step, scalars["input_wait_fraction"]):
      logging.warning("%s", starved)
    self.train_metrics, self.window_start, self.window_steps, self.input_wait = None, time.perf_counter(), 0, 0.0
    collapse = self.detector.update(self.step, values)
    if collapse and self.config.health.on_collapse == "stop":
      self.ckpt.wait()
      raise health.CollapseError(collapse)
    if collapse:
      logging.warning("%s", collapse)

  def run_eval(self, scheduled: bool) -> dict[str, float]:
    """The validation metrics, written; a scheduled evaluation also feeds the paper's plateau rule."""
    batches = self.source.eval_batches(self.config.eval_batch_size)
    try:
      eval_values = evaluate(self.eval_step, steps.model_variables(self.state), batches, self.batch_sharding)
    except Exception:  # a bad validation shard, say: the steps trained so far are saved before it stops
      self.save()
      self.ckpt.wait()
      raise
    self.writer.write_scalars(self.step, {f"eval_{k}": v for k, v in eval_values.items()})
    # Only scheduled evaluations feed the plateau rule: where a run happens to stop must not change it.
    if self.config.schedule.name == "paper" and scheduled:
      self.state = {**self.state, "plateau": self.plateau_after(eval_values["top1_error"])}
    return eval_values

  def plateau_after(self, top1_error: float):
    """The plateau rule's state after this validation error (Sec. 5: the rate divided by 10 when it stops
    improving), on the devices."""
    s = self.config.schedule
    plateau = optim.plateau_update(
      jax.device_get(self.state["plateau"]),
      top1_error,
      patience=s.patience,
      factor=s.factor,
      max_drops=s.max_drops,
      min_delta=s.min_delta,
    )
    if plateau["num_drops"] > int(self.state["plateau"]["num_drops"]):
      logging.info(
        "Validation error has not improved for %d evaluations: learning rate x%g (drop %d of %d)",
        s.patience,
        s.factor,
        plateau["num_drops"],
        s.max_drops,
      )
    return jax.device_put(plateau, self.plateau_sharding)

  def save(self) -> None:
    if self.train_metrics is not None:  # never save a state that followed a non-finite step
      self.check_finite(self.train_metrics.compute())
    self.ckpt.save(self.step, self.state, self.config_json)
    self.last_good_ckpt = self.step

  def check_finite(self, values: dict[str, Any]) -> None:
    if float(values["finite"]) < 1.0:
      self.ckpt.wait()
      where = (
        f"the last good checkpoint (step {self.last_good_ckpt}) is intact"
        if self.last_good_ckpt is not None
        else "no checkpoint had been written yet"
      )
      lr = float(values["learning_rate"])
      scaled = ""
      if "loss_scale" in values:  # float16: overflows are skipped and lower the scale; this is not one
        scaled = (
          f" (float16: a non-finite loss, or gradients that overflowed at the minimum loss scale "
          f"{loss_scale.DynamicLossScale().min_scale:g}; loss-scale overflows above it never stop a run)"
        )
      raise NonFiniteError(
        f"The loss or the gradient norm became NaN/inf{scaled} at or before step {self.step} (learning rate "
        f"{lr:.3g}); the update was not applied and nothing was saved after it: {where}. Check the input data, or "
        "lower the rate: "
        f"rerun with --config.optimizer.learning_rate={lr / 10:.3g} --allow_config_change to resume from that "
        "checkpoint with it, or start afresh in a new --workdir."
      )
