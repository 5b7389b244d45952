"""Training and evaluation, told top to bottom: ``train_and_evaluate(config, workdir)``.

Importable from a notebook, a test or a benchmark; ``main.py`` only parses flags and calls it.
"""

from __future__ import annotations

import collections
import functools
import importlib.metadata
import json
import logging as logging_std
import os
import platform
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import jax
import ml_collections
import numpy as np
from absl import logging

from alexnet_jax import checkpoint as checkpoint_lib
from alexnet_jax import config_lib, health, input_pipeline, optim, parallel, steps, storage, workdir_lock
from alexnet_jax import metrics as metrics_lib
from alexnet_jax import model as model_lib


class NonFiniteError(RuntimeError):
  """The loss or the gradient norm became NaN or infinite."""


class ConfigChangedError(ValueError):
  """A resume would change keys that alter the computation."""


# -----------------------------------------------------------------------------------------------------------------
# Pieces built from the config (also used by evaluate.py and the tests).
# -----------------------------------------------------------------------------------------------------------------
def make_model_fn(config: ml_collections.ConfigDict, mesh) -> Callable[..., model_lib.AlexNet]:
  """The model's constructor for ``mesh``: its platform resolves 'auto' implementations, and a 'model' axis > 1
  splits the conv layers over devices as the paper did (``model.AlexNet._columns``)."""
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
  )


def conv_impls(config: ml_collections.ConfigDict, platform: str | None = None) -> tuple[str, str]:
  """(conv_impl, conv1_impl) for this config on ``platform`` (default: this backend), 'auto' resolved
  (``model.resolve_conv_impls``)."""
  m = config.model
  return model_lib.resolve_conv_impls(m.conv_impl, m.conv1_impl, platform)


def make_optimizer(config: ml_collections.ConfigDict):
  o = config.optimizer
  is_bias = lambda params: jax.tree_util.tree_map_with_path(
    lambda path, _: getattr(path[-1], "key", None) == "bias", params
  )
  decay_mask = None if o.decay_biases else lambda params: jax.tree.map(lambda b: not b, is_bias(params))
  lr_multipliers = None
  if o.bias_lr_multiplier != 1.0:
    lr_multipliers = lambda params: jax.tree.map(lambda b: o.bias_lr_multiplier if b else 1.0, is_bias(params))
  return optim.paper_sgd(o.momentum, o.weight_decay, o.weight_decay_mode, decay_mask, lr_multipliers)


def schedule_steps(config: ml_collections.ConfigDict, steps_per_epoch: int) -> tuple[int, int, int]:
  """(steps_per_epoch, num_train_steps, eval_every_steps) for this config and epoch length."""
  total = config.num_train_steps if config.num_train_steps > 0 else int(round(config.num_epochs * steps_per_epoch))
  eval_every = {-1: steps_per_epoch, 0: total}.get(config.eval_every_steps, config.eval_every_steps)
  return steps_per_epoch, total, max(1, eval_every)


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
  graphdef, init = steps.init_train_state(make_model_fn(config, mesh), tx, config.seed)
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


def evaluate(eval_step, params, batches: Iterator[dict[str, np.ndarray]], sharding) -> dict[str, float]:
  """Run ``eval_step`` over every batch; averages over real (unmasked) examples only."""
  total = None
  for batch in batches:
    out = settle(eval_step(params, parallel.to_global(batch, sharding)))
    total = out if total is None else merge_metrics(total, out)
  if total is None:
    raise ValueError("the evaluation split is empty")
  return metrics_lib.eval_results(total)


def jit_train_step(graphdef, tx, lr_schedule, preprocess, mesh, shardings):
  """The update step as training runs it: (state, batch) -> (state, TrainMetrics), the state donated. Also what
  ``aot.py`` compiles for accelerators that are not here."""
  pure_train_step = steps.make_train_step(graphdef, tx, lr_schedule, preprocess)

  def train_step(state, batch):
    state, outputs = pure_train_step(state, batch)
    return state, metrics_lib.TrainMetrics.single_from_model_output(**outputs)

  return jax.jit(
    train_step,
    in_shardings=(shardings, parallel.batch_sharding(mesh)),
    out_shardings=(shardings, parallel.replicated(mesh)),
    donate_argnums=0,
  )


def jit_eval_step(graphdef, preprocess, mesh, params_shardings):
  def eval_step(params, batch):
    return metrics_lib.EvalMetrics.single_from_model_output(**steps.make_eval_step(graphdef, preprocess)(params, batch))

  return jax.jit(
    eval_step,
    in_shardings=(params_shardings, parallel.batch_sharding(mesh)),
    out_shardings=parallel.replicated(mesh),
  )


def threaded(iterator: Iterator[Any], size: int) -> Iterator[Any]:
  """Run ``iterator`` in a background thread, ``size`` items ahead. The thread makes host (numpy) batches only and
  is stopped and joined when the consumer closes the generator, so none is left inside native code at exit."""
  q: queue.Queue = queue.Queue(maxsize=max(1, size))
  stop = threading.Event()
  done = object()

  def put(item) -> bool:
    while not stop.is_set():
      try:
        q.put(item, timeout=0.05)
        return True
      except queue.Full:
        continue
    return False

  def producer():
    try:
      for item in iterator:
        if not put(item):
          return
    except BaseException as e:
      put(e)
      return
    put(done)

  thread = threading.Thread(target=producer, daemon=True, name="input_producer")
  thread.start()
  try:
    while True:
      item = q.get()
      if item is done:
        return
      if isinstance(item, BaseException):
        raise item
      yield item
  finally:
    stop.set()
    thread.join(timeout=60)


def prefetch(iterator: Iterator[dict[str, np.ndarray]], size: int, sharding) -> Iterator[dict[str, jax.Array]]:
  """Host batches made in a background thread; each put on the devices (asynchronously, from this thread) ``size``
  steps before the step that uses it."""
  host = threaded(iterator, size)
  ahead: collections.deque = collections.deque()
  try:
    for batch in host:
      ahead.append(parallel.to_global(batch, sharding))
      if len(ahead) > size:
        yield ahead.popleft()
    while ahead:
      yield ahead.popleft()
  finally:
    host.close()


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


class _QuietLibraries(logging_std.Filter):
  """Orbax narrates every save at INFO, fsspec/gcsfs every file they open in cloud storage, and JAX every backend it
  did not find ("Unable to initialize backend 'tpu'" on every command): keep their warnings and errors, drop the
  rest."""

  def filter(self, record: logging_std.LogRecord) -> bool:
    if record.name == "asyncio" and str(record.msg).startswith("Task exception was never retrieved"):
      return False  # orbax's writers after a failed save: the error itself reaches the run, once
    chatty = ("/orbax/", "/fsspec/", "/gcsfs/", "/jax/_src/xla_bridge.py")
    return record.levelno >= logging_std.WARNING or not any(c in record.pathname for c in chatty)


def quiet_library_logs() -> None:
  logging_std.getLogger("absl").addFilter(_QuietLibraries())
  for handler in logging_std.getLogger().handlers + [logging.get_absl_handler()]:
    handler.addFilter(_QuietLibraries())


# -----------------------------------------------------------------------------------------------------------------
# Workdir, manifest and preemption.
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


def _git_sha() -> str | None:
  try:
    out = subprocess.run(
      ["git", "rev-parse", "HEAD"],
      cwd=os.path.dirname(os.path.abspath(__file__)),
      capture_output=True,
      text=True,
      timeout=10,
      check=True,
    )
    return out.stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return None


def write_manifest(workdir: str, config: ml_collections.ConfigDict, **extra: Any) -> None:
  """WORKDIR/run.json: what ran, on what, with which versions (rewritten at every start)."""
  if jax.process_index() != 0:
    return
  versions = {}
  for pkg in (
    "jax",
    "jaxlib",
    "flax",
    "optax",
    "orbax-checkpoint",
    "clu",
    "ml-collections",
    "numpy",
    "tensorflow",
    "tensorflow-cpu",
    "tensorflow-datasets",
  ):
    try:
      versions[pkg] = importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
      pass
  manifest = {
    "config": config_lib.to_json(config),
    **extra,
    "versions": versions,
    "python": platform.python_version(),
    "devices": [str(d) for d in jax.devices()],
    "device_kind": jax.devices()[0].device_kind,
    "num_devices": jax.device_count(),
    "process_count": jax.process_count(),
    "git_sha": _git_sha(),
    "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
  }
  with storage.open(storage.join(workdir, "run.json"), "w") as f:
    json.dump(manifest, f, indent=2)


class _PreemptionFlag:
  """Set by SIGTERM (what schedulers send before they take a machine); the loop saves and exits cleanly."""

  def __init__(self):
    self.set = False
    self._previous = None

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    # The flag is set before anything is logged: a second SIGTERM can arrive while the first handler is still
    # inside logging.warning (Python runs the nested handler there), and must see the first one as taken.
    if self.set:  # a second SIGTERM: the first one was not enough (a hung step, say); stop now, without saving
      logging.warning("Second SIGTERM: stopping now, without saving (the last committed checkpoint is kept).")
      signal.signal(signum, signal.SIG_DFL)
      os.kill(os.getpid(), signum)
      return
    self.set = True
    logging.warning("SIGTERM received: saving a checkpoint at the next step all processes reach, then stopping.")

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)

  def reached(self, step: int, every: int) -> bool:
    """With one process: whether SIGTERM came. With several, all must stop at the same step, so they agree (one
    small all-gather, which waits for the step to finish) only every ``every`` steps, where the loop syncs anyway."""
    if jax.process_count() == 1:
      return self.set
    if step % every:
      return False
    from jax.experimental import multihost_utils

    return bool(multihost_utils.process_allgather(np.asarray(self.set)).any())


# -----------------------------------------------------------------------------------------------------------------
# The run.
# -----------------------------------------------------------------------------------------------------------------
def train_and_evaluate(
  config: ml_collections.ConfigDict, workdir: str, *, allow_config_change: bool = False
) -> dict[str, Any]:
  """Train (resuming from ``workdir`` if it holds a checkpoint) and evaluate; returns the final metrics.

  The returned dict has ``step``, ``status`` ('completed' or 'preempted') and the last ``eval_*`` values. A second
  run on a workdir that a live run holds stops at once (``workdir_lock.WorkdirLockedError``, naming the holder).
  """
  # ---- Config and workdir: one writer per workdir --------------------------------------------------------------
  config_lib.validate(config)
  input_pipeline.resolve_source(config)  # a data.dir that is no data set is refused before the workdir is made
  workdir = prepare_workdir(workdir)
  with _PreemptionFlag() as preemption:  # from here on SIGTERM stops the run cleanly, during setup too
    lock = workdir_lock.hold(workdir)
    try:
      return _run(config, workdir, allow_config_change, preemption)
    finally:
      if lock is not None:
        lock.release()


def _run(
  config: ml_collections.ConfigDict, workdir: str, allow_config_change: bool, preemption: _PreemptionFlag
) -> dict[str, Any]:
  from alexnet_jax import tf_util  # clu's writers import TensorFlow: keep it off the accelerators first

  tf_util.hide_accelerators_from_tensorflow()
  from clu import periodic_actions

  # ---- Mesh -----------------------------------------------------------------------------------------------------
  mesh = parallel.create_mesh(config.mesh.model)
  parallel.check_batch_size(config.batch_size, mesh, "batch_size")
  parallel.check_batch_size(config.eval_batch_size, mesh, "eval_batch_size")
  batch_sharding = parallel.batch_sharding(mesh)
  logging.info("Mesh %s over %d devices in %d process(es)", dict(mesh.shape), jax.device_count(), jax.process_count())

  # ---- Input ----------------------------------------------------------------------------------------------------
  source = input_pipeline.create_source(config)
  steps_per_epoch, num_train_steps, eval_every = schedule_steps(config, source.steps_per_epoch(config.batch_size))

  # ---- Model and optimiser: shapes first, then the state created where it lives --------------------------------
  graphdef, init, tx, abstract, shardings = plan_state(config, mesh)
  lr_schedule = make_lr_schedule(config, steps_per_epoch, num_train_steps)
  num_params = model_lib.count_params(abstract["params"])
  logging.info("Model %s: %d parameters", config.model.name, num_params)

  # ---- Checkpoint: resume, or start afresh ----------------------------------------------------------------------
  config_json = config_lib.to_json(config)
  ckpt = checkpoint_lib.Checkpointer(storage.join(workdir, "checkpoints"), max_to_keep=config.keep_checkpoints)

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
      checkpoint_lib.abstract_with_shardings(abstract, shardings), check_config=refuse_a_changed_config
    )
  except Exception:
    ckpt.close()
    raise
  if restored is not None:
    restored_step, state, saved_config = restored
    changed = config_lib.changed_keys(saved_config, config_json)
    if changed:
      logging.warning("Resuming with changed config keys (allowed): %s", changed)
    logging.info("Resuming from the checkpoint at step %d (next step: %d)", restored_step, restored_step + 1)
  else:
    state = jax.jit(init, out_shardings=shardings)()
    logging.info("No checkpoint in %s: starting from step 0", ckpt.directory)
  step = int(state["step"])

  # ---- Update and eval steps ------------------------------------------------------------------------------------
  train_step = jit_train_step(graphdef, tx, lr_schedule, source.preprocess, mesh, shardings)
  eval_step = jit_eval_step(graphdef, source.preprocess, mesh, shardings["params"])

  def run_eval() -> dict[str, float]:
    return evaluate(eval_step, state["params"], source.eval_batches(config.eval_batch_size), batch_sharding)

  # ---- Writers --------------------------------------------------------------------------------------------------
  writer = metrics_lib.create_writer(workdir, tensorboard=config.tensorboard)
  write_manifest(
    workdir,
    config,
    num_params=num_params,
    num_train_steps=num_train_steps,
    steps_per_epoch=steps_per_epoch,
    resumed_from_step=step if restored else None,
  )
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

  # ---- Loop -----------------------------------------------------------------------------------------------------
  result: dict[str, Any] = {"step": step, "status": "completed"}
  if step >= num_train_steps:
    logging.info("Already trained to step %d >= num_train_steps=%d: nothing to do.", step, num_train_steps)
    ckpt.close()
    writer.close()
    return result

  train_metrics = None
  h = config.health
  detector = health.CollapseDetector(
    config.model.num_classes,
    chance_margin=h.chance_margin,
    vanishing_grad=h.vanishing_grad,
    patience=h.patience,
    max_steps_at_chance=h.max_steps_at_chance,
  )
  last_good_ckpt = ckpt.all_steps()[-1] if ckpt.all_steps() else None
  window_start, window_steps, input_wait = time.perf_counter(), 0, 0.0

  def check_finite(values: dict[str, Any]) -> None:
    if float(values["finite"]) < 1.0:
      ckpt.wait()
      where = (
        f"the last good checkpoint (step {last_good_ckpt}) is intact"
        if last_good_ckpt is not None
        else ("no checkpoint had been written yet")
      )
      raise NonFiniteError(
        f"The loss or the gradient norm became NaN/inf at or before step {step} (learning rate "
        f"{float(values['learning_rate']):.3g}); the update was not applied and nothing was saved after it: "
        f"{where}. Check the input data, or lower the rate: rerun with --config.optimizer.learning_rate="
        f"{float(values['learning_rate']) / 10:.3g} --allow_config_change to resume from that checkpoint with it, or "
        "start afresh in a new --workdir."
      )

  def save(at: int) -> None:
    nonlocal last_good_ckpt
    if train_metrics is not None:  # never save a state that followed a non-finite step
      check_finite(train_metrics.compute())
    ckpt.save(at, state, config_json)
    last_good_ckpt = at

  batches = prefetch(source.train_batches(step, config.batch_size), config.data.prefetch, batch_sharding)
  try:
    if preemption.reached(step, 1):  # SIGTERM during setup: nothing new to save
      result["status"] = "preempted"
      logging.warning("Stopped before training step %d after SIGTERM; rerun the same command to resume.", step + 1)
    while step < num_train_steps and result["status"] != "preempted":
      t0 = time.perf_counter()
      batch = next(batches)
      input_wait += time.perf_counter() - t0
      with jax.profiler.StepTraceAnnotation("train", step_num=step):
        state, step_metrics = settle(train_step(state, batch))
      step += 1
      window_steps += 1
      train_metrics = step_metrics if train_metrics is None else merge_metrics(train_metrics, step_metrics)
      for hook in hooks:
        hook(step)

      last = step == num_train_steps
      # The step by which the loss must have left chance is always a log step, whatever log_every_steps is.
      if step % config.log_every_steps == 0 or last or step == h.max_steps_at_chance:
        values = train_metrics.compute()
        check_finite(values)
        elapsed = time.perf_counter() - window_start
        scalars = {f"train_{k}": v for k, v in values.items() if k not in ("learning_rate", "finite")}
        scalars.update(
          learning_rate=values["learning_rate"],
          images_per_sec=window_steps * config.batch_size / elapsed,
          input_wait_fraction=input_wait / elapsed,
          epoch=step / steps_per_epoch,
        )
        writer.write_scalars(step, scalars)
        train_metrics, window_start, window_steps, input_wait = None, time.perf_counter(), 0, 0.0
        collapse = detector.update(step, values)
        if collapse and config.health.on_collapse == "stop":
          ckpt.wait()
          raise health.CollapseError(collapse)
        if collapse:
          logging.warning("%s", collapse)

      scheduled_eval = step % eval_every == 0
      if scheduled_eval or last:
        try:
          eval_values = run_eval()
        except Exception:  # a bad validation shard, say: the steps trained so far are saved before it stops
          save(step)
          ckpt.wait()
          raise
        writer.write_scalars(step, {f"eval_{k}": v for k, v in eval_values.items()})
        result.update({f"eval_{k}": v for k, v in eval_values.items()})
        # Only scheduled evaluations feed the plateau rule: where a run happens to stop must not change it.
        if config.schedule.name == "paper" and scheduled_eval:
          s = config.schedule
          plateau = optim.plateau_update(
            jax.device_get(state["plateau"]),
            eval_values["top1_error"],
            patience=s.patience,
            factor=s.factor,
            max_drops=s.max_drops,
            min_delta=s.min_delta,
          )
          if plateau["num_drops"] > int(state["plateau"]["num_drops"]):
            logging.info(
              "Validation error has not improved for %d evaluations: learning rate x%g (drop %d of %d)",
              s.patience,
              s.factor,
              plateau["num_drops"],
              s.max_drops,
            )
          state = {**state, "plateau": jax.device_put(plateau, shardings["plateau"])}

      preempted = preemption.reached(step, config.log_every_steps) and not last  # at the end: finished anyway
      if step % config.checkpoint_every_steps == 0 or last or preempted:
        save(step)
      if preempted:
        result["status"] = "preempted"
        logging.warning(
          "Stopped at step %d after SIGTERM; the checkpoint is being committed. Rerun the same command to resume.",
          step,
        )
        break
  finally:  # on every path, errors included: pending saves commit, files close, the input thread stops
    batches.close()
    ckpt.close()
    writer.flush()
    writer.close()
  result["step"] = step
  logging.info("Finished at step %d: %s", step, {k: v for k, v in result.items() if k.startswith("eval_")})
  return result
