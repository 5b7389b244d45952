"""How many images per second one host core feeds to training, per input pipeline: recorded by ``python -m
alexnet_jax.benchmark --input_only`` and read by ``python -m alexnet_jax.aot`` (for ``host_cores_needed``), which
runs in ``.venv-aot`` without TensorFlow: nothing here imports it.

The record is a JSON file, by default ``$XDG_CACHE_HOME/alexnet_jax/input_rates.json`` (``~/.cache/...`` without
``XDG_CACHE_HOME``), or wherever ``$ALEXNET_JAX_INPUT_RATES`` names. Each pipeline's rate is kept with where it was
measured (date, machine, cores, versions); a later measurement of a pipeline replaces it, the others stay. Where no
rate was recorded the defaults below stand in, and ``load`` says so.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
from typing import Any

ENV_VAR = "ALEXNET_JAX_INPUT_RATES"
# The pipelines benchmark --input_only measures: prepared JPEG shards (decode + crop + flip), the decode-free pixel
# format, the tf.data service with 1 and 2 workers, and the floor (reading the records alone).
PIPELINES = ("jpeg", "pixels", "service_1", "service_2", "floor")
# images/s per core. JPEG: tf.data decode + random crop + flip on one core measured 1,411-1,585 on a 2-core EPYC
# (benchmarks/RESULTS.md, the training input, 2026-11).
DEFAULT_JPEG_PER_CORE = 1500.0
DEFAULT_PIXELS_PER_CORE = 25000.0  # memory-mapped pixel sets, 2-core EPYC: 26,480 per core used (RESULTS.md)
DEFAULTS = {"jpeg": DEFAULT_JPEG_PER_CORE, "pixels": DEFAULT_PIXELS_PER_CORE}
DEFAULT_SOURCES = {
  "jpeg": "default (benchmarks/RESULTS.md: 1,411-1,585 images/s per core on a 2-core EPYC)",
  "pixels": "default (benchmarks/RESULTS.md: 26,480 images/s per core used, memory-mapped pixel set, 2-core EPYC)",
}
_VERSIONED = ("jax", "jaxlib", "tensorflow", "numpy", "pillow")


def default_path() -> str:
  """Where the rates are kept: ``$ALEXNET_JAX_INPUT_RATES``, else ``$XDG_CACHE_HOME/alexnet_jax/input_rates.json``
  (``~/.cache`` where XDG_CACHE_HOME is unset or empty)."""
  if os.environ.get(ENV_VAR):
    return os.environ[ENV_VAR]
  cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(cache, "alexnet_jax", "input_rates.json")


def _versions() -> dict[str, str]:
  """Python's and the installed packages' versions, read from their metadata (nothing is imported)."""
  out = {"python": platform.python_version()}
  for name in _VERSIONED:
    try:
      out[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      pass
  return out


def _read(path: str) -> dict[str, dict[str, Any]]:
  """{pipeline: entry} of the record at ``path``; {} where there is none. ValueError for a file that is no record."""
  try:
    with open(path) as f:
      data = json.load(f)
  except FileNotFoundError:
    return {}
  except (OSError, ValueError) as e:
    raise ValueError(f"{path} is not a record of input rates ({e}): delete it, or rerun benchmark --input_only") from e
  rates = data.get("rates") if isinstance(data, dict) else None
  if not isinstance(rates, dict):
    raise ValueError(f"{path} is not a record of input rates (no 'rates'): delete it, or rerun benchmark --input_only")
  return rates


def record(rows: list[dict[str, Any]], path: str | None = None) -> str:
  """Keep the per-core rate of every single-thread row (``threads`` 1) of a known pipeline (``PIPELINES``) from
  ``benchmark --input_only``'s rows (dicts with ``pipeline``, ``threads``, ``images_per_sec``,
  ``images_per_sec_per_core``, optionally ``cpu_cores_used``: the rate is then per core so used, at least one), each
  with today's date (UTC), this machine (``platform.node()``, ``os.cpu_count()``)
  and the versions installed. Other rows are ignored; pipelines not measured now keep their earlier entries.

  Returns the path written (``path``, default ``default_path()``). Raises ValueError where no row qualifies or a
  rate is not positive, or where the file there is no record (it is not overwritten)."""
  path = path or default_path()
  chosen = {r["pipeline"]: r for r in rows if r.get("pipeline") in PIPELINES and r.get("threads") == 1}
  if not chosen:
    raise ValueError(f"no single-thread row of a pipeline in {PIPELINES} to record")
  rates = _read(path)
  measured = {
    "date": datetime.datetime.now(datetime.UTC).date().isoformat(),
    "machine": platform.node(),
    "cpu_count": os.cpu_count(),
    "versions": _versions(),
  }
  for pipeline, row in chosen.items():
    # Per core of what the path really kept busy where that was measured: the memory-mapped pixel path's
    # "one thread" is tf.data's, the copy out of the mapping runs in the thread that takes the batches.
    used = row.get("cpu_cores_used")
    rate = float(row["images_per_sec"]) / max(1.0, used) if used else float(row["images_per_sec_per_core"])
    if not rate > 0:
      raise ValueError(f"{pipeline}: images_per_sec_per_core must be positive, got {rate}")
    rates[pipeline] = {"images_per_sec_per_core": rate, "images_per_sec": float(row["images_per_sec"]), **measured}
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  partial = f"{path}.tmp{os.getpid()}"
  with open(partial, "w") as f:
    json.dump({"rates": rates}, f, indent=1, sort_keys=True)
  os.replace(partial, path)  # a reader never sees half a file
  return path


def load(path: str | None = None) -> dict[str, Any]:
  """``{"jpeg": images/s per core, "pixels": images/s per core, "source": {"jpeg": str, "pixels": str}}``: the rates
  recorded at ``path`` (default ``default_path()``), each pipeline with no record replaced by its default
  (``DEFAULTS``); ``source`` says, per pipeline, which (the date, machine, cores and file of a recorded one).
  Raises ValueError where the file there is no record, or holds a rate that is not positive."""
  path = path or default_path()
  rates = _read(path)
  out: dict[str, Any] = {"source": {}}
  for pipeline, default in DEFAULTS.items():
    entry = rates.get(pipeline)
    if entry is None:
      out[pipeline], out["source"][pipeline] = default, DEFAULT_SOURCES[pipeline]
      continue
    rate = entry.get("images_per_sec_per_core") if isinstance(entry, dict) else None
    if not isinstance(rate, (int, float)) or not rate > 0:
      raise ValueError(f"{path}: {pipeline}'s images_per_sec_per_core is {rate!r}: delete it, or rerun the benchmark")
    out[pipeline] = float(rate)
    out["source"][pipeline] = (
      f"benchmark --input_only, {entry.get('date')}, {entry.get('machine')} ({entry.get('cpu_count')} cores), {path}"
    )
  return out


def cores_needed(images_per_sec: float, rates: dict[str, Any], hosts: int = 1) -> dict[str, float]:
  """{pipeline: host cores} that feed ``images_per_sec`` (all hosts together) at each of ``rates``' per-core rates
  ('jpeg', 'pixels'), per host: the total over ``hosts``. Unrounded."""
  return {pipeline: images_per_sec / rates[pipeline] / hosts for pipeline in DEFAULTS}
