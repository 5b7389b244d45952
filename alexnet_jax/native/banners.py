"""Keep native libraries' start-up banners off the user's terminal, and nothing else.

TensorFlow 2.21 writes "oneDNN custom operations are on ..." (twice, through absl's C++ logging before it is
initialised, which ``TF_CPP_MIN_LOG_LEVEL`` no longer silences) every time a process imports it: each command, each
``prepare`` worker. The CUDA plugin of ``.venv-aot`` says "Could not find cuda drivers" on a machine without a GPU,
and libtpu that it "could not determine TPU accelerator type" when compiling for a TPU that is not here. None of
these is about the user's run.

``filtered_native_stderr()`` captures file descriptor 2 (where C++ code writes) around a block, then writes back
every captured line except the known banners (``NOISE``): a real warning or error from the block still reaches the
terminal, a moment later. The package's ``__init__`` installs ``quiet_tensorflow_import()``, so the first import of
TensorFlow in a process, wherever it comes from (tf.data, clu, tensorflow_datasets), runs inside that filter.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import os
import re
import sys
import tempfile

# TensorFlow's C++ INFO and WARNING lines are off unless the user chose a level. `import jax` sets
# TF_CPP_MIN_LOG_LEVEL=1 itself (setdefault), which let TensorFlow's warnings through in every process that started jax
# first (training): so a "1" found after jax was imported is jax's, not the user's.
_USER_TF_LOG_LEVEL = os.environ.get("TF_CPP_MIN_LOG_LEVEL")
if _USER_TF_LOG_LEVEL == "1" and "jax" in sys.modules:
  _USER_TF_LOG_LEVEL = None


def quiet_tensorflow_logs(level: str = "2") -> None:
  """Before TensorFlow is imported: its C++ log lines below ``level`` (2: INFO and WARNING) stay off the terminal,
  unless the user set TF_CPP_MIN_LOG_LEVEL."""
  if _USER_TF_LOG_LEVEL is None:
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = level


NOISE = re.compile(
  "|".join(
    (
      r"All log messages before absl::InitializeLog\(\) is called are written to STDERR",
      r"port\.cc:\d+\] oneDNN custom operations are on",
      r"cpu_feature_guard\.cc:\d+\] This TensorFlow binary is optimized",
      r"^To enable the following instructions: .* rebuild TensorFlow with the appropriate compiler flags",
      r"cudart_stub\.cc:\d+\] Could not find cuda drivers",
      r"cuda_platform\.cc:\d+\] failed call to cuInit: .*UNKNOWN ERROR \(303\)",  # no GPU in this machine
      r"could not determine TPU accelerator type",
      r"local_rendezvous\.cc:\d+\] Local rendezvous is aborting with status: DATA_LOSS",  # shard checks say it whole
    )
  )
)


@contextlib.contextmanager
def filtered_native_stderr():
  """Run the block with fd 2 captured; then write the captured lines that are not ``NOISE`` to stderr."""
  try:
    sys.stderr.flush()
    saved = os.dup(2)
  except (OSError, ValueError, AttributeError):  # no file descriptor 2 (an embedding host): nothing to filter
    yield
    return
  with tempfile.TemporaryFile() as capture:
    os.dup2(capture.fileno(), 2)
    try:
      yield
    finally:
      with contextlib.suppress(OSError, ValueError, AttributeError):
        sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      capture.seek(0)
      kept = [line for line in capture.read().decode(errors="replace").splitlines(True) if not NOISE.search(line)]
      if kept:
        sys.stderr.write("".join(kept))
        sys.stderr.flush()


class _QuietTensorFlowImport(importlib.abc.MetaPathFinder):
  """Finds ``tensorflow`` as the normal path finder does, with its module's execution wrapped in the filter."""

  def find_spec(self, fullname, path, target=None):
    if fullname != "tensorflow":
      return None
    spec = importlib.machinery.PathFinder.find_spec(fullname, path)
    if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
      return spec
    exec_module = spec.loader.exec_module

    def quiet_exec_module(module):
      quiet_tensorflow_logs()
      with filtered_native_stderr():
        exec_module(module)

    spec.loader.exec_module = quiet_exec_module
    return spec


def quiet_tensorflow_import() -> None:
  if "tensorflow" not in sys.modules and not any(isinstance(f, _QuietTensorFlowImport) for f in sys.meta_path):
    sys.meta_path.insert(0, _QuietTensorFlowImport())
