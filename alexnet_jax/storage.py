"""Files of a workdir or a prepared set, on local disk or in cloud storage: the one place the project touches them.

A path with a scheme (``gs://bucket/run``) goes through ``etils.epath`` where epath knows the scheme (gs://, s3://,
az://, hf://: the same layer orbax writes checkpoints through; TensorFlow's gfile where TensorFlow is installed,
fsspec otherwise), and through TensorFlow's ``tf.io.gfile`` for the schemes only TensorFlow knows (``ram://``,
``hdfs://``). Any other path is local and uses the operating system's own calls, which keep what object stores
cannot give: atomic replace and exclusive create.

TensorBoard event files and the prepared shards are written and read by TensorFlow itself (tf.summary, tf.data,
TFRecordWriter), which accepts the same URLs.
"""

from __future__ import annotations

import builtins
import io
import os
import shutil
from typing import IO, Any

# The schemes epath handles; every other scheme is TensorFlow's (tf.io.gfile).
_EPATH_SCHEMES = ("gs", "s3", "az", "hf")
# Where orbax can write checkpoints (tensorstore's kvstores): local disk and these.
CHECKPOINT_SCHEMES = ("gs", "s3")


def scheme(path: str) -> str | None:
  """``gs`` for ``gs://b/x``; None for a local path."""
  head, sep, _ = str(path).partition("://")
  return head.lower() if sep and head.isidentifier() else None


def is_url(path: str) -> bool:
  return scheme(path) is not None


def resolve(path: str) -> str:
  """A local path made absolute (``~`` expanded); a URL as given, without a trailing ``/``."""
  path = str(path)
  if is_url(path):
    return path.rstrip("/") if not path.endswith("://") else path
  return os.path.abspath(os.path.expanduser(path))


def join(path: str, *parts: str) -> str:
  if is_url(path):
    return "/".join([str(path).rstrip("/"), *(p.strip("/") for p in parts)])
  return os.path.join(path, *parts)


def dirname(path: str) -> str:
  if is_url(path):
    head = str(path).rstrip("/").rpartition("/")[0]
    return head if not head.endswith(":/") else str(path)
  return os.path.dirname(path)


def basename(path: str) -> str:
  return str(path).rstrip("/").rpartition("/")[2] if is_url(path) else os.path.basename(path)


def _epath(path: str):
  from etils import epath

  return epath.Path(path)


def _gfile():
  try:
    import tensorflow as tf
  except ImportError as e:
    raise ValueError(
      f"paths like this need TensorFlow's file systems, and TensorFlow is not installed: pip install tensorflow-cpu "
      f"({e})"
    ) from e
  return tf.io.gfile


def _kind(path: str) -> str:
  s = scheme(path)
  return "local" if s is None else "epath" if s in _EPATH_SCHEMES else "gfile"


def tensorflow_only(path: str) -> bool:
  """A path only TensorFlow's file systems open (``ram://``, ``hdfs://``): not epath, TFDS or orbax."""
  return _kind(path) == "gfile"


def exists(path: str) -> bool:
  kind = _kind(path)
  if kind == "local":
    return os.path.exists(path)
  return _epath(path).exists() if kind == "epath" else _gfile().exists(path)


def isdir(path: str) -> bool:
  kind = _kind(path)
  if kind == "local":
    return os.path.isdir(path)
  return _epath(path).is_dir() if kind == "epath" else _gfile().isdir(path)


def makedirs(path: str) -> None:
  kind = _kind(path)
  if kind == "local":
    os.makedirs(path, exist_ok=True)
  elif kind == "epath":
    _epath(path).mkdir(parents=True, exist_ok=True)
  else:
    _gfile().makedirs(path)


def listdir(path: str) -> list[str]:
  """The names in a directory (not paths), sorted."""
  kind = _kind(path)
  if kind == "local":
    names = os.listdir(path)
  elif kind == "epath":
    names = [p.name for p in _epath(path).iterdir()]
  else:
    names = [n.rstrip("/") for n in _gfile().listdir(path)]
  return sorted(names)


def open(path: str, mode: str = "r", **kwargs: Any) -> IO:
  kind = _kind(path)
  if kind == "local":
    return builtins.open(path, mode, **kwargs)
  if kind == "epath":
    return _epath(path).open(mode)
  return _gfile().GFile(path, mode)


def save_npz(path: str, **arrays: Any) -> None:
  """``np.savez`` to any path (zip needs a seekable file, which object stores do not give: built in memory)."""
  import numpy as np

  buffer = io.BytesIO()
  np.savez(buffer, **arrays)
  with open(path, "wb") as f:
    f.write(buffer.getvalue())


def load_npz(path: str) -> dict[str, Any]:
  import numpy as np

  with open(path, "rb") as f:
    return dict(np.load(io.BytesIO(f.read())))


def remove(path: str) -> None:
  """Remove a file (FileNotFoundError if there is none)."""
  kind = _kind(path)
  if kind == "local":
    os.remove(path)
  elif kind == "epath":
    _epath(path).unlink()
  else:
    if not _gfile().exists(path):
      raise FileNotFoundError(path)
    _gfile().remove(path)


def replace(src: str, dst: str) -> None:
  """Move file ``src`` over ``dst``: atomic on local disk; on object stores a copy and a delete, so readers must
  tolerate a missing or older ``dst`` for a moment."""
  kind = _kind(src)
  if kind == "local":
    os.replace(src, dst)
  elif kind == "epath":  # object stores: a copy and a delete, whatever API the client would try first
    copy_file(src, dst)
    remove(src)
  else:
    _gfile().rename(src, dst, overwrite=True)


def move_tree(src: str, dst: str) -> None:
  """Move a directory and everything in it."""
  kind = _kind(src)
  if kind == "local":
    shutil.move(src, dst)
    return
  # Object stores have no directories to rename: copy every object, then delete the originals.
  for folder, files in _walk(src):
    out = join(dst, folder[len(src) :].strip("/"))
    makedirs(out)
    for name in files:
      copy_file(join(folder, name), join(out, name))
  if kind == "gfile":
    _gfile().rmtree(src)
  else:
    _epath(src).rmtree()


def copy_file(src: str, dst: str) -> None:
  """Copy one file, any file system to any (read whole: for small files)."""
  with open(src, "rb") as f_in, open(dst, "wb") as f_out:
    f_out.write(f_in.read())


def _walk(path: str) -> list[tuple[str, list[str]]]:
  """(folder, its file names) for ``path`` and every folder under it."""
  files, below = [], []
  for name in listdir(path):
    child = join(path, name)
    if isdir(child):
      below += _walk(child)
    else:
      files.append(name)
  return [(path, files), *below]


def mtime(path: str) -> float:
  """When the file was last written (seconds since the epoch; 0 where the file system keeps no time: ram://)."""
  kind = _kind(path)
  if kind == "local":
    return os.path.getmtime(path)
  if kind == "epath":
    return _epath(path).stat().mtime
  return _gfile().stat(path).mtime_nsec / 1e9


def free_bytes(path: str) -> int | None:
  """Free space where ``path`` lives; None for cloud storage (no such limit to check)."""
  return shutil.disk_usage(path).free if _kind(path) == "local" else None


def check_checkpoint_location(path: str, what: str) -> None:
  """Orbax writes checkpoints to local disk, gs:// and s3:// only: refuse any other URL before a run starts."""
  s = scheme(path)
  if s is not None and s not in CHECKPOINT_SCHEMES:
    raise ValueError(
      f"{what}={path!r}: checkpoints can be written to a local path, gs:// or s3://, not {s}:// (orbax cannot "
      "write there). Use one of those."
    )
