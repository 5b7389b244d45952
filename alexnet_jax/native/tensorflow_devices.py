"""TensorFlow, imported only where it is needed (input pipeline, data tools, clu's TensorBoard writer), kept off the
accelerators."""

from __future__ import annotations


def hide_accelerators_from_tensorflow() -> None:
  """TensorFlow must never take GPU/TPU memory that JAX needs: make it CPU-only, if it is installed at all."""
  from alexnet_jax.native import banners

  banners.quiet_tensorflow_logs()
  try:
    import tensorflow as tf
  except ImportError:
    return

  with (
    banners.filtered_native_stderr()
  ):  # a CUDA build of TensorFlow on a machine without a GPU: "failed call to cuInit"
    tf.config.set_visible_devices([], "GPU")
    try:
      tf.config.set_visible_devices([], "TPU")
    except (ValueError, RuntimeError):  # no TPU devices known to this TF build / already initialised
      pass
