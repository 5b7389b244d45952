"""The one place where the package meets the range of versions it supports: from Google Colab's runtime (jax 0.7.2,
flax 0.11.2, orbax-checkpoint 0.12.4, Python 3.13; constraints/colab.txt) to the newest releases, and Colab's TPU
runtimes, which ship without TensorFlow.

The package's ``__init__`` imports this module, so it runs before anything imports clu. ``clu.metric_writers``
imports its TensorFlow summary writer unconditionally, so without TensorFlow the whole of clu's writers and
periodic actions (progress reports, profiling) would fail to import. Where TensorFlow is missing, a stand-in module
takes the summary writer's place; constructing its ``SummaryWriter`` raises an ImportError that says what to
install, and ``metrics.create_writer`` skips TensorBoard with one warning.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import sys
import types

TENSORFLOW_HINT = (
  "TensorFlow is not installed: `pip install tensorflow-cpu` (or the package's `tf` extra, "
  "`pip install 'alexnet_jax[tf]'`). Colab's TPU runtimes ship without it."
)


@functools.cache
def has_tensorflow() -> bool:
  """Whether TensorFlow can be imported (found, not imported: importing it takes seconds)."""
  try:
    return importlib.util.find_spec("tensorflow") is not None
  except (ImportError, ValueError):  # ValueError: sys.modules["tensorflow"] is None (import blocked)
    return False


class TensorFlowMissing(ImportError, ValueError):
  """An ImportError that the command lines report as one ``error:`` line, as they do every ValueError."""


def require_tensorflow(what: str) -> None:
  """A clear error, before anything starts, when ``what`` (a tf.data pipeline, ``prepare``) cannot run."""
  if not has_tensorflow():
    raise TensorFlowMissing(f"{what} reads its data with tf.data. {TENSORFLOW_HINT}")


@functools.cache
def tfds_problem() -> str | None:
  """None if tensorflow_datasets works here; otherwise why not, in one line. Colab's stack as listed (protobuf
  5.29.6) with pip's newest tensorflow-metadata (1.21.0, generated for protobuf 6) imports tensorflow_datasets
  without an error and fails at its first use; tensorflow-metadata 1.17.2 works there."""
  try:
    importlib.import_module("tensorflow_metadata.proto.v0.schema_pb2")  # first: a mismatch makes tfds log a traceback
    import tensorflow_datasets as tfds

    tfds.features.FeaturesDict  # noqa: B018  (tfds imports lazily: a broken install shows here)
  except Exception as e:  # ImportError, protobuf's VersionError, the lazy module's AttributeError
    reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    if "Protobuf Gencode/Runtime" in reason:
      reason += " (with protobuf 5: pip install 'tensorflow-metadata<1.18')"
    return reason
  return None


def _stand_in_for_clu_summary_writer() -> None:
  name = "clu.metric_writers.summary_writer"
  if has_tensorflow() or name in sys.modules:
    return

  class SummaryWriter:
    def __init__(self, *args, **kwargs):
      del args, kwargs
      raise ImportError(f"clu's TensorBoard SummaryWriter needs TensorFlow. {TENSORFLOW_HINT}")

  module = types.ModuleType(name)
  module.SummaryWriter = SummaryWriter
  module.__doc__ = "alexnet_jax.native.compat's stand-in: TensorFlow is not installed."
  sys.modules[name] = module


_stand_in_for_clu_summary_writer()
