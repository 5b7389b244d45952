"""Training health: a collapse detector fed the logged train metrics (the per-layer diagnostics come from
``steps.make_train_step``), and a warning when the input keeps the devices waiting (``InputWaitMonitor``).

A network that has collapsed to the uniform prediction sits at a loss of ln(num_classes) while its gradient fades;
one whose ReLUs are all zero in some layer passes nothing on. Either wastes every later step, so the run says so, once,
at the log step where it becomes clear: a warning (``health.on_collapse='warn'``, the default) or a stop with an
error (``'stop'``; the checkpoints written so far are kept).
"""

from __future__ import annotations

import math
from typing import Any

from alexnet_jax.steps import RELU_LAYERS


class CollapseError(ValueError):
  """Training collapsed and ``health.on_collapse='stop'``."""


class CollapseDetector:
  """Fed every logged window of train metrics (``loss``, ``grad_norm``, ``dead_relu_<layer>``, ...).

  It fires when a layer's ReLUs are all dead over a whole window (every unit zero for every example of every batch
  averaged: ``dead_relu`` = 1), or when for ``patience`` log windows in a row the loss is within ``chance_margin`` of
  ln(num_classes) and the gradient norm is below ``vanishing_grad`` times the largest logged so far, or (with
  ``max_steps_at_chance`` > 0) when the loss of a window ending at or after that step is not yet ``chance_margin``
  below ln(num_classes), whatever the gradient does: a network that has not started to learn by then, whether it
  sits at chance or above it (a loss that jumped and never came back). The warning names the dead layers, and the
  layers with at least half of their units dead.
  """

  def __init__(
    self,
    num_classes: int,
    *,
    chance_margin: float,
    vanishing_grad: float,
    patience: int,
    max_steps_at_chance: int = 0,
  ):
    self.chance = math.log(num_classes)
    self.chance_margin, self.vanishing_grad, self.patience = chance_margin, vanishing_grad, patience
    self.max_steps_at_chance = max_steps_at_chance
    self.max_grad_norm = 0.0
    self.streak = 0  # windows in a row at chance with a faded gradient
    self.fired = False

  def update(self, step: int, values: dict[str, Any]) -> str | None:
    """The warning, the first time the window ending at ``step`` shows a collapse; None otherwise."""
    if self.fired:
      return None
    loss, grad_norm = float(values["loss"]), float(values["grad_norm"])
    self.max_grad_norm = max(self.max_grad_norm, grad_norm)
    fractions = {layer: float(values.get(f"dead_relu_{layer}", 0.0)) for layer in RELU_LAYERS}
    dead = [layer for layer, fraction in fractions.items() if fraction >= 1.0]
    near = abs(loss - self.chance) < self.chance_margin
    faded = grad_norm < self.vanishing_grad * self.max_grad_norm
    self.streak = self.streak + 1 if near and faded else 0
    still = 0 < self.max_steps_at_chance <= step and loss > self.chance - self.chance_margin
    if not dead and self.streak < self.patience and not still:
      return None
    self.fired = True
    if dead:
      layers = f"dead layers (every ReLU zero over the batch): {', '.join(dead)}"
    elif self.streak >= self.patience:
      layers = "no layer is entirely dead (the gradient faded instead)"
    else:
      layers = (
        f"no layer is entirely dead, and the loss has not left ln({round(math.exp(self.chance))}) in "
        f"{self.max_steps_at_chance} steps (health.max_steps_at_chance: it is not yet {self.chance_margin} below it)"
      )
    mostly = [f"{layer} {fraction:.0%}" for layer, fraction in fractions.items() if 0.5 <= fraction < 1.0]
    if mostly:
      layers += f"; units dead over the batch in {', '.join(mostly)}"
    return (
      f"Training looks stuck at chance at step {step}: loss {loss:.4f} vs ln({round(math.exp(self.chance))}) = "
      f"{self.chance:.4f}, gradient norm {grad_norm:.3g} (largest logged {self.max_grad_norm:.3g}); {layers}. "
      "The per-layer train_grad_norm_*, train_update_ratio_* and train_dead_relu_* in metrics.jsonl show where the "
      "signal stops. Things to try, in a new --workdir: the authors' own settings (configs/paper.py, not "
      "configs/paper.py:text), another --config.seed, --config.model.init=torch, a lower "
      "--config.optimizer.learning_rate (benchmarks/RESULTS.md, 'The paper recipe's first steps'). "
      "(health.on_collapse='stop' ends the run here instead.)"
    )


class InputWaitMonitor:
  """Fed every logged window's ``input_wait_fraction`` (the share of the window's wall time the loop waited for a
  batch). Once the first ``warmup_windows`` log windows have passed (the first holds the compile and tf.data's
  shuffle buffer filling), it warns once when the fraction is above ``threshold`` in ``windows`` log windows in a
  row, naming the fractions and the fixes. ``threshold`` 0 turns it off (``data.input_wait_warning``)."""

  def __init__(self, threshold: float, *, windows: int = 2, warmup_windows: int = 1):
    if not 0.0 <= threshold < 1.0:
      raise ValueError(f"data.input_wait_warning must be in [0, 1) (0: off), got {threshold}")
    self.threshold, self.windows, self.warmup_windows = threshold, windows, warmup_windows
    self.seen = 0  # log windows so far
    self.above: list[float] = []  # the fractions of the latest windows in a row above the threshold
    self.fired = False

  def update(self, step: int, fraction: float) -> str | None:
    """The warning, the first time the window ending at ``step`` completes the streak; None otherwise."""
    self.seen += 1
    if self.fired or self.threshold <= 0 or self.seen <= self.warmup_windows:
      return None
    self.above = [*self.above, float(fraction)] if fraction > self.threshold else []
    if len(self.above) < self.windows:
      return None
    self.fired = True
    shown = ", ".join(f"{f:.2f}" for f in self.above)
    return (
      f"The input is holding training back: input_wait_fraction {shown} in the last {self.windows} log windows "
      f"(to step {step}; above data.input_wait_warning={self.threshold:g}): the devices idle while the host prepares "
      f"batches; without the wait the last window would have run {1 / max(1e-6, 1 - self.above[-1]):.1f}x as fast. "
      "Fixes: a decode-free pixel set (`python -m alexnet_jax.prepare --encoding=pixels`, then --config.data.dir "
      "on it); input workers on other machines (`python -m alexnet_jax.data_service` workers, "
      "--config.data.service=HOST:PORT); more host cores or threads for the input. `python -m alexnet_jax.aot` "
      "estimates the host cores a target needs (host_cores_needed). This warning is given once."
    )
